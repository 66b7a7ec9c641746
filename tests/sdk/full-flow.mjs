// The whole Open Payments flow against a real opay server with the official SDK (7.4.0),
// validateResponses on: incoming payment -> quote -> interactive outgoing-payment grant
// (consent page driven over HTTP, finish hash checked) -> continue -> outgoing payment ->
// local settlement, plus the deny path.
//
// Usage: node full-flow.mjs '<json config>'
//   config: {receiverWalletAddress, senderWalletAddress, clientWalletAddress, keyId, privateKeyPem,
//            consentUserHeader, consentUser}
//   The receiver and the sender hold the same asset; the sender's asset may carry a fee.
//   The consent page is used as the sender's owner behind a login proxy: every request to
//   it carries consentUserHeader: consentUser (the proxy's header naming the logged-in user).
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
  expectClientError,
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
  'consentUser'
])
// What the ASE's login proxy adds to the owner's requests to the consent page.
const LOGGED_IN = { [config.consentUserHeader]: config.consentUser }

const FINISH_URI = 'http://127.0.0.1:1/callback'
const pages = consent(LOGGED_IN, FINISH_URI)
const { page: consentPage, decide } = pages

async function main() {
  const client = await authenticatedClient(config)

  let receiver, sender
  await step('walletAddress.get', async () => {
    receiver = await client.walletAddress.get({ url: config.receiverWalletAddress })
    sender = await client.walletAddress.get({ url: config.senderWalletAddress })
    assert.equal(receiver.id, config.receiverWalletAddress)
    assert.equal(sender.id, config.senderWalletAddress)
    assert.equal(sender.assetCode, receiver.assetCode)
    assert.equal(sender.assetScale, receiver.assetScale)
    return { receiver: receiver.id, sender: sender.id, asset: sender.assetCode }
  })

  let incomingToken
  await step('grant.request.incomingPayment', async () => {
    const grant = await client.grant.request(
      { url: receiver.authServer },
      { access_token: { access: [{ type: 'incoming-payment', actions: ['create', 'read', 'list'] }] } }
    )
    assert.ok(isFinalizedGrantWithAccessToken(grant), 'an incoming-payment grant is granted at once')
    incomingToken = grant.access_token.value
    return {}
  })

  const INCOMING_VALUE = '1234'
  let incoming
  await step('incomingPayment.create', async () => {
    incoming = await client.incomingPayment.create(
      { url: receiver.resourceServer, accessToken: incomingToken },
      {
        walletAddress: receiver.id,
        incomingAmount: amountOf(INCOMING_VALUE, receiver),
        expiresAt: new Date(Date.now() + 10 * 60 * 1000).toISOString(),
        metadata: { description: 'full flow' }
      }
    )
    assert.ok(incoming.id.startsWith(`${receiver.resourceServer}/incoming-payments/`))
    assert.deepEqual(incoming.incomingAmount, amountOf(INCOMING_VALUE, receiver))
    assert.deepEqual(incoming.receivedAmount, amountOf(0, receiver))
    assert.equal(incoming.completed, false)
    return { id: incoming.id }
  })

  let quoteToken
  await step('grant.request.quote', async () => {
    quoteToken = await requestQuoteToken(client, sender)
    return {}
  })

  let quote
  await step('quote.create', async () => {
    quote = await quoteTheRest(client, sender, quoteToken, incoming, receiver, INCOMING_VALUE)
    return { id: quote.id, debitAmount: quote.debitAmount, receiveAmount: quote.receiveAmount }
  })

  await step('quote.get', async () => {
    const fetched = await client.quote.get({ url: quote.id, accessToken: quoteToken })
    assert.deepEqual(fetched, quote)
    return {}
  })

  const limits = { debitAmount: quote.debitAmount }
  const requestInteractive = (nonce) => requestOutgoingGrant(client, sender, limits, FINISH_URI, nonce)

  const clientNonce = randomBytes(16).toString('base64url')
  let pending
  await step('grant.request.outgoingPayment.interactive', async () => {
    pending = await requestInteractive(clientNonce)
    const early = await expectClientError(
      client.grant.continue({ url: pending.continue.uri, accessToken: pending.continue.access_token.value }, { interact_ref: 'not-the-ref' }),
      [401]
    )
    assert.equal(early.code, 'invalid_continuation')
    return { redirect: pending.interact.redirect, wait: pending.continue.wait }
  })

  let finish
  await step('consent.approve', async () => {
    const approved = await approveOnPage(pages, config.clientWalletAddress, pending, sender, quote, clientNonce)
    finish = approved.finish
    const { actions } = approved
    const interactRef = finish.searchParams.get('interact_ref')
    // The first decision stands.
    const again = await fetch(actions.deny, {
      method: 'POST',
      redirect: 'manual',
      body: 'decision=deny',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...LOGGED_IN }
    })
    assert.equal(again.status, 409)
    return { interactRef }
  })

  let outgoingToken
  await step('grant.continue', async () => {
    const grant = await continueWithRef(client, pending, finish, sender, limits)
    outgoingToken = grant.access_token.value
    const second = await expectClientError(
      client.grant.continue(
        { url: pending.continue.uri, accessToken: pending.continue.access_token.value },
        { interact_ref: finish.searchParams.get('interact_ref') }
      ),
      [401]
    )
    return { manage: grant.access_token.manage, secondContinue: second }
  })
  const senderRs = () => ({ url: sender.resourceServer, accessToken: outgoingToken })

  let payment
  await step('outgoingPayment.create', async () => {
    payment = await client.outgoingPayment.create(senderRs(), { walletAddress: sender.id, quoteId: quote.id, metadata: { order: 'full-flow' } })
    assert.ok(payment.id.startsWith(`${sender.resourceServer}/outgoing-payments/`))
    assert.equal(payment.walletAddress, sender.id)
    assert.equal(payment.quoteId, quote.id)
    assert.equal(payment.receiver, incoming.id)
    assert.deepEqual(payment.debitAmount, quote.debitAmount)
    assert.deepEqual(payment.receiveAmount, quote.receiveAmount)
    assert.deepEqual(payment.metadata, { order: 'full-flow' })
    assert.equal(payment.failed, false)
    assert.deepEqual(payment.grantSpentDebitAmount, quote.debitAmount)
    return { id: payment.id, sentAmount: payment.sentAmount }
  })

  // Same asset, rate 1: what is sent (debit less fee) is exactly what the receiver gets.
  const expectedSent = amountOf(quote.receiveAmount.value, sender)
  await step('outgoingPayment.get', async () => {
    const done = await poll(
      'outgoing payment',
      () => client.outgoingPayment.get({ url: payment.id, accessToken: outgoingToken }),
      (current) => current.failed || current.sentAmount.value !== '0'
    )
    assert.equal(done.failed, false, `the payment failed: ${JSON.stringify(done)}`)
    assert.deepEqual(done.sentAmount, expectedSent)
    const { sentAmount: _a, failed: _b, grantSpentDebitAmount: _c, grantSpentReceiveAmount: _d, ...terms } = payment
    const { sentAmount: _e, failed: _f, ...now } = done
    assert.deepEqual(now, terms, 'the payment keeps its terms')
    return { sentAmount: done.sentAmount, debitAmount: done.debitAmount }
  })

  await step('incomingPayment.get', async () => {
    const received = await poll(
      'incoming payment',
      () => client.incomingPayment.get({ url: incoming.id, accessToken: incomingToken }),
      (current) => current.completed && current.receivedAmount.value === quote.receiveAmount.value
    )
    assert.deepEqual(received.receivedAmount, quote.receiveAmount)
    // Settled exactly once: a moment later it is still exactly the quoted amount.
    await new Promise((resolve) => setTimeout(resolve, 500))
    const later = await client.incomingPayment.get({ url: incoming.id, accessToken: incomingToken })
    assert.deepEqual(later.receivedAmount, quote.receiveAmount)
    assert.equal(later.completed, true)
    return { receivedAmount: received.receivedAmount, completed: received.completed }
  })

  await step('outgoingPayment.list', async () => {
    const page = await client.outgoingPayment.list({ ...senderRs(), walletAddress: sender.id }, { first: 10 })
    assert.deepEqual(
      page.result.map((p) => p.id),
      [payment.id]
    )
    assert.equal(page.pagination.hasNextPage, false)
    assert.equal(page.pagination.hasPreviousPage, false)
    assert.deepEqual(page.result[0].sentAmount, expectedSent)
    return { count: page.result.length }
  })

  await step('outgoingPayment.getGrantSpentAmounts', async () => {
    const spent = await client.outgoingPayment.getGrantSpentAmounts(senderRs())
    assert.deepEqual(spent.spentDebitAmount, quote.debitAmount)
    assert.equal(spent.spentReceiveAmount, null, 'no receive limit: nothing to report')
    return spent
  })

  await step('outgoingPayment.create.quoteUsed', async () => {
    const refused = await expectClientError(client.outgoingPayment.create(senderRs(), { walletAddress: sender.id, quoteId: quote.id }), [409])
    assert.equal(refused.code, 'quote_used')
    return { refused }
  })

  await step('outgoingPayment.create.overGrantLimit', async () => {
    // The grant's whole debit limit is spent: a payment without a quote (large enough to
    // deliver something after fees) is refused too.
    const open = await client.incomingPayment.create({ url: receiver.resourceServer, accessToken: incomingToken }, { walletAddress: receiver.id })
    const refused = await expectClientError(
      client.outgoingPayment.create(senderRs(), { walletAddress: sender.id, incomingPayment: open.id, debitAmount: amountOf(100, sender) }),
      [403]
    )
    assert.equal(refused.code, 'grant_limit_exceeded')
    const spent = await client.outgoingPayment.getGrantSpentAmounts(senderRs())
    assert.deepEqual(spent.spentDebitAmount, quote.debitAmount)
    return { refused }
  })

  await step('consent.deny', async () => {
    const nonce = randomBytes(16).toString('base64url')
    const denied = await requestInteractive(nonce)
    const { actions } = await consentPage(denied.interact.redirect)
    const back = await decide(actions.deny, 'deny')
    assert.equal(back.searchParams.get('result'), 'grant_rejected')
    assert.equal(back.searchParams.get('hash'), null)
    assert.equal(back.searchParams.get('interact_ref'), null)
    const polled = await expectClientError(
      client.grant.continue({ url: denied.continue.uri, accessToken: denied.continue.access_token.value }),
      [401]
    )
    assert.equal(polled.code, 'request_denied')
    const withRef = await expectClientError(
      client.grant.continue({ url: denied.continue.uri, accessToken: denied.continue.access_token.value }, { interact_ref: 'anything' }),
      [401]
    )
    return { finish: back.search, polled, withRef }
  })

  report('done')
}

run(main)
