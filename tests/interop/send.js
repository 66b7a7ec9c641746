#!/usr/bin/env node
// Pay an opay incoming payment with an ILP sender written by others, over ilp-plugin-http.
//
//   node send.js '{"mode":"stream"|"pay","url":"http://127.0.0.1:PORT/ilp","token":"...",
//                  "ilpAddress":"test.opay....","sharedSecret":"<base64url>","amount":"1000",
//                  "timeoutMs":10000,"assetCode":"USD","assetScale":2}'
//
// Prints exactly one JSON line on stdout and exits 0, whatever happened to the payment:
//   stream: {"mode","totalSent","totalDelivered","error"?}   (ilp-protocol-stream)
//   pay:    {"mode","amountSent","amountDelivered","error"?} (@interledger/pay)
// A failure of this script itself (bad argument, crash) exits 2 with {"fatal": "..."}.
'use strict'

const PluginHttp = require('ilp-plugin-http')

function output (result) {
  process.stdout.write(JSON.stringify(result) + '\n')
}

function secretBytes (b64url) {
  return Buffer.from(b64url.replace(/-/g, '+').replace(/_/g, '/'), 'base64')
}

async function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function viaStream (plugin, args) {
  const { createConnection } = require('ilp-protocol-stream')
  const result = { mode: 'stream', totalSent: '0', totalDelivered: '0' }
  let connection
  try {
    connection = await withTimeout(createConnection({
      plugin,
      destinationAccount: args.ilpAddress,
      sharedSecret: secretBytes(args.sharedSecret),
      slippage: 0
    }), args.timeoutMs, 'createConnection')
    const stream = connection.createStream()
    await stream.sendTotal(String(args.amount), { timeout: args.timeoutMs })
  } catch (error) {
    result.error = String(error && error.message ? error.message : error)
  }
  if (connection) {
    result.totalSent = String(connection.totalSent)
    result.totalDelivered = String(connection.totalDelivered)
    try {
      await withTimeout(connection.destroy(), 2000, 'destroy')
    } catch (_) {}
  }
  return result
}

async function viaPay (plugin, args) {
  const { setupPayment, startQuote, pay, closeConnection } = require('@interledger/pay')
  const result = { mode: 'pay', amountSent: '0', amountDelivered: '0' }
  let destination
  try {
    destination = await withTimeout(setupPayment({
      plugin,
      destinationAddress: args.ilpAddress,
      sharedSecret: secretBytes(args.sharedSecret)
    }), args.timeoutMs, 'setupPayment')
    const quote = await withTimeout(startQuote({
      plugin,
      destination,
      amountToSend: String(args.amount),
      sourceAsset: { code: args.assetCode || 'USD', scale: args.assetScale === undefined ? 2 : args.assetScale }
    }), args.timeoutMs, 'startQuote')
    const progress = await withTimeout(pay({ plugin, destination, quote }), args.timeoutMs, 'pay')
    result.amountSent = progress.amountSent.toString()
    result.amountDelivered = progress.amountDelivered.toString()
    if (progress.error) result.error = String(progress.error)
  } catch (error) {
    // @interledger/pay rejects with a PaymentError string, or a progress object carrying one.
    if (error && typeof error === 'object' && 'amountSent' in error) {
      result.amountSent = error.amountSent.toString()
      result.amountDelivered = error.amountDelivered.toString()
      result.error = String(error.error)
    } else {
      result.error = String(error && error.message ? error.message : error)
    }
  }
  if (destination) {
    try {
      await withTimeout(closeConnection(plugin, destination), 2000, 'closeConnection')
    } catch (_) {}
  }
  return result
}

async function main () {
  let args
  try {
    args = JSON.parse(process.argv[2])
    for (const key of ['mode', 'url', 'token', 'ilpAddress', 'sharedSecret', 'amount']) {
      if (args[key] === undefined) throw new Error(`missing ${key}`)
    }
  } catch (error) {
    output({ fatal: `bad argument: ${error.message}` })
    process.exit(2)
  }
  args.timeoutMs = args.timeoutMs || 10000
  const plugin = new PluginHttp({
    incoming: { port: 0, staticToken: 'opay-interop-unused' }, // the plugin always listens; nothing calls it
    outgoing: { url: args.url, staticToken: args.token }
  })
  await plugin.connect()
  let result
  if (args.mode === 'stream') result = await viaStream(plugin, args)
  else if (args.mode === 'pay') result = await viaPay(plugin, args)
  else {
    output({ fatal: `unknown mode ${args.mode}` })
    process.exit(2)
  }
  output(result)
  await plugin.disconnect()
  process.exit(0)
}

main().catch((error) => {
  output({ fatal: String(error && error.stack ? error.stack : error) })
  process.exit(2)
})
