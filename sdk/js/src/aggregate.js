// The component side of an aggregate: connects the SDK to the host's
// `kiln:plugin/log` import. Only a component entry imports this module (in
// Node the import `kiln:plugin/log` does not exist); plugin logic imports
// `kiln.js`, and tests use `testing.js`.
//
//   import { defineAggregate } from '.../sdk/js/src/aggregate.js';
//   import { bankAccount } from './bank_account.js';
//   export const { apply, handle } = defineAggregate(bankAccount);
//
// The build (build.mjs) adds the WIT package's version to the specifier
// below (`kiln:plugin/log@0.1.0`), so the SDK does not repeat it.

import { log } from 'kiln:plugin/log';

import { createAggregateExports, setLogSink } from './kiln.js';

setLogSink(log);

/**
 * The `aggregate` world's exports (`apply`, `handle`) for an aggregate
 * definition (see `createAggregateExports` in kiln.js).
 */
export function defineAggregate(definition) {
  return createAggregateExports(definition);
}

export * from './kiln.js';
