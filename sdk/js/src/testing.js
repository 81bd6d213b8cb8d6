// Native given/when/then tests of plugin logic, without wasm or a host.
//
// The harnesses call the very adapters a component exports
// (`createAggregateExports`, `createProjectionExports`) with WIT-shaped
// values (Uint8Array payloads, BigInt positions), so a native test checks
// what the host will see: the JSON encoding, the command schemas and their
// messages, the failure mapping.
//
//   import { aggregateTest } from '.../sdk/js/src/testing.js';
//   const outcome = aggregateTest(bankAccount)
//     .given([{ type: 'Opened', data: { owner: 'Ann', overdraft_limit: 0 } }])
//     .when('Withdraw', { amount: 5 });
//   assert.equal(outcome.rejected.code, 'insufficient_funds');

import { EMPTY_BYTES, decodeJsonBytes, encodeJson, textOf, utf8 } from './json.js';
import {
  EVENT_SCHEMA,
  compareKeys,
  createAggregateExports,
  createProjectionExports,
  setLogSink,
} from './kiln.js';

const DEFAULT_ISSUED_AT_MS = 1_700_000_000_000;

/** WIT `event` records for `events` ({ type, data, schema? }) of a stream. */
function witEvents(streamId, events, firstVersion, firstPosition) {
  return events.map((event, index) => ({
    position: BigInt(firstPosition + index),
    streamId,
    version: BigInt(firstVersion + index),
    eventType: event.type,
    schema: event.schema ?? EVENT_SCHEMA,
    data: event.data === undefined ? utf8('{}') : utf8(encodeJson(event.data)),
    metadata: utf8(encodeJson(event.metadata ?? {})),
    recordedAtMs: BigInt(DEFAULT_ISSUED_AT_MS),
  }));
}

/**
 * A harness for an aggregate definition.
 *
 * `.given(events, { streamId })` folds prior events (`{ type, data }`) into
 * the state; `.when(type, data, options)` sends a command whose payload is
 * `data` encoded as JSON (`undefined`: no data at all), `.whenJson(type,
 * text, options)` one whose payload is `text` as is. Options: `metadata`,
 * `issuedAtMs`.
 *
 * The outcome: `events` (what `handle` returned, `{ type, schema, data }`,
 * decoded back from JSON), `rejected` (`{ code, message }` or null),
 * `invalid` (the message or null), `state` (after the new events),
 * `stateJson` (its encoding, `''` for the initial state), `logs` (`[{ level, message }]`). An error that
 * would trap in a component is thrown (after its log line is recorded on
 * the error as `error.kilnLogs`).
 */
export function aggregateTest(definition) {
  const exports = createAggregateExports(definition);
  // Empty state bytes stand for the initial state, as in a component.
  const initial = () =>
    typeof definition.initialState === 'function'
      ? definition.initialState()
      : JSON.parse(encodeJson(definition.initialState));
  return {
    given(events = [], { streamId = 'test-1' } = {}) {
      return scenario(exports, initial, streamId, events);
    },
  };
}

function scenario(exports, initial, streamId, given) {
  const prior = witEvents(streamId, given, 1, 1);
  const stateBytes = callRecording(() => exports.apply(EMPTY_BYTES, prior)).value;
  const decode = (bytes) => (bytes.length === 0 ? initial() : decodeJsonBytes(bytes));

  function send(type, dataBytes, { metadata = {}, issuedAtMs = DEFAULT_ISSUED_AT_MS } = {}) {
    const command = {
      commandType: type,
      data: dataBytes,
      metadata: utf8(encodeJson(metadata)),
      streamId,
      issuedAtMs: BigInt(issuedAtMs),
    };
    const { value: result, lines } = callRecording(() => exports.handle(stateBytes, command));
    const outcome = {
      events: [],
      rejected: null,
      invalid: null,
      logs: lines,
      state: undefined,
      stateJson: undefined,
    };
    let after = stateBytes;
    if (result.tag === 'ok') {
      outcome.events = result.val.map((event) => ({
        type: event.eventType,
        schema: event.schema,
        data: decodeJsonBytes(event.data, {}),
      }));
      const produced = result.val.map((event, index) => ({
        position: BigInt(prior.length + index + 1),
        streamId,
        version: BigInt(prior.length + index + 1),
        eventType: event.eventType,
        schema: event.schema,
        data: event.data,
        metadata: command.metadata,
        recordedAtMs: command.issuedAtMs,
      }));
      after = callRecording(() => exports.apply(stateBytes, produced)).value;
    } else if (result.val.tag === 'rejected') {
      outcome.rejected = { code: result.val.val.code ?? null, message: result.val.val.message };
    } else {
      outcome.invalid = result.val.val;
    }
    outcome.stateJson = textOf(after);
    outcome.state = decode(after);
    return outcome;
  }

  return {
    /** The state after the given events, decoded. */
    get state() {
      return decode(stateBytes);
    },
    when(type, data, options) {
      return send(type, data === undefined ? EMPTY_BYTES : utf8(encodeJson(data)), options);
    },
    whenJson(type, text, options) {
      return send(type, utf8(text), options);
    },
  };
}

/**
 * Call `fn` with the log lines it writes recorded: `{ value, lines }`. An
 * error it throws carries its lines as `error.kilnLogs`.
 */
function callRecording(fn) {
  const lines = [];
  const previous = setLogSink((level, message) => lines.push({ level, message }));
  try {
    return { value: fn(), lines };
  } catch (error) {
    if (error !== null && typeof error === 'object') error.kilnLogs = lines;
    throw error;
  } finally {
    setLogSink(previous);
  }
}

/**
 * The host's `view` interface over a Map, for tests: string keys, byte
 * values, scans in UTF-8 key order. `calls` counts the calls by function,
 * `rows()` gives the rows decoded from JSON.
 */
export class MemoryView {
  constructor(rows = {}) {
    this.data = new Map();
    this.calls = { get: 0, put: 0, delete: 0, scan: 0 };
    for (const [key, value] of Object.entries(rows)) this.data.set(key, utf8(encodeJson(value)));
  }

  get(key) {
    this.calls.get += 1;
    return this.data.get(key);
  }

  put(key, value) {
    this.calls.put += 1;
    this.data.set(key, Uint8Array.from(value));
  }

  delete(key) {
    this.calls.delete += 1;
    this.data.delete(key);
  }

  scan(prefix, after, limit) {
    this.calls.scan += 1;
    return [...this.data.keys()]
      .filter((key) => key.startsWith(prefix) && (after === undefined || compareKeys(key, after) > 0))
      .sort(compareKeys)
      .slice(0, limit)
      .map((key) => [key, this.data.get(key)]);
  }

  /** Every row, decoded, as an object in key order. */
  rows() {
    const out = {};
    for (const key of [...this.data.keys()].sort(compareKeys)) {
      out[key] = decodeJsonBytes(this.data.get(key), null);
    }
    return out;
  }

  /** One row, decoded; undefined when there is none. */
  row(key) {
    const bytes = this.data.get(key);
    return bytes === undefined ? undefined : decodeJsonBytes(bytes, null);
  }
}

/**
 * A harness for a projection definition over a `MemoryView`.
 *
 * `.given(events)` runs one batch: events are `{ streamId, type, data,
 * metadata? }`, numbered in order (positions continue across batches,
 * versions count per stream). It returns `{ ok, error, logs }` (`error`:
 * the batch's `PluginError` message); an error that would trap is thrown.
 * `view` is the MemoryView, `subscriptions` the exported list.
 */
export function projectionTest(definition, { rows = {} } = {}) {
  const view = new MemoryView(rows);
  const exports = createProjectionExports(definition, view);
  let position = 0;
  const versions = new Map();
  return {
    view,
    subscriptions: exports.subscriptions(),
    given(events) {
      const batch = events.map((event) => {
        position += 1;
        const version = (versions.get(event.streamId) ?? 0) + 1;
        versions.set(event.streamId, version);
        return witEvents(event.streamId, [event], version, position)[0];
      });
      const { value: result, lines } = callRecording(() => exports.handleBatch(batch));
      return { ok: result.tag === 'ok', error: result.tag === 'err' ? result.val : null, logs: lines };
    },
  };
}
