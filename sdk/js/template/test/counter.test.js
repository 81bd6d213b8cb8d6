// The counter natively, with node's test runner (`npm test`).
import assert from 'node:assert/strict';
import { it } from 'node:test';

import { aggregateTest } from 'kiln-sdk/testing';

import { counter } from '../src/counter.js';

const test = aggregateTest(counter);

it('increments', () => {
  const outcome = test.given([{ type: 'Incremented', data: { by: 2 } }]).when('Increment', { by: 3 });
  assert.deepEqual(outcome.events, [{ type: 'Incremented', schema: 1, data: { by: 3 } }]);
  assert.deepEqual(outcome.state, { value: 5 });
});

it('refuses to go above ten', () => {
  const outcome = test.given([{ type: 'Incremented', data: { by: 8 } }]).when('Increment', { by: 3 });
  assert.deepEqual(outcome.rejected, { code: 'limit', message: 'the counter cannot exceed 10' });
});
