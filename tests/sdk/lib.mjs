// What both SDK drivers share: one JSON line per step, and on the first failure one line
// naming the step (with the SDK's error details) and exit code 1.

import assert from 'node:assert/strict'
import { createHash, createPrivateKey } from 'node:crypto'
import { createAuthenticatedClient, OpenPaymentsClientError } from '@interledger/open-payments'

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
