"""Id-to-row maps and amortised growth for the dense float32 state."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import pairwise

import numpy as np

_EMPTY = 0  # table slots hold row + 1; 0 marks a free slot
CACHE = 1 << 14  # ids a dict remembers each way (the ids in use): about 2 MB at most
_CODEC = ("utf-8", "surrogatepass")  # any str round-trips, even a lone surrogate


class IdIndex:
    """Map external string ids to dense row numbers, assigning rows on first touch.

    Rows are never reused, so arrays indexed by row stay valid while the index grows.

    Everything is held in flat arrays, with no Python object per id: the ids' UTF-8 bytes
    end to end with each one's end offset (8 bytes plus the id's length), each row's id
    hash (8 bytes), and an open-addressing table of row numbers (4 bytes a slot, at most
    half full). A list of the ids as ``str`` would cost about 55 bytes more per id, and a
    ``dict`` of them 45 more again. Two small dicts serve the ids in use at dict speed:
    the ids looked up lately (up to ``CACHE``, emptied when full) answer first, so they
    cost no probing, and the ids of rows named lately (:meth:`ids_of`, the same bound)
    cost no decoding. The others are probed in the table, with array operations for a
    batch. Equal hashes are confirmed by comparing the ids, so distinct ids never share
    a row.

    Examples
    --------
    >>> ids = IdIndex()
    >>> ids.row("u1"), ids.row("u2"), ids.row("u1")
    (0, 1, 0)
    >>> ids.get("nobody") is None, len(ids), ids.id_of(1)
    (True, 2, 'u2')
    >>> ids.rows(["u2", "u3"]).tolist(), ids.ids_of([2, 0])
    ([1, 2], ['u3', 'u1'])
    >>> ids.get_many(["u3", "nobody", "u1"]).tolist()
    [2, -1, 0]
    """

    __slots__ = ("_blob", "_cache", "_ends", "_hashes", "_mask", "_names", "_table")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._blob = bytearray()  # every id's UTF-8 bytes, end to end, in row order
        self._ends = array("q")  # where each row's id ends in the blob
        self._cache: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._hashes = array("q")
        self._table = array("i", bytes(4 * 8))
        self._mask = 7
        self.rows(list(ids))

    def __len__(self) -> int:
        return len(self._ends)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __getstate__(self) -> tuple[bytes, bytes]:
        # Hashes of str differ between processes: rebuilt on load. Offsets little-endian,
        # whatever the machine.
        return bytes(self._blob), np.frombuffer(self._ends, np.int64).astype("<i8").tobytes()

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 1:  # (pickled when the ids were a list of str)
            (ids,) = state
            self.__init__(())
            for key in ids:
                self._append(key)  # (its hash too)
        else:
            blob, ends = state
            native = np.frombuffer(ends, "<i8").astype(np.int64)
            self._blob, self._ends = bytearray(blob), array("q", native.tobytes())
            self._cache, self._names = {}, {}
            n = len(self._ends)
            hashes = np.fromiter(map(hash, self._decoded()), np.int64, n)
            self._hashes = array("q", hashes.tobytes())
        self._rebuild(_capacity(len(self._ends)))

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
        table, hashes, mask = self._table, self._hashes, self._mask
        slot = h & mask
        while (r := table[slot]) != _EMPTY:
            if hashes[r - 1] == h and self._is(r - 1, key):
                self._remember(key, r - 1)
                return r - 1
            slot = (slot + 1) & mask
        return None

    def _is(self, row: int, key: str) -> bool:
        """Whether ``row`` holds the id ``key`` (never, for a key that is not a ``str``)."""
        if not isinstance(key, str):
            return False
        ends = self._ends
        return self._blob[ends[row - 1] if row else 0 : ends[row]] == key.encode(*_CODEC)

    def _append(self, key: str) -> int:
        """Store ``key`` as the next row (its hash and bytes; not yet in the table)."""
        if not isinstance(key, str):
            raise TypeError(f"ids are str, not {type(key).__name__}: {key!r}")
        self._blob += key.encode(*_CODEC)
        self._ends.append(len(self._blob))
        self._hashes.append(hash(key))
        return len(self._ends) - 1

    def _add(self, key: str) -> int:
        """Give ``key`` (not in the index) the next row."""
        row = self._append(key)
        table, mask = self._table, self._mask
        slot = self._hashes[row] & mask
        while table[slot] != _EMPTY:
            slot = (slot + 1) & mask
        table[slot] = row + 1
        self._remember(key, row)
        if 2 * len(self._ends) > len(table):
            self._rebuild(2 * len(table))
        return row

    def id_of(self, row: int) -> str:
        """The external id stored at ``row``."""
        name = self._names.get(row)
        return self.ids_of([row])[0] if name is None else name

    def ids_of(self, rows: Iterable[int]) -> list[str]:
        """The external ids of many rows (a list of ints), in order."""
        rows = rows if isinstance(rows, list) else list(rows)
        names = self._names
        out = list(map(names.get, rows))
        if None in out:  # rows not named lately: decoded from the blob, and remembered
            blob, ends = self._blob, self._ends
            for j, r in enumerate(rows):
                if out[j] is None:
                    if not 0 <= r < len(ends):
                        raise IndexError(f"row {r} out of range ({len(ends)} ids)")
                    if len(names) >= CACHE:
                        names.clear()
                    out[j] = names[r] = blob[ends[r - 1] if r else 0 : ends[r]].decode(*_CODEC)
        return out  # type: ignore[return-value]

    @property
    def ids(self) -> list[str]:
        """All ids in row order (a new list: decodes every id)."""
        return self._decoded()

    def _decoded(self) -> list[str]:
        blob = self._blob
        return [blob[a:b].decode(*_CODEC) for a, b in pairwise([0, *self._ends])]

    def subset(self, rows: np.ndarray) -> IdIndex:
        """A new index of the ids at ``rows`` (ascending), renumbered ``0, 1, ...``: what
        is left when the other rows are dropped (:meth:`Recommender.compact`).

        >>> IdIndex(["a", "b", "c", "d"]).subset(np.array([1, 3])).ids
        ['b', 'd']
        """
        rows = np.asarray(rows, np.int64)
        ends = np.frombuffer(self._ends, np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lengths = ends[rows] - starts[rows]
        new_ends = np.cumsum(lengths)
        # Byte j of the new blob: its id's start in the old blob plus its place in the id.
        shift = np.repeat(starts[rows] - (new_ends - lengths), lengths)
        blob = np.frombuffer(bytes(self._blob), np.uint8)
        out = IdIndex()
        out._blob = bytearray(blob[shift + np.arange(len(shift))].tobytes())
        out._ends = array("q", new_ends.astype(np.int64).tobytes())
        out._hashes = array("q", np.frombuffer(self._hashes, np.int64)[rows].tobytes())
        del ends  # release the view of this index's offsets
        out._rebuild(_capacity(len(rows)))
        return out

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
        out = []
        for key, r in zip(keys, rows.tolist(), strict=True):
            if r < 0:
                out.append(None)
            elif self._is(r, key):
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


def kept_rows(a: np.ndarray, keep: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Rows ``keep`` of ``a`` as a new array (``fill`` for rows past its end: arrays
    that grow lazily may be shorter than the rows in use).

    >>> kept_rows(np.array([5, 6, 7]), np.array([0, 2, 4]), fill=-1).tolist()
    [5, 7, -1]
    """
    out = np.full((len(keep), *a.shape[1:]), fill, a.dtype)
    inside = keep < len(a)
    out[inside] = a[keep[inside]]
    return out


def row_map(keep: np.ndarray, n: int) -> np.ndarray:
    """Old row -> new row when rows ``keep`` (ascending) of ``n`` stay, renumbered ``0,
    1, ...``: -1 for a row dropped, and for index -1 (the extra last entry), so an empty
    slot marked -1 stays -1 through the map.

    >>> row_map(np.array([1, 3]), 4)[np.array([0, 1, 2, 3, -1])].tolist()
    [-1, 0, -1, 1, -1]
    """
    out = np.full(n + 1, -1, np.int32)
    out[keep] = np.arange(len(keep), dtype=np.int32)
    return out


def _capacity(n: int) -> int:
    """Table slots for ``n`` ids: a power of two, at least twice ``n`` (and 8)."""
    return max(8, 1 << (2 * n).bit_length())


GROWTH = 1.25  # capacity grows by a quarter (at least 8 rows) when an array must grow


def grown(array: np.ndarray, n_rows: int, fill: float = 0.0) -> np.ndarray:
    """Return ``array`` with at least ``n_rows`` rows, growing capacity by ``GROWTH``.

    A quarter, not doubling: the unused rows average an eighth of the array instead of a
    third, and while it grows the old and new arrays take 2.25x its size instead of 3x;
    each row is copied about four times over the array's life, not once, which is cheap
    beside learning it.

    Examples
    --------
    >>> a = np.zeros((2, 3), dtype=np.float32)
    >>> grown(a, 2) is a, grown(a, 3).shape, grown(a, 17).shape, grown(np.zeros(40), 41).shape
    (True, (10, 3), (17, 3), (50,))
    """
    if n_rows <= len(array):
        return array
    capacity = max(n_rows, int(GROWTH * len(array)), len(array) + 8)
    out = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
