// Drive a real opay server with the official Open Payments SDK (7.4.0), validateResponses on.
//
// Usage: node incoming-flow.mjs '<json config>'
//   config: {receiverWalletAddress, clientWalletAddress, keyId, privateKeyPem}
//
// Prints one JSON line per step ({"step": ..., "ok": true, ...}); on the first failure prints
// {"step": ..., "ok": false, "error": ...} and exits 1. Nothing is mocked; the SDK checks every
// 2xx response against the Open Payments 1.3.0 OpenAPI spec it bundles.

import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto'
import {
  createAuthenticatedClient,
  createUnauthenticatedClient,
  isFinalizedGrantWithAccessToken,
  isPendingGrant
} from '@interledger/open-payments'
import { expectClientError, readConfig, report, run, step } from './lib.mjs'

const config = readConfig(['receiverWalletAddress', 'clientWalletAddress', 'keyId', 'privateKeyPem'])

const INCOMING_ALL = ['create', 'read', 'list', 'complete']

function assertAmount(amount, value, wallet) {
  assert.deepEqual(amount, { value, assetCode: wallet.assetCode, assetScale: wallet.assetScale })
}

function assertIlpMethods(payment) {
  assert.ok(Array.isArray(payment.methods) && payment.methods.length === 1, 'one payment method')
  const [method] = payment.methods
  assert.equal(method.type, 'ilp')
  assert.match(method.ilpAddress, /^(g|private|example|peer|self|test[1-3]?|local)([.][a-zA-Z0-9_~-]+)+$/)
  assert.match(method.sharedSecret, /^[a-zA-Z0-9-_]+$/)
  assert.equal(Buffer.from(method.sharedSecret, 'base64url').length, 32, 'sharedSecret is 32 bytes')
}

function assertExpiresInFuture(payment) {
  assert.ok(payment.expiresAt, 'expiresAt is present')
  const expiresAt = Date.parse(payment.expiresAt)
  assert.ok(!Number.isNaN(expiresAt), `expiresAt ${payment.expiresAt} is a date-time`)
  assert.ok(expiresAt > Date.now(), 'expiresAt is in the future')
}

async function main() {
  const privateKey = createPrivateKey(config.privateKeyPem)
  const client = await createAuthenticatedClient({
    walletAddressUrl: config.clientWalletAddress,
    keyId: config.keyId,
    privateKey,
    validateResponses: true,
    useHttp: true,
    requestTimeoutMs: 20000
  })
  const publicClient = await createUnauthenticatedClient({
    validateResponses: true,
    useHttp: true,
    requestTimeoutMs: 20000
  })

  let receiver
  await step('walletAddress.get', async () => {
    receiver = await client.walletAddress.get({ url: config.receiverWalletAddress })
    assert.equal(receiver.id, config.receiverWalletAddress)
    assert.ok(receiver.authServer && receiver.resourceServer)
    assert.ok(!receiver.resourceServer.endsWith('/'), 'resourceServer has no trailing slash')
    const viaPublic = await publicClient.walletAddress.get({ url: config.receiverWalletAddress })
    assert.deepEqual(viaPublic, receiver)
    const clientWallet = await client.walletAddress.get({ url: config.clientWalletAddress })
    assert.equal(clientWallet.id, config.clientWalletAddress)
    return { receiver }
  })

  await step('walletAddress.getKeys', async () => {
    const jwks = await client.walletAddress.getKeys({ url: config.clientWalletAddress })
    const key = jwks.keys.find((k) => k.kid === config.keyId)
    assert.ok(key, `key ${config.keyId} is published`)
    assert.equal(key.kty, 'OKP')
    assert.equal(key.crv, 'Ed25519')
    assert.equal(key.alg, 'EdDSA')
    assert.equal(key.x, createPublicKey(privateKey).export({ format: 'jwk' }).x)
    const receiverKeys = await publicClient.walletAddress.getKeys({ url: config.receiverWalletAddress })
    assert.ok(Array.isArray(receiverKeys.keys))
    return { keys: jwks.keys.length }
  })

  const requestIncomingGrant = async (actions = INCOMING_ALL, clientOverride = undefined) => {
    const grant = await client.grant.request(
      { url: receiver.authServer },
      { access_token: { access: [{ type: 'incoming-payment', actions }] } },
      clientOverride
    )
    assert.ok(!isPendingGrant(grant), 'a non-interactive grant is not pending')
    assert.ok(isFinalizedGrantWithAccessToken(grant), 'grant is finalized with an access token')
    assert.ok(grant.access_token.value && grant.access_token.manage)
    assert.ok(grant.continue.uri && grant.continue.access_token.value)
    const [item] = grant.access_token.access
    assert.equal(item.type, 'incoming-payment')
    assert.deepEqual([...item.actions].sort(), [...actions].sort())
    return grant
  }

  let grant
  await step('grant.request', async () => {
    grant = await requestIncomingGrant()
    return { manage: grant.access_token.manage, expires_in: grant.access_token.expires_in }
  })
  let accessToken = grant.access_token.value
  const rs = () => ({ url: receiver.resourceServer, accessToken })

  let withAmount
  await step('incomingPayment.create.withAmount', async () => {
    const expiresAt = new Date(Date.now() + 10 * 60 * 1000).toISOString()
    withAmount = await client.incomingPayment.create(rs(), {
      walletAddress: receiver.id,
      incomingAmount: { value: '500', assetCode: receiver.assetCode, assetScale: receiver.assetScale },
      expiresAt,
      metadata: { description: 'sdk flow', externalRef: '#1' }
    })
    assert.ok(withAmount.id.startsWith(`${receiver.resourceServer}/incoming-payments/`))
    assert.equal(withAmount.walletAddress, receiver.id)
    assert.equal(withAmount.completed, false)
    assertAmount(withAmount.incomingAmount, '500', receiver)
    assertAmount(withAmount.receivedAmount, '0', receiver)
    assert.equal(Date.parse(withAmount.expiresAt), Date.parse(expiresAt))
    assert.deepEqual(withAmount.metadata, { description: 'sdk flow', externalRef: '#1' })
    assert.ok(!Number.isNaN(Date.parse(withAmount.createdAt)))
    assertIlpMethods(withAmount)
    return { id: withAmount.id }
  })

  let withoutAmount
  await step('incomingPayment.create.withoutAmount', async () => {
    withoutAmount = await client.incomingPayment.create(rs(), { walletAddress: receiver.id })
    assert.equal(withoutAmount.incomingAmount, undefined)
    assert.equal(withoutAmount.completed, false)
    assertAmount(withoutAmount.receivedAmount, '0', receiver)
    assertExpiresInFuture(withoutAmount)
    assertIlpMethods(withoutAmount)
    assert.notEqual(withoutAmount.methods[0].sharedSecret, withAmount.methods[0].sharedSecret)
    return { id: withoutAmount.id, expiresAt: withoutAmount.expiresAt }
  })

  await step('incomingPayment.get', async () => {
    const fetched = await client.incomingPayment.get({ url: withAmount.id, accessToken })
    assert.equal(fetched.id, withAmount.id)
    assert.equal(fetched.walletAddress, receiver.id)
    assert.equal(fetched.completed, false)
    assertAmount(fetched.incomingAmount, '500', receiver)
    assertAmount(fetched.receivedAmount, '0', receiver)
    assert.deepEqual(fetched.metadata, withAmount.metadata)
    assert.equal(fetched.createdAt, withAmount.createdAt)
    assertIlpMethods(fetched)
    return { id: fetched.id }
  })

  await step('incomingPayment.getPublic', async () => {
    const unauthenticated = await publicClient.incomingPayment.get({ url: withAmount.id })
    assert.equal(unauthenticated.authServer, receiver.authServer)
    assertAmount(unauthenticated.receivedAmount, '0', receiver)
    for (const hidden of ['id', 'methods', 'incomingAmount', 'metadata', 'walletAddress']) {
      assert.equal(unauthenticated[hidden], undefined, `the public view hides ${hidden}`)
    }
    const viaAuthenticatedClient = await client.incomingPayment.getPublic({ url: withoutAmount.id })
    assert.equal(viaAuthenticatedClient.authServer, receiver.authServer)
    return unauthenticated
  })

  await step('incomingPayment.list', async () => {
    const more = []
    for (let i = 1; i <= 3; i += 1) {
      more.push(
        await client.incomingPayment.create(rs(), {
          walletAddress: receiver.id,
          incomingAmount: { value: String(100 * i), assetCode: receiver.assetCode, assetScale: receiver.assetScale }
        })
      )
    }
    const all = new Set([withAmount.id, withoutAmount.id, ...more.map((p) => p.id)])
    assert.equal(all.size, 5)
    const listArgs = () => ({ url: receiver.resourceServer, accessToken, walletAddress: receiver.id })

    const first = await client.incomingPayment.list(listArgs(), { first: 2 })
    assert.equal(first.result.length, 2)
    assert.equal(first.pagination.hasNextPage, true)
    assert.equal(first.pagination.hasPreviousPage, false)
    assert.ok(first.pagination.startCursor && first.pagination.endCursor)
    for (const item of first.result) {
      assert.equal(item.methods, undefined, 'list items carry no methods')
      assert.equal(item.walletAddress, receiver.id)
    }

    const second = await client.incomingPayment.list(listArgs(), { first: 2, cursor: first.pagination.endCursor })
    assert.equal(second.result.length, 2)
    assert.equal(second.pagination.hasNextPage, true)
    assert.equal(second.pagination.hasPreviousPage, true)

    const third = await client.incomingPayment.list(listArgs(), { first: 2, cursor: second.pagination.endCursor })
    assert.equal(third.result.length, 1)
    assert.equal(third.pagination.hasNextPage, false)
    assert.equal(third.pagination.hasPreviousPage, true)

    const pages = [first, second, third].map((page) => page.result.map((p) => p.id))
    const seen = pages.flat()
    assert.equal(new Set(seen).size, seen.length, `pages overlap: ${JSON.stringify(pages)}`)
    assert.deepEqual(new Set(seen), all, 'the pages cover every payment')

    // Walking back from the second page with `last` gives the first page again.
    const back = await client.incomingPayment.list(listArgs(), { last: 2, cursor: second.pagination.startCursor })
    assert.deepEqual(
      back.result.map((p) => p.id),
      pages[0]
    )
    assert.equal(back.pagination.hasPreviousPage, false)
    assert.equal(back.pagination.hasNextPage, true)

    const everything = await client.incomingPayment.list(listArgs())
    assert.deepEqual(new Set(everything.result.map((p) => p.id)), all)
    return { pages, pagination: [first.pagination, second.pagination, third.pagination] }
  })

  await step('incomingPayment.complete', async () => {
    const completed = await client.incomingPayment.complete({ url: withAmount.id, accessToken })
    assert.equal(completed.id, withAmount.id)
    assert.equal(completed.completed, true)
    assert.equal(completed.methods, undefined)
    assertAmount(completed.incomingAmount, '500', receiver)
    const fetched = await client.incomingPayment.get({ url: withAmount.id, accessToken })
    assert.equal(fetched.completed, true)
    assert.deepEqual(fetched.methods, [], 'a completed payment offers no payment method')
    return { id: completed.id, completed: completed.completed }
  })

  await step('token.rotate', async () => {
    const oldToken = accessToken
    const rotated = await client.token.rotate({ url: grant.access_token.manage, accessToken })
    assert.ok(rotated.access_token.value && rotated.access_token.manage)
    assert.notEqual(rotated.access_token.value, oldToken)
    assert.deepEqual(rotated.access_token.access, grant.access_token.access)
    accessToken = rotated.access_token.value
    grant = { ...grant, access_token: rotated.access_token }
    const fetched = await client.incomingPayment.get({ url: withoutAmount.id, accessToken })
    assert.equal(fetched.id, withoutAmount.id)
    const stale = await expectClientError(client.incomingPayment.get({ url: withoutAmount.id, accessToken: oldToken }), [401, 403])
    return { manage: rotated.access_token.manage, oldToken: stale }
  })

  await step('token.revoke', async () => {
    const result = await client.token.revoke({ url: grant.access_token.manage, accessToken })
    assert.equal(result, undefined)
    const refused = await expectClientError(client.incomingPayment.get({ url: withoutAmount.id, accessToken }), [401, 403])
    return { revokedTokenGet: refused }
  })

  await step('grant.cancel', async () => {
    const second = await requestIncomingGrant(['read'])
    const before = await client.incomingPayment.get({ url: withoutAmount.id, accessToken: second.access_token.value })
    assert.equal(before.id, withoutAmount.id)
    const result = await client.grant.cancel({ url: second.continue.uri, accessToken: second.continue.access_token.value })
    assert.equal(result, undefined)
    const refused = await expectClientError(
      client.incomingPayment.get({ url: withoutAmount.id, accessToken: second.access_token.value }),
      [401, 403]
    )
    return { cancelledGrantGet: refused }
  })

  await step('grant.insufficientAccess', async () => {
    const readOnly = await requestIncomingGrant(['read'])
    const refused = await expectClientError(
      client.incomingPayment.create({ url: receiver.resourceServer, accessToken: readOnly.access_token.value }, { walletAddress: receiver.id }),
      [403]
    )
    return { createWithReadOnlyToken: refused }
  })

  await step('signature.wrongKey', async () => {
    // Same wallet address and keyid, but signed with a key the wallet address never published.
    const impostor = await createAuthenticatedClient({
      walletAddressUrl: config.clientWalletAddress,
      keyId: config.keyId,
      privateKey: generateKeyPairSync('ed25519').privateKey,
      validateResponses: true,
      useHttp: true,
      requestTimeoutMs: 20000
    })
    const grantRefused = await expectClientError(
      impostor.grant.request(
        { url: receiver.authServer },
        { access_token: { access: [{ type: 'incoming-payment', actions: ['read'] }] } }
      ),
      [400, 401]
    )
    const valid = await requestIncomingGrant(['read'])
    const getRefused = await expectClientError(
      impostor.incomingPayment.get({ url: withoutAmount.id, accessToken: valid.access_token.value }),
      [401, 403]
    )
    const unknown = await expectClientError(
      publicClient.incomingPayment.get({ url: `${receiver.resourceServer}/incoming-payments/00000000-0000-4000-8000-000000000000` }),
      [404]
    )
    return { grantRefused, getRefused, unknownPublicGet: unknown }
  })

  await step('grant.request.directedIdentity', async () => {
    const jwk = { ...createPublicKey(privateKey).export({ format: 'jwk' }), kid: config.keyId, alg: 'EdDSA' }
    const directed = await requestIncomingGrant(['create', 'read'], { jwk })
    const payment = await client.incomingPayment.create(
      { url: receiver.resourceServer, accessToken: directed.access_token.value },
      { walletAddress: receiver.id, incomingAmount: { value: '7', assetCode: receiver.assetCode, assetScale: receiver.assetScale } }
    )
    assertIlpMethods(payment)
    const fetched = await client.incomingPayment.get({ url: payment.id, accessToken: directed.access_token.value })
    assert.equal(fetched.id, payment.id)
    return { id: payment.id }
  })

  report('done')
}

run(main)
