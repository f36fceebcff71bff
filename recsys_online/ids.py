"""Id-to-row maps and amortised growth for the dense float32 state."""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np

_EMPTY = 0  # table slots hold row + 1; 0 marks a free slot
CACHE = 1 << 17  # ids whose rows a dict remembers (the ids in use): at most ~9 MB


class IdIndex:
    """Map external string ids to dense row numbers, assigning rows on first touch.

    Rows are never reused, so arrays indexed by row stay valid while the index grows.

    The map is an open-addressing hash table in flat arrays: each row's id hash (8 bytes)
    and a table of row numbers (4 bytes a slot, at most half full), beside the list of the
    ids themselves. A ``dict`` of every id would hold two more Python objects per id (the
    row number and its entry), about 45 bytes more per id. A dict of the ids looked up
    lately (up to ``CACHE``, emptied when full) answers first, at dict speed, so the ids
    in use cost no probing; the others are probed in the table, with array operations for
    a batch. Equal hashes are confirmed by comparing the ids, so distinct ids never share
    a row.

    Examples
    --------
    >>> ids = IdIndex()
    >>> ids.row("u1"), ids.row("u2"), ids.row("u1")
    (0, 1, 0)
    >>> ids.get("nobody") is None, len(ids), ids.id_of(1)
    (True, 2, 'u2')
    >>> ids.rows(["u2", "u3"]).tolist()
    [1, 2]
    >>> ids.get_many(["u3", "nobody", "u1"]).tolist()
    [2, -1, 0]
    """

    __slots__ = ("_cache", "_hashes", "_ids", "_mask", "_table")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._cache: dict[str, int] = {}
        self._hashes = array("q")
        self._table = array("i", bytes(4 * 8))
        self._mask = 7
        self.rows(list(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __getstate__(self) -> tuple[list[str]]:
        # Hashes of str differ between processes: rebuilt on load. (A tuple, never
        # empty: pickle skips __setstate__ for a false state.)
        return (self._ids,)

    def __setstate__(self, state: tuple[list[str]]) -> None:
        (ids,) = state
        self._ids = ids
        self._cache = {}
        self._hashes = array("q", np.fromiter(map(hash, ids), np.int64, len(ids)).tobytes())
        self._rebuild(_capacity(len(ids)))

    def row(self, key: str) -> int:
        """Row of ``key``, assigning the next row when the id is new."""
        row = self.get(key)
        return self._add(key) if row is None else row

    def get(self, key: str) -> int | None:
        """Row of ``key`` or ``None`` when the id was never seen."""
        row = self._cache.get(key)
        return self._lookup(key) if row is None else row

    def get_many(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of many ids as an int64 array, -1 where an id was never seen."""
        return self._rows(keys, assign=False)

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of many ids (assigning new ones, in order of first appearance) as int64."""
        return self._rows(keys, assign=True)

    def _rows(self, keys: Iterable[str], assign: bool) -> np.ndarray:
        keys = keys if isinstance(keys, list | tuple) else list(keys)
        cache = self._cache
        got = list(map(cache.get, keys))
        if None in got:  # ids not looked up lately: from the table
            missing = [j for j, r in enumerate(got) if r is None]
            wanted = [keys[j] for j in missing]
            found = self._find_many(wanted) if len(wanted) > 16 else map(self._lookup, wanted)
            added: dict[str, int] = {}  # new ids of this batch (the cache may be emptied)
            for j, key, r in zip(missing, wanted, found, strict=True):
                if r is None:
                    r = added.get(key)
                    if r is None:
                        r = added[key] = self._add(key) if assign else -1
                got[j] = r
        return np.fromiter(got, np.int64, len(got))

    def _lookup(self, key: str) -> int | None:
        """Row of ``key`` from the table (remembered when found), None when never seen."""
        h = hash(key)
        table, hashes, ids, mask = self._table, self._hashes, self._ids, self._mask
        slot = h & mask
        while (r := table[slot]) != _EMPTY:
            if hashes[r - 1] == h and ids[r - 1] == key:
                self._remember(key, r - 1)
                return r - 1
            slot = (slot + 1) & mask
        return None

    def _add(self, key: str) -> int:
        """Give ``key`` (not in the index) the next row."""
        h = hash(key)
        table, mask = self._table, self._mask
        slot = h & mask
        while table[slot] != _EMPTY:
            slot = (slot + 1) & mask
        row = len(self._ids)
        self._ids.append(key)
        self._hashes.append(h)
        table[slot] = row + 1
        self._remember(key, row)
        if 2 * len(self._ids) > len(table):
            self._rebuild(2 * len(table))
        return row

    def id_of(self, row: int) -> str:
        """The external id stored at ``row``."""
        return self._ids[row]

    @property
    def ids(self) -> list[str]:
        """All ids in row order (do not mutate)."""
        return self._ids

    # ---------------------------------------------------------------- the table
    def _remember(self, key: str, row: int) -> None:
        cache = self._cache
        if len(cache) >= CACHE:  # start afresh: the ids in use come back at once
            cache.clear()
        cache[key] = row

    def _find_many(self, keys: list[str]) -> list[int | None]:
        """Rows of ``keys`` from the table (None: never seen), probed with arrays; each
        hit is confirmed by comparing ids, and remembered."""
        hashes = np.fromiter(map(hash, keys), np.int64, len(keys))
        table = np.frombuffer(self._table, np.int32)
        stored = np.frombuffer(self._hashes, np.int64)
        rows = np.full(len(hashes), -1, np.int64)
        slot = hashes & self._mask
        todo = np.arange(len(hashes))
        while len(todo):
            r = table[slot].astype(np.int64) - 1
            hit = r >= 0
            same = np.zeros(len(todo), bool)
            same[hit] = stored[r[hit]] == hashes[hit]
            rows[todo[same]] = r[same]
            go_on = hit & ~same  # an occupied slot of another id: try the next one
            todo, hashes = todo[go_on], hashes[go_on]
            slot = (slot[go_on] + 1) & self._mask
        del table, stored  # release the views before the arrays may grow again
        ids, out = self._ids, []
        for key, r in zip(keys, rows.tolist(), strict=True):
            if r < 0:
                out.append(None)
            elif ids[r] == key:
                self._remember(key, r)
                out.append(r)
            else:  # equal hashes of different ids: look further along the table
                out.append(self._lookup(key))
        return out

    def _rebuild(self, size: int) -> None:
        """A table of ``size`` slots (a power of two) holding every row."""
        table = np.zeros(size, np.int32)
        mask = size - 1
        hashes = np.frombuffer(self._hashes, np.int64)
        todo = np.arange(len(hashes))
        slot = hashes & mask
        while len(todo):
            # Each free slot wanted takes the first row asking for it; the rest move on.
            free = table[slot] == _EMPTY
            taken, first = np.unique(slot[free], return_index=True)
            placed = np.flatnonzero(free)[first]
            table[taken] = todo[placed] + 1
            go_on = np.ones(len(todo), bool)
            go_on[placed] = False
            todo, slot = todo[go_on], (slot[go_on] + 1) & mask
        del hashes  # release the view before the arrays may grow again
        self._table = array("i", table.tobytes())
        self._mask = mask


def _capacity(n: int) -> int:
    """Table slots for ``n`` ids: a power of two, at least twice ``n`` (and 8)."""
    return max(8, 1 << (2 * n).bit_length())


def grown(array: np.ndarray, n_rows: int, fill: float = 0.0) -> np.ndarray:
    """Return ``array`` with at least ``n_rows`` rows, doubling capacity when it must grow.

    Examples
    --------
    >>> a = np.zeros((2, 3), dtype=np.float32)
    >>> grown(a, 2) is a, grown(a, 3).shape, grown(a, 9).shape
    (True, (4, 3), (9, 3))
    """
    if n_rows <= len(array):
        return array
    capacity = max(n_rows, 2 * len(array))
    out = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
