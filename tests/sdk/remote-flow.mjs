// A remote payment with the official SDK (7.4.0), validateResponses on, between two real opay
// servers peered over ILP: a client of A creates an incoming payment on B (grant at B's
// authorization server), quotes it at A, gets an interactive outgoing-payment grant at A
// (consent page as the sender's logged-in owner, finish hash checked), pays, and reads the
// result on both sides: B's receivedAmount is exactly the quote's receiveAmount.
//
// Usage: node remote-flow.mjs '<json config>'
//   config: {receiverWalletAddress (on B), senderWalletAddress (on A), clientWalletAddress (on A),
//            keyId, privateKeyPem, consentUserHeader, consentUser, incomingValue}
//   The receiver, the sender and the link between A and B hold the same asset.
//
// Prints one JSON line per step ({"step": ..., "ok": true, ...}); on the first failure prints
// {"step": ..., "ok": false, "error": ...} and exits 1. Nothing is mocked.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { isFinalizedGrantWithAccessToken } from '@interledger/open-payments'
import {
  amountOf,
  approveOnPage,
  authenticatedClient,
  consent,
  continueWithRef,
  poll,
  quoteTheRest,
  readConfig,
  report,
  requestOutgoingGrant,
  requestQuoteToken,
  run,
  step
} from './lib.mjs'

const config = readConfig([
  'receiverWalletAddress',
  'senderWalletAddress',
  'clientWalletAddress',
  'keyId',
  'privateKeyPem',
  'consentUserHeader',
  'consentUser',
  'incomingValue'
])
const FINISH_URI = 'http://127.0.0.1:1/callback'
const pages = consent({ [config.consentUserHeader]: config.consentUser }, FINISH_URI)
// Packets of at most the link's maxPacketAmount each, over two servers: allow more than a local payment.
const PAYMENT_TIMEOUT_MS = 90000

async function main() {
  const client = await authenticatedClient(config)

  let receiver, sender
  await step('walletAddress.get', async () => {
    receiver = await client.walletAddress.get({ url: config.receiverWalletAddress })
    sender = await client.walletAddress.get({ url: config.senderWalletAddress })
    assert.equal(receiver.id, config.receiverWalletAddress)
    assert.equal(sender.id, config.senderWalletAddress)
    assert.notEqual(new URL(receiver.authServer).origin, new URL(sender.authServer).origin, 'two servers, two authorization servers')
    assert.equal(new URL(sender.id).origin, new URL(config.clientWalletAddress).origin, 'the client is a wallet address of A')
    assert.equal(sender.assetCode, receiver.assetCode)
    assert.equal(sender.assetScale, receiver.assetScale)
    return { receiver: receiver.id, receiverAuthServer: receiver.authServer, sender: sender.id, senderAuthServer: sender.authServer }
  })

  let incomingToken
  await step('grant.request.incomingPayment.atB', async () => {
    // B's authorization server verifies the signature with the key it fetches from A's jwks.json.
    const grant = await client.grant.request(
      { url: receiver.authServer },
      { access_token: { access: [{ type: 'incoming-payment', actions: ['create', 'read', 'list'] }] } }
    )
    assert.ok(isFinalizedGrantWithAccessToken(grant), 'an incoming-payment grant is granted at once')
    incomingToken = grant.access_token.value
    return {}
  })

  let incoming
  await step('incomingPayment.create.atB', async () => {
    incoming = await client.incomingPayment.create(
      { url: receiver.resourceServer, accessToken: incomingToken },
      {
        walletAddress: receiver.id,
        incomingAmount: amountOf(config.incomingValue, receiver),
        expiresAt: new Date(Date.now() + 10 * 60 * 1000).toISOString(),
        metadata: { description: 'remote flow' }
      }
    )
    assert.ok(incoming.id.startsWith(`${receiver.resourceServer}/incoming-payments/`))
    assert.deepEqual(incoming.incomingAmount, amountOf(config.incomingValue, receiver))
    assert.deepEqual(incoming.receivedAmount, amountOf(0, receiver))
    assert.equal(incoming.completed, false)
    assert.ok(incoming.methods?.some((m) => m.type === 'ilp'), `B offers an ilp method: ${JSON.stringify(incoming.methods)}`)
    return { id: incoming.id, methods: incoming.methods }
  })

  let quoteToken
  await step('grant.request.quote.atA', async () => {
    quoteToken = await requestQuoteToken(client, sender)
    return {}
  })

  let quote
  await step('quote.create.atA', async () => {
    // No amount given: the quote is for what the remote receiver still expects, all of it.
    quote = await quoteTheRest(client, sender, quoteToken, incoming, receiver, config.incomingValue)
    return { id: quote.id, debitAmount: quote.debitAmount, receiveAmount: quote.receiveAmount, expiresAt: quote.expiresAt }
  })

  await step('quote.get.atA', async () => {
    const fetched = await client.quote.get({ url: quote.id, accessToken: quoteToken })
    assert.deepEqual(fetched, quote)
    return {}
  })

  const limits = { debitAmount: quote.debitAmount }
  const clientNonce = randomBytes(16).toString('base64url')
  let pending
  await step('grant.request.outgoingPayment.interactive.atA', async () => {
    pending = await requestOutgoingGrant(client, sender, limits, FINISH_URI, clientNonce)
    return { redirect: pending.interact.redirect }
  })

  let finish
  await step('consent.approve.atA', async () => {
    ;({ finish } = await approveOnPage(pages, config.clientWalletAddress, pending, sender, quote, clientNonce))
    return { interactRef: finish.searchParams.get('interact_ref') }
  })

  let outgoingToken
  await step('grant.continue.atA', async () => {
    outgoingToken = (await continueWithRef(client, pending, finish, sender, limits)).access_token.value
    return {}
  })
  const senderRs = () => ({ url: sender.resourceServer, accessToken: outgoingToken })

  let payment
  await step('outgoingPayment.create.atA', async () => {
    payment = await client.outgoingPayment.create(senderRs(), { walletAddress: sender.id, quoteId: quote.id, metadata: { order: 'remote-flow' } })
    assert.ok(payment.id.startsWith(`${sender.resourceServer}/outgoing-payments/`))
    assert.equal(payment.receiver, incoming.id)
    assert.equal(payment.quoteId, quote.id)
    assert.deepEqual(payment.debitAmount, quote.debitAmount)
    assert.deepEqual(payment.receiveAmount, quote.receiveAmount)
    assert.equal(payment.failed, false)
    return { id: payment.id, sentAmount: payment.sentAmount }
  })

  // Same asset on a one-to-one link: what A sends is exactly what B receives.
  const expectedSent = amountOf(quote.receiveAmount.value, sender)
  let sent
  await step('outgoingPayment.get.atA', async () => {
    sent = await poll(
      'outgoing payment',
      () => client.outgoingPayment.get({ url: payment.id, accessToken: outgoingToken }),
      (current) => current.failed || BigInt(current.sentAmount.value) >= BigInt(expectedSent.value),
      PAYMENT_TIMEOUT_MS
    )
    assert.equal(sent.failed, false, `the payment failed: ${JSON.stringify(sent)}`)
    assert.deepEqual(sent.sentAmount, expectedSent)
    assert.deepEqual(sent.receiveAmount, quote.receiveAmount)
    assert.deepEqual(sent.debitAmount, quote.debitAmount)
    return { sentAmount: sent.sentAmount, debitAmount: sent.debitAmount, receiveAmount: sent.receiveAmount }
  })

  await step('incomingPayment.get.atB', async () => {
    const got = await poll(
      'incoming payment',
      () => client.incomingPayment.get({ url: incoming.id, accessToken: incomingToken }),
      (current) => current.completed || BigInt(current.receivedAmount.value) >= BigInt(quote.receiveAmount.value),
      PAYMENT_TIMEOUT_MS
    )
    assert.deepEqual(got.receivedAmount, quote.receiveAmount)
    // Delivered exactly once: a moment later it is still exactly the quoted amount.
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const later = await client.incomingPayment.get({ url: incoming.id, accessToken: incomingToken })
    assert.deepEqual(later.receivedAmount, quote.receiveAmount)
    assert.equal(later.completed, true)
    return { receivedAmount: later.receivedAmount, completed: later.completed }
  })

  await step('outgoingPayment.getGrantSpentAmounts.atA', async () => {
    const spent = await client.outgoingPayment.getGrantSpentAmounts(senderRs())
    assert.deepEqual(spent.spentDebitAmount, quote.debitAmount)
    return spent
  })

  report('done')
}

run(main)
