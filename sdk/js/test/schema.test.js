// The schema language: serde's rules and messages.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseTree } from '../src/json.js';
import { SchemaError, decodeWith, s } from '../src/schema.js';

const decode = (type, text, expecting) => decodeWith(type, parseTree(text), { expecting });
const lenient = (type, text) => decodeWith(type, parseTree(text), { allowUnknownFields: true });
const failsWith = (run, text, message) =>
  assert.throws(run, (error) => error instanceof SchemaError && error.message === message, text);
const fails = (type, text, message) => failsWith(() => decode(type, text), text, message);

describe('schema types', () => {
  it('decodes integers by range, never from floats', () => {
    assert.equal(decode(s.i64(), '-5'), -5);
    assert.equal(decode(s.i64(), '9223372036854775807'), 9223372036854775807n);
    assert.equal(decode(s.u64(), '18446744073709551615'), 18446744073709551615n);
    assert.equal(decode(s.u32(), '4294967295'), 4294967295);
    fails(s.u64(), '-1', 'invalid value: integer `-1`, expected u64');
    fails(s.i32(), '3000000000', 'invalid value: integer `3000000000`, expected i32');
    fails(s.u32(), '2.5', 'invalid type: floating point `2.5`, expected u32');
    fails(s.i64(), 'true', 'invalid type: boolean `true`, expected i64');
    assert.equal(decode(s.f64(), '3'), 3);
    assert.equal(decode(s.f64(), '2.5'), 2.5);
    fails(s.f64(), '"x"', 'invalid type: string "x", expected f64');
  });

  it('decodes strings, booleans, options, arrays and any JSON', () => {
    assert.equal(decode(s.string(), '"a"'), 'a');
    fails(s.string(), '{}', 'invalid type: map, expected a string');
    assert.equal(decode(s.boolean(), 'false'), false);
    fails(s.boolean(), '0', 'invalid type: integer `0`, expected a boolean');
    assert.equal(decode(s.option(s.string()), 'null'), null);
    assert.equal(decode(s.option(s.string()), '"x"'), 'x');
    assert.deepEqual(decode(s.array(s.u32()), '[1, 2]'), [1, 2]);
    fails(s.array(s.u32()), '[1, -2]', 'invalid value: integer `-2`, expected u32');
    fails(s.array(s.u32()), '{}', 'invalid type: map, expected a sequence');
    assert.deepEqual(decode(s.json(), '{"a": [1, 2.5, null]}'), { a: [1, 2.5, null] });
  });

  it("decodes structs as serde's derive does", () => {
    const open = s.struct(
      {
        owner: s.string(),
        limit: s.i64().default(0),
        tags: s.array(s.string()).default(() => []),
        note: s.option(s.string()),
      },
      'Open',
    );
    // Fields come out in the declared order.
    const value = decode(open, '{"note": null, "owner": "Ann"}');
    assert.deepEqual(value, { owner: 'Ann', limit: 0, tags: [], note: null });
    assert.deepEqual(Object.keys(value), ['owner', 'limit', 'tags', 'note']);
    // A fresh default each time.
    assert.notEqual(decode(open, '{"owner": "a"}').tags, decode(open, '{"owner": "a"}').tags);
    fails(open, '{}', 'missing field `owner`');
    // null is not missing.
    fails(open, '{"owner": "a", "limit": null}', 'invalid type: null, expected i64');
    fails(open, '{"owner": "a", "owner": "b"}', 'duplicate field `owner`');
    // The first bad value in document order wins over a missing field.
    fails(open, '{"limit": "x"}', 'invalid type: string "x", expected i64');
    fails(open, '[]', 'invalid type: sequence, expected struct Open');
    assert.throws(() => decode(open, '5', 'struct variant Command::Open'), {
      message: 'invalid type: integer `5`, expected struct variant Command::Open',
    });
    // Nested structs.
    const outer = s.struct({ inner: s.struct({ n: s.u32() }, 'Inner') });
    fails(outer, '{"inner": 1}', 'invalid type: integer `1`, expected struct Inner');
    assert.deepEqual(decode(outer, '{"inner": {"n": 1}}'), { inner: { n: 1 } });
  });

  it('refuses unknown fields at any depth, the first problem in document order first', () => {
    const deposit = s.struct({ amount: s.i64() }, 'Deposit');
    fails(deposit, '{"amount": 5, "note": "x"}', 'unknown field `note`');
    // A misspelled field is also a missing one: the unknown field is reported.
    fails(deposit, '{"amuont": 5}', 'unknown field `amuont`');
    fails(deposit, '{"note": 1, "amount": "5"}', 'unknown field `note`');
    fails(deposit, '{"amount": "5", "note": 1}', 'invalid type: string "5", expected i64');
    fails(deposit, '{"amount": 1, "amount": 2, "x": 3}', 'duplicate field `amount`');
    fails(s.struct({}), '{"reason": null}', 'unknown field `reason`');
    const address = s.struct({ city: s.string() }, 'Address');
    const move = s.struct({
      to: address,
      via: s.array(address).default(() => []),
      note: s.option(address),
      extra: s.json().default(null),
    });
    fails(move, '{"to": {"city": "a", "zip": 1}}', 'unknown field `zip`');
    fails(move, '{"to": {"city": "a"}, "via": [{"city": "b"}, {"cty": "c"}]}', 'unknown field `cty`');
    fails(move, '{"to": {"city": "a"}, "note": {"city": "b", "x": []}}', 'unknown field `x`');
    // A JSON value takes any key.
    assert.deepEqual(decode(move, '{"to": {"city": "a"}, "extra": {"any": {"thing": 1}}}').extra, {
      any: { thing: 1 },
    });
  });

  it('ignores unknown fields at any depth when they are allowed', () => {
    const deposit = s.struct({ amount: s.i64(), to: s.option(s.struct({ id: s.string() })) });
    assert.deepEqual(lenient(deposit, '{"amount": 5, "note": "x", "to": {"id": "a", "y": 1}}'), {
      amount: 5,
      to: { id: 'a' },
    });
    failsWith(() => lenient(deposit, '{"amuont": 5}'), 'amuont', 'missing field `amount`');
  });

  it('refuses a struct field that is not a schema type', () => {
    assert.throws(() => s.struct({ a: 'string' }), /field `a` of struct object is not a schema type/);
  });
});
