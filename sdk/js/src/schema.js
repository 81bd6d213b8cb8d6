// Typed decoding of command payloads, with serde's rules and messages.
//
// An aggregate lists its commands with a schema each:
//
//   commands: {
//     Open: s.struct({ owner: s.string(), overdraft_limit: s.i64().default(0) }),
//     Close: s.struct({}),
//   }
//
// The SDK decodes the payload of a command with its schema before `handle`
// sees it, and answers `invalid` for a payload that does not fit, with the
// message serde_json gives the Rust SDK for the same payload
// (`command `Open`: missing field `owner``), so a JavaScript plugin and its
// Rust twin agree to the letter. The rules are serde's defaults, but for
// unknown fields: a field a struct does not declare is refused, at any depth
// (`unknown field `amuont``, the Rust SDK's words: serde's without the list
// of expected fields), unless the aggregate sets
// `allowUnknownCommandFields: true`, which ignores them as serde does.
// `null` is not a missing field (only `option` accepts it), a duplicate field
// is an error, integers must be written as integers and fit their type. The
// first problem in document order is reported; a missing field is noticed
// at the end of its object.
//
// Integers come out by the SDK's rule: a Number when it is a safe integer,
// a BigInt otherwise (only possible for i64 and u64).

import {
  I64_MAX,
  I64_MIN,
  U64_MAX,
  JsonMap,
  JsonNumber,
  compactInt,
  formatFloat,
  plainOf,
  setProperty,
  unexpected,
} from './json.js';

/** A payload that does not fit its schema; the message is serde's. */
export class SchemaError extends Error {
  constructor(message) {
    super(message);
    this.name = 'SchemaError';
  }
}

function invalidType(node, expected) {
  return new SchemaError(`invalid type: ${unexpected(node)}, expected ${expected}`);
}

/**
 * A type of the schema language: decodes a parse-tree node (see json.js) or
 * throws a `SchemaError`. Build them with the functions of `s`.
 */
export class Type {
  /**
   * @param {string} expected what serde calls the type ("i64", "a string")
   * @param {(node: unknown, options: DecodeOptions, expecting?: string) => unknown} decode
   */
  constructor(expected, decode) {
    this.expected = expected;
    this.decodeNode = decode;
    // How a struct field of this type behaves when it is missing.
    this.missing = undefined;
  }

  /**
   * The same type, as a struct field that may be missing: then it takes
   * `value` (called, when it is a function, for a fresh value each time).
   * An explicit `null` is still decoded (and refused by most types).
   */
  default(value) {
    const copy = new Type(this.expected, this.decodeNode);
    copy.missing = { value };
    return copy;
  }
}

function integer(name, min, max) {
  return new Type(name, (node) => {
    if (!(node instanceof JsonNumber)) throw invalidType(node, name);
    if (node.kind === 'f64') {
      throw new SchemaError(
        `invalid type: floating point \`${formatFloat(node.value)}\`, expected ${name}`,
      );
    }
    if (node.value < min || node.value > max) {
      throw new SchemaError(`invalid value: integer \`${node.value}\`, expected ${name}`);
    }
    return compactInt(node.value);
  });
}

/** The schema language. */
export const s = {
  /** A JSON string. */
  string: () =>
    new Type('a string', (node) => {
      if (typeof node !== 'string') throw invalidType(node, 'a string');
      return node;
    }),

  /** `true` or `false`. */
  boolean: () =>
    new Type('a boolean', (node) => {
      if (typeof node !== 'boolean') throw invalidType(node, 'a boolean');
      return node;
    }),

  /** A signed 64-bit integer (Number when safe, else BigInt). */
  i64: () => integer('i64', I64_MIN, I64_MAX),
  /** An unsigned 64-bit integer (Number when safe, else BigInt). */
  u64: () => integer('u64', 0n, U64_MAX),
  /** A signed 32-bit integer, as a Number. */
  i32: () => integer('i32', -2147483648n, 2147483647n),
  /** An unsigned 32-bit integer, as a Number. */
  u32: () => integer('u32', 0n, 4294967295n),

  /** Any JSON number, as a Number (integers are accepted). */
  f64: () =>
    new Type('f64', (node) => {
      if (!(node instanceof JsonNumber)) throw invalidType(node, 'f64');
      return Number(node.value);
    }),

  /** Any JSON value, as plain JavaScript. */
  json: () => new Type('any valid JSON value', (node) => plainOf(node)),

  /** `null` or `inner`; a missing struct field is `null` too. */
  option: (inner) => {
    const type = new Type(inner.expected, (node, options) =>
      node === null ? null : inner.decodeNode(node, options),
    );
    type.missing = { value: null };
    return type;
  },

  /** A JSON array whose items are all `item`. */
  array: (item) =>
    new Type('a sequence', (node, options) => {
      if (!Array.isArray(node)) throw invalidType(node, 'a sequence');
      return node.map((element) => item.decodeNode(element, options));
    }),

  /**
   * A JSON object with the named fields, decoded into a plain object with
   * the fields in the order given. A field it does not name is refused
   * (`unknown field `x``), or ignored when the aggregate allows unknown
   * command fields; use `s.json()` for an object that takes any key.
   *
   * @param {Record<string, Type>} fields
   * @param {string} [name] the name in "expected struct NAME"
   */
  struct: (fields, name = 'object') => {
    for (const [key, type] of Object.entries(fields)) {
      if (!(type instanceof Type)) {
        throw new TypeError(`field \`${key}\` of struct ${name} is not a schema type`);
      }
    }
    const expected = `struct ${name}`;
    const type = new Type(expected, (node, options, expecting = expected) =>
      decodeStruct(fields, node, options, expecting),
    );
    type.fields = fields;
    return type;
  },
};

function decodeStruct(fields, node, options, expecting) {
  if (!(node instanceof JsonMap)) throw invalidType(node, expecting);
  const values = new Map();
  for (const [key, value] of node.entries) {
    if (!Object.hasOwn(fields, key)) {
      if (options.allowUnknownFields) continue;
      throw new SchemaError(`unknown field \`${key}\``);
    }
    if (values.has(key)) throw new SchemaError(`duplicate field \`${key}\``);
    values.set(key, fields[key].decodeNode(value, options));
  }
  const out = {};
  for (const [key, type] of Object.entries(fields)) {
    if (values.has(key)) {
      setProperty(out, key, values.get(key));
    } else if (type.missing) {
      const fallback = type.missing.value;
      setProperty(out, key, typeof fallback === 'function' ? fallback() : fallback);
    } else {
      throw new SchemaError(`missing field \`${key}\``);
    }
  }
  return out;
}

/**
 * How a payload is decoded.
 *
 * @typedef {object} DecodeOptions
 * @property {boolean} allowUnknownFields ignore the fields a struct does not
 *   name (serde's default) instead of refusing them
 */

const REFUSE_UNKNOWN = Object.freeze({ allowUnknownFields: false });
const ALLOW_UNKNOWN = Object.freeze({ allowUnknownFields: true });

/**
 * Decode `node` with `type`; a struct at the top is named `expecting` in
 * messages (the SDK passes "struct variant Command::<type>", serde's name
 * for the payload of an adjacently tagged enum variant). Unknown fields are
 * refused unless `allowUnknownFields`.
 *
 * @param {{ expecting?: string, allowUnknownFields?: boolean }} [how]
 */
export function decodeWith(type, node, { expecting, allowUnknownFields = false } = {}) {
  return type.decodeNode(node, allowUnknownFields ? ALLOW_UNKNOWN : REFUSE_UNKNOWN, expecting);
}
