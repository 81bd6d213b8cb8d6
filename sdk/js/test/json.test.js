// The JSON codec: the exact parser, serde_json's wording, BigInt.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  JsonMap,
  JsonNumber,
  compactInt,
  debugString,
  decodeJsonText,
  encodeJson,
  formatFloat,
  parseTree,
  plainOf,
  unexpected,
} from '../src/json.js';

describe('parseTree', () => {
  it('keeps what JSON.parse loses', () => {
    const tree = parseTree('{"a": 1, "b": 1.0, "c": 18446744073709551615, "a": -2, "d": -0}');
    assert.ok(tree instanceof JsonMap);
    assert.deepEqual(
      tree.entries.map(([key, node]) => [key, node.kind, node.value]),
      [
        ['a', 'u64', 1n],
        ['b', 'f64', 1],
        ['c', 'u64', 18446744073709551615n],
        ['a', 'i64', -2n],
        ['d', 'f64', -0],
      ],
    );
    // Beyond u64 (or below i64) an integer is a float, as in serde_json.
    assert.equal(parseTree('18446744073709551616').kind, 'f64');
    assert.equal(parseTree('-9223372036854775809').kind, 'f64');
    assert.equal(parseTree('-9223372036854775808').kind, 'i64');
  });

  it('reads strings, escapes, literals and nesting', () => {
    assert.deepEqual(plainOf(parseTree(' ["a\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00", true, false, null, []] ')), [
      'a"\\/\b\f\n\r\t\u00e9\u{1f600}',
      true,
      false,
      null,
      [],
    ]);
    assert.deepEqual(plainOf(parseTree('{"__proto__": 1}')), JSON.parse('{"__proto__": 1}'));
    assert.equal(plainOf(parseTree(`${'['.repeat(127)}${']'.repeat(127)}`)).length, 1);
  });

  // Checked against serde_json 1.0 through the host's own body parser where
  // the body's shape allowed it.
  it("reports syntax errors in serde_json's words", () => {
    const cases = [
      ['', 'EOF while parsing a value at line 1 column 0'],
      ['not json', 'expected ident at line 1 column 2'],
      ['x', 'expected value at line 1 column 1'],
      ['{', 'EOF while parsing an object at line 1 column 1'],
      ['[1,]', 'trailing comma at line 1 column 4'],
      ['{"a":1,}', 'trailing comma at line 1 column 8'],
      ['{"a" 1}', 'expected `:` at line 1 column 6'],
      ['{1:2}', 'key must be a string at line 1 column 2'],
      ['[1 2]', 'expected `,` or `]` at line 1 column 4'],
      ['{"a":1 "b":2}', 'expected `,` or `}` at line 1 column 8'],
      ['1 2', 'trailing characters at line 1 column 3'],
      ['"abc', 'EOF while parsing a string at line 1 column 4'],
      ['"\\x"', 'invalid escape at line 1 column 3'],
      ['"a\u0001"', 'control character (\\u0000-\\u001F) found while parsing a string at line 1 column 3'],
      ['01', 'invalid number at line 1 column 2'],
      ['1.x', 'invalid number at line 1 column 3'],
      ['-', 'EOF while parsing a value at line 1 column 1'],
      ['1e999', 'number out of range at line 1 column 5'],
      ['{\n  "a": x}', 'expected value at line 2 column 8'],
      ['['.repeat(128), 'recursion limit exceeded at line 1 column 128'],
    ];
    for (const [text, message] of cases) {
      assert.throws(() => parseTree(text), { name: 'JsonSyntaxError', message }, JSON.stringify(text));
    }
  });
});

describe('trusted decoding and encoding', () => {
  it('gives integers as Numbers when safe, as BigInt otherwise', () => {
    assert.deepEqual(decodeJsonText('{"a": 9007199254740991, "b": 9007199254740993, "c": -9223372036854775808, "d": 1.5}'), {
      a: 9007199254740991,
      b: 9007199254740993n,
      c: -9223372036854775808n,
      d: 1.5,
    });
    assert.equal(compactInt(5n), 5);
    assert.equal(compactInt(2n ** 60n), 2n ** 60n);
  });

  it('writes BigInt as a JSON integer, and refuses what is not JSON', () => {
    assert.equal(encodeJson({ a: 1, b: 2n ** 64n, c: [1n, undefined], d: undefined }), '{"a":1,"b":18446744073709551616,"c":[1,null]}');
    assert.equal(encodeJson({ when: new Date(0) }), '{"when":"1970-01-01T00:00:00.000Z"}');
    assert.throws(() => encodeJson(undefined), TypeError);
    const cyclic = { n: 1n };
    cyclic.self = cyclic;
    assert.throws(() => encodeJson(cyclic), /cyclic/);
  });
});

describe("serde's wording", () => {
  it('prints floats as serde_json does', () => {
    const cases = [
      [1.5, '1.5'],
      [1000, '1000.0'],
      [1, '1.0'],
      [-0, '-0.0'],
      [0.00001, '0.00001'],
      [1e-7, '1e-7'],
      [1e15, '1000000000000000.0'],
      [1e16, '1e+16'],
      [-1.5e300, '-1.5e+300'],
      [-9223372036854775809, '-9.223372036854776e+18'],
      [18446744073709551616, '1.8446744073709552e+19'],
      [123456789012345678, '1.2345678901234568e+17'],
    ];
    for (const [value, text] of cases) assert.equal(formatFloat(value), text, String(value));
  });

  it("prints strings as Rust's Debug does", () => {
    assert.equal(debugString('a"b\\c\n\r\t\0\u0001\u007f\u00e9'), '"a\\"b\\\\c\\n\\r\\t\\0\\u{1}\\u{7f}\u00e9"');
  });

  it('names unexpected values', () => {
    assert.equal(unexpected(null), 'null');
    assert.equal(unexpected(true), 'boolean `true`');
    assert.equal(unexpected('s'), 'string "s"');
    assert.equal(unexpected([]), 'sequence');
    assert.equal(unexpected(new JsonMap([])), 'map');
    assert.equal(unexpected(new JsonNumber('i64', -3n)), 'integer `-3`');
    assert.equal(unexpected(new JsonNumber('f64', 2)), 'floating point `2.0`');
  });
});
