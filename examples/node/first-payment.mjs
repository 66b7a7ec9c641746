// A first Open Payments payment against `make run`, with the official Node SDK
// (@interledger/open-payments). The same steps as ../first_payment.py:
//
//   grant -> incoming payment -> credit -> quote -> consent -> outgoing payment
//
// Alice pays Bob 10.00 USD, of which 2.50 already came in another way (a bank transfer the
// ASE books with a credit). Setup (README "Quickstart"): `make run`, create the wallet
// addresses alice and bob, `opay keys new alice`, then:
//
//   export OPAY_OPERATOR_TOKEN=...   # the token `make run` printed
//   export CLIENT_WALLET_ADDRESS=http://127.0.0.1:8000/alice KEY_ID=key-... PRIVATE_KEY_FILE=var/keys/alice-key-....pem
//   cd examples/node && npm ci && node first-payment.mjs
//
// Optional: OPAY_OPERATOR_URL (http://127.0.0.1:8001), RECEIVER_WALLET_ADDRESS
// (the client's wallet address with its last segment replaced by bob).

import { randomUUID } from 'node:crypto'
import { createAuthenticatedClient, isFinalizedGrantWithAccessToken, isPendingGrant } from '@interledger/open-payments'

const OPERATOR_URL = process.env.OPAY_OPERATOR_URL ?? 'http://127.0.0.1:8001'

function need(name) {
  if (!process.env[name]) {
    console.error(`first-payment: set ${name} (see the top of this file)`)
    process.exit(1)
  }
  return process.env[name]
}

function show(step, text) {
  console.log(`${step.padEnd(18)} ${text}`)
}

// "1000" at scale 2 is "10.00 USD": amounts are integers in the asset's scale.
function money({ value, assetCode, assetScale }) {
  const digits = value.padStart(assetScale + 1, '0')
  const whole = assetScale ? `${digits.slice(0, -assetScale)}.${digits.slice(-assetScale)}` : digits
  return `${whole} ${assetCode}`
}

// The operator API: the ASE's own back office, not part of Open Payments.
async function operator(path, body) {
  const response = await fetch(`${OPERATOR_URL}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${need('OPAY_OPERATOR_TOKEN')}`, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  if (!response.ok) throw new Error(`operator ${path} answered ${response.status}: ${await response.text()}`)
  return response.json()
}

// Payments settle asynchronously, in moments: read until done.
async function until(read, done) {
  for (let i = 0; i < 100; i++) {
    const answer = await read()
    if (done(answer)) return answer
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  throw new Error('not done after 20 s')
}

async function main() {
  const clientWalletAddress = need('CLIENT_WALLET_ADDRESS')
  // Every request the SDK sends is signed with this key (RFC 9421). useHttp: `make run`
  // serves plain http on 127.0.0.1.
  const client = await createAuthenticatedClient({
    walletAddressUrl: clientWalletAddress,
    keyId: need('KEY_ID'),
    privateKey: need('PRIVATE_KEY_FILE'),
    useHttp: true
  })

  // Wallet addresses are public documents: they name their auth server and asset.
  const sender = await client.walletAddress.get({ url: clientWalletAddress })
  const receiver = await client.walletAddress.get({
    url: process.env.RECEIVER_WALLET_ADDRESS ?? clientWalletAddress.replace(/[^/]+$/, 'bob')
  })
  show('wallet addresses', `${sender.id} pays ${receiver.id}`)

  // 1. grant: a token to create incoming payments at the receiver. Not interactive:
  //    receiving money needs nobody's consent.
  const incomingGrant = await client.grant.request(
    { url: receiver.authServer },
    { access_token: { access: [{ type: 'incoming-payment', actions: ['create', 'read'] }] } }
  )
  if (!isFinalizedGrantWithAccessToken(incomingGrant)) throw new Error('expected an incoming-payment token at once')
  const incomingToken = incomingGrant.access_token.value
  show('grant', 'incoming-payment token issued')

  // 2. incoming payment: Bob expects 10.00.
  const amount = { value: '1000', assetCode: receiver.assetCode, assetScale: receiver.assetScale }
  const incoming = await client.incomingPayment.create(
    { url: receiver.resourceServer, accessToken: incomingToken },
    { walletAddress: receiver.id, incomingAmount: amount, metadata: { description: 'first payment' } }
  )
  show('incoming payment', incoming.id)

  // 3. credit: 2.50 of it arrives outside Open Payments (say a bank transfer); the ASE books
  //    it through the operator API. The idempotency key makes a retry harmless.
  const credit = await operator('/credits', { incomingPayment: incoming.id, amount: '250', idempotencyKey: `bank-transfer-${randomUUID()}` })
  show('credit', `received ${money(credit.receivedAmount)} of ${money(amount)}`)

  // 4. quote: what Alice pays for the rest. No amount given: the quote is for what the
  //    incoming payment still expects (7.50), fees included in debitAmount.
  const quoteGrant = await client.grant.request(
    { url: sender.authServer },
    { access_token: { access: [{ type: 'quote', actions: ['create', 'read'] }] } }
  )
  if (!isFinalizedGrantWithAccessToken(quoteGrant)) throw new Error('expected a quote token at once')
  const quote = await client.quote.create(
    { url: sender.resourceServer, accessToken: quoteGrant.access_token.value },
    { walletAddress: sender.id, receiver: incoming.id, method: 'ilp' }
  )
  show('quote', `debit ${money(quote.debitAmount)}, receive ${money(quote.receiveAmount)}`)

  // 5. consent: spending Alice's money needs her consent, so this grant is interactive.
  const pending = await client.grant.request(
    { url: sender.authServer },
    {
      access_token: {
        access: [
          { type: 'outgoing-payment', actions: ['create', 'read'], identifier: sender.id, limits: { debitAmount: quote.debitAmount } }
        ]
      },
      interact: { start: ['redirect'] }
    }
  )
  if (!isPendingGrant(pending)) throw new Error('expected the grant to wait for consent')
  show('consent', `a person would approve at ${pending.interact.redirect}`)
  // A real app sends Alice to that page and waits. This script runs unattended, so the ASE
  // approves in her place through the operator API (what an ASE's own consent app does once
  // she said yes); `make run`'s page decides for logged-in owners only.
  await operator(`/grants/${pending.continue.uri.split('/').pop()}/approve`, {})
  // Decided: the next poll of the continue URI gets the access token.
  const outgoingGrant = await client.grant.continue({ url: pending.continue.uri, accessToken: pending.continue.access_token.value })
  if (!isFinalizedGrantWithAccessToken(outgoingGrant)) throw new Error('expected an outgoing-payment token after approval')
  const outgoingToken = outgoingGrant.access_token.value
  show('consent', 'approved; outgoing-payment token issued')

  // 6. outgoing payment: pays the quote. With `make run` (OPAY_AUTO_FUND) it is funded at
  //    once, and a receiver on this server is credited within moments.
  const created = await client.outgoingPayment.create(
    { url: sender.resourceServer, accessToken: outgoingToken },
    { walletAddress: sender.id, quoteId: quote.id }
  )
  show('outgoing payment', created.id)
  const payment = await until(
    () => client.outgoingPayment.get({ url: created.id, accessToken: outgoingToken }),
    (p) => p.failed || p.sentAmount.value !== '0'
  )
  if (payment.failed) throw new Error(`the payment failed: ${JSON.stringify(payment)}`)
  const received = await until(
    () => client.incomingPayment.get({ url: incoming.id, accessToken: incomingToken }),
    (i) => i.completed
  )
  show('done', `sent ${money(payment.sentAmount)}; Bob received ${money(received.receivedAmount)} of ${money(amount)}`)
}

main().catch((error) => {
  console.error(`first-payment: ${error?.description ?? error?.message ?? error}`)
  process.exit(1)
})
