// What both SDK drivers share: one JSON line per step, and on the first failure one line
// naming the step (with the SDK's error details) and exit code 1.

import assert from 'node:assert/strict'
import { OpenPaymentsClientError } from '@interledger/open-payments'

let currentStep = 'setup'

export function readConfig(fields) {
  const config = JSON.parse(process.argv[2] ?? '')
  for (const field of fields) {
    assert.ok(config[field], `config.${field} is required`)
  }
  return config
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
