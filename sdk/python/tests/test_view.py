"""The View: JSON values, the per-batch cache, scans merged with pending writes."""

import dataclasses
from typing import Dict, List

import pytest

from kiln_sdk import MemoryStore, ProjectionError, StoreCalls, View


def view(rows: Dict[str, str]) -> View:
    return View(MemoryStore({key: value.encode() for key, value in rows.items()}))


def keys(rows: List) -> List[str]:
    return [key for key, _ in rows]


@dataclasses.dataclass
class Row:
    owner: str
    balance: int


def test_reads_go_through_the_cache() -> None:
    v = view({"a": "1"})
    assert v.get("a") == 1
    assert v.get("a") == 1
    assert v.get("b") is None
    assert v.get("b") is None
    assert v.calls.gets == 2


def test_writes_are_held_until_the_flush_and_written_once() -> None:
    store = MemoryStore({"a": b"1"})
    v = View(store)
    for n in range(2, 10):
        v.put("a", n)
        v.put("b", n)
    v.delete("c")
    assert v.get("a") == 9
    assert v.calls == StoreCalls()
    assert store.rows == {"a": b"1"}
    v.flush()
    assert v.calls == StoreCalls(gets=0, puts=2, deletes=1, scans=0)
    assert store.rows == {"a": b"9", "b": b"9"}
    v.flush()
    assert v.calls.puts == 2


def test_writing_the_stored_value_is_no_change() -> None:
    v = view({"a": '{"owner":"ann","balance":1}'})
    row = v.get("a", into=Row)
    assert row == Row("ann", 1)
    v.put("a", row)
    v.flush()
    assert v.calls.puts == 0


def test_typed_values_are_written_in_field_order() -> None:
    store = MemoryStore()
    v = View(store)
    v.put("k", Row(owner="é", balance=-1))
    v.put_bytes("raw", b"not json")
    v.flush()
    assert store.rows == {"k": '{"owner":"é","balance":-1}'.encode(), "raw": b"not json"}
    assert View(store).get_bytes("raw") == b"not json"


def test_rows_that_do_not_decode_fail_the_batch() -> None:
    v = view({"a": '{"owner": "x"}', "b": "nope"})
    with pytest.raises(ProjectionError, match="the view row `a` does not decode: missing field `balance`"):
        v.get("a", into=Row)
    with pytest.raises(ProjectionError, match="the view row `b` does not decode: data is not valid JSON"):
        v.get("b")
    with pytest.raises(ProjectionError, match="cannot write the view row `c` as JSON"):
        v.put("c", object())


def test_scan_merges_pending_writes_and_deletes() -> None:
    v = view({"acc-1": "1", "acc-2": "2", "acc-4": "4", "other": "0"})
    v.put("acc-3", 3)
    v.put("acc-2", 20)
    v.delete("acc-4")
    v.put("acc-5", 5)
    assert v.scan("acc-") == [("acc-1", 1), ("acc-2", 20), ("acc-3", 3), ("acc-5", 5)]
    assert keys(v.scan("acc-", after="acc-2")) == ["acc-3", "acc-5"]
    assert keys(v.scan("acc-", after="a")) == ["acc-1", "acc-2", "acc-3", "acc-5"]
    assert v.scan("acc-", limit=0) == []


def test_scan_pages_through_the_store() -> None:
    # Pages of 2 from the store; the pending rows between them are merged.
    v = view({f"k{i}": str(i) for i in (1, 3, 5, 7)})
    v.put("k2", 2)
    v.put("k8", 8)
    v.delete("k5")
    assert keys(v.scan("k", limit=2)) == ["k1", "k2"]
    assert keys(v.scan("k", limit=3)) == ["k1", "k2", "k3"]
    assert keys(v.scan("k", limit=10)) == ["k1", "k2", "k3", "k7", "k8"]
    assert keys(v.scan("k", after="k2", limit=2)) == ["k3", "k7"]


def test_memory_store_scan() -> None:
    store = MemoryStore({"a": b"1", "b-1": b"2", "b-2": b"3", "c": b"4"})
    assert keys(store.scan("b-", None, 10)) == ["b-1", "b-2"]
    assert keys(store.scan("b-", "b-1", 10)) == ["b-2"]
    assert keys(store.scan("", None, 2)) == ["a", "b-1"]
    assert keys(store.scan("b-", "a", 10)) == ["b-1", "b-2"]
