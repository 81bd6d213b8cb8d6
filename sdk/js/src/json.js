// JSON between the WIT payloads (UTF-8 bytes) and JavaScript values.
//
// Two decoders:
//
// - `parseTree` reads untrusted text (command payloads) into a tree that
//   keeps what JavaScript's `JSON.parse` loses: whether a number was written
//   as an integer (`1`) or a float (`1.0`), integers beyond 2^53 exactly, and
//   duplicate keys. The schema layer (schema.js) decodes that tree with the
//   same rules and the same messages as the Rust SDK (serde_json), so a
//   JavaScript plugin answers `invalid` exactly like its Rust twin.
// - `decodeJsonText` reads trusted text (state, event payloads, view rows)
//   with the engine's own `JSON.parse`, and falls back to the tree only when
//   the text holds a long run of digits, so that integers beyond 2^53 come
//   back exact, as BigInt.
//
// Integers follow one rule everywhere: a Number when it is a safe integer
// (|n| <= 2^53 - 1), a BigInt otherwise. `encodeJson` writes BigInt values
// as plain JSON integers.

const encoder = new TextEncoder();
const lenientDecoder = new TextDecoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

/** The empty byte list: the initial state, and a command without data. */
export const EMPTY_BYTES = new Uint8Array(0);

/** The largest and smallest signed 64-bit integers, as BigInt. */
export const I64_MAX = 9223372036854775807n;
export const I64_MIN = -9223372036854775808n;
/** The largest unsigned 64-bit integer, as BigInt. */
export const U64_MAX = 18446744073709551615n;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE = -MAX_SAFE;

/** serde_json's limit on nesting (see `enter`). */
const RECURSION_LIMIT = 128;

/**
 * An integer as the SDK hands it out: a Number when it is safe, the BigInt
 * otherwise. Numbers are returned unchanged.
 */
export function compactInt(value) {
  if (typeof value === 'bigint' && value >= MIN_SAFE && value <= MAX_SAFE) {
    return Number(value);
  }
  return value;
}

/** A JSON object in a parse tree: its entries in document order. */
export class JsonMap {
  constructor(entries) {
    this.entries = entries;
  }
}

/**
 * A number in a parse tree, classified as serde_json does: `u64` and `i64`
 * hold a BigInt, `f64` a Number. An integer token that fits in neither
 * 64-bit type, and `-0`, are `f64`.
 */
export class JsonNumber {
  constructor(kind, value) {
    this.kind = kind;
    this.value = value;
  }
}

/** The text of a JSON syntax error, serde_json's wording. */
export class JsonSyntaxError extends Error {
  constructor(message) {
    super(message);
    this.name = 'JsonSyntaxError';
  }
}

/** UTF-8 bytes of `text`. */
export function utf8(text) {
  return encoder.encode(text);
}

/** `bytes` as text; `strict` refuses invalid UTF-8 instead of replacing it. */
export function textOf(bytes, strict = false) {
  if (bytes.length === 0) return '';
  if (!strict) return lenientDecoder.decode(bytes);
  try {
    return strictDecoder.decode(bytes);
  } catch {
    throw new JsonSyntaxError('invalid UTF-8');
  }
}

// ---------------------------------------------------------------------------
// The exact parser.

/**
 * Parse `text` (one JSON value, surrounding whitespace allowed) into a tree:
 * strings, booleans and null as themselves, arrays as arrays of nodes,
 * objects as `JsonMap`, numbers as `JsonNumber`.
 *
 * Errors are `JsonSyntaxError` with serde_json's messages, e.g. `expected
 * value at line 1 column 1`. Columns count UTF-16 code units, not bytes, so
 * they differ from serde_json's after a non-ASCII character.
 */
export function parseTree(text) {
  const parser = new Parser(text);
  parser.skipWhitespace();
  const value = parser.value(0);
  parser.skipWhitespace();
  if (parser.i < text.length) parser.fail('trailing characters', parser.i);
  return value;
}

class Parser {
  constructor(text) {
    this.text = text;
    this.i = 0;
  }

  // serde_json reports the position of the offending character; at the end
  // of the input, the position of the last character.
  fail(message, at) {
    const index = Math.min(at, this.text.length - 1);
    let line = 1;
    let lineStart = 0;
    for (let k = 0; k < index; k += 1) {
      if (this.text.charCodeAt(k) === 10) {
        line += 1;
        lineStart = k + 1;
      }
    }
    const column = index < 0 ? 0 : index - lineStart + 1;
    throw new JsonSyntaxError(`${message} at line ${line} column ${column}`);
  }

  eof(what) {
    this.fail(`EOF while parsing ${what}`, this.text.length);
  }

  skipWhitespace() {
    const { text } = this;
    while (this.i < text.length) {
      const c = text.charCodeAt(this.i);
      if (c !== 32 && c !== 9 && c !== 10 && c !== 13) break;
      this.i += 1;
    }
  }

  value(depth) {
    const { text } = this;
    if (this.i >= text.length) this.eof('a value');
    const c = text[this.i];
    switch (c) {
      case '{':
        return this.object(depth + 1);
      case '[':
        return this.array(depth + 1);
      case '"':
        return this.string();
      case 't':
        return this.ident('true', true);
      case 'f':
        return this.ident('false', false);
      case 'n':
        return this.ident('null', null);
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number();
        return this.fail('expected value', this.i);
    }
  }

  ident(word, result) {
    for (let k = 1; k < word.length; k += 1) {
      const at = this.i + k;
      if (at >= this.text.length) this.eof('a value');
      if (this.text[at] !== word[k]) this.fail('expected ident', at);
    }
    this.i += word.length;
    return result;
  }

  // serde_json allows 127 nested containers and reports the 128th opening.
  enter(depth) {
    if (depth >= RECURSION_LIMIT) this.fail('recursion limit exceeded', this.i);
  }

  array(depth) {
    this.enter(depth);
    const items = [];
    this.i += 1;
    this.skipWhitespace();
    if (this.text[this.i] === ']') {
      this.i += 1;
      return items;
    }
    for (;;) {
      items.push(this.value(depth));
      this.skipWhitespace();
      if (this.i >= this.text.length) this.eof('a list');
      const c = this.text[this.i];
      if (c === ']') {
        this.i += 1;
        return items;
      }
      if (c !== ',') this.fail('expected `,` or `]`', this.i);
      this.i += 1;
      this.skipWhitespace();
      if (this.text[this.i] === ']') this.fail('trailing comma', this.i);
    }
  }

  object(depth) {
    this.enter(depth);
    const entries = [];
    this.i += 1;
    this.skipWhitespace();
    if (this.text[this.i] === '}') {
      this.i += 1;
      return new JsonMap(entries);
    }
    for (;;) {
      if (this.i >= this.text.length) this.eof('an object');
      if (this.text[this.i] !== '"') this.fail('key must be a string', this.i);
      const key = this.string();
      this.skipWhitespace();
      if (this.i >= this.text.length) this.eof('an object');
      if (this.text[this.i] !== ':') this.fail('expected `:`', this.i);
      this.i += 1;
      this.skipWhitespace();
      entries.push([key, this.value(depth)]);
      this.skipWhitespace();
      if (this.i >= this.text.length) this.eof('an object');
      const c = this.text[this.i];
      if (c === '}') {
        this.i += 1;
        return new JsonMap(entries);
      }
      if (c !== ',') this.fail('expected `,` or `}`', this.i);
      this.i += 1;
      this.skipWhitespace();
      if (this.text[this.i] === '}') this.fail('trailing comma', this.i);
    }
  }

  string() {
    const { text } = this;
    let i = this.i + 1;
    let out = '';
    let runStart = i;
    for (;;) {
      if (i >= text.length) {
        this.i = i;
        this.eof('a string');
      }
      const c = text.charCodeAt(i);
      if (c === 34) {
        out += text.slice(runStart, i);
        this.i = i + 1;
        return out;
      }
      if (c < 0x20) {
        this.fail('control character (\\u0000-\\u001F) found while parsing a string', i);
      }
      if (c !== 92) {
        i += 1;
        continue;
      }
      out += text.slice(runStart, i);
      i += 1;
      if (i >= text.length) {
        this.i = i;
        this.eof('a string');
      }
      const escape = text[i];
      const simple = SIMPLE_ESCAPES[escape];
      if (simple !== undefined) {
        out += simple;
        i += 1;
      } else if (escape === 'u') {
        const hex = text.slice(i + 1, i + 5);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
          if (i + 5 > text.length) {
            this.i = text.length;
            this.eof('a string');
          }
          this.fail('invalid escape', i + 1);
        }
        out += String.fromCharCode(parseInt(hex, 16));
        i += 5;
      } else {
        this.fail('invalid escape', i);
      }
      runStart = i;
    }
  }

  number() {
    const { text } = this;
    const start = this.i;
    let i = start;
    if (text[i] === '-') {
      i += 1;
      if (i >= text.length) this.eof('a value');
    }
    const digit = (at) => at < text.length && text[at] >= '0' && text[at] <= '9';
    if (text[i] === '0') {
      i += 1;
      if (digit(i)) this.fail('invalid number', i);
    } else if (digit(i)) {
      while (digit(i)) i += 1;
    } else {
      this.fail('invalid number', i);
    }
    let float = false;
    if (text[i] === '.') {
      float = true;
      i += 1;
      if (!digit(i)) {
        if (i >= text.length) this.eof('a value');
        this.fail('invalid number', i);
      }
      while (digit(i)) i += 1;
    }
    if (text[i] === 'e' || text[i] === 'E') {
      float = true;
      i += 1;
      if (text[i] === '+' || text[i] === '-') i += 1;
      if (!digit(i)) {
        if (i >= text.length) this.eof('a value');
        this.fail('invalid number', i);
      }
      while (digit(i)) i += 1;
    }
    this.i = i;
    const token = text.slice(start, i);
    if (!float) {
      const value = BigInt(token);
      if (value >= 0n && !token.startsWith('-') && value <= U64_MAX) {
        return new JsonNumber('u64', value);
      }
      // serde_json: a negative integer is i64 when it fits; `-0` and
      // integers out of range become floats.
      if (token.startsWith('-') && value < 0n && value >= I64_MIN) {
        return new JsonNumber('i64', value);
      }
    }
    const value = Number(token);
    if (!Number.isFinite(value)) this.fail('number out of range', i - 1);
    return new JsonNumber('f64', value);
  }
}

const SIMPLE_ESCAPES = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
};

/**
 * The plain JavaScript value of a parse tree: objects, arrays, strings,
 * booleans, null, and numbers by the SDK's integer rule. A duplicate key
 * keeps its last value, as `JSON.parse` does.
 */
export function plainOf(node) {
  if (node === null || typeof node !== 'object') return node;
  if (node instanceof JsonNumber) {
    return node.kind === 'f64' ? node.value : compactInt(node.value);
  }
  if (Array.isArray(node)) return node.map(plainOf);
  const object = {};
  for (const [key, value] of node.entries) setProperty(object, key, plainOf(value));
  return object;
}

/** `object[key] = value`, also for the key `__proto__` (as `JSON.parse`). */
export function setProperty(object, key, value) {
  if (key === '__proto__') {
    Object.defineProperty(object, key, {
      value,
      writable: true,
      enumerable: true,
      configurable: true,
    });
  } else {
    object[key] = value;
  }
}

// ---------------------------------------------------------------------------
// Trusted decoding and encoding.

// A run of 16 digits may be an integer beyond 2^53 (or a float with many
// digits, or digits inside a string: the exact path is then merely slower).
const LONG_DIGITS = /\d{16}/;

/** Decode trusted JSON text by the SDK's integer rule. */
export function decodeJsonText(text) {
  if (LONG_DIGITS.test(text)) return plainOf(parseTree(text));
  return JSON.parse(text);
}

/** Decode trusted JSON bytes; `fallback` stands for empty bytes. */
export function decodeJsonBytes(bytes, fallback = undefined) {
  if (bytes.length === 0) return fallback;
  return decodeJsonText(textOf(bytes));
}

/**
 * JSON text of `value`, as `JSON.stringify` makes it, except that BigInt
 * values are written as integers. Throws a TypeError for `undefined`, a
 * function, a symbol, or a cycle.
 */
export function encodeJson(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (error) {
    // JSON.stringify refuses BigInt (and cycles): take the slow path, which
    // writes BigInt and names a cycle itself.
    if (!(error instanceof TypeError)) throw error;
    text = stringifyExact(value, '', new Set());
  }
  if (text === undefined) {
    throw new TypeError(`cannot encode ${describeValue(value)} as JSON`);
  }
  return text;
}

/** UTF-8 JSON bytes of `value` (see `encodeJson`). */
export function encodeJsonBytes(value) {
  return utf8(encodeJson(value));
}

// JSON.stringify's algorithm (SerializeJSONProperty), plus BigInt.
function stringifyExact(value, key, stack) {
  if (value !== null && (typeof value === 'object' || typeof value === 'bigint')) {
    if (typeof value.toJSON === 'function') value = value.toJSON(key);
  }
  if (value === null) return 'null';
  switch (typeof value) {
    case 'bigint':
      return value.toString();
    case 'number':
    case 'boolean':
    case 'string':
      return JSON.stringify(value);
    case 'object':
      break;
    default:
      return undefined; // undefined, function, symbol
  }
  if (value instanceof Number || value instanceof String || value instanceof Boolean) {
    return JSON.stringify(value);
  }
  if (stack.has(value)) throw new TypeError('cannot encode a cyclic structure as JSON');
  stack.add(value);
  let out;
  if (Array.isArray(value)) {
    const parts = [];
    for (let k = 0; k < value.length; k += 1) {
      parts.push(stringifyExact(value[k], String(k), stack) ?? 'null');
    }
    out = `[${parts.join(',')}]`;
  } else {
    const parts = [];
    for (const name of Object.keys(value)) {
      const text = stringifyExact(value[name], name, stack);
      if (text !== undefined) parts.push(`${JSON.stringify(name)}:${text}`);
    }
    out = `{${parts.join(',')}}`;
  }
  stack.delete(value);
  return out;
}

// ---------------------------------------------------------------------------
// serde's wording.

/**
 * A float as serde_json prints it in messages: the shortest digits that
 * read back the same, in fixed notation with a decimal point when the
 * decimal exponent is within -5..=15 (`1000.0`, `0.00001`), otherwise in
 * exponent notation (`1e-7`, `-9.223372036854776e+18`).
 */
export function formatFloat(x) {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const exponential = x.toExponential();
  const [mantissa, exponentText] = exponential.split('e');
  const exponent = Number(exponentText);
  if (exponent < -5 || exponent > 15) return exponential;
  const negative = mantissa.startsWith('-');
  const digits = mantissa.replace('-', '').replace('.', '');
  let fixed;
  if (exponent >= 0) {
    fixed =
      digits.length <= exponent + 1
        ? `${digits}${'0'.repeat(exponent + 1 - digits.length)}.0`
        : `${digits.slice(0, exponent + 1)}.${digits.slice(exponent + 1)}`;
  } else {
    fixed = `0.${'0'.repeat(-exponent - 1)}${digits}`;
  }
  return negative ? `-${fixed}` : fixed;
}

/**
 * A string as Rust's `{:?}` prints it: quoted, with `\"`, `\\`, `\n`, `\r`,
 * `\t`, `\0` and other control characters as `\u{..}`. (Rust also escapes
 * some non-printable Unicode characters that this leaves as they are.)
 */
export function debugString(text) {
  let out = '"';
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c === 0) out += '\\0';
    else if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return `${out}"`;
}

/** A parse-tree node as serde_json names it in "invalid type: X, expected Y". */
export function unexpected(node) {
  if (node === null) return 'null';
  if (typeof node === 'boolean') return `boolean \`${node}\``;
  if (typeof node === 'string') return `string ${debugString(node)}`;
  if (Array.isArray(node)) return 'sequence';
  if (node instanceof JsonMap) return 'map';
  if (node instanceof JsonNumber) {
    return node.kind === 'f64'
      ? `floating point \`${formatFloat(node.value)}\``
      : `integer \`${node.value}\``;
  }
  return String(node);
}

/** A short description of any value, for error messages. */
export function describeValue(value) {
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return 'a symbol';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'no prototype'})`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`;
  return `the ${typeof value} ${String(value)}`;
}
