// The component entry of the JavaScript bank account: the `aggregate`
// world's `apply` and `handle`, built by sdk/js/build.mjs.
import { defineAggregate } from '../../../sdk/js/src/aggregate.js';

import { bankAccount } from './bank_account.js';

export const { apply, handle } = defineAggregate(bankAccount);
