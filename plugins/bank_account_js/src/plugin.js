// The component entry of the JavaScript bank account: the `aggregate`
// world's `apply` and `handle`, built by sdk/js/build.mjs.
import { defineAggregate } from 'kiln-sdk/aggregate';

import { bankAccount } from './bank_account.js';

export const { apply, handle } = defineAggregate(bankAccount);
