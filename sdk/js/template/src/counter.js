// The counter's rules: plain JavaScript that imports only the SDK, so the
// tests load it in Node.

import { Invalid, Rejected, s } from 'kiln-sdk';

export const counter = {
  // The state of a stream with no event yet.
  initialState: { value: 0 },

  // One schema per command type: other types, and payloads that do not
  // fit, are answered `invalid` (HTTP 400) by the SDK.
  commands: {
    Increment: s.struct({ by: s.u32() }),
  },

  handle(state, command) {
    const { by } = command.data;
    if (by === 0) throw new Invalid('`by` must be positive'); // HTTP 400
    if (state.value + by > 10) throw new Rejected('the counter cannot exceed 10', 'limit'); // HTTP 422
    return [{ type: 'Incremented', data: { by } }];
  },

  apply(state, event) {
    if (event.type === 'Incremented') state.value += event.data.by;
  },
};
