"""Which items' "more like this" lists a worker writes next, kept as arrays by item row.

A list is due:

- at once when its item is new or its tags changed;
- at once when an item it shows was deleted or changed its tags, or when a new or changed
  item would now enter it (its content score beats the list's last place);
- when a rating moved its co-occurrence, no sooner than ``every_s`` after its last write
  (a popular item is rated many times a second);
- when it is older than ``max_age_s``, so every list follows what moves around it.

Every decision is array operations over the catalog; per item row the tracker keeps two
times, the last place's score and the rows of the list last written.

Several workers share the lists: each item's list is written by one of them, the worker
that holds the ratings partition :func:`shard_of` the item (see :meth:`SimilarDue.owned`),
so no list is computed twice or flips between two workers' models.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Sequence

import numpy as np

from recsys_online.ids import grown, kept_rows, row_map

NEVER = np.inf
_EARLIEST = float(np.finfo(np.float64).min)  # the due time of a list never written
CHUNK = 256  # changed items scored against the catalog at once (bounds memory)

#: ``scores(rows, among)``: an upper bound of the score of each of items ``rows`` in the
#: lists of items ``among``, the best over ``rows`` for each of ``among``.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: ``(partitions held, partition count)``: the ratings partitions of one worker.
Shard = tuple[Collection[int], int]


def item_keys(items: Sequence[str]) -> np.ndarray:
    """A hash of each item id that every process computes alike (CRC-32 of its UTF-8):
    modulo the ratings partition count, the partition whose holder writes its list.

    >>> item_keys(["i1", "i2"]).tolist()
    [2755183147, 1026659217]
    """
    return np.fromiter((zlib.crc32(x.encode()) for x in items), np.int64, len(items))


def shard_of(items: Sequence[str], count: int) -> np.ndarray:
    """The ratings partition whose holder writes each item's "more like this" list.

    >>> shard_of(["i1", "i2", "i3"], 4).tolist()
    [3, 1, 3]
    """
    return item_keys(items) % count


class SimilarDue:
    """Due times of the items' similar lists, by item row (wall-clock seconds).

    >>> due = SimilarDue(max_age_s=3600.0)
    >>> due.changed(np.array([0, 1, 2]), now=100.0)
    >>> due.take(n_items=3, live=np.ones(3, bool), limit=2, now=100.0).tolist()
    [0, 1]
    >>> due.wrote(np.array([0, 1]), np.array([[1, 2], [2, -1]]), np.array([0.5, 0.0]), 100.0)
    >>> due.rated(np.array([0]), now=110.0, every_s=30.0)  # written 10 s ago: due at 130 s
    >>> due.take(3, np.ones(3, bool), 10, now=120.0).tolist()
    [2]
    >>> due.take(3, np.ones(3, bool), 10, now=130.0).tolist()
    [0]
    >>> due.deleted(2, now=131.0)  # items 0 and 1 list item 2: due at once
    >>> due.take(3, np.array([True, True, False]), 10, now=131.0).tolist()
    [0, 1]
    """

    def __init__(self, max_age_s: float = 3600.0) -> None:
        self.max_age_s = max_age_s
        self.due_at = np.zeros(0, np.float64)  # when the list must be written next
        self.written_at = np.zeros(0, np.float64)  # -inf: never written
        self.floor = np.zeros(0, np.float32)  # the last place's score (0 below k items)
        self.listed = np.zeros((0, 1), np.int32)  # rows of the list written, -1 past its end
        self.arrived: list[np.ndarray] = []  # rows changed since the last take
        self.gone: list[int] = []  # rows deleted since the last take
        self.to_score = np.zeros(0, np.int64)  # changed rows whose entering is not checked
        self.key = np.zeros(0, np.int64)  # :func:`item_keys` of each row; -1: not yet
        self.mine: np.ndarray | None = None  # rows this worker writes, as of the last take

    def __setstate__(self, state: dict) -> None:
        state.setdefault("key", np.zeros(0, np.int64))  # (snapshots from before shards)
        # Restored from a snapshot: what this worker wrote then may have been written
        # over by another since (it held the partitions meanwhile), so the first take
        # with a shard counts every list as gained, to be written again.
        state["mine"] = None
        self.__dict__.update(state)

    def ensure(self, n_items: int) -> None:
        if len(self.due_at) < n_items:
            self.due_at = grown(self.due_at, n_items, NEVER)
            self.written_at = grown(self.written_at, n_items, -np.inf)
            self.floor = grown(self.floor, n_items, np.inf)
            self.listed = grown(self.listed, n_items, -1)
        if len(self.key) < n_items:
            self.key = grown(self.key, n_items, -1)

    def owned(
        self, n_items: int, shard: Shard | None, ids_of: Callable[[list[int]], list[str]]
    ) -> np.ndarray | None:
        """Which of the first ``n_items`` rows' lists this worker writes (``None``: all,
        a worker alone): those whose item :func:`shard_of` a partition it holds. A list
        it gains (the partitions moved, or a snapshot restored) is written at once,
        whatever it wrote before: another worker may have written it since; one it
        loses is left to its new holder (:meth:`take`). ``ids_of`` names rows (each
        hashed once).

        >>> due = SimilarDue()
        >>> names = ["i1", "i2", "i3"]
        >>> due.owned(3, ({3}, 4), lambda rows: [names[r] for r in rows]).tolist()
        [True, False, True]
        """
        if shard is None:
            return None
        held, count = shard
        self.ensure(n_items)
        key = self.key[:n_items]
        missing = np.flatnonzero(key < 0)
        if len(missing):
            key[missing] = item_keys(ids_of(missing.tolist()))
        table = np.zeros(max(count, 1), bool)
        table[[p for p in held if 0 <= p < count]] = True
        return table[key % max(count, 1)]

    def changed(self, rows: np.ndarray, now: float) -> None:
        """New items, or items whose tags changed: their lists are due at once; the lists
        that show them or that they now enter are found at the next take (one pass over
        the catalog for every change since, not one per change: a catalog is read at
        start one upsert at a time)."""
        if not len(rows):
            return
        self.ensure(int(rows.max()) + 1)
        np.minimum.at(self.due_at, rows, now)
        self.arrived.append(rows)

    def rated(self, rows: np.ndarray, now: float, every_s: float) -> None:
        """Items whose co-occurrence moved: due ``every_s`` after their last write."""
        self.ensure(int(rows.max(initial=-1)) + 1)
        rows = np.unique(rows)
        when = np.maximum(now, self.written_at[rows] + every_s)
        self.due_at[rows] = np.minimum(self.due_at[rows], when)

    def deleted(self, row: int, now: float) -> None:
        """An item left the catalog: its own list is never due (the worker deletes its
        key), and the lists that show it are due at the next take."""
        self.ensure(row + 1)
        self.due_at[row], self.written_at[row], self.floor[row] = NEVER, -np.inf, np.inf
        self.gone.append(row)

    def _settle(self, now: float) -> None:
        """The lists that show an item changed since the last take: due now; those that
        show an item deleted since: due before any other (an app reading one would show
        the deleted item, so it must not wait behind lists merely due)."""
        if not self.arrived and not self.gone:
            return
        # (row_map: a table with -1 for rows not among them, and for the -1 of an empty
        # slot: a gather instead of np.isin's sort, 20x faster over a catalog)
        n = len(self.listed)
        arrived = np.concatenate([*self.arrived, np.zeros(0, np.int64)]).astype(np.int64)
        if len(arrived):
            self._due_now((row_map(arrived, n) >= 0)[self.listed].any(axis=1), now)
        if self.gone:
            showed = (row_map(np.array(self.gone, np.int64), n) >= 0)[self.listed].any(axis=1)
            self.due_at[showed] = -np.inf
        for row in self.gone:
            self.listed[row] = -1
        self.to_score = np.union1d(self.to_score, arrived)
        self.arrived, self.gone = [], []

    def _due_now(self, which: np.ndarray, now: float) -> None:
        self.due_at[which] = np.minimum(self.due_at[which], now)

    def take(
        self,
        n_items: int,
        live: np.ndarray,
        limit: int,
        now: float,
        scores: Scorer | None = None,
        mine: np.ndarray | None = None,
    ) -> np.ndarray:
        """Up to ``limit`` live rows whose list is due by ``now`` or older than
        ``max_age_s``, the longest due first; they count as written from now on. Only
        rows ``mine`` (:meth:`owned`; ``None``: every row) are taken.

        ``scores`` finds the lists the items changed since the last take now enter: those
        whose last place scores below an item's score (an upper bound of it is enough).
        It scores ``CHUNK`` changed items a call, so a bulk import is checked over several
        calls, with other work running in between.
        """
        self.ensure(n_items)
        self._settle(now)
        self._follow(mine, n_items)
        if scores is None:
            self.to_score = self.to_score[:0]
        if len(self.to_score):
            chunk, self.to_score = self.to_score[:CHUNK], self.to_score[CHUNK:]
            chunk = chunk[chunk < n_items]
            written = np.isfinite(self.floor[:n_items])  # (of the lists it writes)
            among = np.flatnonzero(written if mine is None else written & mine)
            if len(chunk) and len(among):
                self._due_now(among[scores(chunk, among) > self.floor[among]], now)
        # (A list never written is due at once, but after every list showing a deleted
        # item, which alone is due at -inf: argpartition leaves ties in any order.)
        aged = np.maximum(self.written_at[:n_items] + self.max_age_s, _EARLIEST)
        due_at = np.minimum(self.due_at[:n_items], aged)
        due_at[~live[:n_items]] = NEVER
        if mine is not None:
            due_at[~mine] = NEVER
        rows = np.flatnonzero(due_at <= now)
        if len(rows) > limit:  # (a partition, not a sort: thousands may be due at once)
            rows = np.sort(rows[np.argpartition(due_at[rows], limit - 1)[:limit]])
        self.due_at[rows], self.written_at[rows] = NEVER, now
        return rows

    def _follow(self, mine: np.ndarray | None, n_items: int) -> None:
        """Take ``mine`` as the rows this worker writes from now on. A row gained (or
        every row, the first time: a new tracker, or one restored from a snapshot) may
        have been written by another worker since this one last did, and a row lost
        will be: both count as never written (due at once while this worker writes
        them, not compared against for what enters them until then)."""
        before = self.mine
        self.mine = mine
        if mine is None:
            return
        if before is None:
            moved = mine
        else:
            was = np.zeros(n_items, bool)
            m = min(len(before), n_items)
            was[:m] = before[:m]
            moved = mine != was
        rows = np.flatnonzero(moved)
        if len(rows):
            self.written_at[rows], self.floor[rows], self.listed[rows] = -np.inf, np.inf, -1

    def wrote(self, rows: np.ndarray, listed: np.ndarray, floor: np.ndarray, now: float) -> None:
        """The lists of ``rows`` (taken at ``now``) were written, showing item rows
        ``listed`` (B, list length; -1 past a list's end), the last place of a full list
        scoring ``floor`` (0 for a shorter one: any item that scores enters it)."""
        self.written_at[rows] = now
        self.floor[rows] = floor
        if listed.shape[1] > self.listed.shape[1]:  # (a longer list length)
            wider = np.full((len(self.listed), listed.shape[1]), -1, np.int32)
            wider[:, : self.listed.shape[1]] = self.listed
            self.listed = wider
        self.listed[rows] = -1
        self.listed[rows, : listed.shape[1]] = listed

    def keep_items(self, keep: np.ndarray, new_row: np.ndarray) -> None:
        """Rows renumbered when deleted items are freed (``new_row``: old -> new, -1 for a
        row dropped and at index -1); what changed since the last take is settled first,
        while the lists still name the rows that go."""
        self._settle(-np.inf)
        self.due_at = kept_rows(self.due_at, keep, NEVER)
        self.written_at = kept_rows(self.written_at, keep, -np.inf)
        self.floor = kept_rows(self.floor, keep, np.inf)
        self.listed = new_row[kept_rows(self.listed, keep, -1)]
        self.key = kept_rows(self.key, keep, -1)
        if self.mine is not None:
            self.mine = kept_rows(self.mine, keep, False)
        moved = new_row[self.to_score]
        self.to_score = moved[moved >= 0].astype(np.int64)
