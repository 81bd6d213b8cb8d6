// The component side of a projection: connects the SDK to the host's
// `kiln:plugin/log` and `kiln:plugin/view` imports. Only a component entry
// imports this module; plugin logic imports `kiln.js`, and tests use
// `testing.js`.
//
//   import { defineProjection } from '.../sdk/js/src/projection.js';
//   import { balances } from './balances.js';
//   export const { subscriptions, handleBatch } = defineProjection(balances);
//
// The build (build.mjs) adds the WIT package's version to the specifiers
// below, so the SDK does not repeat it.

import { log } from 'kiln:plugin/log';
import * as view from 'kiln:plugin/view';

import { createProjectionExports, setLogSink } from './kiln.js';

setLogSink(log);

/**
 * The `projection` world's exports (`subscriptions`, `handleBatch`) for a
 * projection definition (see `createProjectionExports` in kiln.js).
 */
export function defineProjection(definition) {
  return createProjectionExports(definition, view);
}

export * from './kiln.js';
