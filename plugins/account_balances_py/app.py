"""Component entry of the Python account balances: the `projection` world's
exports. Built by kiln_sdk.build; natively, test account_balances.py."""

from kiln_sdk.component import export_projection

from account_balances import AccountBalances

WitWorld = export_projection(AccountBalances)
