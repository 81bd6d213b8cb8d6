// The aggregate adapter: what the component's `apply` and `handle` do with
// the WIT values, tested natively.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { EMPTY_BYTES, decodeJsonBytes, textOf, utf8 } from '../src/json.js';
import { Invalid, Rejected, createAggregateExports, s, setLogSink } from '../src/kiln.js';
import { aggregateTest } from '../src/testing.js';

/** A counter that refuses to go above 10. */
const counter = {
  initialState: { value: 0, seen: [] },
  commands: {
    Increment: s.struct({ by: s.u32() }),
    Reset: s.struct({}),
    Fail: s.struct({ how: s.string() }),
    Note: s.struct({}),
  },
  handle(state, command) {
    switch (command.type) {
      case 'Increment':
        if (command.data.by === 0) throw new Invalid('`by` must be positive');
        if (state.value + command.data.by > 10) throw new Rejected('the counter cannot exceed 10', 'limit');
        return [{ type: 'Incremented', data: { by: command.data.by } }];
      case 'Reset':
        if (state.value === 0) throw new Rejected('already zero');
        return { type: 'Reset' }; // a single event, without data
      case 'Note':
        // Everything handle sees of the command.
        return [
          {
            type: 'Noted',
            schema: 3,
            data: {
              streamId: command.streamId,
              aggregateId: command.aggregateId,
              issuedAtMs: command.issuedAtMs,
              metadata: command.metadata,
            },
          },
        ];
      case 'Fail':
        switch (command.data.how) {
          case 'error':
            throw new Error('boom');
          case 'type-error':
            return null.x;
          case 'string':
            throw 'a string';
          case 'bad-event':
            return [{ data: {} }];
          case 'async':
            return Promise.resolve([]);
          default:
            return [];
        }
      default:
        throw new Error('unreachable');
    }
  },
  apply(state, event) {
    state.seen.push(`${event.type}@${event.version}/${event.schema}`);
    if (event.type === 'Incremented') state.value += event.data.by;
    else if (event.type === 'Reset') state.value = 0;
  },
};

const witEvent = (type, data, version = 1) => ({
  position: BigInt(version),
  streamId: 'counter-1',
  version: BigInt(version),
  eventType: type,
  schema: 1,
  data: utf8(JSON.stringify(data)),
  metadata: utf8('{}'),
  recordedAtMs: 0n,
});

const witCommand = (type, data, extra = {}) => ({
  commandType: type,
  data: data === undefined ? EMPTY_BYTES : utf8(JSON.stringify(data)),
  metadata: utf8('{"correlation_id":"c1"}'),
  streamId: 'counter-42',
  issuedAtMs: 1700000000123n,
  ...extra,
});

/** Run `fn` with log lines recorded. */
function withLogs(fn) {
  const lines = [];
  const previous = setLogSink((level, message) => lines.push({ level, message }));
  try {
    return [fn(), lines];
  } finally {
    setLogSink(previous);
  }
}

describe('createAggregateExports', () => {
  const exports = createAggregateExports(counter);

  it('folds events into state; the empty state is the initial one', () => {
    const state = exports.apply(EMPTY_BYTES, [witEvent('Incremented', { by: 2 }, 1), witEvent('Incremented', { by: 3 }, 2)]);
    assert.ok(state instanceof Uint8Array);
    assert.equal(textOf(state), '{"value":5,"seen":["Incremented@1/1","Incremented@2/1"]}');
    // An empty batch returns the state bytes as they are, even empty ones.
    assert.equal(exports.apply(EMPTY_BYTES, []), EMPTY_BYTES);
    assert.equal(exports.apply(state, []), state);
    // The initial state is a fresh copy each time.
    exports.apply(EMPTY_BYTES, [witEvent('Reset', {})]);
    assert.equal(textOf(exports.apply(EMPTY_BYTES, [witEvent('Reset', {})])), '{"value":0,"seen":["Reset@1/1"]}');
  });

  it('decides events, encoded with schema 1 unless the plugin says otherwise', () => {
    const state = exports.apply(EMPTY_BYTES, [witEvent('Incremented', { by: 2 })]);
    const result = exports.handle(state, witCommand('Increment', { by: 4 }));
    assert.equal(result.tag, 'ok');
    assert.deepEqual(
      result.val.map((event) => [event.eventType, event.schema, textOf(event.data)]),
      [['Incremented', 1, '{"by":4}']],
    );
    const single = exports.handle(state, witCommand('Reset', undefined));
    assert.deepEqual(
      single.val.map((event) => [event.eventType, event.schema, textOf(event.data)]),
      [['Reset', 1, '{}']],
    );
  });

  it('hands the command context over as plain values', () => {
    const result = exports.handle(EMPTY_BYTES, witCommand('Note', {}));
    assert.equal(result.val[0].schema, 3);
    assert.deepEqual(decodeJsonBytes(result.val[0].data), {
      streamId: 'counter-42',
      aggregateId: '42',
      issuedAtMs: 1700000000123,
      metadata: { correlation_id: 'c1' },
    });
  });

  it('maps Rejected and Invalid onto the WIT failure', () => {
    const full = exports.apply(EMPTY_BYTES, [witEvent('Incremented', { by: 9 })]);
    assert.deepEqual(exports.handle(full, witCommand('Increment', { by: 2 })), {
      tag: 'err',
      val: { tag: 'rejected', val: { code: 'limit', message: 'the counter cannot exceed 10' } },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Reset', {})), {
      tag: 'err',
      val: { tag: 'rejected', val: { code: undefined, message: 'already zero' } },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', { by: 0 })), {
      tag: 'err',
      val: { tag: 'invalid', val: '`by` must be positive' },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', { by: -1 })), {
      tag: 'err',
      val: { tag: 'invalid', val: 'command `Increment`: invalid value: integer `-1`, expected u32' },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Nope', {})), {
      tag: 'err',
      val: {
        tag: 'invalid',
        val: 'command `Nope`: unknown variant `Nope`, expected one of `Increment`, `Reset`, `Fail`, `Note`',
      },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', undefined, { data: utf8('{"by": 1') })), {
      tag: 'err',
      val: { tag: 'invalid', val: 'command `Increment`: data is not valid JSON: EOF while parsing an object at line 1 column 8' },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', undefined, { data: Uint8Array.of(0xff) })), {
      tag: 'err',
      val: { tag: 'invalid', val: 'command `Increment`: data is not valid JSON: invalid UTF-8' },
    });
  });

  it("refuses a command's unknown fields unless the aggregate allows them", () => {
    const data = { by: 1, note: 'x' };
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', data)), {
      tag: 'err',
      val: { tag: 'invalid', val: 'command `Increment`: unknown field `note`' },
    });
    assert.deepEqual(exports.handle(EMPTY_BYTES, witCommand('Increment', { bye: 1 })), {
      tag: 'err',
      val: { tag: 'invalid', val: 'command `Increment`: unknown field `bye`' },
    });
    const lenient = createAggregateExports({ ...counter, allowUnknownCommandFields: true });
    const decided = lenient.handle(EMPTY_BYTES, witCommand('Increment', data));
    assert.equal(decided.tag, 'ok');
    assert.deepEqual(decodeJsonBytes(decided.val[0].data), { by: 1 });
    // Events are never checked for unknown fields.
    const state = exports.apply(EMPTY_BYTES, [witEvent('Incremented', { by: 2, added_later: true })]);
    assert.equal(decodeJsonBytes(state).value, 2);
  });

  it('logs any other error at level error, then rethrows it so that the call traps', () => {
    const [error, lines] = withLogs(() => {
      try {
        exports.handle(EMPTY_BYTES, witCommand('Fail', { how: 'error' }));
      } catch (caught) {
        return caught;
      }
      return null;
    });
    assert.ok(error instanceof Error);
    assert.equal(error.message, 'boom');
    assert.equal(lines.length, 1);
    assert.equal(lines[0].level, 'error');
    assert.match(lines[0].message, /^handle\(Fail\) failed: Error: boom\n/);
    assert.match(lines[0].message, /aggregate\.test\.js/); // the stack

    const cases = [
      ['type-error', TypeError, /handle\(Fail\) failed: TypeError: Cannot read properties of null/],
      ['string', Error, /handle\(Fail\) failed: Error: a non-Error value was thrown: "a string"/],
      ['bad-event', TypeError, /handle must return an event \{ type, data \} or an array of them; item 0/],
      ['async', TypeError, /handle must not be async: it returned a promise/],
    ];
    for (const [how, type, pattern] of cases) {
      const [, logged] = withLogs(() =>
        assert.throws(() => exports.handle(EMPTY_BYTES, witCommand('Fail', { how })), type, how),
      );
      assert.equal(logged.length, 1, how);
      assert.match(logged[0].message, pattern, how);
    }
  });

  it('traps in apply on an event it cannot decode, naming it', () => {
    const broken = { ...witEvent('Incremented', {}), data: utf8('{"by":') };
    const [, lines] = withLogs(() => assert.throws(() => exports.apply(EMPTY_BYTES, [broken]), /cannot decode the data of event `Incremented`/));
    assert.match(lines[0].message, /^apply failed: Error: kiln-sdk: cannot decode the data of event/);
    const badState = utf8('{"value":');
    withLogs(() => assert.throws(() => exports.apply(badState, [witEvent('Reset', {})]), /cannot decode the state from 9 bytes/));
  });

  it('checks the definition', () => {
    assert.throws(() => createAggregateExports({ apply() {}, initialState: {} }), /no `handle/);
    assert.throws(() => createAggregateExports({ handle() {}, initialState: {} }), /no `apply/);
    assert.throws(() => createAggregateExports({ handle() {}, apply() {} }), /no `initialState`/);
    assert.throws(
      () => createAggregateExports({ handle() {}, apply() {}, initialState: {}, commands: { A: {} } }),
      /the schema of command `A` is not a schema type/,
    );
    assert.throws(
      () => createAggregateExports({ handle() {}, apply() {}, initialState: {}, allowUnknownCommandFields: 'yes' }),
      /`allowUnknownCommandFields` must be true or false/,
    );
  });

  it('without command schemas, hands every command over as plain JSON', () => {
    const seen = [];
    const loose = createAggregateExports({
      initialState: () => ({}),
      handle(state, command) {
        seen.push([command.type, command.data]);
        return [];
      },
      apply: (state) => state,
    });
    assert.deepEqual(loose.handle(EMPTY_BYTES, witCommand('Anything', { a: [1, 2.5] })), { tag: 'ok', val: [] });
    loose.handle(EMPTY_BYTES, witCommand('Empty', undefined));
    loose.handle(EMPTY_BYTES, witCommand('Null', null));
    assert.deepEqual(seen, [
      ['Anything', { a: [1, 2.5] }],
      ['Empty', {}],
      ['Null', {}],
    ]);
  });
});

describe('aggregateTest', () => {
  it('runs given/when through the adapter', () => {
    const outcome = aggregateTest(counter)
      .given([{ type: 'Incremented', data: { by: 4 } }])
      .when('Increment', { by: 1 }, { metadata: { user: 'ann' } });
    assert.deepEqual(outcome.events, [{ type: 'Incremented', schema: 1, data: { by: 1 } }]);
    assert.deepEqual(outcome.state, { value: 5, seen: ['Incremented@1/1', 'Incremented@2/1'] });
    assert.equal(outcome.rejected, null);
    assert.equal(outcome.invalid, null);
    const rejected = aggregateTest(counter).given([]).when('Reset', {});
    assert.deepEqual(rejected.rejected, { code: null, message: 'already zero' });
    assert.deepEqual(rejected.state, { value: 0, seen: [] });
    assert.equal(rejected.stateJson, '');
    assert.throws(
      () => aggregateTest(counter).given([]).when('Fail', { how: 'error' }),
      (caught) => caught.message === 'boom' && caught.kilnLogs[0].level === 'error',
    );
  });
});
