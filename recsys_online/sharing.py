"""The item side that several processes learn together.

Each process learns from its own users' ratings only (the ratings are split by user), but
every process ranks the whole catalog. Whatever a rating teaches about an *item* is then
seen by one process out of N. Processes exchange what their own learning changed on the
item side since the last exchange, and each adds in the others' (asynchronous
data-parallel learning). Every part is additive, so adding in the others' changes is the
same arithmetic as learning their ratings:

- item vectors and biases (the changes SGD made);
- tag embeddings and tag biases (the same);
- each rated item's recency-decayed popularity mass;
- co-occurrence pair weights: what each rated item added to the items before it in its
  user's recent history (each user's history stays in its own process).

Not exchanged: the blend's weights, and the item rating counts that damp co-occurrence
scores. Added in with a delay, the other processes' steps on the blend's few weights made
them overshoot and grow (measured between two workers sharing every 0.1 s: the popularity
weight reached 18 against about 1), and lists got worse. With the counts shared, two
processes exchanging after every batch ranked worse than with only their own counts
(NDCG@10 0.3122 / 0.3237 against 0.3348 / 0.3455 on a live-paced stream, ad hoc), and
no better than not sharing co-occurrence at all.

:class:`OwnChanges` keeps track of one model's own changes in its item rows;
:class:`ItemChanges` is what is exchanged, by ids, so processes whose row numbers differ
can apply it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

#: Pending co-occurrence pairs are summed per pair past this many (a long replay between
#: two exchanges stays bounded by the distinct pairs, not the ratings).
_PAIRS_PENDING = 1 << 20


def _f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


@dataclass
class ItemChanges:
    """One process's own changes to the item side since its last exchange, by id.

    ``items``/``dv``/``db``: item vector and bias changes. ``tags``/``de``/``dtb``: tag
    embedding and tag bias changes. ``rated``/``mass``: each rated item's popularity mass,
    :math:`\\log \\sum 2^{t/h}` over the ratings' times ``t`` (epoch seconds) for the
    half-life ``h``; ``now``: the latest rating's time. ``pair_items`` and
    ``pair_a``/``pair_b``/``pair_w``: co-occurrence weight ``pair_w[p]`` added to the pair
    ``(pair_items[pair_a[p]], pair_items[pair_b[p]])``.
    """

    items: list[str] = field(default_factory=list)
    dv: np.ndarray = field(default_factory=lambda: _f32(0, 0))
    db: np.ndarray = field(default_factory=lambda: _f32(0))
    tags: list[str] = field(default_factory=list)
    de: np.ndarray = field(default_factory=lambda: _f32(0, 0))
    dtb: np.ndarray = field(default_factory=lambda: _f32(0))
    rated: list[str] = field(default_factory=list)
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    now: float = 0.0
    pair_items: list[str] = field(default_factory=list)
    pair_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    pair_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    pair_w: np.ndarray = field(default_factory=lambda: _f32(0))

    def __len__(self) -> int:
        """Entries of every part: item rows, tag rows, rated items and pairs."""
        return len(self.items) + len(self.tags) + len(self.rated) + len(self.pair_w)


class OwnChanges:
    """What a model's own learning changed on the item side, in its item rows.

    The item and tag rows a rating touches keep their value from before the first such
    rating (the change is taken as a difference, so changes received from elsewhere are
    added to that baseline and stay out of it); the ratings' items and times and the
    co-occurrence pairs they added are kept as they come.
    """

    def __init__(self, items: dict | None = None) -> None:
        self.items: dict[int, tuple[np.ndarray, float]] = {} if items is None else items
        self.tags: dict[int, tuple[np.ndarray, float]] = {}
        self.rated: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pairs = 0
        self._distinct_pairs = 0  # at the last sum

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.__dict__.update(state)

    def before_learning(self, mf, items: np.ndarray) -> None:
        """Keep the vectors and biases of ``items`` and their tags as they are now, for
        those not kept since the last take."""
        base = self.items
        for row in set(items.tolist()) - base.keys():
            base[row] = (mf.V[row].copy(), float(mf.item_bias[row]))
        tags = mf.tags
        t = tags.rows[items][tags.weights[items] > 0]
        tag_base = self.tags
        for row in set(t.tolist()) - tag_base.keys():
            tag_base[row] = (mf.E[row].copy(), float(mf.tag_bias[row]))

    def learned(self, items: np.ndarray, times: np.ndarray, pairs) -> None:
        """Ratings of ``items`` at ``times`` were learned, adding co-occurrence ``pairs``
        (``(rows, others, weights)`` or None)."""
        self.rated.append(np.asarray(items, np.int64))
        self.times.append(np.asarray(times, np.float64))
        if pairs is not None:
            self.pairs.append(pairs)
            self._n_pairs += len(pairs[2])
            if self._n_pairs > max(_PAIRS_PENDING, 2 * self._distinct_pairs):
                # Summed again once the pending pairs double the distinct ones at the last
                # sum: more distinct pairs than the limit would be sorted at every call.
                self.pairs = [_summed_pairs(self.pairs)]
                self._n_pairs = self._distinct_pairs = len(self.pairs[0][2])

    @contextmanager
    def learning_elsewhere(self, mf, items: np.ndarray) -> Iterator[None]:
        """Learning of ``items`` rows (-1: new) that is not to be taken: what it changes in
        rows kept since the last take goes into their baselines, as changes received from
        elsewhere do (:meth:`added`)."""
        tags = mf.tags
        known = items[(items >= 0) & (items < len(tags.rows))]
        rows = np.array(sorted(set(known.tolist()) & self.items.keys()), np.int64)
        touched = tags.rows[known][tags.weights[known] > 0]
        tag_rows = np.array(sorted(set(touched.tolist()) & self.tags.keys()), np.int64)
        v, b = mf.V[rows].copy(), mf.item_bias[rows].copy()
        e, tb = mf.E[tag_rows].copy(), mf.tag_bias[tag_rows].copy()
        yield
        self.added(rows, mf.V[rows] - v, mf.item_bias[rows] - b, "items")
        self.added(tag_rows, mf.E[tag_rows] - e, mf.tag_bias[tag_rows] - tb, "tags")

    def added(self, rows: np.ndarray, dv: np.ndarray, db: np.ndarray, table: str) -> None:
        """Changes received from elsewhere for item (``table="items"``) or tag rows: added
        to the baselines of rows kept, so they do not count as own changes."""
        base = self.items if table == "items" else self.tags
        if base:
            for n, row in enumerate(rows.tolist()):
                if row in base:
                    v, b = base[row]
                    base[row] = (v + dv[n], b + float(db[n]))

    def renumber(self, new_row: np.ndarray) -> None:
        """Item rows renumbered through ``new_row`` (old -> new, -1: freed)."""
        self.items = {int(new_row[r]): b for r, b in self.items.items() if new_row[r] >= 0}
        rated = [new_row[r] for r in self.rated]
        self.times = [t[r >= 0] for t, r in zip(self.times, rated, strict=True)]
        self.rated = [r[r >= 0] for r in rated]
        pairs = []
        for a, b, w in self.pairs:
            a, b = new_row[a], new_row[b]
            ok = (a >= 0) & (b >= 0)
            pairs.append((a[ok], b[ok], w[ok]))
        self.pairs = pairs
        self._n_pairs = sum(len(w) for _, _, w in pairs)

    def take(self, mf, item_ids, tag_ids, log_rate: float) -> ItemChanges:
        """Every change since the last take, by id (``item_ids``/``tag_ids``: row -> id,
        ``log_rate``: the popularity's ln 2 / half-life); starts afresh."""
        k = mf.V.shape[1]
        out = ItemChanges(dv=_f32(0, k), de=_f32(0, k))
        if self.items:
            rows, out.dv, out.db = _moved(self.items, mf.V, mf.item_bias)
            out.items = item_ids(rows.tolist())
        if self.tags:
            rows, out.de, out.dtb = _moved(self.tags, mf.E, mf.tag_bias)
            out.tags = tag_ids(rows.tolist())
        if self.rated:
            rated, times = np.concatenate(self.rated), np.concatenate(self.times)
            if len(rated):
                rows, at = np.unique(rated, return_inverse=True)
                out.mass = np.full(len(rows), -np.inf)
                np.logaddexp.at(out.mass, at, times * log_rate)
                out.now = float(times.max())
                out.rated = item_ids(rows.tolist())
        if self.pairs:
            a, b, w = _summed_pairs(self.pairs)
            if len(w):
                rows, at = np.unique(np.concatenate((a, b)), return_inverse=True)
                out.pair_items = item_ids(rows.tolist())
                out.pair_a, out.pair_b = at.reshape(2, -1).astype(np.int32)
                out.pair_w = w
        self.__init__()
        return out


def _moved(base: dict, vectors: np.ndarray, biases: np.ndarray):
    """``(rows, vector changes, bias changes)`` of the rows in ``base`` (row -> their
    vector and bias then) since then."""
    rows = np.fromiter(base.keys(), np.int64, len(base))
    dv = (vectors[rows] - np.stack([v for v, _ in base.values()])).astype(np.float32)
    db = biases[rows] - np.fromiter((b for _, b in base.values()), np.float32, len(rows))
    return rows, dv, db


def _summed_pairs(pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, others, weights)`` parts concatenated, repeated pairs summed."""
    a = np.concatenate([p[0] for p in pairs]).astype(np.int64)
    b = np.concatenate([p[1] for p in pairs]).astype(np.int64)
    w = np.concatenate([p[2] for p in pairs])
    if not len(w):
        return a, b, w.astype(np.float32)
    n = int(max(a.max(), b.max())) + 1
    keys, at = np.unique(a * n + b, return_inverse=True)
    return keys // n, keys % n, np.bincount(at, weights=w).astype(np.float32)
