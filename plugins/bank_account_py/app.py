"""Component entry of the Python bank account: the `aggregate` world's
exports. Built by kiln_sdk.build; natively, test bank_account.py."""

from kiln_sdk.component import export_aggregate

from bank_account import BankAccount

WitWorld = export_aggregate(BankAccount())
