// Native tests of the JavaScript bank account: the contract of the Rust
// plugin (plugins/bank_account), message for message, through the same
// adapter the component exports.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { aggregateTest } from 'kiln-sdk/testing';
import { INSUFFICIENT_FUNDS, bankAccount } from '../src/bank_account.js';

const I64_MAX = 9223372036854775807n;

const account = aggregateTest(bankAccount);

const opened = (limit = 0) => ({ type: 'Opened', data: { owner: 'Ann', overdraft_limit: limit } });

/** An open account with `balance` and `limit`. */
function openWith(balance, limit = 0) {
  const events = [opened(limit)];
  if (balance > 0) events.push({ type: 'Deposited', data: { amount: balance } });
  else if (balance < 0) events.push({ type: 'Withdrawn', data: { amount: -balance } });
  return account.given(events);
}

const closed = () => account.given([opened(0), { type: 'Closed', data: {} }]);

function expectRejected(outcome, message, code = null) {
  assert.deepEqual(outcome.rejected, { code, message });
  assert.deepEqual(outcome.events, []);
  assert.equal(outcome.invalid, null);
}

function expectInvalid(outcome, message) {
  assert.equal(outcome.invalid, message);
  assert.deepEqual(outcome.events, []);
  assert.equal(outcome.rejected, null);
}

describe('bank_account (JavaScript)', () => {
  it('starts new', () => {
    const outcome = account.given([]).whenJson('Close', '');
    expectRejected(outcome, 'account is not open (status: new)');
    assert.deepEqual(outcome.state, { status: 'new', owner: null, balance: 0, overdraft_limit: 0 });
  });

  it('opens a new account', () => {
    const outcome = account.given([]).when('Open', { owner: 'Ann', overdraft_limit: 100 });
    assert.deepEqual(outcome.events, [
      { type: 'Opened', schema: 1, data: { overdraft_limit: 100, owner: 'Ann' } },
    ]);
    // The state's JSON, byte for byte as the Rust plugin writes it.
    assert.equal(outcome.stateJson, '{"status":"open","owner":"Ann","balance":0,"overdraft_limit":100}');
    assert.deepEqual(outcome.logs, [
      { level: 'debug', message: 'opening account for Ann with overdraft limit 100' },
    ]);
  });

  it('opens without a limit: it defaults to 0', () => {
    const outcome = account.given([]).whenJson('Open', '{"owner": "Ann"}');
    assert.deepEqual(outcome.events, [{ type: 'Opened', schema: 1, data: { overdraft_limit: 0, owner: 'Ann' } }]);
  });

  it('refuses to open twice', () => {
    expectRejected(openWith(0).when('Open', { owner: 'Bob' }), 'account is already open (owner: Ann)');
    expectRejected(closed().when('Open', { owner: 'Bob' }), 'account is already closed (owner: Ann)');
  });

  it('validates Open', () => {
    const fresh = account.given([]);
    expectInvalid(fresh.whenJson('Open', '{}'), 'command `Open`: missing field `owner`');
    expectInvalid(fresh.when('Open'), 'command `Open`: missing field `owner`');
    expectInvalid(fresh.whenJson('Open', 'null'), 'command `Open`: missing field `owner`');
    expectInvalid(fresh.when('Open', { owner: '  ' }), 'owner must not be blank');
    expectInvalid(fresh.when('Open', { owner: '\u00a0\u3000\n' }), 'owner must not be blank');
    expectInvalid(fresh.when('Open', { owner: 'Ann', overdraft_limit: -1 }), 'overdraft_limit must be >= 0, got -1');
    expectInvalid(fresh.when('Open', { owner: 7 }), 'command `Open`: invalid type: integer `7`, expected a string');
    expectInvalid(fresh.when('Open', { owner: null }), 'command `Open`: invalid type: null, expected a string');
    expectInvalid(
      fresh.when('Open', { owner: 'Ann', overdraft_limit: null }),
      'command `Open`: invalid type: null, expected i64',
    );
    expectInvalid(
      fresh.whenJson('Open', '{"owner": "Ann", "overdraft_limit": 1.5}'),
      'command `Open`: invalid type: floating point `1.5`, expected i64',
    );
    expectInvalid(fresh.when('Open', 5), 'command `Open`: invalid type: integer `5`, expected struct variant Command::Open');
    expectInvalid(
      fresh.when('Open', 's'),
      'command `Open`: invalid type: string "s", expected struct variant Command::Open',
    );
    expectInvalid(fresh.when('Open', [1]), 'command `Open`: invalid type: sequence, expected struct variant Command::Open');
    // Invalid wins over rejected: the command is checked first.
    expectInvalid(openWith(0).when('Open', { owner: 'Ann', overdraft_limit: -1 }), 'overdraft_limit must be >= 0, got -1');
  });

  it('deposits', () => {
    const outcome = openWith(10).when('Deposit', { amount: 5 });
    assert.deepEqual(outcome.events, [{ type: 'Deposited', schema: 1, data: { amount: 5 } }]);
    assert.equal(outcome.state.balance, 15);
  });

  it('needs an open account to deposit or withdraw', () => {
    for (const type of ['Deposit', 'Withdraw']) {
      expectRejected(account.given([]).when(type, { amount: 1 }), 'account is not open (status: new)');
      expectRejected(closed().when(type, { amount: 1 }), 'account is not open (status: closed)');
    }
  });

  it('takes positive integer amounts only', () => {
    for (const type of ['Deposit', 'Withdraw']) {
      const open = openWith(10);
      expectInvalid(open.when(type, { amount: 0 }), 'amount must be > 0, got 0');
      expectInvalid(open.when(type, { amount: -3 }), 'amount must be > 0, got -3');
      expectInvalid(open.whenJson(type, '{}'), `command \`${type}\`: missing field \`amount\``);
      expectInvalid(
        open.whenJson(type, '{"amount": 1.5}'),
        `command \`${type}\`: invalid type: floating point \`1.5\`, expected i64`,
      );
      expectInvalid(
        open.whenJson(type, '{"amount": 1.0}'),
        `command \`${type}\`: invalid type: floating point \`1.0\`, expected i64`,
      );
      expectInvalid(
        open.whenJson(type, '{"amount": 1e3}'),
        `command \`${type}\`: invalid type: floating point \`1000.0\`, expected i64`,
      );
      expectInvalid(open.when(type, { amount: '5' }), `command \`${type}\`: invalid type: string "5", expected i64`);
      expectInvalid(
        open.whenJson(type, '{"amount": 9223372036854775808}'),
        `command \`${type}\`: invalid value: integer \`9223372036854775808\`, expected i64`,
      );
      expectInvalid(
        open.whenJson(type, '{"amount": -9223372036854775809}'),
        `command \`${type}\`: invalid type: floating point \`-9.223372036854776e+18\`, expected i64`,
      );
      // The command's validity does not depend on the state.
      expectInvalid(account.given([]).when(type, { amount: 0 }), 'amount must be > 0, got 0');
    }
  });

  it('refuses a deposit that would overflow the balance', () => {
    const nearlyFull = openWith(I64_MAX - 1n);
    expectInvalid(
      nearlyFull.when('Deposit', { amount: 2 }),
      'a deposit of 2 would overflow the balance of 9223372036854775806',
    );
    const outcome = nearlyFull.when('Deposit', { amount: 1 });
    assert.deepEqual(outcome.events, [{ type: 'Deposited', schema: 1, data: { amount: 1 } }]);
    assert.equal(outcome.state.balance, I64_MAX);
    assert.equal(outcome.stateJson, `{"status":"open","owner":"Ann","balance":${I64_MAX},"overdraft_limit":0}`);
  });

  it('withdraws within the balance and the overdraft', () => {
    const outcome = openWith(10).when('Withdraw', { amount: 10 });
    assert.deepEqual(outcome.events, [{ type: 'Withdrawn', schema: 1, data: { amount: 10 } }]);
    assert.equal(outcome.state.balance, 0);
    const overdrawn = openWith(10, 50).when('Withdraw', { amount: 60 });
    assert.deepEqual(overdrawn.events, [{ type: 'Withdrawn', schema: 1, data: { amount: 60 } }]);
    assert.deepEqual(overdrawn.state, { status: 'open', owner: 'Ann', balance: -50, overdraft_limit: 50 });
  });

  it('refuses a withdrawal beyond the overdraft: insufficient funds', () => {
    const outcome = openWith(10).when('Withdraw', { amount: 11 });
    expectRejected(
      outcome,
      'insufficient funds: cannot withdraw 11 from a balance of 10 with an overdraft limit of 0',
      INSUFFICIENT_FUNDS,
    );
    assert.equal(outcome.state.balance, 10);
    expectRejected(
      openWith(-50, 50).when('Withdraw', { amount: 1 }),
      'insufficient funds: cannot withdraw 1 from a balance of -50 with an overdraft limit of 50',
      'insufficient_funds',
    );
    // The largest withdrawals cannot overflow: they are simply too large.
    expectRejected(
      openWith(-I64_MAX, I64_MAX).when('Withdraw', { amount: I64_MAX }),
      'insufficient funds: cannot withdraw 9223372036854775807 from a balance of -9223372036854775807 ' +
        'with an overdraft limit of 9223372036854775807',
      INSUFFICIENT_FUNDS,
    );
  });

  it('keeps amounts beyond 2^53 exact', () => {
    const big = 9007199254740993n; // 2^53 + 1: not a safe Number
    const outcome = openWith(0).when('Deposit', { amount: big });
    assert.deepEqual(outcome.events, [{ type: 'Deposited', schema: 1, data: { amount: big } }]);
    assert.equal(outcome.state.balance, big);
    assert.match(outcome.stateJson, /"balance":9007199254740993,/);
  });

  it('closes an empty account', () => {
    const outcome = openWith(0).whenJson('Close', '{}');
    assert.deepEqual(outcome.events, [{ type: 'Closed', schema: 1, data: {} }]);
    assert.deepEqual(outcome.state, { status: 'closed', owner: 'Ann', balance: 0, overdraft_limit: 0 });
  });

  it('accepts every spelling of no data for Close', () => {
    for (const data of ['', 'null', '{}', ' ']) {
      assert.deepEqual(openWith(0).whenJson('Close', data).events, [{ type: 'Closed', schema: 1, data: {} }], data);
    }
    // A field Close does not have is refused, not ignored.
    expectInvalid(openWith(0).whenJson('Close', '{"reason": 1}'), 'command `Close`: unknown field `reason`');
    expectInvalid(
      openWith(0).when('Close', 5),
      'command `Close`: invalid type: integer `5`, expected struct variant Command::Close',
    );
  });

  it('closes only an open account with a zero balance', () => {
    expectRejected(openWith(5).when('Close', {}), 'cannot close an account with a balance of 5 (it must be 0)');
    expectRejected(openWith(-5, 10).when('Close', {}), 'cannot close an account with a balance of -5 (it must be 0)');
    expectRejected(closed().when('Close', {}), 'account is not open (status: closed)');
  });

  it('refuses unknown commands and payloads that are not JSON', () => {
    expectInvalid(
      openWith(0).when('Transfer', { amount: 1 }),
      'command `Transfer`: unknown variant `Transfer`, expected one of `Open`, `Deposit`, `Withdraw`, `Close`',
    );
    expectInvalid(
      openWith(0).whenJson('Deposit', 'not json'),
      'command `Deposit`: data is not valid JSON: expected ident at line 1 column 2',
    );
  });

  it('folds events in order, and an event it never wrote is a bug', () => {
    const state = account.given([
      opened(20),
      { type: 'Deposited', data: { amount: 7 } },
      { type: 'Withdrawn', data: { amount: 30 } },
    ]).state;
    assert.deepEqual(state, { status: 'open', owner: 'Ann', balance: -23, overdraft_limit: 20 });
    // `Opened` without a limit (an older payload) defaults it to 0.
    assert.equal(account.given([{ type: 'Opened', data: { owner: 'Ann' } }]).state.overdraft_limit, 0);
    assert.throws(
      () => account.given([opened(), { type: 'Renamed', data: {} }]),
      (error) => {
        assert.match(error.message, /cannot apply an event of type `Renamed`/);
        assert.equal(error.kilnLogs.at(-1).level, 'error');
        return true;
      },
    );
    assert.throws(
      () => account.given([opened(), { type: 'Deposited', data: { amount: I64_MAX } }, { type: 'Deposited', data: { amount: 1 } }]),
      /a committed deposit overflows the balance/,
    );
  });
});
