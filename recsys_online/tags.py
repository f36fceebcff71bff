"""Item tags as padded dense arrays, shared by the factor and content models."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recsys_online.events import MAX_TAGS, weight_problem
from recsys_online.ids import IdIndex, grown, kept_rows


def check_weights(tags: Mapping[str, float]) -> None:
    """Raise ``ValueError`` unless there are at most ``MAX_TAGS`` tags and every weight is
    a finite number in ``[MIN_WEIGHT, MAX_WEIGHT]``
    (:func:`recsys_online.events.weight_problem`).

    A weight of 0 (or weights summing to 0) would divide by zero in the shares and spread
    NaN through learning to every user; one near float32's limit would overflow. Every
    item's tag rows are as wide as the widest item's: one item of 2,000 tags made the
    model's tag arrays 100 MB, and "more like this" compare tags pairwise (gigabytes).

    >>> check_weights({"jazz": 1.0, "live": 0.5})
    >>> check_weights({"jazz": 0.0})
    Traceback (most recent call last):
    ...
    ValueError: tag 'jazz': weight 0.0 is not positive
    >>> check_weights({f"t{j}": 1.0 for j in range(65)})
    Traceback (most recent call last):
    ...
    ValueError: 65 tags, more than 64
    """
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags, more than {MAX_TAGS}")
    for tag, weight in tags.items():
        problem = weight_problem(weight)
        if problem is not None:
            raise ValueError(f"tag {tag!r}: weight {weight!r} {problem}")


class ItemTags:
    """Each item's tags as rows of ``(tag_row, weight)`` padded to the widest item.

    ``rows[i, j]`` is the tag row of the item's j-th tag and ``weights[i, j]`` its raw
    weight (0 marks padding); :meth:`shares_of` normalises an item's weights to sum to
    one, which is how tag embeddings combine into an item vector. ``tag_df`` counts the live items
    carrying each tag, for inverse document frequency.

    Examples
    --------
    >>> tags = ItemTags()
    >>> tags.set(0, {"drama": 1.0, "war": 3.0}).tolist()
    [0, 1]
    >>> _ = tags.set(2, {"comedy": 1.0})
    >>> tags.rows[:3].tolist(), tags.shares_of(0).tolist(), tags.tag_df.tolist()
    ([[0, 1], [0, 0], [2, 0]], [0.25, 0.75], [1, 1, 1])
    >>> tags.clear(0)
    >>> tags.names(0), tags.tag_df.tolist()
    ([], [0, 0, 1])
    """

    def __init__(self) -> None:
        self.index = IdIndex()
        self.rows = np.zeros((0, 1), dtype=np.int32)
        self.weights = np.zeros((0, 1), dtype=np.float32)
        self._df = np.zeros(0, dtype=np.int64)
        self.n_items = 0
        self.changes = 0  # calls of set: what was computed from the tags may be stale

    def __setstate__(self, state: dict) -> None:
        state.pop("shares", None)  # (pickled when shares were stored: now computed)
        state.setdefault("changes", 0)
        self.__dict__.update(state)

    def shares_of(self, item_rows: np.ndarray | int) -> np.ndarray:
        """The items' tag weights normalised to sum to one (zeros for no tags); rows of
        any shape, shares of shape ``(*rows.shape, width)``."""
        w = self.weights[item_rows]
        # (No tags: weights of 0, divided by a tiny number instead of 0.)
        return w / np.maximum(w.sum(axis=-1, keepdims=True), np.float32(1e-30))

    @property
    def tag_df(self) -> np.ndarray:
        """Live items carrying each tag, indexed by tag row."""
        return self._df[: self.n_tags]

    @property
    def n_tags(self) -> int:
        """How many distinct tags were ever seen."""
        return len(self.index)

    def ensure_items(self, n_items: int) -> None:
        """Make room for item rows below ``n_items``."""
        self.rows = grown(self.rows, n_items)
        self.weights = grown(self.weights, n_items)
        self.n_items = max(self.n_items, n_items)

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep item rows ``keep`` only (ascending), renumbered ``0, 1, ...``. The rows
        dropped must hold no tags (deleted items: :meth:`clear`), so counts stand. The
        rows narrow to the widest item kept: one wide item, deleted, no longer widens
        every item's (and "more like this" compares tags pairwise, per width squared).

        >>> tags = ItemTags()
        >>> _ = tags.set(0, {f"t{j}": 1.0 for j in range(40)}); _ = tags.set(1, {"a": 1.0})
        >>> tags.clear(0); tags.keep_items(np.array([1])); tags.rows.shape[1], tags.names(0)
        (1, ['a'])
        """
        rows, weights = kept_rows(self.rows, keep), kept_rows(self.weights, keep)
        width = max(1, int((weights > 0).sum(axis=1).max(initial=0)))
        if width < rows.shape[1]:  # (tags are kept from the front of each row)
            rows, weights = rows[:, :width].copy(), weights[:, :width].copy()
        self.rows, self.weights = rows, weights
        self.n_items = len(keep)
        self.changes += 1

    def set(self, item_row: int, tags: Mapping[str, float]) -> np.ndarray:
        """Replace the tags of ``item_row``; return the rows of every tag touched.

        Weights must be finite and in ``(0, MAX_WEIGHT]`` (``ValueError`` otherwise, with
        nothing changed).
        """
        check_weights(tags)
        self.changes += 1
        self.ensure_items(item_row + 1)
        old = self.rows[item_row][self.weights[item_row] > 0]
        self._df[old] -= 1
        tag_rows = np.array([self.index.row(t) for t in tags], dtype=np.int32)
        weights = np.array(list(tags.values()), dtype=np.float32)
        self._df = grown(self._df, self.n_tags)
        if len(tag_rows) > self.rows.shape[1]:
            width = len(tag_rows)
            self.rows, self.weights = (_widened(a, width) for a in (self.rows, self.weights))
        self.rows[item_row] = 0
        self.weights[item_row] = 0.0
        n = len(tag_rows)
        self.rows[item_row, :n] = tag_rows
        self.weights[item_row, :n] = weights
        self._df[tag_rows] += 1
        return np.union1d(old, tag_rows).astype(np.int32)

    def set_many(
        self, item_rows: np.ndarray | list[int], tags: list[Mapping[str, float]]
    ) -> np.ndarray:
        """:meth:`set` for many items at once (the last of an item's entries wins), in a
        few array operations rather than a dozen per item; the tag rows touched.

        >>> tags = ItemTags()
        >>> tags.set_many([0, 2, 0], [{"drama": 1.0}, {"comedy": 2.0}, {"war": 3.0}]).tolist()
        [1, 2]
        >>> tags.rows[:3].tolist(), tags.weights[:3].tolist(), tags.tag_df.tolist()
        ([[2], [0], [1]], [[3.0], [0.0], [2.0]], [0, 1, 1])
        """
        item_rows = np.asarray(item_rows, np.int64)
        if len(item_rows) != len(tags):
            raise ValueError(f"{len(item_rows)} item rows need as many tag mappings")
        for item_tags in tags:
            check_weights(item_tags)
        if not len(item_rows):
            return np.zeros(0, np.int32)
        row_of = self.index.row
        for item_tags in tags:  # every tag gets its row in order, as one call each would
            for tag in item_tags:
                row_of(tag)
        # The last entry of each item row: ``unique`` of the reversed rows finds it.
        _, last = np.unique(item_rows[::-1], return_index=True)
        keep = np.sort(len(item_rows) - 1 - last)
        rows, kept = item_rows[keep], [tags[j] for j in keep.tolist()]
        self.changes += 1
        self.ensure_items(int(rows.max()) + 1)
        old = self.rows[rows][self.weights[rows] > 0]
        np.subtract.at(self._df, old, 1)
        counts = np.fromiter(map(len, kept), np.int64, len(kept))
        flat = np.fromiter((row_of(t) for item_tags in kept for t in item_tags), np.int32)
        weights = np.fromiter((w for item_tags in kept for w in item_tags.values()), np.float32)
        self._df = grown(self._df, self.n_tags)
        width = int(counts.max(initial=0))
        if width > self.rows.shape[1]:
            self.rows, self.weights = (_widened(a, width) for a in (self.rows, self.weights))
        self.rows[rows] = 0
        self.weights[rows] = 0.0
        at = np.repeat(rows, counts)
        place = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.rows[at, place] = flat
        self.weights[at, place] = weights
        np.add.at(self._df, flat, 1)
        return np.union1d(old, flat).astype(np.int32)

    def clear(self, item_row: int) -> None:
        """Drop an item's tags (it left the catalog)."""
        if item_row < self.n_items:
            self.set(item_row, {})

    def names(self, item_row: int) -> list[str]:
        """Tag names of an item, heaviest first."""
        if item_row >= self.n_items:
            return []
        w = self.weights[item_row]
        order = np.argsort(-w, kind="stable")
        return [self.index.id_of(int(self.rows[item_row, j])) for j in order if w[j] > 0]


def _widened(array: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(array), width), dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out
