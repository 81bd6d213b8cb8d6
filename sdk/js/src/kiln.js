// Write Kiln plugins in JavaScript: the pure part of the SDK.
//
// This module imports nothing from the host, so it loads in Node as well as
// in a component: plugin logic imports it, and native tests (node:test) run
// that logic through the same adapters the component uses. The modules
// `aggregate.js` and `projection.js` connect the adapters to the host's WIT
// imports; only a component entry imports them.
//
// The WIT contract (wit/, package kiln:plugin) and the Rust SDK
// (sdk/rust) define the model; see README.md for the author's view.

import {
  EMPTY_BYTES,
  JsonMap,
  JsonSyntaxError,
  compactInt,
  decodeJsonBytes,
  decodeJsonText,
  describeValue,
  encodeJson,
  parseTree,
  plainOf,
  textOf,
  utf8,
} from './json.js';
import { SchemaError, Type, decodeWith } from './schema.js';

export { s, Type } from './schema.js';
export {
  I64_MAX,
  I64_MIN,
  U64_MAX,
  compactInt,
  decodeJsonBytes,
  encodeJson,
  encodeJsonBytes,
} from './json.js';

/** The schema version the SDK writes on an event that names none. */
export const EVENT_SCHEMA = 1;

// ---------------------------------------------------------------------------
// Failures.

// A brand, so that a failure is recognised even if two copies of this
// module were loaded.
const FAILURE = Symbol.for('kiln.sdk.failure');

/**
 * A business rule refused the command: the host answers HTTP 422
 * `rejected` with `message`, shown to the client as is.
 *
 * `new Rejected(message)` or `new Rejected(message, code)`, where `code` is
 * a machine-readable reason such as `"insufficient_funds"`: the message
 * first, then the optional code, as in every SDK (Python
 * `Rejected(message, code=...)`, Rust
 * `Failure::rejected(message).with_code(code)`).
 */
export class Rejected extends Error {
  constructor(message, code = null) {
    super(String(message));
    this.name = 'Rejected';
    /** @type {string | null} */
    this.code = code == null ? null : String(code);
    this[FAILURE] = 'rejected';
  }
}

/**
 * The plugin cannot understand the command (unknown type, missing or
 * mistyped field, out-of-range value): HTTP 400 `invalid_command`.
 */
export class Invalid extends Error {
  constructor(message) {
    super(String(message));
    this.name = 'Invalid';
    this[FAILURE] = 'invalid';
  }
}

/**
 * An expected error of a projection's batch: the `result` error string the
 * world returns (the projection stops until an operator acts). Anything
 * else thrown by a projection is a bug, and traps.
 */
export class PluginError extends Error {
  constructor(message) {
    super(String(message));
    this.name = 'PluginError';
    this[FAILURE] = 'plugin-error';
  }
}

function failureKind(error) {
  return error !== null && typeof error === 'object' ? error[FAILURE] : undefined;
}

// ---------------------------------------------------------------------------
// Logging.

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

// Outside a component, and until a component module installs the host's
// `log`, warnings and errors go to stderr and the rest nowhere.
function nativeSink(level, message) {
  if (level === 'warn' || level === 'error') console.error(`[${level}] ${message}`);
}

let sink = nativeSink;

/**
 * Where `log` writes: `fn(level, message)` with level one of `trace`,
 * `debug`, `info`, `warn`, `error`. The component modules install the
 * host's `kiln:plugin/log`; tests may install a recorder. Returns the
 * previous sink; `null` restores the native one.
 */
export function setLogSink(fn) {
  const previous = sink;
  sink = fn ?? nativeSink;
  return previous;
}

/**
 * Log through the host's tracing, tagged with the plugin's name. Logging
 * never fails and never changes a decision.
 */
export const log = Object.freeze(
  Object.fromEntries(LEVELS.map((level) => [level, (message) => emit(level, message)])),
);

function emit(level, message) {
  try {
    sink(level, String(message));
  } catch {
    // A log line is never worth failing a call for.
  }
}

// What the host keeps of the last error-level line (it puts it into the
// trap's message); the SDK cuts its own line a little below that.
const TRAP_LOG_MAX = 2000;

/**
 * Log `error`, which escaped `where`, at level error (the host puts the
 * last error line into the trap it reports: with WASI stdio disabled,
 * nothing else of a JavaScript error reaches it), and return the Error
 * to rethrow, which traps the call.
 */
function trapWith(where, error) {
  const err =
    error instanceof Error ? error : new Error(`a non-Error value was thrown: ${describeThrown(error)}`);
  let line = `${where} failed: ${err.name}: ${err.message}`;
  if (typeof err.stack === 'string' && err.stack.trim() !== '') {
    line += `\n${err.stack.trim()}`;
  }
  if (line.length > TRAP_LOG_MAX) line = `${line.slice(0, TRAP_LOG_MAX)}…`;
  emit('error', line);
  return err;
}

function describeThrown(value) {
  if (typeof value === 'string') return JSON.stringify(value);
  try {
    return `${describeValue(value)} ${encodeJson(value)}`;
  } catch {
    return describeValue(value);
  }
}

// ---------------------------------------------------------------------------
// Aggregates.

/**
 * The aggregate's definition, as an author writes it:
 *
 * - `initialState`: the state of a stream with no event yet; a JSON value,
 *   or a function returning a fresh one.
 * - `commands` (optional): `{ CommandType: s.struct({...}), ... }`. With it,
 *   the SDK refuses unknown command types and decodes each payload with its
 *   schema (serde's rules and messages) before `handle` runs. Without it,
 *   `handle` sees every command with its payload as plain JSON.
 * - `allowUnknownCommandFields` (optional, default `false`): with `commands`,
 *   a payload field that its schema does not name, at any depth, is
 *   `invalid` ("command `Deposit`: unknown field `amuont`"), so that a
 *   client's misspelled field is not silently dropped; `true` ignores such
 *   fields, serde's default. Events are never checked for unknown fields.
 * - `handle(state, command)`: the events to append: an array of
 *   `{ type, data, schema? }` (`[]`: success, nothing changes) or a single
 *   event; or throw `Rejected` / `Invalid`.
 *   `command` is `{ type, data, streamId, aggregateId, issuedAtMs, metadata }`.
 * - `apply(state, event)`: fold one committed event: return the new state,
 *   or change `state` in place and return nothing.
 *   `event` is `{ type, data, schema, streamId, version, position,
 *   recordedAtMs, metadata }`.
 *
 * Anything else `handle` or `apply` throws is a bug: the SDK logs it at
 * level error and the call traps.
 *
 * @typedef {object} AggregateDefinition
 */

/**
 * The `aggregate` world's exports for `definition`: `apply(state, events)`
 * and `handle(state, command)`, over the WIT types as componentize-js
 * passes them (Uint8Array payloads, BigInt u64/s64, camelCase records).
 * `aggregate.js` exports them from a component; tests call them directly.
 */
export function createAggregateExports(definition) {
  const aggregate = checkAggregate(definition);

  function decodeState(bytes) {
    if (bytes.length === 0) return aggregate.initialState();
    try {
      return decodeJsonText(textOf(bytes));
    } catch (error) {
      throw new Error(`kiln-sdk: cannot decode the state from ${bytes.length} bytes of JSON: ${error.message}`);
    }
  }

  function apply(stateBytes, events) {
    try {
      // An empty batch changes nothing, not even the encoding.
      if (events.length === 0) return stateBytes;
      let state = decodeState(stateBytes);
      for (const event of events) {
        const next = aggregate.apply(state, committedEvent(event));
        checkNotPromise(next, 'apply');
        if (next !== undefined) state = next;
      }
      return utf8(encodeJson(state));
    } catch (error) {
      throw trapWith('apply', error);
    }
  }

  function handle(stateBytes, witCommand) {
    const type = witCommand.commandType;
    try {
      const data = aggregate.decodeCommand(type, witCommand.data);
      const state = decodeState(stateBytes);
      const command = commandOf(witCommand, type, data);
      const result = aggregate.handle(state, command);
      checkNotPromise(result, 'handle');
      return { tag: 'ok', val: encodeEvents(result) };
    } catch (error) {
      switch (failureKind(error)) {
        case 'rejected':
          return {
            tag: 'err',
            val: { tag: 'rejected', val: { code: error.code ?? undefined, message: error.message } },
          };
        case 'invalid':
          return { tag: 'err', val: { tag: 'invalid', val: error.message } };
        default:
          throw trapWith(`handle(${type})`, error);
      }
    }
  }

  return { apply, handle };
}

function checkAggregate(definition) {
  if (definition === null || typeof definition !== 'object') {
    throw new TypeError('an aggregate definition must be an object');
  }
  const { handle, apply, commands, allowUnknownCommandFields = false } = definition;
  if (typeof handle !== 'function') throw new TypeError('the aggregate has no `handle(state, command)` function');
  if (typeof apply !== 'function') throw new TypeError('the aggregate has no `apply(state, event)` function');
  const initial = definition.initialState;
  let initialState;
  if (typeof initial === 'function') {
    initialState = initial;
  } else if (initial === undefined) {
    throw new TypeError('the aggregate has no `initialState`');
  } else {
    // Each call gets its own copy, so that `apply` may change it in place.
    const text = encodeJson(initial);
    initialState = () => JSON.parse(text);
  }
  if (commands !== undefined) {
    if (commands === null || typeof commands !== 'object') {
      throw new TypeError('`commands` must map command types to schema types');
    }
    for (const [name, type] of Object.entries(commands)) {
      if (!(type instanceof Type)) throw new TypeError(`the schema of command \`${name}\` is not a schema type`);
    }
  }
  if (typeof allowUnknownCommandFields !== 'boolean') {
    throw new TypeError('`allowUnknownCommandFields` must be true or false');
  }
  const names = commands === undefined ? null : Object.keys(commands);
  return {
    initialState,
    handle: handle.bind(definition),
    apply: apply.bind(definition),
    decodeCommand: (type, bytes) =>
      decodeCommand(commands, names, type, bytes, allowUnknownCommandFields),
  };
}

/**
 * A command's payload, decoded. Empty or `null` data stands for "no
 * fields" (`{}`), as in the Rust SDK. Every failure is `Invalid` with the
 * message serde gives: "command `Open`: missing field `owner`".
 */
function decodeCommand(commands, names, type, bytes, allowUnknownFields) {
  const fail = (message) => new Invalid(`command \`${type}\`: ${message}`);
  let node;
  try {
    // Rust's `trim_ascii`: JavaScript's `trim` would also drop Unicode spaces.
    const text = textOf(bytes, true).replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, '');
    node = text === '' ? null : parseTree(text);
  } catch (error) {
    if (error instanceof JsonSyntaxError) throw fail(`data is not valid JSON: ${error.message}`);
    throw error;
  }
  if (node === null) node = new JsonMap([]);
  if (names === null) return plainOf(node);
  if (!Object.hasOwn(commands, type)) {
    throw fail(`unknown variant \`${type}\`, ${expectedVariants(names)}`);
  }
  try {
    return decodeWith(commands[type], node, {
      expecting: `struct variant Command::${type}`,
      allowUnknownFields,
    });
  } catch (error) {
    if (error instanceof SchemaError) throw fail(error.message);
    throw error;
  }
}

// serde's list of the variants it expected.
function expectedVariants(names) {
  const quoted = names.map((name) => `\`${name}\``);
  switch (quoted.length) {
    case 0:
      return 'there are no variants';
    case 1:
      return `expected ${quoted[0]}`;
    case 2:
      return `expected ${quoted[0]} or ${quoted[1]}`;
    default:
      return `expected one of ${quoted.join(', ')}`;
  }
}

/** `{category}-{id}` → `id` (empty when there is no `-`). */
export function aggregateIdOf(streamId) {
  const dash = streamId.indexOf('-');
  return dash < 0 ? '' : streamId.slice(dash + 1);
}

// The metadata is parsed only when read.
function lazyMetadata(target, bytes) {
  let cached;
  Object.defineProperty(target, 'metadata', {
    enumerable: true,
    get() {
      if (cached === undefined) {
        try {
          cached = decodeJsonBytes(bytes, {});
        } catch {
          cached = null;
        }
      }
      return cached;
    },
  });
  return target;
}

function commandOf(witCommand, type, data) {
  return lazyMetadata(
    {
      type,
      data,
      streamId: witCommand.streamId,
      aggregateId: aggregateIdOf(witCommand.streamId),
      issuedAtMs: compactInt(BigInt(witCommand.issuedAtMs)),
    },
    witCommand.metadata,
  );
}

function committedEvent(event) {
  let data;
  try {
    data = decodeJsonBytes(event.data, {});
  } catch (error) {
    throw new Error(
      `kiln-sdk: cannot decode the data of event \`${event.eventType}\` ` +
        `(${event.streamId} version ${event.version}) as JSON: ${error.message}`,
    );
  }
  return lazyMetadata(
    {
      type: event.eventType,
      data,
      schema: event.schema,
      streamId: event.streamId,
      version: compactInt(BigInt(event.version)),
      position: compactInt(BigInt(event.position)),
      recordedAtMs: compactInt(BigInt(event.recordedAtMs)),
    },
    event.metadata,
  );
}

function encodeEvents(result) {
  const list = Array.isArray(result) ? result : [result];
  return list.map((event, index) => {
    if (event === null || typeof event !== 'object' || typeof event.type !== 'string' || event.type === '') {
      throw new TypeError(
        `handle must return an event { type, data } or an array of them; item ${index} is ${describeValue(event)}`,
      );
    }
    const schema = event.schema ?? EVENT_SCHEMA;
    if (!Number.isInteger(schema) || schema < 0 || schema > 0xffffffff) {
      throw new TypeError(`event ${event.type}: schema must be an integer in 0..=4294967295, got ${schema}`);
    }
    return { eventType: event.type, schema, data: utf8(encodeJson(event.data ?? {})) };
  });
}

function checkNotPromise(value, what) {
  if (value !== null && typeof value === 'object' && typeof value.then === 'function') {
    throw new TypeError(`${what} must not be async: it returned a promise`);
  }
}

// ---------------------------------------------------------------------------
// Projections.

/**
 * A projection's read model, as its handlers see it: string keys, JSON
 * values, over the host's `kiln:plugin/view` (or, in tests, an in-memory
 * store with the same four functions).
 *
 * It reads through and writes back for one batch: the first `get` of a key
 * asks the store and later ones are answered from memory; `put` and
 * `delete` stay in memory until the batch has been handled, then each
 * changed key is written once, in key order (writing the value a key
 * already has is no change). `scan` first writes the pending changes, so a
 * projection always reads its own writes. When the batch fails nothing is
 * written (the host discards the batch's writes anyway).
 */
export class View {
  /**
   * @param {{get(key: string): Uint8Array | undefined, put(key: string, value: Uint8Array): void,
   *          delete(key: string): void, scan(prefix: string, after: string | undefined, limit: number):
   *          Array<[string, Uint8Array]>}} store
   */
  constructor(store) {
    this.store = store;
    // key -> { text: JSON text or null for no row, dirty }
    this.cache = new Map();
  }

  /** The value stored under `key`, decoded from JSON; `undefined` if none. */
  get(key) {
    const text = this.#read(key);
    if (text === null) return undefined;
    try {
      return decodeJsonText(text);
    } catch (error) {
      throw new PluginError(`the view row \`${key}\` is not JSON: ${error.message}`);
    }
  }

  /** Whether `key` has a row. */
  has(key) {
    return this.#read(key) !== null;
  }

  /** Store `value` (any JSON value; BigInt allowed) under `key`. */
  put(key, value) {
    this.#set(checkKey(key), encodeJson(value));
  }

  /** Remove `key`; removing a missing key is not an error. */
  delete(key) {
    this.#set(checkKey(key), null);
  }

  /**
   * Up to `limit` rows whose key starts with `prefix` and sorts after
   * `after`, in key order: `[{ key, value }]`. Pass the last key of a page
   * as `after` to get the next.
   */
  scan(prefix = '', { after, limit = 100 } = {}) {
    if (!Number.isInteger(limit) || limit < 0 || limit > 0xffffffff) {
      throw new TypeError(`scan limit must be an integer in 0..=4294967295, got ${limit}`);
    }
    this.flush();
    return this.store.scan(prefix, after ?? undefined, limit).map(([key, bytes]) => {
      try {
        return { key, value: decodeJsonBytes(bytes, null) };
      } catch (error) {
        throw new PluginError(`the view row \`${key}\` is not JSON: ${error.message}`);
      }
    });
  }

  /** Write every pending change to the store, in key order. */
  flush() {
    const dirty = [...this.cache.entries()].filter(([, slot]) => slot.dirty);
    dirty.sort(([a], [b]) => compareKeys(a, b));
    for (const [key, slot] of dirty) {
      if (slot.text === null) this.store.delete(key);
      else this.store.put(key, utf8(slot.text));
      slot.dirty = false;
    }
  }

  #read(key) {
    let slot = this.cache.get(key);
    if (slot === undefined) {
      const bytes = this.store.get(key);
      slot = { text: bytes === undefined || bytes === null ? null : textOf(bytes), dirty: false };
      this.cache.set(key, slot);
    }
    return slot.text;
  }

  #set(key, text) {
    const slot = this.cache.get(key);
    if (slot === undefined) this.cache.set(key, { text, dirty: true });
    else if (slot.text !== text) Object.assign(slot, { text, dirty: true });
  }
}

function checkKey(key) {
  if (typeof key !== 'string') throw new TypeError(`a view key must be a string, got ${describeValue(key)}`);
  return key;
}

/**
 * Order two keys as the host does: by their UTF-8 bytes, which is code
 * point order (JavaScript's `<` compares UTF-16 units, which differs above
 * U+FFFF).
 */
export function compareKeys(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 1) {
    const x = a.codePointAt(i);
    const y = b.codePointAt(i);
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i += 1;
  }
  return a.length - b.length;
}

/**
 * The projection's definition:
 *
 * - `subscriptions`: the event types it receives (`[]`: all).
 * - `handleBatch(events, view)` or `handle(event, view)`: write the read
 *   model through `view` (a `View`). `event` is `{ position, streamId,
 *   aggregateId, version, type, schema, data, metadata, recordedAtMs }`.
 *
 * Throwing `PluginError` fails the batch with its message; anything else
 * thrown is logged at level error and traps.
 *
 * @typedef {object} ProjectionDefinition
 */

/**
 * The `projection` world's exports for `definition`: `subscriptions()` and
 * `handleBatch(events)`, writing through `store` (the host's view
 * interface, or an in-memory one in tests).
 */
export function createProjectionExports(definition, store) {
  if (definition === null || typeof definition !== 'object') {
    throw new TypeError('a projection definition must be an object');
  }
  const subscriptions = definition.subscriptions ?? [];
  if (!Array.isArray(subscriptions) || !subscriptions.every((name) => typeof name === 'string')) {
    throw new TypeError('`subscriptions` must be an array of event types');
  }
  let run;
  if (typeof definition.handleBatch === 'function') {
    run = (events, view) => definition.handleBatch(events, view);
  } else if (typeof definition.handle === 'function') {
    run = (events, view) => {
      for (const event of events) checkNotPromise(definition.handle(event, view), 'handle');
    };
  } else {
    throw new TypeError('the projection has neither `handleBatch(events, view)` nor `handle(event, view)`');
  }
  const list = Object.freeze([...subscriptions]);

  function handleBatch(events) {
    try {
      const view = new View(store);
      checkNotPromise(run(events.map(envelope), view), 'handleBatch');
      view.flush();
      return { tag: 'ok', val: undefined };
    } catch (error) {
      if (failureKind(error) === 'plugin-error') return { tag: 'err', val: error.message };
      throw trapWith('handleBatch', error);
    }
  }

  return { subscriptions: () => [...list], handleBatch };
}

function envelope(event) {
  const decoded = committedEvent(event);
  decoded.aggregateId = aggregateIdOf(event.streamId);
  return decoded;
}
