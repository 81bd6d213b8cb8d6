"""The component's entry: the `aggregate` world's exports."""

from kiln_sdk.component import export_aggregate

from counter import Counter

WitWorld = export_aggregate(Counter())
