""":class:`View`: the key-value read model a projection writes, with a
per-batch row cache, over a store (the host's ``view`` import in a component,
:class:`MemoryStore` in tests)."""

import bisect
import dataclasses
from typing import Any, Dict, List, Optional, Protocol, Tuple

from . import codec
from .errors import ProjectionError

Row = Tuple[str, bytes]


class Store(Protocol):
    """What a :class:`View` reads and writes: the WIT ``view`` interface."""

    def get(self, key: str) -> Optional[bytes]: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def scan(self, prefix: str, after: Optional[str], limit: int) -> List[Row]: ...


class MemoryStore:
    """A :class:`Store` in a dict, for tests; ``rows`` is a plain ``{key: bytes}``."""

    def __init__(self, rows: Optional[Dict[str, bytes]] = None) -> None:
        self.rows: Dict[str, bytes] = dict(rows or {})

    def get(self, key: str) -> Optional[bytes]:
        return self.rows.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.rows[key] = bytes(value)

    def delete(self, key: str) -> None:
        self.rows.pop(key, None)

    def scan(self, prefix: str, after: Optional[str], limit: int) -> List[Row]:
        keys = sorted(self.rows)
        if _excluded(prefix, after):
            index = bisect.bisect_right(keys, after)
        else:
            index = bisect.bisect_left(keys, prefix)
        out: List[Row] = []
        for key in keys[index:]:
            if not key.startswith(prefix) or len(out) >= limit:
                break
            out.append((key, self.rows[key]))
        return out


def _excluded(prefix: str, after: Optional[str]) -> bool:
    """Whether a scan starts strictly after ``after`` (else at ``prefix``)."""
    return after is not None and after >= prefix


@dataclasses.dataclass
class StoreCalls:
    """How many times a :class:`View` called its store: what a batch costs."""

    gets: int = 0
    puts: int = 0
    deletes: int = 0
    scans: int = 0


@dataclasses.dataclass
class _Slot:
    value: Optional[bytes]  # None: no row (or deleted)
    dirty: bool


class View:
    """String keys, JSON values (bytes underneath), for one batch.

    Reads go through a cache: the first read of a key asks the store, later
    reads (and reads after a write) are answered from memory. Writes and
    deletes stay in memory until the batch has been handled, then each
    changed key is written once, in key order (writing the value a key
    already has is no change). :meth:`scan` merges the pending writes into
    what the store returns, so a projection always reads its own writes. A
    failed batch writes nothing.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: Dict[str, _Slot] = {}
        self.calls = StoreCalls()

    # -- bytes ----------------------------------------------------------

    def get_bytes(self, key: str) -> Optional[bytes]:
        slot = self._cache.get(key)
        if slot is None:
            self.calls.gets += 1
            value = self._store.get(key)
            slot = _Slot(None if value is None else bytes(value), dirty=False)
            self._cache[key] = slot
        return slot.value

    def put_bytes(self, key: str, value: bytes) -> None:
        self._set(key, bytes(value))

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self._set(key, None)

    def _set(self, key: str, value: Optional[bytes]) -> None:
        slot = self._cache.get(key)
        if slot is None:
            self._cache[key] = _Slot(value, dirty=True)
        elif slot.value != value:
            slot.value = value
            slot.dirty = True

    def scan_bytes(self, prefix: str, after: Optional[str] = None, limit: int = 100) -> List[Row]:
        """Up to ``limit`` rows whose key starts with ``prefix`` and sorts after
        ``after``, in key order, with this batch's pending changes merged in."""
        rows: List[Row] = []
        if limit <= 0:
            return rows
        cursor = after
        while True:
            self.calls.scans += 1
            stored = [(key, bytes(value)) for key, value in self._store.scan(prefix, cursor, limit)]
            # A full page covers the keys up to its last one; a short page, all.
            upper = stored[-1][0] if len(stored) >= limit else None
            pending = sorted(
                (key, slot)
                for key, slot in self._cache.items()
                if slot.dirty
                and key.startswith(prefix)
                and (key > cursor if _excluded(prefix, cursor) else key >= prefix)
                and (upper is None or key <= upper)
            )
            for row in _merge(stored, pending):
                rows.append(row)
                if len(rows) == limit:
                    return rows
            if upper is None:
                return rows
            cursor = upper

    # -- JSON -----------------------------------------------------------

    def get(self, key: str, into: Any = None) -> Any:
        """The value under ``key`` decoded from JSON (into the dataclass or
        annotation ``into`` when given); ``None`` when there is no row.
        :class:`ProjectionError` when the row does not decode."""
        data = self.get_bytes(key)
        return None if data is None else _decode(key, data, into)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON values or dataclasses; dataclass fields in
        order) as JSON under ``key``."""
        try:
            data = codec.dumps(value)
        except (TypeError, ValueError) as error:
            raise ProjectionError(f"cannot write the view row `{key}` as JSON: {error}") from None
        self.put_bytes(key, data)

    def scan(
        self, prefix: str, after: Optional[str] = None, limit: int = 100, into: Any = None
    ) -> List[Tuple[str, Any]]:
        """:meth:`scan_bytes` with the values decoded as in :meth:`get`."""
        return [(key, _decode(key, data, into)) for key, data in self.scan_bytes(prefix, after, limit)]

    # -- end of batch ---------------------------------------------------

    def flush(self) -> None:
        """Write every pending change to the store, in key order."""
        for key in sorted(self._cache):
            slot = self._cache[key]
            if not slot.dirty:
                continue
            if slot.value is None:
                self.calls.deletes += 1
                self._store.delete(key)
            else:
                self.calls.puts += 1
                self._store.put(key, slot.value)
            slot.dirty = False


def _merge(stored: List[Row], pending: List[Tuple[str, _Slot]]) -> List[Row]:
    """Merge the store's rows with the pending changes (both in key order); a
    pending change wins over the stored row of the same key, and a pending
    delete removes it."""
    merged: List[Row] = []
    i = j = 0
    while i < len(stored) or j < len(pending):
        take_pending = j < len(pending) and (i == len(stored) or pending[j][0] <= stored[i][0])
        if take_pending:
            key, slot = pending[j]
            j += 1
            if i < len(stored) and stored[i][0] == key:
                i += 1  # superseded
            if slot.value is not None:
                merged.append((key, slot.value))
        else:
            merged.append(stored[i])
            i += 1
    return merged


def _decode(key: str, data: bytes, into: Any) -> Any:
    try:
        value = codec.parse_json(data)
        return value if into is None else codec.from_json(into, value)
    except codec.DecodeError as error:
        shown = bytes(data[:200]).decode("utf-8", "replace")
        raise ProjectionError(
            f"the view row `{key}` does not decode: {error.message}; row: {shown}"
        ) from None
