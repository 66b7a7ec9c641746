// What both SDK drivers share: one JSON line per step, and on the first failure one line
// naming the step (with the SDK's error details) and exit code 1.

import assert from 'node:assert/strict'
import { createHash, createPrivateKey } from 'node:crypto'
import { createAuthenticatedClient, isFinalizedGrantWithAccessToken, isPendingGrant, OpenPaymentsClientError } from '@interledger/open-payments'

let currentStep = 'setup'

export function readConfig(fields) {
  const config = JSON.parse(process.argv[2] ?? '')
  for (const field of fields) {
    assert.ok(config[field], `config.${field} is required`)
  }
  return config
}

// The SDK client signing as config.clientWalletAddress, every response checked against the
// Open Payments OpenAPI specs (validateResponses).
export function authenticatedClient(config) {
  return createAuthenticatedClient({
    walletAddressUrl: config.clientWalletAddress,
    keyId: config.keyId,
    privateKey: createPrivateKey(config.privateKeyPem),
    validateResponses: true,
    useHttp: true,
    requestTimeoutMs: 20000
  })
}

export function report(step, details = {}) {
  console.log(JSON.stringify({ step, ok: true, ...details }))
}

export async function step(name, body) {
  currentStep = name
  const details = await body()
  report(name, details ?? {})
}

// Expect `promise` to reject with an OpenPaymentsClientError whose status is one of `statuses`.
export async function expectClientError(promise, statuses) {
  try {
    await promise
  } catch (error) {
    if (!(error instanceof OpenPaymentsClientError)) {
      throw new Error(`expected OpenPaymentsClientError, got ${error?.stack ?? error}`)
    }
    assert.ok(
      statuses.includes(error.status),
      `expected status in ${JSON.stringify(statuses)}, got ${error.status}: ${error.description} ${error.validationErrors ?? ''}`
    )
    return { status: error.status, code: error.code }
  }
  throw new Error(`expected an error with status ${JSON.stringify(statuses)}, but the call succeeded`)
}

// Call `read` every 100 ms until `done(result)`; fail naming `what` after `timeoutMs`.
export async function poll(what, read, done, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    last = await read()
    if (done(last)) return last
    if (Date.now() > deadline) throw new Error(`${what}: not done after ${timeoutMs} ms; last seen ${JSON.stringify(last)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

export function amountOf(value, wallet) {
  return { value: String(value), assetCode: wallet.assetCode, assetScale: wallet.assetScale }
}

// "1234" with scale 2 is "12.34 USD", as the consent page writes amounts.
export function formatAmount(amount) {
  const value = BigInt(amount.value)
  const scale = BigInt(amount.assetScale)
  const group = (n) => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',')
  if (scale === 0n) return `${group(value)} ${amount.assetCode}`
  const unit = 10n ** scale
  return `${group(value / unit)}.${(value % unit).toString().padStart(amount.assetScale, '0')} ${amount.assetCode}`
}

// The GNAP interaction finish hash the client checks.
export function interactionHash(clientNonce, asNonce, interactRef, grantEndpoint) {
  return createHash('sha256').update(`${clientNonce}\n${asNonce}\n${interactRef}\n${grantEndpoint}`).digest('base64url')
}

function unescapeHtml(text) {
  return text.replaceAll('&quot;', '"').replaceAll('&#x27;', "'").replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&')
}

// The consent page as the owner's browser gets it through the ASE's login proxy, which adds
// `loggedIn` (its header naming the user) to every request; no signature, no token.
// `page(redirect)` reads the page and its forms; `decide(action, decision)` submits one, which
// answers 302 to the client's `finishUri`: read, never followed.
export function consent(loggedIn, finishUri) {
  async function page(redirect) {
    const response = await fetch(redirect, { redirect: 'manual', headers: loggedIn })
    assert.equal(response.status, 200, `consent page answered ${response.status}`)
    assert.match(response.headers.get('content-type') ?? '', /^text\/html/)
    const html = await response.text()
    const actions = {}
    for (const [, action] of html.matchAll(/<form[^>]*action="([^"]+)"/g)) {
      const url = unescapeHtml(action)
      actions[url.slice(url.lastIndexOf('/') + 1)] = url
    }
    assert.ok(actions.approve && actions.deny, `the page offers approve and deny forms: ${JSON.stringify(actions)}`)
    return { html, actions }
  }

  async function decide(action, decision) {
    const response = await fetch(action, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...loggedIn },
      body: `decision=${decision}`
    })
    assert.equal(response.status, 302, `${decision} answered ${response.status}: ${await response.text()}`)
    const location = response.headers.get('location')
    assert.ok(location, 'the decision redirects somewhere')
    const url = new URL(location)
    assert.equal(`${url.origin}${url.pathname}`, finishUri, `redirected to the finish URI, got ${location}`)
    return url
  }

  return { page, decide }
}

// The sender's side of paying from a quote, the same in the local and the remote flow:
// each is the body of one step, with the assertions both flows make.

export async function requestQuoteToken(client, sender) {
  const grant = await client.grant.request(
    { url: sender.authServer },
    { access_token: { access: [{ type: 'quote', actions: ['create', 'read'] }] } }
  )
  assert.ok(isFinalizedGrantWithAccessToken(grant), 'a quote grant is granted at once')
  return grant.access_token.value
}

// A quote with no amount: for what the receiver still expects, `expectedValue`, all of it.
export async function quoteTheRest(client, sender, token, incoming, receiver, expectedValue) {
  const quote = await client.quote.create(
    { url: sender.resourceServer, accessToken: token },
    { walletAddress: sender.id, receiver: incoming.id, method: 'ilp' }
  )
  assert.ok(quote.id.startsWith(`${sender.resourceServer}/quotes/`))
  assert.equal(quote.walletAddress, sender.id)
  assert.equal(quote.receiver, incoming.id)
  assert.equal(quote.method, 'ilp')
  assert.deepEqual(quote.receiveAmount, amountOf(expectedValue, receiver))
  assert.equal(quote.debitAmount.assetCode, sender.assetCode)
  assert.equal(quote.debitAmount.assetScale, sender.assetScale)
  assert.ok(BigInt(quote.debitAmount.value) >= BigInt(quote.receiveAmount.value), 'same asset: debit covers receive')
  assert.ok(Date.parse(quote.expiresAt) > Date.now(), 'the quote has not expired')
  assert.ok(Date.parse(quote.expiresAt) <= Date.parse(incoming.expiresAt), 'the quote expires no later than the receiver')
  return quote
}

export function outgoingAccess(sender, limits) {
  return [{ type: 'outgoing-payment', actions: ['create', 'read', 'list'], identifier: sender.id, limits }]
}

export async function requestOutgoingGrant(client, sender, limits, finishUri, nonce) {
  const pending = await client.grant.request(
    { url: sender.authServer },
    {
      access_token: { access: outgoingAccess(sender, limits) },
      interact: { start: ['redirect'], finish: { method: 'redirect', uri: finishUri, nonce } }
    }
  )
  assert.ok(isPendingGrant(pending), `an outgoing-payment grant waits for the user: ${JSON.stringify(pending)}`)
  assert.ok(!isFinalizedGrantWithAccessToken(pending))
  assert.ok(pending.interact.redirect.startsWith(`${sender.authServer}/`), 'the consent page is on the auth server')
  assert.ok(pending.interact.finish, 'the AS nonce is given')
  assert.ok(pending.continue.uri && pending.continue.access_token.value)
  return pending
}

// The owner approves on the consent page (`pages` from consent()); the finish hash verifies.
export async function approveOnPage(pages, clientWalletAddress, pending, sender, quote, clientNonce) {
  const { html, actions } = await pages.page(pending.interact.redirect)
  assert.ok(html.includes(clientWalletAddress), 'the page names the client')
  assert.ok(html.includes(sender.id), 'the page names the wallet address')
  assert.ok(html.includes(formatAmount(quote.debitAmount)), `the page shows the debit limit ${formatAmount(quote.debitAmount)}`)
  const finish = await pages.decide(actions.approve, 'approve')
  const hash = finish.searchParams.get('hash')
  const interactRef = finish.searchParams.get('interact_ref')
  assert.ok(hash && interactRef, `hash and interact_ref are in ${finish}`)
  assert.equal(finish.searchParams.get('result'), null)
  assert.equal(hash, interactionHash(clientNonce, pending.interact.finish, interactRef, sender.authServer), 'the finish hash verifies')
  return { finish, actions }
}

export async function continueWithRef(client, pending, finish, sender, limits) {
  const grant = await client.grant.continue(
    { url: pending.continue.uri, accessToken: pending.continue.access_token.value },
    { interact_ref: finish.searchParams.get('interact_ref') }
  )
  assert.ok(isFinalizedGrantWithAccessToken(grant), `continuation gives an access token: ${JSON.stringify(grant)}`)
  const [item] = grant.access_token.access
  assert.equal(item.type, 'outgoing-payment')
  assert.equal(item.identifier, sender.id)
  assert.deepEqual(item.limits, limits)
  return grant
}

export function run(main) {
  main().catch((error) => {
    const failure = { step: currentStep, ok: false, error: error?.message ?? String(error) }
    if (error instanceof OpenPaymentsClientError) {
      Object.assign(failure, {
        status: error.status,
        code: error.code,
        description: error.description,
        validationErrors: error.validationErrors,
        details: error.details
      })
    }
    console.log(JSON.stringify(failure))
    console.error(error?.stack ?? error)
    process.exit(1)
  })
}
