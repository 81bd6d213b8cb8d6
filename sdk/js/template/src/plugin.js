// The component's entry: the `aggregate` world's `apply` and `handle`.
import { defineAggregate } from 'kiln-sdk/aggregate';

import { counter } from './counter.js';

export const { apply, handle } = defineAggregate(counter);
