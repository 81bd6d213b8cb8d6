// Example Kiln aggregate in JavaScript: a bank account with an overdraft
// limit. The JavaScript twin of plugins/bank_account (Rust): the same
// commands, events, state, rules and messages, to the letter.
//
// Commands (JSON data in parentheses):
// - `Open` (`{"owner": string, "overdraft_limit"?: int >= 0}`): open a new
//   account; the limit defaults to 0.
// - `Deposit` (`{"amount": int > 0}`) and `Withdraw` (`{"amount": int > 0}`):
//   move money on an open account. A withdrawal may take the balance down to
//   `-overdraft_limit` and no further (rejected with code
//   `insufficient_funds`).
// - `Close` (`{}`, `null` or no data): close an open account whose balance
//   is exactly 0.
//
// Events `Opened`, `Deposited`, `Withdrawn` and `Closed` carry the same
// fields as their commands (`Opened` always carries `overdraft_limit`).
//
// State: `{"status": "new"|"open"|"closed", "owner": string|null,
// "balance": int, "overdraft_limit": int}`.
//
// Amounts are signed 64-bit integers, as in Rust. The SDK hands them out as
// Numbers while they are safe integers and as BigInt beyond that, so the
// arithmetic below is done in BigInt and stored back with `compactInt`.

import { I64_MAX, I64_MIN, Invalid, Rejected, compactInt, log, s } from 'kiln-sdk';

/** The machine-readable code of a withdrawal beyond the overdraft limit. */
export const INSUFFICIENT_FUNDS = 'insufficient_funds';

/**
 * Rust's `char::is_whitespace`: the Unicode White_Space property, spelled
 * out (the engine in a component has no Unicode property escapes).
 */
const BLANK = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

function ensureOpen(state) {
  if (state.status !== 'open') {
    throw new Rejected(`account is not open (status: ${state.status})`);
  }
}

/** The rules a command must meet whatever the account's state. */
function validate({ type, data }) {
  switch (type) {
    case 'Open':
      if (BLANK.test(data.owner)) throw new Invalid('owner must not be blank');
      if (data.overdraft_limit < 0) {
        throw new Invalid(`overdraft_limit must be >= 0, got ${data.overdraft_limit}`);
      }
      break;
    case 'Deposit':
    case 'Withdraw':
      if (data.amount <= 0) throw new Invalid(`amount must be > 0, got ${data.amount}`);
      break;
    default:
      break;
  }
}

export const bankAccount = {
  initialState: () => ({ status: 'new', owner: null, balance: 0, overdraft_limit: 0 }),

  commands: {
    Open: s.struct({ owner: s.string(), overdraft_limit: s.i64().default(0) }),
    Deposit: s.struct({ amount: s.i64() }),
    Withdraw: s.struct({ amount: s.i64() }),
    Close: s.struct({}),
  },

  handle(state, command) {
    // The command is checked on its own first: a malformed command is
    // invalid whatever the account's state.
    validate(command);
    const { data } = command;
    switch (command.type) {
      case 'Open': {
        if (state.status !== 'new') {
          throw new Rejected(`account is already ${state.status} (owner: ${state.owner ?? 'none'})`);
        }
        log.debug(`opening account for ${data.owner} with overdraft limit ${data.overdraft_limit}`);
        // The keys in the order the Rust plugin writes them (sorted).
        return [{ type: 'Opened', data: { overdraft_limit: data.overdraft_limit, owner: data.owner } }];
      }
      case 'Deposit': {
        ensureOpen(state);
        if (BigInt(state.balance) + BigInt(data.amount) > I64_MAX) {
          throw new Invalid(`a deposit of ${data.amount} would overflow the balance of ${state.balance}`);
        }
        return [{ type: 'Deposited', data: { amount: data.amount } }];
      }
      case 'Withdraw': {
        ensureOpen(state);
        // Exact: the balance never goes below -overdraft_limit, so an
        // accepted withdrawal keeps it within i64.
        const after = BigInt(state.balance) - BigInt(data.amount);
        if (after < -BigInt(state.overdraft_limit)) {
          throw new Rejected(
            `insufficient funds: cannot withdraw ${data.amount} from a balance of ${state.balance} ` +
              `with an overdraft limit of ${state.overdraft_limit}`,
            INSUFFICIENT_FUNDS,
          );
        }
        return [{ type: 'Withdrawn', data: { amount: data.amount } }];
      }
      case 'Close': {
        ensureOpen(state);
        if (BigInt(state.balance) !== 0n) {
          throw new Rejected(`cannot close an account with a balance of ${state.balance} (it must be 0)`);
        }
        return [{ type: 'Closed', data: {} }];
      }
      default:
        // Unreachable: the SDK refuses command types without a schema.
        throw new Error(`unhandled command type ${command.type}`);
    }
  },

  apply(state, event) {
    const { data } = event;
    switch (event.type) {
      case 'Opened':
        state.status = 'open';
        state.owner = data.owner;
        state.overdraft_limit = data.overdraft_limit ?? 0;
        break;
      case 'Deposited':
        state.balance = checked(BigInt(state.balance) + BigInt(data.amount), 'a committed deposit overflows the balance');
        break;
      case 'Withdrawn':
        state.balance = checked(BigInt(state.balance) - BigInt(data.amount), 'a committed withdrawal overflows the balance');
        break;
      case 'Closed':
        state.status = 'closed';
        break;
      default:
        // An event this aggregate never wrote: a bug, so the call traps.
        throw new Error(`bank_account cannot apply an event of type \`${event.type}\``);
    }
  },
};

/** `value` when it fits in i64 (as a Number when safe); otherwise a bug. */
function checked(value, message) {
  if (value > I64_MAX || value < I64_MIN) throw new Error(message);
  return compactInt(value);
}
