#!/usr/bin/env node
// A STREAM receiver written by others, behind synchronous ILP-over-HTTP, for opay's sender.
//
//   node receive.js '{"mode":"stream"|"stateless","token":"...","receiveMax":"1000",
//                     "assetCode":"USD","assetScale":2}'
//
//   stream:    ilp-protocol-stream's createServer over ilp-plugin-http (its own listener)
//   stateless: @interledger/stream-receiver's StreamServer behind a small Node HTTP peer
//
// Prints one JSON line when ready: {"url","ilpAddress","sharedSecret"(base64url)}.
// Then for every line read on stdin it prints one JSON report line:
//   {"totalReceived": "<sum of what it accepted>", "fulfilled": n, "rejected": n}
// and exits 0 when stdin closes. A failure of the script itself exits 2 with {"fatal"}.
'use strict'

const http = require('http')
const crypto = require('crypto')
const readline = require('readline')

function output (result) {
  process.stdout.write(JSON.stringify(result) + '\n')
}

function b64url (buffer) {
  return buffer.toString('base64').replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

const totals = { received: 0n, fulfilled: 0, rejected: 0 }

function report () {
  output({ totalReceived: totals.received.toString(), fulfilled: totals.fulfilled, rejected: totals.rejected })
}

async function viaStream (args) {
  const PluginHttp = require('ilp-plugin-http')
  const ILDCP = require('ilp-protocol-ildcp')
  const IlpPacket = require('ilp-packet')
  const { createServer } = require('ilp-protocol-stream')
  const plugin = new PluginHttp({
    incoming: { port: 0, staticToken: args.token },
    outgoing: { url: 'http://127.0.0.1:9/unused', staticToken: 'unused' } // the server never sends
  })
  // No upstream connector: this peer answers IL-DCP itself with the receiver's address.
  const sendData = plugin.sendData.bind(plugin)
  plugin.sendData = async (data) => {
    const prepare = IlpPacket.deserializeIlpPrepare(data)
    if (prepare.destination === 'peer.config') {
      return ILDCP.serializeIldcpResponse({ clientAddress: args.address, assetScale: args.assetScale, assetCode: args.assetCode })
    }
    return sendData(data)
  }
  const server = await createServer({ plugin })
  const connections = []
  server.on('connection', (connection) => {
    connections.push(connection)
    connection.on('stream', (stream) => {
      stream.setReceiveMax(args.receiveMax)
      stream.on('money', (amount) => {
        totals.received += BigInt(amount)
        totals.fulfilled += 1
      })
    })
  })
  const { destinationAccount, sharedSecret } = server.generateAddressAndSecret()
  const port = plugin._httpServer.address().port
  return { url: `http://127.0.0.1:${port}/`, ilpAddress: destinationAccount, sharedSecret: b64url(sharedSecret) }
}

async function viaStateless (args) {
  const { StreamServer } = require('@interledger/stream-receiver')
  const IlpPacket = require('ilp-packet')
  const server = new StreamServer({ serverSecret: crypto.randomBytes(32), serverAddress: args.address })
  const credentials = server.generateCredentials({ paymentTag: 'opay-interop', asset: { code: args.assetCode, scale: args.assetScale } })
  const receiveMax = BigInt(args.receiveMax)
  const httpServer = http.createServer((req, res) => {
    if (req.method !== 'POST' || req.headers.authorization !== `Bearer ${args.token}`) {
      res.writeHead(401).end()
      return
    }
    const chunks = []
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', () => {
      let reply
      try {
        const prepare = IlpPacket.deserializeIlpPrepare(Buffer.concat(chunks))
        const money = server.createReply(prepare)
        if (IlpPacket.isFulfill(money) || IlpPacket.isReject(money)) {
          reply = money
          totals.rejected += IlpPacket.isReject(money) ? 1 : 0
        } else if (totals.received + BigInt(prepare.amount) > receiveMax) {
          // The receiver's own cap, the way Rafiki's would refuse: a final decline.
          reply = money.finalDecline()
          totals.rejected += 1
        } else {
          totals.received += BigInt(prepare.amount)
          totals.fulfilled += 1
          money.setTotalReceived(totals.received.toString())
          reply = money.accept()
        }
      } catch (error) {
        reply = { code: 'F01', triggeredBy: args.address, message: String(error.message), data: Buffer.alloc(0) }
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(IlpPacket.serializeIlpReply(reply))
    })
  })
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${httpServer.address().port}/`, ilpAddress: credentials.ilpAddress, sharedSecret: b64url(credentials.sharedSecret) }
}

async function main () {
  let args
  try {
    args = JSON.parse(process.argv[2])
    if (!['stream', 'stateless'].includes(args.mode)) throw new Error(`unknown mode ${args.mode}`)
    if (!args.token) throw new Error('missing token')
  } catch (error) {
    output({ fatal: `bad argument: ${error.message}` })
    process.exit(2)
  }
  args.receiveMax = String(args.receiveMax || '18446744073709551615')
  args.assetCode = args.assetCode || 'USD'
  args.assetScale = args.assetScale === undefined ? 2 : args.assetScale
  args.address = args.address || 'test.node'
  const ready = args.mode === 'stream' ? await viaStream(args) : await viaStateless(args)
  output(ready)
  const lines = readline.createInterface({ input: process.stdin })
  lines.on('line', report)
  lines.on('close', () => process.exit(0))
}

main().catch((error) => {
  output({ fatal: String(error && error.stack ? error.stack : error) })
  process.exit(2)
})
