"""The hybrid recommender: learns from each event and ranks the catalog for a user."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

import numpy as np

from recsys_online.content import ContentModel, best_tags
from recsys_online.cooc import COUNT_FLOOR, CoOccurrence
from recsys_online.events import MAX_SCALE
from recsys_online.factors import FactorModel, FactorParams, ItemVectors, check_numbers
from recsys_online.ids import IdIndex, grown, row_map
from recsys_online.popularity import Popularity
from recsys_online.ranking import as_float32, padded_width, top_k_rows
from recsys_online.sharing import ItemChanges, OwnChanges
from recsys_online.tags import ItemTags, check_weights

SIGNALS = ("mf", "content", "cooc", "pop", "recent_tags", "recent_factors")

#: The signals ``hybrid`` blends by default: all but ``recent_factors`` (similarity to the
#: user's last items by factors). Leaving it out moved NDCG@10 by -0.2% to +0.1% on four
#: streams, and it cost 32 of the ranking product's 116 columns per item. ``session`` has
#: all six.
HYBRID = ("mf", "content", "cooc", "pop", "recent_tags")

#: Ranking signals of each named model; ``hybrid`` blends them with learned weights.
MODELS: dict[str, tuple[str, ...]] = {
    "hybrid": HYBRID,
    "session": SIGNALS,
    "mf": ("mf",),
    "content": ("content",),
    "cooc": ("cooc",),
    "popularity": ("pop",),
}


#: The source of a reason by the signal that gave it, at the signal's index + 1 (first:
#: no signal could, -1). Factors and co-occurrence name an item the user liked.
_SOURCE_OF_SIGNAL = (
    "collaborative",
    "collaborative",
    "content",
    "co-occurrence",
    "popular",
    "content",
    "collaborative",
)
#: The reason of a signal that names nothing, at the same index; the others' are built.
_FIXED_REASON = (
    "close to your tastes",
    "close to your tastes",
    "matches your tags",
    "because you liked",
    "popular now",
    "matches your tags",
    "close to your tastes",
)
#: Up to this many users, the catalog is scored one user at a time: OpenBLAS's
#: matrix-vector product is 2x faster per user than its matrix product on 2-4 rows.
_GEMV_ROWS = 4
_OUT_LIMIT = 1 << 24  # floats (64 MB): the largest scores buffer kept between calls
#: A user's ratings that reasons look at: their last this many (``_recent_rated``).
_RECENT = 50
_BLEND_STEP = 256  # relevant ratings per step on the blend weights (the worker's: 64)


# "More like this": the reason and source of an item led by content (0), co-occurrence (1).
_SIMILAR_REASONS = ("similar to", "rated together with")
_SIMILAR_SOURCES = ("content", "co-occurrence")
_SIMILAR_CHUNK = 256  # items whose "more like this" lists are scored at once
#: What a shared-tag content cosine counts in a "more like this" score, against 1 for the
#: heaviest co-occurrence (the default of ``RecommenderConfig.similar_content_weight``):
#: the users' own next items lead, tags fill in and break ties.
#: On three synthetic streams (``benchmarks/bench_similar.py``), the next liked item was
#: in the previous item's top 10 for 33.5%, 35.0% and 43.1% of ratings at 0.1, against
#: 22.3%, 27.4% and 24.6% with content and co-occurrence counted alike (1.0).
SIMILAR_CONTENT_WEIGHT = 0.1


class Recommendation(NamedTuple):
    """One ranked item with the signal that placed it there and a readable reason.

    ``source`` is one of ``collaborative``, ``content``, ``co-occurrence``, ``popular``;
    ``because`` names the item the user liked that explains it, where there is one.
    An immutable named tuple: a batch of a thousand lists builds ten thousand of them,
    2.5x faster than as a frozen dataclass.
    """

    item: str
    score: float
    reason: str
    source: str
    because: str | None = None


@dataclass(frozen=True, slots=True)
class _UserContext:
    """Per-call facts about the users being ranked, shared by scoring and explaining."""

    tags: np.ndarray  # (B, D) unit mean content vector of each user's recent items
    factors: np.ndarray  # (B, k) unit mean factor direction of each user's recent items
    ring: tuple[np.ndarray, np.ndarray] | None  # co-occurrence neighbours, weights (B, L, M)
    profile: np.ndarray  # (B, D) unit content profile of each user


def _count(v: float) -> bool:
    return isinstance(v, int | np.integer) and v >= 1


#: (field, test, the rule a ``ValueError`` states) for :class:`RecommenderConfig`'s numbers.
_CONFIG_RULES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("relevant", math.isfinite, "a finite number"),
    ("content_dim", _count, "an integer >= 1"),
    ("cooc_window", _count, "an integer >= 1"),
    ("cooc_neighbours", _count, "an integer >= 1"),
    ("cooc_decay", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("cooc_beta", lambda v: 0.0 <= v < math.inf, "a finite number >= 0"),
    ("cooc_count_floor", lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    ("popularity_half_life", lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    ("cold_ratings", lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    ("blend_lr", lambda v: 0.0 <= v < math.inf, "a finite number >= 0"),
    ("blend_l2", lambda v: 0.0 <= v < math.inf, "a finite number >= 0"),
    ("n_negatives", _count, "an integer >= 1"),
    ("history_limit", _count, "an integer >= 1"),
    ("seed", lambda v: isinstance(v, int | np.integer) and v >= 0, "an integer >= 0"),
)


@dataclass
class RecommenderConfig:
    """Settings of :class:`Recommender`; every field is a keyword of its own."""

    signals: tuple[str, ...] = HYBRID
    factors: FactorParams = field(default_factory=FactorParams)
    scale: tuple[float, float] = (1.0, 5.0)
    relevant: float = 4.0
    content_dim: int = 64
    cooc_window: int = 10
    cooc_neighbours: int = 50
    cooc_decay: float = 0.8
    cooc_beta: float = 0.5
    cooc_count_floor: float = COUNT_FLOOR
    popularity_half_life: float = 7 * 86400.0
    cold_ratings: float = 5.0
    learn_blend: bool = True
    blend_lr: float = 0.05
    blend_l2: float = 1e-4
    n_negatives: int = 4
    history_limit: int = 2000
    seed: int = 42
    # "More like this": a shared tag's content cosine against the heaviest co-occurrence.
    similar_content_weight: float = SIMILAR_CONTENT_WEIGHT

    def __post_init__(self) -> None:
        if not 0.0 <= self.similar_content_weight < float("inf"):
            raise ValueError(
                f"similar_content_weight must be >= 0, got {self.similar_content_weight}"
            )
        unknown = set(self.signals) - set(SIGNALS)
        if unknown or not self.signals:
            raise ValueError(f"signals must be a non-empty subset of {SIGNALS}, got {self.signals}")
        lo, hi = self.scale
        # (An unbounded scale would let an infinite rating through; ratings near float32's
        # limit made a user's float32 sums infinite after 4 ratings, and through the
        # blend weights every user's list empty.)
        if not -MAX_SCALE <= lo < hi <= MAX_SCALE:
            raise ValueError(
                f"scale must be (low, high), finite, within +-{MAX_SCALE:g}, with low < high, "
                f"got {self.scale}"
            )
        check_numbers(self, _CONFIG_RULES)
        if not isinstance(self.factors, FactorParams):
            raise ValueError(f"factors must be a FactorParams, got {self.factors!r}")


class Recommender:
    """Online hybrid recommender over string ids: learn from events, rank the catalog.

    Rating predictions come from biased MF with tag embeddings (:class:`FactorModel`).
    Ranking blends four signals, each computed for the whole catalog with array code:
    MF affinity, content cosine (:class:`ContentModel`), recent-item co-occurrence
    (:class:`CoOccurrence`) and decayed popularity (:class:`Popularity`). The blend has a
    weight per signal for cold users and one for warm users, mixed by
    ``alpha = n / (n + cold_ratings)`` where ``n`` is the user's rating count, and
    learned online by a pairwise logistic (BPR) step on each relevant rating against
    sampled negatives, taken from the state before the rating is learned.

    Examples
    --------
    >>> rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
    >>> rec.upsert_item("alien", {"scifi": 1.0, "horror": 1.0})
    >>> rec.upsert_item("heat", {"crime": 1.0})
    >>> rec.upsert_item("solaris", {"scifi": 1.0})
    >>> rec.learn_rating("ann", "alien", 5.0, timestamp=1.0)
    >>> rec.learn_rating("bob", "heat", 4.0, timestamp=2.0)
    >>> top = rec.recommend("ann", k=2)
    >>> [r.item for r in top], top[0].source
    (['solaris', 'heat'], 'content')
    >>> top[0].reason
    'matches your tags scifi'
    >>> rec.recommend("stranger", k=1)[0].reason
    'popular now'
    >>> rec.upsert_user("cat", {"crime": 1.0})
    >>> [(r.item, r.reason) for r in rec.recommend("cat", k=1)]
    [('heat', 'matches your tags crime')]
    >>> rec.delete_item("solaris")
    >>> [r.item for r in rec.recommend("ann", k=2)]
    ['heat']
    """

    def __init__(self, config: RecommenderConfig | None = None) -> None:
        self.config = cfg = config or RecommenderConfig()
        self.users, self.items = IdIndex(), IdIndex()
        self.tags = ItemTags()
        self.mf = FactorModel(cfg.factors, self.tags, scale=cfg.scale)
        self.vectors = ItemVectors(self.mf)  # the item vectors, stacked for ranking
        self.content = ContentModel(self.tags, dim=cfg.content_dim)
        self.cooc = CoOccurrence(
            cfg.cooc_window,
            cfg.cooc_neighbours,
            cfg.cooc_decay,
            cfg.cooc_beta,
            cfg.cooc_count_floor,
        )
        self.popularity = Popularity(cfg.popularity_half_life)
        self.rng = np.random.default_rng(cfg.seed)
        self.active = np.zeros(0, bool)
        self.deleted = np.zeros(0, bool)
        self.user_n = np.zeros(0, np.float32)
        # (float64: in float32, a sum of ratings near the scale's 1e6 bound lost units
        # per addition, and the user's mean left the scale)
        self.user_sum = np.zeros(0, np.float64)
        self.history: list[array] = []  # item rows each user rated, oldest first
        self.history_ratings: list[array] = []
        # Rated item rows that left a heavy user's history (past ``history_limit``): still
        # never recommended to that user again. Distinct, so at most the catalog per user.
        self._older: dict[int, array] = {}
        # Compacted items' raters (id -> user rows): an id listed again is never shown
        # to them (see :meth:`compact`).
        self._forgotten = ForgottenRaters()
        self.n_events = 0
        self.now = 0.0
        self._sizes = (-1, -1)  # (users, items) storage was last grown for
        self._declared: dict[int, np.ndarray] = {}  # user row -> declared tag vector
        # Declared tags no item carried yet (they count once one does): tag -> user rows,
        # and those users' declarations as sent, to compute again then.
        self._waiting: dict[str, set[int]] = {}
        self._declared_tags: dict[int, dict[str, float]] = {}
        self._declared_names: dict[int, tuple[str, ...]] = {}  # every declaring user's
        # Stacked item vectors for ranking, one column per item (``(columns, width)``):
        # a few users times the catalog multiply 1.3-3.5x faster than with rows per item.
        self._side: np.ndarray | None = None
        self._x_width = 0  # content columns in the stacked vectors (see _layout)
        self._columns: dict[str, slice] = {}
        self._side_key: tuple = ()
        self._side_dirty: set[int] = set()  # item rows changed since the last ranking
        self._pop_key: tuple = ()
        self._scores: np.ndarray | None = None  # see _out
        # What this model's own learning changed on the item side since the last
        # take_item_changes (None: not kept).
        self._own: OwnChanges | None = None
        n = len(SIGNALS)
        self._use = np.array([s in cfg.signals for s in SIGNALS], np.float32)
        self.w_cold = self._use.copy()
        self.w_warm = self._use.copy()
        self.signal_scale = np.ones(n, np.float32)
        self.signal_mean = np.zeros(n, np.float64)
        self._scale_sq = np.ones(n, np.float64)
        self._scale_n = 0

    def __getstate__(self) -> dict:
        """Pickled without the ranking's caches (rebuilt at the first ranking call)."""
        state = self.__dict__.copy()
        state.update(_scores=None, _side=None, _side_key=(), _side_dirty=set(), _pop_key=())
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_older", {})  # (pickled before it existed)
        forgotten = state.get("_forgotten")
        if not isinstance(forgotten, ForgottenRaters):  # (pickled before, or as a dict)
            state["_forgotten"] = ForgottenRaters()
            for item, raters in (forgotten or {}).items():
                state["_forgotten"].add(item, raters)
        state.setdefault("_waiting", {})
        state.setdefault("_declared_tags", {})
        state.setdefault("_declared_names", {})
        if "_item_base" in state:  # (pickled when only item vectors were shared)
            base = state.pop("_item_base")
            state["_own"] = None if base is None else OwnChanges(base)
        if "vectors" not in state:  # (pickled when the model kept them)
            state["vectors"] = ItemVectors(state["mf"])
        state["user_sum"] = np.asarray(state["user_sum"], np.float64)  # (float32 before)
        self.__dict__.update(state)

    def _vectors(self) -> ItemVectors:
        """The stacked item vectors, with every row written (after a load, new rows or a
        full refresh of the model)."""
        vectors = self.vectors
        if vectors.behind():
            vectors.update(np.zeros(0, np.int64))
        return vectors

    # ------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def _ensure(self) -> None:
        nu, ni = self.n_users, self.n_items
        if (nu, ni) == self._sizes:
            return
        self._sizes = (nu, ni)
        self.mf.ensure(nu, ni)
        self.content.ensure(nu, ni)
        self.cooc.ensure(nu, ni)
        self.popularity.ensure(ni)
        if ni > len(self.active) or ni > len(self.deleted):
            old = len(self.active)
            self.active = grown(self.active, ni)
            self.deleted = grown(self.deleted, ni)
            self.active[old:] = False
        self.user_n = grown(self.user_n, nu)
        self.user_sum = grown(self.user_sum, nu)
        while len(self.history) < nu:
            self.history.append(array("i"))
            self.history_ratings.append(array("f"))

    # ------------------------------------------------------------ catalog
    def upsert_item(
        self, item: str, tags: Mapping[str, float] | None = None, timestamp: float | None = None
    ) -> None:
        """Add an item, or replace its tags; a new item is rankable at once from its tags."""
        self.upsert_items([item], [tags], None if timestamp is None else [timestamp])

    def upsert_items(
        self,
        items: Sequence[str],
        tags: Sequence[Mapping[str, float] | None],
        timestamps: Sequence[float] | None = None,
    ) -> None:
        """:meth:`upsert_item` for many items at once (in order: the last upsert of an
        item wins). The item vectors are computed in one pass, several times faster per
        item than one call each.

        >>> rec = Recommender()
        >>> rec.upsert_items(["a", "b", "a"], [{"jazz": 1.0}, {"rock": 1.0}, {"folk": 1.0}])
        >>> rec.n_items, rec.tags.names(rec.items.get("a"))
        (2, ['folk'])

        A weight that is not finite or not in ``[MIN_WEIGHT, MAX_WEIGHT]`` is a ``ValueError``,
        raised before anything changes (:func:`recsys_online.tags.check_weights`), as is a
        number of tag mappings (or timestamps) other than the number of items.
        """
        if len(tags) != len(items) or (timestamps is not None and len(timestamps) != len(items)):
            raise ValueError(
                f"{len(items)} items need as many tag mappings (got {len(tags)}) and "
                f"timestamps (got {'none' if timestamps is None else len(timestamps)})"
            )
        for item_tags in tags:
            check_weights(item_tags or {})
        if timestamps is not None:
            _check_timestamps(np.asarray(timestamps, np.float64))
        _check_ids(items, "items")
        rows = self._item_rows(items)
        self._ensure()
        self.active[rows] = True
        self.deleted[rows] = False
        self.tags.set_many(rows, [dict(item_tags or {}) for item_tags in tags])
        self.mf.set_items_tags(rows)
        self.vectors.update(np.unique(rows))
        self.content.set_items(rows)
        self._side_dirty.update(rows.tolist())
        if self._waiting:
            self._tags_arrived(tags)
        if timestamps is not None and len(timestamps):
            self.now = max(self.now, float(max(timestamps)))

    def has_item(self, item: str, tags: Mapping[str, float]) -> bool:
        """True when the item is in the catalog (not deleted) with exactly these tags: an
        upsert of it would change nothing.

        >>> rec = Recommender()
        >>> rec.upsert_item("a", {"jazz": 1.0, "live": 0.5})
        >>> rec.has_item("a", {"live": 0.5, "jazz": 1.0}), rec.has_item("a", {"jazz": 1.0})
        (True, False)
        >>> rec.delete_item("a"); rec.has_item("a", {"live": 0.5, "jazz": 1.0})
        False
        """
        row = self.items.get(item)
        if row is None or self.deleted[row] or row >= len(self.tags.rows):
            return False
        weights = self.tags.weights[row]
        kept = weights > 0
        rows, values = self.tags.rows[row][kept].tolist(), weights[kept].tolist()
        name = self.tags.index.id_of
        current = {name(t): float(w) for t, w in zip(rows, values, strict=True)}
        return current == {t: float(np.float32(w)) for t, w in tags.items() if w > 0}

    def delete_item(self, item: str) -> None:
        """Remove an item from every future recommendation: its tags, its content vector
        and its co-occurrence are dropped (its factors and bias stay, so an item listed
        again resumes from them)."""
        row = self.items.get(item)
        if row is None:
            row = int(self._item_rows([item])[0])
            self._ensure()
        self.active[row] = False
        self.deleted[row] = True
        self.tags.clear(row)
        self.vectors.update(np.array([row]))  # its vector loses the tags' part
        self.content.set_item(row)
        self.cooc.forget_item(row)
        self._side_dirty.add(row)

    @property
    def n_deleted(self) -> int:
        """Item rows held for deleted items (what :meth:`compact` would free)."""
        return int(np.count_nonzero(self.deleted[: self.n_items]))

    def compact(self) -> int:
        """Forget every deleted item, freeing its row in every array; returns how many.

        A deleted item keeps its row (and its factors: listed again, it resumes from
        them), so a catalog that turns over grows without bound, and ranking still
        multiplies every row ever listed. Compacting renumbers the live rows ``0, 1,
        ...`` in their order, and forgets the deleted items: a later rating of one
        brings it in as a new item (as any unknown item), a later upsert lists it
        afresh. Lists and scores are unchanged (which liked item a collaborative reason
        names may change: it is sought among the user's latest ratings, which no longer
        include the deleted items'). The cost is one pass over every item
        array and every user's history: call it when deleted rows are a good share of
        the catalog (the worker compacts when they exceed a quarter of the rows).

        >>> rec = Recommender()
        >>> rec.upsert_items(["a", "b", "c"], [{"x": 1.0}, {"y": 1.0}, {"x": 1.0}])
        >>> rec.learn_rating("ann", "c", 5.0)
        >>> rec.delete_item("a"); rec.compact(), rec.n_items, rec.items.ids
        (1, 2, ['b', 'c'])
        >>> rec.has_rated(["ann"], ["c"]), rec.is_deleted("a"), "a" in rec.items
        ([True], False, False)

        Who rated a forgotten item is kept (by id, a user row each), so an item listed
        again is never shown to its raters, whether compaction ran or not:

        >>> rec.learn_rating("ann", "b", 4.0); rec.delete_item("b"); rec.compact()
        1
        >>> rec.upsert_item("b", {"y": 1.0}); rec.has_rated(["ann"], ["b"])
        [True]
        """
        n = self.n_items
        gone = self.deleted[:n]
        dropped = int(np.count_nonzero(gone))
        if not dropped:
            return 0
        keep = np.flatnonzero(~gone)
        new_row = row_map(keep, n)
        self._forget_raters(gone)
        self.items = self.items.subset(keep)
        self.mf.keep_items(keep)
        self.vectors.keep_items(keep)
        self.content.keep_items(keep)
        self.cooc.keep_items(keep)
        self.popularity.keep_items(keep)
        self.active, self.deleted = self.active[keep], self.deleted[keep]
        self._renumber_histories(new_row)
        if self._own is not None:
            self._own.renumber(new_row)
        self._sizes = (-1, -1)
        self._side, self._side_key, self._pop_key = None, (), ()
        self._side_dirty.clear()
        return dropped

    def _forget_raters(self, gone: np.ndarray) -> None:
        """Keep, by id, who rated each item row that ``gone`` marks (recent history and
        older ratings alike), before compaction drops the rows."""
        users = np.arange(len(self.history))
        flat, lengths = self._rated(users)
        owner = np.repeat(users, lengths)
        hit = gone[flat]
        rows, raters = flat[hit], owner[hit].astype(np.int32)
        if not len(rows):
            return
        order = np.lexsort((raters, rows))
        rows, raters = rows[order], raters[order]
        first = np.r_[True, (rows[1:] != rows[:-1]) | (raters[1:] != raters[:-1])]
        rows, raters = rows[first], raters[first]  # (each rater once per item)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        self._forgotten.add_many(self.items.ids_of(rows[starts].tolist()), raters, starts)

    def _item_rows(self, items: Sequence[str]) -> np.ndarray:
        """Rows of ``items``, new ids given the next rows; an id compacted away comes back
        with its raters, as older ratings of theirs (never shown to them again)."""
        n = len(self.items)
        rows = self.items.rows(items)
        if self._forgotten and len(rows) and int(rows.max()) >= n:
            new = np.unique(rows[rows >= n])
            for row, item in zip(new.tolist(), self.items.ids_of(new.tolist()), strict=True):
                for user in self._forgotten.pop(item).tolist():
                    self._older.setdefault(user, array("i")).append(row)
        return rows

    def _renumber_histories(self, new_row: np.ndarray) -> None:
        """Every user's rated item rows through ``new_row`` (old row -> new row, -1:
        dropped), entries of dropped rows removed; one pass over all histories."""
        users = np.arange(len(self.history))
        flat, lengths = _joined(self.history, users, np.int32)
        ratings, _ = _joined(self.history_ratings, users, np.float32)
        mapped = new_row[flat]
        ok = mapped >= 0
        owner = np.repeat(users, lengths)
        kept = np.bincount(owner[ok], minlength=len(users))
        changed = np.flatnonzero(np.bincount(owner, minlength=len(users)) > 0)
        mapped, ratings = mapped[ok].astype(np.int32), ratings[ok]
        ends = np.cumsum(kept)
        for user in changed.tolist():
            a, b = int(ends[user] - kept[user]), int(ends[user])
            self.history[user] = array("i", mapped[a:b].tobytes())
            self.history_ratings[user] = array("f", ratings[a:b].tobytes())
        for user, older in list(self._older.items()):
            rows = new_row[np.frombuffer(older, np.int32)]
            self._older[user] = array("i", rows[rows >= 0].astype(np.int32).tobytes())

    def upsert_user(self, user: str, tags: Mapping[str, float]) -> None:
        """Declare a user's attributes or interests as weighted tags (user cold start).

        They seed the user's content profile with the weight of one rating above the
        user's mean, so a user with no ratings gets content-based lists ("matches your
        tags ...") instead of plain popularity; later ratings outweigh them. Declaring
        again replaces the previous declaration; declaring no tags withdraws it (a user
        with no ratings is then served popularity again). Weights follow the items'
        rules (:func:`recsys_online.tags.check_weights`). A tag no item carries yet counts
        from when one does (it could match nothing before), so declarations never add to
        the model's tag table.

        >>> rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
        >>> rec.upsert_item("a", {"jazz": 1.0})
        >>> rec.upsert_user("ann", {"jazz": 1.0})
        >>> rec.recommend("ann")[0].source
        'content'
        >>> rec.upsert_user("ann", {})
        >>> rec.recommend("ann")[0].source
        'popular'
        """
        check_weights(tags)
        if not tags and self.users.get(user) is None:
            return  # nothing declared, nothing to withdraw
        row = self.users.row(user)
        self._ensure()
        self._withdraw(row)
        if tags:
            self._declare(row, dict(tags))

    def _declare(self, row: int, tags: dict[str, float]) -> None:
        """Add a declaration's vector to the user's profile (the tags items carry)."""
        vec = self.content.tag_vector(tags)
        self._declared_names[row] = tuple(tags)  # (tags a reason may name as theirs)
        waiting = [t for t in tags if self.tags.index.get(t) is None]
        if waiting:
            self._declared_tags[row] = tags
            for t in waiting:
                self._waiting.setdefault(t, set()).add(row)
        if vec.any():
            self.content.profile[row] += vec
            self._declared[row] = vec

    def _withdraw(self, row: int) -> None:
        """Take the user's declaration back out of their profile."""
        old = self._declared.pop(row, None)
        self._declared_names.pop(row, None)
        if old is not None:
            self.content.profile[row] -= old
        for t in self._declared_tags.pop(row, {}):
            users = self._waiting.get(t)
            if users is not None:
                users.discard(row)
                if not users:
                    del self._waiting[t]

    def _tags_arrived(self, tags: Sequence[Mapping[str, float] | None]) -> None:
        """Declarations that waited for one of these tags count it now."""
        arrived = {t for item_tags in tags if item_tags for t in item_tags if t in self._waiting}
        users = set().union(*(self._waiting[t] for t in arrived))
        for row in sorted(users):
            declared = self._declared_tags[row]
            self._withdraw(row)
            self._declare(row, declared)

    def _warm(self, users: Sequence[str]) -> tuple[list[int], np.ndarray]:
        """Positions in ``users`` of those the model can rank for, and their rows: known
        users with ratings or declared tags (the others get popularity)."""
        if len(users) == 1:  # one user (recommend): no arrays to build
            row = self.users.get(users[0])
            content = "content" in self.config.signals
            if row is None or not (self.user_n[row] > 0 or (content and row in self._declared)):
                return [], np.zeros(0, np.int64)
            return [0], np.array([row], np.int64)
        rows = self.users.get_many(users)
        known = rows[rows >= 0]
        ok = np.zeros(len(rows), bool)
        ok[rows >= 0] = self.user_n[known] > 0
        if self._declared and "content" in self.config.signals:
            ok[rows >= 0] |= np.isin(known, np.fromiter(self._declared, np.int64))
        warm = np.flatnonzero(ok)
        return warm.tolist(), rows[warm]

    def is_deleted(self, item: str) -> bool:
        """True when the item was deleted from the catalog."""
        row = self.items.get(item)
        return row is not None and bool(self.deleted[row])

    # ------------------------------------------------------------ learning
    def _check_batch(self, users: Sequence, items: Sequence, ratings, timestamps) -> None:
        """A ``ValueError`` before anything changes for a batch the model cannot learn:
        lists of unequal lengths, a rating that is not finite or outside the scale (one
        would move the mean rating, and every prediction, for good), a timestamp that is
        not finite.

        >>> Recommender().learn_many(["u"], ["i"], [float("nan")], [1.0])
        Traceback (most recent call last):
        ...
        ValueError: ratings must be finite and within the scale [1, 5], got nan
        """
        n = len(users)
        if not len(items) == len(ratings) == len(timestamps) == n:
            raise ValueError(
                f"{n} users need as many items, ratings and timestamps (got {len(items)}, "
                f"{len(ratings)} and {len(timestamps)})"
            )
        low, high = self.config.scale
        r = np.asarray(ratings, np.float64)
        bad = ~((r >= low) & (r <= high))  # (NaN compares false: bad too)
        if bad.any():
            raise ValueError(
                f"ratings must be finite and within the scale [{low:g}, {high:g}], "
                f"got {r[bad][0]:g}"
            )
        _check_timestamps(np.asarray(timestamps, np.float64))
        _check_ids(users, "users")
        _check_ids(items, "items")

    def learn_rating(self, user: str, item: str, rating: float, timestamp: float = 0.0) -> None:
        """Learn one rating (test-then-train callers predict and rank before this)."""
        self.learn_many([user], [item], [rating], [timestamp])

    def learn_many(
        self,
        users: Sequence[str],
        items: Sequence[str],
        ratings: Sequence[float],
        timestamps: Sequence[float],
        shared: bool = True,
    ) -> None:
        """Learn a micro-batch of ratings; every step sees the state from before the batch.

        Items never announced by a catalog event join the catalog on their first rating;
        ratings of deleted items update the factors but never bring the item back.
        ``shared=False``: while item changes are kept (:meth:`track_item_changes`), what
        these ratings change is not among them, as for changes received from elsewhere
        (ratings learned again, which other processes had when they were first learned).

        >>> a = Recommender()
        >>> a.upsert_items(["x", "y"], [{"jazz": 1.0}, {"rock": 1.0}])
        >>> a.track_item_changes()
        >>> a.learn_many(["u1"], ["x"], [5.0], [1.0], shared=False)
        >>> len(a.take_item_changes())
        0
        """
        self._check_batch(users, items, ratings, timestamps)
        if len(ratings) == 0:
            return
        if not shared and self._own is not None:
            own, self._own = self._own, None
            self.mf.ensure()  # (tags new since the last learning get their rows)
            try:
                with own.learning_elsewhere(self.mf, self.items.get_many(items)):
                    self.learn_many(users, items, ratings, timestamps)
            finally:
                self._own = own
            return
        u = self.users.rows(users)
        i = self._item_rows(items)
        self._ensure()
        r = np.asarray(ratings, np.float32)
        ts = np.asarray(timestamps, np.float64)
        self.active[i] = ~self.deleted[i]
        self.now = max(self.now, float(ts.max()))
        if self.config.learn_blend and len(self.config.signals) > 1:
            relevant = r >= self.config.relevant
            ur, ir = u[relevant], i[relevant]
            for lo in range(0, len(ur), _BLEND_STEP):
                self._learn_blend(ur[lo : lo + _BLEND_STEP], ir[lo : lo + _BLEND_STEP])
        means = self._user_means(u)
        own = self._own
        if own is not None:
            self.mf.ensure()  # (tags new since the last learning get their rows)
            own.before_learning(self.mf, i)
        self.mf.learn(u, i, r)
        self.vectors.update(np.unique(i))
        self._side_dirty.update(i.tolist())
        if "content" in self.config.signals:
            self.content.learn(u, i, r, means)
        pairs = None
        if {"cooc", "recent_tags", "recent_factors"} & set(self.config.signals):
            live = ~self.deleted[i]  # a deleted item stays out of rings and neighbours
            pairs = self.cooc.learn_many(u[live].tolist(), i[live].tolist())
        self.popularity.learn(i, ts)
        if own is not None:
            own.learned(i, ts, pairs)
        np.add.at(self.user_n, u, 1.0)
        np.add.at(self.user_sum, u, r)
        limit = self.config.history_limit
        for uu, ii, rr in zip(u.tolist(), i.tolist(), r.tolist(), strict=True):
            hist, hr = self.history[uu], self.history_ratings[uu]
            hist.append(ii)
            hr.append(rr)
            if len(hist) > limit:
                self._retire(uu, hist[0])
                del hist[0], hr[0]
        self.n_events += len(r)

    def _retire(self, user: int, item: int) -> None:
        """``item`` leaves the user's history; it stays among the items never shown again."""
        older = self._older.get(user)
        if older is None:
            older = self._older[user] = array("i")
        older.append(item)
        if len(older) % 1024 == 0:  # keep them distinct (a re-rated item comes back)
            self._older[user] = array("i", np.unique(np.frombuffer(older, np.int32)).tobytes())

    def has_rated(self, users: Sequence[str], items: Sequence[str]) -> list[bool]:
        """For each (user, item) pair: the user rated the item before, so it can never
        be in their lists (evaluators leave such a re-rating out of the ranking figures).

        >>> rec = Recommender()
        >>> rec.learn_many(["ann"], ["a"], [4.0], [1.0])
        >>> rec.has_rated(["ann", "ann", "bob"], ["a", "b", "a"])
        [True, False, False]
        """
        user_row, item_row = self.users.get, self.items.get  # (dict lookups: small batches)
        n_users = len(self.history)
        out = []
        forgotten = self._forgotten
        for user, item in zip(users, items, strict=True):
            uu, ii = user_row(user), item_row(item)
            if uu is None or uu >= n_users:
                out.append(False)
            elif ii is None:  # (an item compacted away: by its raters kept)
                out.append(bool((forgotten.get(item) == uu).any()))
            else:
                out.append(ii in self._rated_of(uu))
        return out

    def _rated_of(self, user: int) -> array:
        """Every item row ``user`` rated: the recent history, after what left it."""
        older = self._older.get(user)
        return self.history[user] if older is None else older + self.history[user]

    def _rated(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every item row each of users ``u`` rated, end to end, and each user's count."""
        if not self._older:
            return _joined(self.history, u, np.int32)
        return _joined([self._rated_of(r) for r in u.tolist()], np.arange(len(u)), np.int32)

    # ------------------------------------------------------------ sharing
    def track_item_changes(self, on: bool = True) -> None:
        """Keep what learning changes on the item side, for :meth:`take_item_changes`
        (several processes learning one catalog from different users exchange these:
        asynchronous data-parallel learning; see :mod:`recsys_online.sharing`)."""
        self._own = (self._own or OwnChanges()) if on else None

    def take_item_changes(self) -> ItemChanges:
        """What this model's own learning changed on the item side since the last call
        (changes applied from elsewhere excluded): item vectors and biases, tag
        embeddings, popularity, co-occurrence pairs. Empty when changes
        are not kept (:meth:`track_item_changes`).

        >>> a, b = Recommender(), Recommender()
        >>> for m in (a, b):
        ...     m.upsert_items(["x", "y"], [{"jazz": 1.0}, {"rock": 1.0}])
        ...     m.track_item_changes()
        >>> a.learn_many(["u1", "u1"], ["x", "y"], [5.0, 4.0], [1.0, 2.0])
        >>> changes = a.take_item_changes()
        >>> changes.items, changes.tags, changes.rated, len(changes.pair_w)
        (['x', 'y'], ['jazz', 'rock'], ['x', 'y'], 2)
        >>> b.apply_item_changes(changes)
        8
        >>> bool(np.allclose(a.mf.V[:2], b.mf.V[:2])), [r.item for r in b.similar_items("x", 1)]
        (True, ['y'])
        >>> len(b.take_item_changes())
        0
        """
        own = self._own
        if own is None:
            k = self.mf.V.shape[1]
            return ItemChanges(dv=np.zeros((0, k), np.float32), de=np.zeros((0, k), np.float32))
        ids, tags = self.items.ids_of, self.tags.index.ids_of
        return own.take(self.mf, ids, tags, self.popularity.log_rate)

    def apply_item_changes(self, changes: ItemChanges) -> int:
        """Add another process's :meth:`take_item_changes`; returns how many entries were
        applied. Ids this model does not know are skipped, and so are pairs with an item it
        deleted; a deleted item's vector, bias and popularity still take the changes, as
        they take its ratings (:meth:`learn_many`), and it stays out of every list."""
        self._ensure()
        self.mf.ensure()
        n_items, live = self.n_items, ~self.deleted[: self.n_items]
        own = self._own
        applied = 0
        rows = self.items.get_many(changes.items)
        ok = (rows >= 0) & (rows < n_items)
        if ok.any():
            rows, dv, db = rows[ok], changes.dv[ok], changes.db[ok]
            dv, db = dv.astype(np.float32), db.astype(np.float32)
            self.mf.add_to_items(rows, dv, db)
            self.vectors.update(np.unique(rows))
            self._side_dirty.update(rows.tolist())
            if own is not None:
                own.added(rows, dv, db, "items")
            applied += len(rows)
        rows = self.tags.index.get_many(changes.tags)
        ok = (rows >= 0) & (rows < len(self.mf.E))
        if ok.any():
            rows, de, dtb = rows[ok], changes.de[ok], changes.dtb[ok]
            de, dtb = de.astype(np.float32), dtb.astype(np.float32)
            self.mf.add_to_tags(rows, de, dtb)
            if own is not None:
                own.added(rows, de, dtb, "tags")
            applied += len(rows)
            # The items carrying those tags, stacked again for ranking now: learning
            # restacks them at its next full refresh, counted on this model's own
            # ratings only, which others' changes would leave behind.
            carried = np.isin(self.tags.rows[:n_items], rows) & (self.tags.weights[:n_items] != 0)
            restack = np.flatnonzero(carried.any(axis=1))
            if len(restack):
                self.vectors.update(restack)
                self._side_dirty.update(restack.tolist())
        rows = self.items.get_many(changes.rated)
        ok = (rows >= 0) & (rows < n_items)
        if ok.any():
            self.popularity.add_mass(rows[ok], changes.mass[ok], changes.now)
            self.now = max(self.now, changes.now)  # (scores are read at the model's clock)
            applied += int(np.count_nonzero(ok))
        rows = self.items.get_many(changes.pair_items)
        ok = (rows >= 0) & (rows < n_items)
        ok[ok] = live[rows[ok]]
        a, b = rows[changes.pair_a], rows[changes.pair_b]
        pair_ok = ok[changes.pair_a] & ok[changes.pair_b] & (a != b)
        if pair_ok.any():
            self.cooc.add_pairs(a[pair_ok], b[pair_ok], changes.pair_w[pair_ok])
            applied += int(np.count_nonzero(pair_ok))
        return applied

    def _user_means(self, users: np.ndarray) -> np.ndarray:
        shrink = 2.0
        return (self.user_sum[users] + shrink * self.mf.mu) / (self.user_n[users] + shrink)

    def _alpha(self, users: np.ndarray) -> np.ndarray:
        n = self.user_n[users]
        return n / (n + self.config.cold_ratings)

    def _weights(self, users: np.ndarray) -> np.ndarray:
        """Effective per-signal weights for each user, shape ``(len(users), len(SIGNALS))``."""
        a = self._alpha(users)[:, None]
        return ((1.0 - a) * self.w_cold + a * self.w_warm) * self._use / self.signal_scale

    def _learn_blend(self, users: np.ndarray, items: np.ndarray) -> None:
        """A pairwise logistic (BPR) step on the blend weights for relevant ratings (at most
        ``_BLEND_STEP`` of them: :meth:`learn_many` takes a larger batch's in turn).

        Each rated item is a positive against ``n_negatives`` uniform draws from the live
        catalog, all scored with the state from before the step; the step's ratings add
        up as if taken one after another from the same weights. (In one step of 450,000
        ratings, the L2 decay ``n * l2`` alone passed 1 and turned every weight negative:
        lists came out in reverse.)
        """
        cfg = self.config
        live = np.flatnonzero(self.active[: self.n_items])
        if len(live) < 2:
            return
        negs = live[self.rng.integers(0, len(live), (len(users), cfg.n_negatives))]
        x = self._pair_features(users, np.concatenate((items[:, None], negs), axis=1))
        keep = negs != items[:, None]  # (R, n): a draw of the positive itself is no negative
        # Running mean and scale of each signal over uniform catalog draws, so the weights
        # of signals in different units compare (and contributions have a baseline).
        sample = x[:, :, 1:][:, keep]  # (S, draws)
        if sample.shape[1]:
            self._scale_n += 1
            rate = max(1.0 / (self._scale_n + 20), 0.001)  # starts from a unit prior
            self._scale_sq += rate * (sample.var(axis=1) - self._scale_sq)
            self.signal_mean += rate * (sample.mean(axis=1) - self.signal_mean)
            self.signal_scale = np.sqrt(np.maximum(self._scale_sq, 1e-8)).astype(np.float32)
        d = (x[:, :, :1] - x[:, :, 1:]) / self.signal_scale[:, None, None]  # (S, R, n)
        a = self._alpha(users)  # (R,)
        w = ((1.0 - a)[:, None] * self.w_cold + a[:, None] * self.w_warm) * self._use  # (R, S)
        margin = np.clip(np.einsum("rs,srn->rn", w, d), -30.0, 30.0)
        g = keep / (1.0 + np.exp(margin))  # sigmoid(-margin)
        per_event = (d * g).sum(axis=2) / np.maximum(keep.sum(axis=1), 1)  # (S, R)
        lr, l2 = cfg.blend_lr, cfg.blend_l2
        step_cold = (per_event * (1.0 - a)).sum(axis=1) * self._use
        step_warm = (per_event * a).sum(axis=1) * self._use
        n = len(users)
        self.w_cold += lr * (step_cold - n * l2 * self.w_cold)
        self.w_warm += lr * (step_warm - n * l2 * self.w_warm)

    # ------------------------------------------------------------ prediction
    def predict_rating(self, user: str, item: str) -> float:
        """Predicted rating clipped to the scale; unseen ids fall back to biases and the mean."""
        return float(self.predict_many([user], [item])[0])

    def predict_many(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings for aligned lists of ids, without registering unseen ids."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users need as many items (got {len(items)})")
        u, i = self.users.get_many(users), self.items.get_many(items)
        known_u, known_i = u >= 0, i >= 0
        ur, ir = np.maximum(u, 0), np.maximum(i, 0)
        mf = self.mf
        if mf.n_ratings == 0:
            return np.full(len(u), np.mean(self.config.scale))
        if mf.n_items == 0:  # (every item compacted away: unknown items, as below)
            bias = np.where(known_u, mf.user_bias[ur], 0.0) if mf.n_users else 0.0
            return np.clip(mf.mu + bias + np.zeros(len(u)), *self.config.scale)
        q, b = mf.items(ir)
        dots = np.einsum("ij,ij->i", mf.P[ur], q) * known_u
        pred = (
            mf.mu
            + np.where(known_u, mf.user_bias[ur], 0.0)
            + np.where(known_i, b, 0.0)
            + np.where(known_i, dots, 0.0)
        )
        return np.clip(pred, *self.config.scale)

    # ------------------------------------------------------------ ranking
    def recommend(self, user: str, k: int = 10) -> list[Recommendation]:
        """Top-``k`` live items the user has not rated, best first, each with a reason.

        Unknown users and users with no ratings get decayed popularity.
        """
        return self.recommend_many([user], k)[0]

    def recommend_many(self, users: Sequence[str], k: int = 10) -> list[list[Recommendation]]:
        """Batched :meth:`recommend`: one matrix product ranks the catalog for all users."""
        return self.recommend_rows(users, k)[0]

    def recommend_rows(
        self, users: Sequence[str], k: int = 10
    ) -> tuple[list[list[Recommendation]], np.ndarray]:
        """:meth:`recommend_many`, and each list's item rows as a ``(len(users), k)`` int32
        array (-1 past a list's end): for a caller that keeps which lists hold an item,
        without looking the ids up again.

        >>> model = Recommender()
        >>> model.upsert_items(["a", "b"], [{"jazz": 1.0}, {"jazz": 1.0}])
        >>> model.learn_rating("u", "a", 5.0)
        >>> lists, rows = model.recommend_rows(["u", "stranger"], 2)
        >>> [[r.item for r in recs] for recs in lists], rows.tolist()
        ([['b'], ['a', 'b']], [[1, -1], [0, 1]])
        """
        k = self._checked_k(k)
        rows = np.full((len(users), k), -1, np.int32)
        ranked = self._rank_users(users, k)
        out: list[list[Recommendation]] = [[] for _ in users]
        if ranked is None or len(ranked[0]) < len(users):
            fallback = self.popular(k)
            out = [list(fallback) for _ in users]
            rows[:, : len(fallback)] = self.items.get_many([r.item for r in fallback])
        if ranked is None:
            return out, rows
        warm, u, w, top, top_scores, ctx = ranked
        explained = self._explain_many(u, w, top, top_scores, ctx)
        for n, recs in zip(warm, explained, strict=True):
            out[n] = recs
        rows[warm] = top[:, :k]
        return out, rows

    def top_items(self, users: Sequence[str], k: int = 10) -> list[list[str]]:
        """Just the ids of each user's top-``k`` list (no explanations), batched."""
        k = self._checked_k(k)
        ranked = self._rank_users(users, k)
        if ranked is None:
            popular = [r.item for r in self.popular(k)]
            return [list(popular) for _ in users]
        warm, _, _, top, _, _ = ranked
        out: list[list[str] | None] = [None] * len(users)
        present = top >= 0  # (lists are filled from the front)
        items = self.items.ids_of(top[present].tolist())
        for n, listed in zip(warm, _split(items, present.sum(axis=1)), strict=True):
            out[n] = listed
        if len(warm) < len(users):  # the fallback list, only when some user needs it
            popular = [r.item for r in self.popular(k)]
            out = [list(popular) if x is None else x for x in out]
        return out

    def _checked_k(self, k: int) -> int:
        """``k`` as a list length: an int >= 0 (a ``TypeError`` or ``ValueError`` naming
        it otherwise), no more than the catalog holds.

        >>> Recommender().recommend("u", -1)
        Traceback (most recent call last):
        ...
        ValueError: k must be >= 0, got -1
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"k must be an int, got {k!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return min(int(k), self.n_items)

    def _rank_users(self, users: Sequence[str], k: int):
        """Rank the catalog for the users the model can rank for (others get popularity).

        Returns ``None`` when no user is warm, else ``(positions of warm users, their rows,
        their weights, top rows per user, top scores per user, their context)``.
        """
        warm, u = self._warm(users)
        if not warm or self.n_items == 0:  # (declared tags, no catalog yet: nothing)
            return None
        w = self._weights(u)
        cands = self.candidates(u)
        ctx = self._context(u)
        top, top_scores = self._rank(u, w, k, ctx, cands)
        return warm, u, w, top, top_scores, ctx

    def candidates(self, users: np.ndarray) -> np.ndarray | None:
        """Candidate item rows for ``users``: ``None`` means the whole catalog.

        The first of the two stages, where an approximate-nearest-neighbour index would
        narrow a very large catalog before :meth:`_rank` scores what is left.
        """
        return None

    # ------------------------------------------------------------ scoring
    def _context(self, u: np.ndarray, ring: bool = True) -> _UserContext:
        """What every step of one ranking call needs about users ``u``, computed once
        (``ring=False``: without the co-occurrence rings, for callers that do without)."""
        use = self.config.signals  # (what no signal of the model reads is left out)
        tags, factors = self._session_vectors(u)
        if "content" in use:
            profile = _unit_rows(self.content.profile[u])
        else:
            profile = np.zeros((len(u), self.content.profile.shape[1]), np.float32)
        rings = self.cooc.ring_weights(u) if ring and "cooc" in use else None
        return _UserContext(tags, factors, rings, profile)

    def _session_vectors(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Recency-weighted unit mean of the user's last items: by tags and by factors
        (zeros where the model has no session signal that reads them)."""
        use = self.config.signals
        factors = np.zeros((len(u), self.mf.params.n_factors), np.float32)
        if "recent_tags" not in use and "recent_factors" not in use:
            return np.zeros((len(u), self.content.C.shape[1]), np.float32), factors
        ring = self.cooc.recent[u]  # (B, L) newest first, -1 empty
        w = (self.cooc._recency * (ring >= 0))[:, None, :]  # (B, 1, L)
        rows = np.maximum(ring, 0)
        tags = _unit_rows(np.matmul(w, self.content.C[rows])[:, 0])
        if "recent_factors" not in use:  # (no column and no weight)
            return tags, factors
        # Each item's unit vector q/|q|: the norms fold into the recency weights.
        vectors = self._vectors()
        w_q = w / np.maximum(vectors.norm[rows], 1e-9)[:, None, :]
        factors = _unit_rows(np.matmul(w_q, vectors.Q[rows])[:, 0])
        return tags, factors

    def _pair_features(
        self,
        u: np.ndarray,
        items: np.ndarray,
        ctx: _UserContext | None = None,
        cooc: np.ndarray | None = None,
    ) -> np.ndarray:
        """Every signal for given (user, item) pairs: ``items`` is ``(B, m)``, out ``(S, B, m)``.

        ``cooc`` may pass the co-occurrence scores of the pairs, when already computed.
        """
        mf, content, vectors = self.mf, self.content, self._vectors()
        out = np.zeros((len(SIGNALS), *items.shape), np.float32)
        use = self.config.signals
        if "mf" in use:
            out[0] = np.einsum("bk,bmk->bm", mf.P[u], vectors.Q[items]) + vectors.bias[items]
        if "content" in use:
            out[1] = np.einsum("bd,bmd->bm", _unit_rows(content.profile[u]), content.C[items])
        if "cooc" in use:
            if cooc is None:
                cooc = self.cooc.pair_scores(u, items, ctx.ring if ctx else None)
            out[2] = cooc
        if "pop" in use:
            out[3] = self.popularity.item_scores(self.now, items.ravel()).reshape(items.shape)
        if "recent_tags" in use or "recent_factors" in use:
            tags, factors = (ctx.tags, ctx.factors) if ctx else self._session_vectors(u)
            out[4] = np.einsum("bd,bmd->bm", tags, content.C[items])
            if "recent_factors" in use:
                q = vectors.Q[items] / np.maximum(vectors.norm[items], 1e-9)[..., None]
                out[5] = np.einsum("bk,bmk->bm", factors, q)
        return out * self._use[:, None, None]

    def _explain_features(
        self, u: np.ndarray, items: np.ndarray, ctx: _UserContext, cooc: np.ndarray | None
    ) -> np.ndarray:
        """:meth:`_pair_features` of ranked items, read from the ranking's item vectors.

        The same signals, as one gather of stacked item rows and one product with a
        per-user matrix holding each signal's user-side vector in that signal's columns.
        """
        if self._side is None:  # nothing ranked yet: no stacked rows to read
            return self._pair_features(u, items, ctx, cooc)
        mf = self.mf
        side = self._item_side(self._side.shape[1])  # the ranking's, brought up to date
        col = self._columns
        user = np.zeros((len(u), len(SIGNALS), side.shape[0]), np.float32)
        if "q" in col:  # mf: p.q + b
            user[:, 0, col["q"]] = mf.P[u]
            user[:, 0, col["b"]] = 1.0
        if "x" in col:  # content and recent tags
            d = col["x"].stop - col["x"].start
            user[:, 1, col["x"]] = ctx.profile[:, :d]
            user[:, 4, col["x"]] = ctx.tags[:, :d]
        if "pop" in col:
            user[:, 3, col["pop"]] = 1.0
        if "qn" in col:  # recent factors
            user[:, 5, col["qn"]] = ctx.factors
        x = np.matmul(user, side[:, items].transpose(1, 0, 2)).transpose(1, 0, 2)  # (S, B, m)
        if cooc is not None:
            x[2] = cooc
        elif "cooc" in self.config.signals:
            x[2] = self.cooc.pair_scores(u, items, ctx.ring)
        return x * self._use[:, None, None]

    def _blended_scores(
        self, u: np.ndarray, w: np.ndarray, width: int, ctx: _UserContext
    ) -> np.ndarray:
        """Blended scores of users ``u`` over the catalog, shape ``(B, width)``.

        Every signal but co-occurrence is a dot product between a user-side and an
        item-side vector, so the weighted blend is ONE matrix product of stacked
        user vectors ``[w_mf p_u, w_rf s_u, w_c c_u + w_rt t_u, w_mf, w_pop]`` with
        stacked item vectors ``[q_i, q_i/|q_i|, x_i, b_i, pop_i]``; co-occurrence adds a
        sparse scatter. Columns past the catalog (padding) come out as 0.
        """
        user, side = self._user_side(u, w, ctx), self._item_side(width)
        scores = self._out(len(u), width)
        if len(side) == 1:  # one column (popularity): an outer product, 4x faster so
            np.multiply(user, side, out=scores)  # than as a matrix product, same values
        elif len(u) <= _GEMV_ROWS:  # BLAS multiplies a few rows faster one at a time
            for b in range(len(u)):
                np.matmul(user[b], side, out=scores[b])
        else:
            np.matmul(user, side, out=scores)
        if w[:, 2].any():
            self.cooc.add_scores(scores, u, w[:, 2], ctx.ring)
        return scores

    def _user_side(self, u: np.ndarray, w: np.ndarray, ctx: _UserContext) -> np.ndarray:
        """The stacked user vectors of :meth:`_blended_scores`, shape ``(B, columns)``."""
        mf, col = self.mf, self._layout()
        w = w.astype(np.float32, copy=False)
        out = np.empty((len(u), max((c.stop for c in col.values()), default=0)), np.float32)
        if "q" in col:  # a model keeps only its signals' columns
            np.multiply(w[:, 0:1], mf.P[u], out=out[:, col["q"]])
            out[:, col["b"]] = w[:, 0:1]
        if "qn" in col:
            np.multiply(w[:, 5:6], ctx.factors, out=out[:, col["qn"]])
        if "x" in col:
            x = out[:, col["x"]]
            d = x.shape[1]
            np.multiply(w[:, 1:2], ctx.profile[:, :d], out=x)
            x += w[:, 4:5] * ctx.tags[:, :d]
        if "pop" in col:
            out[:, col["pop"]] = w[:, 3:4]
        return out

    def score_items(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Blended scores of ``items`` for each of ``users``, shape ``(B, m)``: the scores
        :meth:`recommend_many` ranks by, for a few items instead of the catalog.

        ``-inf`` where the item is unknown or not live, the user rated it, or the user is
        cold (served popularity). The work grows with users times items, so checking
        whether a handful of new items belong in many users' lists costs far less than
        ranking the catalog for them.
        """
        return self.item_scorer(users)(items)

    def item_scorer(self, users: Sequence[str]) -> Callable[[Sequence[str]], np.ndarray]:
        """:meth:`score_items` for fixed ``users`` and items given in several calls: what
        the users' side needs (weights, context, stacked vectors, rated items) is computed
        once, and the co-occurrence rings only if an item asked for has co-occurred (a
        new item has not: checking a catalog's new arrivals against thousands of users
        skips that pass). A scorer serves until the model is compacted (:meth:`compact`
        renumbers the rows it holds): called after, it raises ``RuntimeError``.

        >>> rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
        >>> for item in ("a", "b", "c"):
        ...     rec.upsert_item(item, {"jazz": 1.0})
        >>> rec.learn_rating("ann", "a", 5.0)
        >>> score = rec.item_scorer(["ann", "nobody"])
        >>> bool(np.isfinite(score(["b"])[0, 0])), score(["a", "b"])[1].tolist()
        (True, [-inf, -inf])
        """
        warm, u = self._warm(users)
        n_users = len(users)
        if not warm or self.n_items == 0:  # (declared tags, no catalog yet: nothing)
            return lambda items: np.full((n_users, len(items)), -np.inf, np.float32)
        w, ctx = self._weights(u), self._context(u, ring=False)
        sides = [(self._layout(), self._user_side(u, w, ctx))]  # (rebuilt if a tag arrives)
        rated, lengths = self._rated(u)
        rated_by = np.repeat(np.arange(len(u)), lengths)
        rings: list = []  # ``CoOccurrence.ring_items``, once an item asked for needs them
        numbered = self.items  # (compact() renumbers the rows this holds, in a new index)

        def score(items: Sequence[str]) -> np.ndarray:
            if self.items is not numbered:
                raise RuntimeError(
                    "the model was compacted since this scorer was made: its item rows "
                    "are gone; make a new one (item_scorer)"
                )
            out = np.full((n_users, len(items)), -np.inf, np.float32)
            irows = [self.items.get(x) for x in items]
            cols = [j for j, r in enumerate(irows) if r is not None and self.active[r]]
            if not cols:
                return out
            rows = np.array([irows[j] for j in cols], np.int64)
            i, back = np.unique(rows, return_inverse=True)
            width = self._side.shape[1] if self._side is not None else 0
            if width < self.n_items:  # the catalog outgrew the stacked rows
                width = padded_width(self.n_items, 10)[1]
            if sides[0][0] is not self._layout():  # new tags since: more content columns
                sides[0] = (self._layout(), self._user_side(u, w, ctx))
            scores = sides[0][1] @ self._item_side(width)[:, i]  # (B, m)
            column = np.full(self.n_items + 1, -1, np.int64)  # item row -> column; [-1]: none
            column[i] = np.arange(len(i))
            # (An item never rated here may still be a neighbour, through pairs another
            # process shared: with sharing on, the rings are always read.)
            shared = self._own is not None
            if w[:, 2].any() and (shared or (self.cooc.count[i] > 0).any()):
                if not rings:
                    rings.append(self.cooc.ring_items(u, w[:, 2]))
                self.cooc.add_item_scores(scores, column, rings[0])
            if len(rated):  # each user's rated items, where they are among ``i``
                j = column[rated]
                scores[rated_by[j >= 0], j[j >= 0]] = -np.inf
            out[np.ix_(warm, cols)] = scores[:, back]  # an item asked for twice, twice
            return out

        return score

    def _out(self, n_rows: int, width: int) -> np.ndarray:
        """A ``(n_rows, width)`` float32 array for scores, reused between calls.

        A fresh array of a thousand users by a 10k catalog (40 MB) is mapped anew by the
        allocator at every call, and its first writes page-fault: about a quarter of the
        product's time. Scores up to ``_OUT_LIMIT`` floats reuse one buffer instead (not
        kept in snapshots); whoever asks for it owns it until the next call.
        """
        buf = self._scores
        if buf is None or buf.shape[1] != width or len(buf) < n_rows:
            buf = np.empty((n_rows, width), np.float32)
            self._scores = buf if buf.size <= _OUT_LIMIT else None
        return buf[:n_rows]

    def _layout(self) -> dict[str, slice]:
        """The stacked vectors' columns (:func:`_side_columns`) for the catalog now.

        Content vectors have ``content_dim`` columns, but tag row ``t`` lands in column
        ``t mod content_dim``: while fewer tags than that exist, the columns past the
        last tag are zero in every vector, and the ranking leaves them out (MovieLens's
        19 genres: 85 columns to multiply instead of 130).
        """
        d = min(self.config.content_dim, max(1, self.tags.n_tags))
        if d != self._x_width:
            k = self.config.factors.n_factors
            self._columns = _side_columns(self.config.signals, k, d)
            self._x_width = d
        return self._columns

    def _item_side(self, width: int) -> np.ndarray:
        """The stacked item vectors ``[q_i, q_i/|q_i|, x_i, b_i, pop_i]`` as the columns of
        a ``(signal columns, width)`` array, up to date; only the rows of the model's
        signals (:func:`_side_columns`).

        Kept between calls: only items touched since the last call are rewritten, unless a
        full refresh of factors or content vectors (or a new width) asks for a rebuild.
        """
        mf, content, n, col = self.mf, self.content, self.n_items, self._layout()
        vectors = self._vectors()
        key = (width, mf.full_refreshes, content.full_refreshes, self._x_width)
        if self._side is None or self._side_key != key:
            total = max((c.stop for c in col.values()), default=0)
            self._side = np.zeros((total, width), np.float32)
            self._side_key = key
            rows = np.arange(n)
        else:
            rows = np.fromiter(self._side_dirty, np.int64, len(self._side_dirty))
        self._side_dirty.clear()
        side = self._side
        if len(rows):
            if "q" in col:
                side[col["q"], rows] = vectors.Q[rows].T
                side[col["b"], rows] = vectors.bias[rows]
            if "qn" in col:
                norms = np.maximum(vectors.norm[rows], 1e-9)
                side[col["qn"], rows] = vectors.Q[rows].T / norms
            if "x" in col:
                side[col["x"], rows] = content.C[rows, : self._x_width].T
        pop_key = (self.popularity.version, self.now, n, self._side_key)
        if "pop" in col and pop_key != self._pop_key:  # moves only with time and counts
            side[col["pop"], :n] = self.popularity.item_scores(self.now)
            self._pop_key = pop_key
        return side

    def _rank(
        self,
        u: np.ndarray,
        w: np.ndarray,
        k: int,
        ctx: _UserContext,
        cands: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blend, mask and take the top-``k`` rows of each user, best first: ``(B, k)``
        item rows and scores, -1 and ``-inf`` past the end of a shorter list."""
        n = self.n_items
        block, width = padded_width(n, k)
        scores = self._blended_scores(u, w, width, ctx)
        scores[:, n:] = -np.inf
        scores[:, :n][:, ~self.active[:n]] = -np.inf
        rated, lengths = self._rated(u)
        if lengths.any():  # every user's rated items, as flat positions in ``scores``
            flat = np.repeat(np.arange(len(u)) * width, lengths) + rated
            scores.reshape(-1)[flat] = -np.inf
        if cands is not None:
            keep = np.zeros(width, bool)
            keep[cands] = True
            scores[:, ~keep] = -np.inf
        return top_k_rows(scores, k, block)

    def popular(self, k: int = 10) -> list[Recommendation]:
        """The ``k`` most popular live items right now (the fallback for unknown users)."""
        k = self._checked_k(k)
        scores = self.popularity.item_scores(self.now).copy()
        scores[~self.active[: self.n_items]] = -np.inf
        return [
            Recommendation(self.items.id_of(int(j)), float(scores[j]), "popular now", "popular")
            for j in _top_k(scores, k)
        ]

    def similar_items(self, item: str, k: int = 10) -> list[Recommendation]:
        """More like this: live items closest to ``item`` by content and co-occurrence
        (only items that share a tag or co-occurred with it; none for a deleted item)."""
        return self.similar_many([item], k)[0]

    def similar_many(self, items: Sequence[str], k: int = 10) -> list[list[Recommendation]]:
        """Batched :meth:`similar_items` (:meth:`similar_rows` by id); unknown and deleted
        items get an empty list.

        >>> rec = Recommender()
        >>> rec.upsert_items(["a", "b", "c"], [{"jazz": 1.0}, {"jazz": 1.0}, {"rock": 1.0}])
        >>> [(r.item, r.source) for r in rec.similar_many(["a", "gone"], 5)[0]]
        [('b', 'content')]
        >>> rec.similar_many(["a", "gone"], 5)[1]
        []
        """
        k = self._checked_k(k)
        rows = self.items.get_many(items)
        known = rows >= 0
        known[known] = ~self.deleted[rows[known]]
        asked = np.flatnonzero(known).tolist()
        out: list[list[Recommendation]] = [[] for _ in items]
        lists, _, _ = self.similar_rows(rows[asked], [items[a] for a in asked], k)
        for a, recs in zip(asked, lists, strict=True):
            out[a] = recs
        return out

    def content_cosines(self, rows: np.ndarray, among: np.ndarray) -> np.ndarray:
        """The content cosines "more like this" scores, of items ``among`` with items
        ``rows``: shape ``(len(among), len(rows))``."""
        if not self.content.columns_shared:
            d = min(self.config.content_dim, max(1, self.tags.n_tags))
            content = self.content.C
            return content[among, :d] @ content[rows, :d].T
        distinct, back = np.unique(among, return_inverse=True)
        out = np.empty((len(rows), len(distinct)), np.float32)
        return self.content.exact_cosines(rows, self.n_items, out, distinct)[:, back].T

    def similar_rows(
        self, r: np.ndarray, names: Sequence[str], k: int = 10
    ) -> tuple[list[list[Recommendation]], np.ndarray, np.ndarray]:
        """ "More like this" for catalog rows ``r`` of items not deleted, named ``names``:
        their lists, and each list's item rows and scores ``(B, k)`` (-1 and ``-inf`` past
        a shorter list's end), in one product of content vectors a chunk of items.

        An item's score is its content cosine with the asked item, counted only where the
        two share a tag and weighted ``config.similar_content_weight``, plus the
        co-occurrence weight the pair earned as a share of the asked item's heaviest
        earned neighbour (in [0, 1]); only items scoring above 0 are listed. The larger
        part gives the reason: "rated together with X" (co-occurrence) or "similar to X"
        (content).
        """
        if len(r) > _SIMILAR_CHUNK:  # (scores are items by catalog: bounded)
            parts = [
                self.similar_rows(r[lo : lo + _SIMILAR_CHUNK], names[lo : lo + _SIMILAR_CHUNK], k)
                for lo in range(0, len(r), _SIMILAR_CHUNK)
            ]
            lists = [recs for part in parts for recs in part[0]]
            return lists, *(np.concatenate([part[j] for part in parts]) for j in (1, 2))
        n = self.n_items
        if not len(r) or k <= 0 or n == 0:
            shape = (len(r), max(k, 0))
            return [[] for _ in r], np.full(shape, -1, np.int64), np.full(shape, -np.inf)
        b = np.arange(len(r))
        wide = 2 * k  # candidates, before content that shares no tag is taken out
        block, width = padded_width(n, wide)
        # Content cosines, into the ranking's reused buffer (a fresh one page-faults);
        # only the columns tags use (tag t lands in column t mod content_dim).
        d = min(self.config.content_dim, max(1, self.tags.n_tags))
        content = self.content.C
        scores = self._out(len(r), width)
        weight = np.float32(self.config.similar_content_weight)
        if not self.content.columns_shared:  # one column a tag: their cosines are exact
            np.matmul(content[r, :d] * weight, content[:n, :d].T, out=scores[:, :n])
        else:  # tags share columns (with signs: sharing a tag can cancel out): from tags
            self.content.exact_cosines(r, n, scores[:, :n])
            scores[:, :n] *= weight
        scores[:, n:] = -np.inf
        # Co-occurrence: each item's neighbours are distinct, so one scatter adds them;
        # only the weight the pair earned (a SpaceSaving newcomer's inherited share is
        # not evidence that it co-occurs).
        nbr = self.cooc.nbr[r]  # (B, M)
        earned = np.maximum(self.cooc._guaranteed(r), 0.0)
        share = earned / np.maximum(earned.max(axis=1, initial=0.0), 1e-30)[:, None]
        at = (nbr >= 0) & (earned > 0)
        scores[np.nonzero(at)[0], nbr[at]] += share[at]
        scores[:, :n][:, ~self.active[:n]] = -np.inf
        scores[b, r] = -np.inf
        top, top_scores = top_k_rows(scores, wide, block)
        # Each candidate's co-occurrence part: its share where it is a neighbour.
        match = (top[:, :, None] == nbr[:, None, :]) & at[:, None, :]
        from_cooc = np.where(match, share[:, None, :], 0.0).sum(axis=2).astype(np.float32)
        # Content counts only where a tag is really shared: past content_dim tags, two
        # tags can land in one column, and "similar to" must be true.
        mine, mine_ok = self.tags.rows[r], self.tags.weights[r] > 0  # (B, S)
        cand = np.maximum(top, 0)
        theirs, theirs_ok = self.tags.rows[cand], self.tags.weights[cand] > 0  # (B, 2k, S)
        shared = (
            (theirs[..., :, None] == mine[:, None, None, :])
            & theirs_ok[..., :, None]
            & mine_ok[:, None, None, :]
        ).any(axis=(2, 3))
        top_scores = np.where(shared, top_scores, from_cooc)
        top_scores[(top < 0) | (top_scores <= 0)] = -np.inf  # (only what shares or co-occurs)
        order = np.argsort(-top_scores, axis=1, kind="stable")[:, :k]  # (ties: as ranked)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        from_cooc = np.take_along_axis(from_cooc, order, axis=1)
        top[top_scores == -np.inf] = -1
        present = top >= 0  # (lists are filled from the front)
        led_by_cooc = from_cooc * 2 > top_scores
        # Built flat, by C-level calls (as the users' lists are), then cut per item.
        lengths = present.sum(axis=1)
        owner = np.repeat(np.arange(len(r)), lengths)
        kind = led_by_cooc[present].astype(np.int64)
        reasons = [f"{how} {name}" for name in names for how in _SIMILAR_REASONS]
        recs = list(
            map(
                tuple.__new__,
                repeat(Recommendation),
                zip(
                    self.items.ids_of(top[present].tolist()),
                    top_scores[present].tolist(),
                    map(reasons.__getitem__, (owner * 2 + kind).tolist()),
                    map(_SIMILAR_SOURCES.__getitem__, kind.tolist()),
                    map(names.__getitem__, owner.tolist()),
                    strict=True,
                ),
            )
        )
        return _split(recs, lengths), top, top_scores

    def _explain_many(
        self,
        u: np.ndarray,
        w: np.ndarray,
        top: np.ndarray,
        top_scores: np.ndarray,
        ctx: _UserContext,
    ) -> list[list[Recommendation]]:
        """Recommendations with reasons for each user's top rows, vectorised over the batch.

        For each item, the model's signals are tried from the largest contribution
        (weight times the signal's lift over its catalog mean) down; the first that can
        give a truthful reason wins: co-occurrence names the recent item that led to it,
        content the matching tags, factors the closest liked item, popularity says so
        where the item is more popular than most. An item none of them explains is
        "close to your tastes".
        """
        present = top >= 0  # (B, K): lists are filled from the front
        lengths = present.sum(axis=1)
        width = int(lengths.max(initial=0))
        if width == 0:
            return [[] for _ in top]
        n_users = len(u)
        padded, present = np.maximum(top[:, :width], 0), present[:, :width]
        ring = None
        if "cooc" in self.config.signals:  # by ring item: summed, a signal; argmax, a reason
            ring = self.cooc.ring_contributions(u, padded, ctx.ring)  # (B, L, K)
            x = self._explain_features(u, padded, ctx, ring.sum(axis=1).astype(np.float32))
        else:
            x = self._explain_features(u, padded, ctx, None)  # (S, B, K)
        contrib = w.T[:, :, None] * (x - self.signal_mean[:, None, None].astype(np.float32))
        # What each signal could say for each item (B, K). "Popular now" only for an item
        # more popular than the catalog's mean, for a user whose blend weighs popularity
        # up: a weight learned negative lifts the least popular items, which popularity
        # does not explain. Where popularity can explain, a signal never above it is
        # never asked: its reasons are not computed.
        use = self._use.astype(bool)
        popular = use[3] & (x[3] > self.signal_mean[3]) & (w[:, 3:4] > 0)  # (B, K)
        needed = use & (contrib >= np.where(popular, contrib[3], -np.inf)).any(axis=(1, 2))
        cold = self.user_n[u] == 0  # (their declared tags may name an item: below)
        if cold.any():
            needed[[1, 4]] |= use[[1, 4]]
        can = np.zeros((len(SIGNALS), n_users, width), bool)
        because = liked = np.full((n_users, width), -1, np.int64)
        item_tags = agree = None
        if needed[2]:
            because = self.cooc.because_of_users(u, padded, ctx.ring, ring)
            can[2] = because >= 0
        if needed[1] or needed[4]:
            item_tags, agree = self.content.tag_agreement(u, padded)  # (B, K, T)
            if self.content.columns_shared:  # a column holds several tags: name met ones
                agree = np.where(self._met_tags(u, item_tags), agree, -np.inf)
            can[1] = can[4] = (agree > 0).any(axis=-1)
        can[3] = popular
        can &= use[:, None, None]
        # Rings hold every rated item: "because you liked X" only names an X the user
        # rated at or above their mean. Tested where co-occurrence leads the able signals
        # so far (factors can only beat it): where it would name another, it steps aside
        # before the factors' turn, which may then be theirs.
        if needed[2]:
            b, k = np.nonzero(np.where(can, contrib, -np.inf).argmax(axis=0) == 2)
            if len(b):
                disliked = ~self._liked(u[b], because[b, k])
                can[2, b[disliked], k[disliked]] = False
        if needed[0] or needed[5]:
            # The closest liked item, only for the users with an item where a factor
            # signal could beat every other able one (at most ties): its reason alone
            # names it, and factors rarely lead a blended list.
            best_other = np.where(can, contrib, -np.inf).max(axis=0)  # (0 and 5 not yet)
            could = use[0] & (contrib[0] >= best_other) | use[5] & (contrib[5] >= best_other)
            rows = self._factor_reason_rows(could)
            if len(rows):
                liked = np.full((n_users, width), -1, np.int64)
                liked[rows] = self._closest_liked_users(u[rows], padded[rows])
                can[[0, 5]] = (liked >= 0) & use[[0, 5], None, None]
        # The able signal with the largest contribution (ties: the first signal) wins.
        chosen = np.where(can, contrib, -np.inf).argmax(axis=0)  # (B, K)
        # A user with no ratings whose declared tags lifted an item it lists: the tags are
        # what set their list apart from the popular one, so they name it, not popularity
        # (popular items' lift over the catalog otherwise outweighs the tags' in every
        # place, and a declared user was told "popular now" down the whole list).
        by_tags = cold[:, None] & (chosen == 3)
        for signal in (4, 1):
            named_tags = by_tags & can[signal] & (contrib[signal] > 0)
            chosen[named_tags] = signal
            by_tags &= ~named_tags
        chosen[~can.any(axis=0)] = -1
        # The item each reason names: the recent item (co-occurrence) or the closest like.
        named = np.where(chosen == 2, because, np.where((chosen == 0) | (chosen == 5), liked, 0))
        # One flat pass over every listed item (the lists are cut apart at the end): the
        # reasons' columns first, each signal's fixed text where it names nothing, then
        # the tuples built by C-level calls (20% faster than one conditional expression
        # per item).
        flat = chosen[present]
        n = len(flat)
        ids_of = self.items.ids_of
        items = ids_of(padded[present].tolist())
        by_signal = (flat + 1).tolist()
        sources = list(map(_SOURCE_OF_SIGNAL.__getitem__, by_signal))
        reasons = list(map(_FIXED_REASON.__getitem__, by_signal))  # named, tags: below
        named_ids: list[str | None] = [None] * n  # the ``because`` of each recommendation
        is_named = (flat == 0) | (flat == 2) | (flat == 5)
        for p, liked_id in zip(
            np.flatnonzero(is_named).tolist(),
            ids_of(named[present][is_named].tolist()),
            strict=True,
        ):
            named_ids[p] = liked_id
            reasons[p] = "because you liked " + liked_id
        if item_tags is not None and agree is not None:  # "matches your tags a, b"
            spots = np.flatnonzero((flat == 1) | (flat == 4))
            tag_rows, tag_ok = best_tags(item_tags[present][spots], agree[present][spots])
            name = self.tags.index.id_of
            for p, rows, ok in zip(spots.tolist(), tag_rows.tolist(), tag_ok.tolist(), strict=True):
                shown = ", ".join([name(t) for t, g in zip(rows, ok, strict=True) if g])
                reasons[p] = "matches your tags " + shown
        scores = top_scores[:, :width][present].tolist()
        recs = list(
            map(
                tuple.__new__,
                repeat(Recommendation),
                zip(items, scores, reasons, sources, named_ids, strict=True),
            )
        )
        return _split(recs, lengths)

    @staticmethod
    def _factor_reason_rows(could: np.ndarray) -> np.ndarray:
        """The users (rows of ``could``, ``(B, K)``) whose closest liked item is looked
        up: those with an item a factor signal could explain (the others' reasons do
        not depend on it; ``tests`` look it up for every user to check that)."""
        return np.flatnonzero(could.any(axis=1))

    def _met_tags(self, u: np.ndarray, tags: np.ndarray) -> np.ndarray:
        """For users ``(B,)`` and tag rows ``(B, ...)``: whether the user met each tag,
        on an item among their last 50 ratings at or above their mean, or declared it.

        Past ``content_dim`` tags, a profile column holds several tags: a tag agreeing
        there may be one the user never met, and "matches your tags" must name a tag of
        theirs. One ``(users, tags)`` table, a chunk of users at a time (16 MB at most).
        """
        hist, ratings = self._recent_rated(u, fill=-1)  # (B, H)
        liked = (hist >= 0) & (ratings >= self._user_means(u)[:, None])
        out = np.zeros(tags.shape, bool)
        width = self.tags.n_tags + 1
        step = max(1, (1 << 24) // width)
        for lo in range(0, len(u), step):
            part = slice(lo, lo + step)
            rows = np.where(liked[part], hist[part], 0)
            have = (self.tags.weights[rows] > 0) & liked[part][..., None]  # (b, H, S)
            met = np.zeros((len(rows), width), bool)
            owner = np.broadcast_to(np.arange(len(rows))[:, None, None], have.shape)
            met[owner[have], self.tags.rows[rows][have]] = True
            for n, user in enumerate(u[part].tolist()):
                for tag in self._declared_names.get(user, ()):
                    row = self.tags.index.get(tag)
                    if row is not None:
                        met[n, row] = True
            own = np.arange(len(rows)).reshape((-1,) + (1,) * (tags.ndim - 1))
            out[part] = met[own, np.minimum(tags[part], width - 1)]
        return out

    def _recent_rated(self, u: np.ndarray, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Users ``u``'s last 50 rated item rows and their ratings, oldest first, as two
        ``(B, H)`` arrays; past a shorter history, rows ``fill`` rated ``-inf``. A rating
        the user replaced since by rating the item again reads NaN: never at or above a
        mean (what they think now is the later one: "because you liked x" named an x
        rated 5, then 1).

        >>> rec = Recommender()
        >>> rec.learn_many(["u"] * 3, ["x", "y", "x"], [5.0, 4.0, 1.0], [1.0, 2.0, 3.0])
        >>> rec._recent_rated(rec.users.get_many(["u"]))[1].tolist()
        [[nan, 4.0, 1.0]]
        """
        recent, lengths = _joined(self.history, u, np.int32, last=_RECENT)
        rated, _ = _joined(self.history_ratings, u, np.float32, last=_RECENT)
        if len(u) == 1:  # one user (recommend): no padding
            hist, ratings = recent[None, :], rated[None, :].copy()
            keyed = hist
        else:
            present = np.arange(lengths.max(initial=0)) < lengths[:, None]  # (B, H)
            hist = np.full(present.shape, fill, np.int32)
            hist[present] = recent
            ratings = np.full(present.shape, -np.inf, np.float32)
            ratings[present] = rated
            # (padding as distinct negatives: it neither repeats nor matches an item)
            keyed = np.where(present, hist, -1 - np.arange(present.shape[1], dtype=np.int32))
        # An entry with a later one of the same item in its row: in the rows that repeat
        # an item (few: found by a plain sort), a stable sort keeps equal items in row
        # order, so the first of each equal neighbouring pair.
        ordered = np.sort(keyed, axis=1)
        again = np.flatnonzero((ordered[:, :-1] == ordered[:, 1:]).any(axis=1))
        if len(again):
            order = np.argsort(keyed[again], axis=1, kind="stable")
            ordered = np.take_along_axis(keyed[again], order, axis=1)
            b, j = np.nonzero(ordered[:, :-1] == ordered[:, 1:])
            ratings[again[b], order[b, j]] = np.nan
        return hist, ratings

    def _liked(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """For pairs ``(users[p], items[p])``: the user's latest rating of the item, among
        their last 50, is at or above their mean (False when not found there)."""
        rows, first = np.unique(users, return_inverse=True)
        hist, ratings = self._recent_rated(rows, fill=-1)  # (U, H)
        if not hist.size:
            return np.zeros(len(users), bool)
        # (Only the latest rating of an item is not NaN there: a match liked is it.)
        liked = ratings >= self._user_means(rows)[:, None]  # (U, H)
        return ((hist[first] == items[:, None]) & liked[first]).any(axis=1)

    def _closest_liked_users(self, u: np.ndarray, items: np.ndarray) -> np.ndarray:
        """For users ``(B,)`` and items ``(B, K)``: the user's recent like (of the last 50
        ratings, at or above the user's mean, of an item still listed) with the closest
        factors (-1: none)."""
        hist, ratings = self._recent_rated(u)  # (B, H)
        if not hist.size or not items.size:
            return np.full(items.shape, -1, np.int64)
        liked = ratings >= self._user_means(u)[:, None]  # (B, H), oldest first
        liked &= ~self.deleted[hist]  # (a reason names what the app can show)
        vectors = self._vectors()
        # (B, K, H), history last (contiguous for the argmax); cosine order over the likes:
        # scaled by 1/|q| of the rated item, -inf added where it was not liked.
        sims = np.matmul(vectors.Q[items], vectors.Q[hist].transpose(0, 2, 1))
        sims *= (1.0 / np.maximum(vectors.norm[hist], 1e-9))[:, None, :]
        sims += np.where(liked, np.float32(0.0), np.float32(-np.inf))[:, None, :]
        best = np.argmax(sims, axis=2)  # (B, K): the first of equals, as history order
        found = hist[np.arange(len(u))[:, None], best].astype(np.int64)
        return np.where(liked.any(axis=1)[:, None], found, -1)

    def _closest_liked_many(self, user: int, items: np.ndarray) -> np.ndarray:
        """For each item, the user's recent like with the closest factors (-1: none)."""
        return self._closest_liked_users(np.array([user]), np.asarray(items)[None, :])[0]


class ForgottenRaters:
    """Who rated each item compacted away (:meth:`Recommender.compact`), by id, without
    a Python object per item: the ids in an :class:`IdIndex`, the user rows end to end in
    one int32 array, and each id's segment (start, end) in two int64 arrays: 72 bytes
    per item of a 13-character id and one rater, by ``tracemalloc`` over 100,000, against
    154 for a dict of arrays, its keys not counted (ad hoc). An id given back its row is
    emptied (its segment left as it is).

    >>> kept = ForgottenRaters()
    >>> kept.add("x", np.array([3, 1])); kept.add("x", np.array([2, 3]))
    >>> kept.get("x").tolist(), kept.pop("x").tolist(), kept.get("x").tolist(), bool(kept)
    ([1, 2, 3], [1, 2, 3], [], False)
    """

    def __init__(self) -> None:
        self.ids = IdIndex()
        self.raters = array("i")
        self.start = array("q")
        self.end = array("q")
        self.live = 0  # ids holding raters

    def __bool__(self) -> bool:
        return self.live > 0

    def get(self, item: str) -> np.ndarray:
        """The user rows that rated ``item`` (empty when none are kept)."""
        k = self.ids.get(item)
        if k is None:
            return np.zeros(0, np.int32)
        # (a copy: a view would hold the buffer, and the array could no longer grow)
        return np.frombuffer(self.raters, np.int32)[self.start[k] : self.end[k]].copy()

    def add(self, item: str, raters: np.ndarray) -> None:
        """Keep ``raters`` (distinct) as raters of ``item`` (with any kept already)."""
        before = self.get(item)
        merged = np.union1d(before, raters) if len(before) else np.asarray(raters)
        merged = merged.astype(np.int32, copy=False)
        if not len(merged):
            return
        k = self.ids.row(item)
        if k == len(self.start):
            self.start.append(0)
            self.end.append(0)
        if not len(before):
            self.live += 1
        self.start[k] = len(self.raters)
        self.raters.frombytes(merged.tobytes())
        self.end[k] = len(self.raters)

    def add_many(self, items: list[str], raters: np.ndarray, starts: np.ndarray) -> None:
        """:meth:`add` of ``raters[starts[j]:starts[j + 1]]`` (distinct, the last to the
        end) for each of ``items`` (distinct): those keeping none yet in one append of
        every segment, not a call each (a compaction forgets thousands of items).

        >>> kept = ForgottenRaters(); kept.add("b", np.array([9]))
        >>> kept.add_many(["a", "b", "c"], np.array([1, 2, 3, 4, 5]), np.array([0, 2, 3]))
        >>> [kept.get(x).tolist() for x in "abc"], kept.live
        ([[1, 2], [3, 9], [4, 5]], 3)
        """
        if not items:
            return
        raters = np.asarray(raters, np.int32)
        ends = np.r_[starts[1:], len(raters)]
        k = self.ids.rows(items)  # (new ids: the next rows)
        n_old = len(self.start)
        held = np.zeros(len(items), bool)  # ids keeping raters already: one at a time
        old = np.flatnonzero(k < n_old)
        if len(old):
            begin = np.frombuffer(self.start, np.int64)[k[old]]
            held[old] = np.frombuffer(self.end, np.int64)[k[old]] > begin
        for j in np.flatnonzero(held).tolist():
            self.add(items[j], raters[starts[j] : ends[j]])
        fresh = ~held
        if not fresh.any():
            return
        grow = int(k.max()) + 1 - n_old
        if grow > 0:
            self.start.frombytes(bytes(8 * grow))
            self.end.frombytes(bytes(8 * grow))
        lo, hi = starts[fresh], ends[fresh]
        base = len(self.raters)
        self.raters.frombytes(raters[_segments(lo, hi)].tobytes())
        width = hi - lo
        begin = base + np.cumsum(width) - width
        start = np.frombuffer(self.start, np.int64)
        end = np.frombuffer(self.end, np.int64)
        start[k[fresh]] = begin
        end[k[fresh]] = begin + width
        self.live += int(np.count_nonzero(width))

    def pop(self, item: str) -> np.ndarray:
        """:meth:`get`, then keep none for ``item``."""
        raters = self.get(item)
        if len(raters):
            k = self.ids.get(item)
            self.end[k] = self.start[k]
            self.live -= 1
        return raters


def _segments(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions ``lo[j]:hi[j]`` of every segment, end to end.

    >>> _segments(np.array([5, 0]), np.array([7, 1])).tolist()
    [5, 6, 0]
    """
    width = hi - lo
    return np.repeat(lo - (np.cumsum(width) - width), width) + np.arange(int(width.sum()))


def _side_columns(signals: Sequence[str], k: int, d: int) -> dict[str, slice]:
    """Columns of the stacked item vectors a model's signals need, in a fixed order:
    ``q`` (k factors) and ``b`` (bias) for mf, ``qn`` (unit factors) for recent factors,
    ``x`` (d content columns) for content and recent tags, ``pop`` for popularity.

    A model without a signal neither stores nor multiplies its columns: popularity
    alone ranks from one column instead of ``2k + d + 2``.

    >>> _side_columns(("mf", "pop"), 4, 8)
    {'q': slice(0, 4, None), 'b': slice(4, 5, None), 'pop': slice(5, 6, None)}
    """
    groups = (
        ("q", k, {"mf"}),
        ("qn", k, {"recent_factors"}),
        ("x", d, {"content", "recent_tags"}),
        ("b", 1, {"mf"}),
        ("pop", 1, {"pop"}),
    )
    out, start = {}, 0
    for name, width, needs in groups:
        if needs & set(signals):
            out[name] = slice(start, start + width)
            start += width
    return out


#: Timestamps beyond this many seconds from 1970 either way (2^53: float64's exact
#: integers, 285 million years) are refused: two that far apart would overflow the
#: popularity's decay to infinity.
MAX_ABS_TIMESTAMP = float(2**53)


def _check_ids(ids: Sequence, what: str) -> None:
    """A ``TypeError`` for an id that is not a ``str``, before anything changes (ids
    registered ahead of one refused by the id index left the model's arrays short of
    them, and every later call failed).

    >>> _check_ids(["u1", 7], "users")
    Traceback (most recent call last):
    ...
    TypeError: users are str ids, not int: 7
    """
    for x in ids:
        if not isinstance(x, str):
            raise TypeError(f"{what} are str ids, not {type(x).__name__}: {x!r}")


def _check_timestamps(ts: np.ndarray) -> None:
    """A ``ValueError`` naming the first timestamp that is not finite or is beyond
    :data:`MAX_ABS_TIMESTAMP`.

    >>> _check_timestamps(np.array([1.0, -1e300]))
    Traceback (most recent call last):
    ...
    ValueError: timestamps must be finite seconds within +-2^53 of 1970, got -1e+300
    """
    bad = ~(np.abs(ts) <= MAX_ABS_TIMESTAMP)  # (NaN compares false: bad too)
    if bad.any():
        raise ValueError(
            f"timestamps must be finite seconds within +-2^53 of 1970, got {ts[bad][0]:g}"
        )


def _joined(
    lists: Sequence[array], rows: np.ndarray, dtype: type, last: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``lists[r]`` (the ``last`` entries of each, when given) for each of ``rows``, end to
    end as one array, and each one's length: one join of their buffers, not an array each.

    >>> flat, n = _joined([array("i", [1, 2, 3]), array("i", [4])], np.array([1, 0]), np.int32, 2)
    >>> flat.tolist(), n.tolist()
    ([4, 2, 3], [1, 2])
    """
    parts = [lists[r] for r in rows.tolist()]
    if last is not None:
        parts = [p[-last:] for p in parts]
    lengths = np.fromiter(map(len, parts), np.int64, len(parts))
    return np.frombuffer(b"".join(parts), dtype), lengths


def _split(values: list, lengths: np.ndarray) -> list[list]:
    """``values`` cut into consecutive lists of the given lengths.

    >>> _split(list("abcdef"), np.array([2, 0, 3]))
    [['a', 'b'], [], ['c', 'd', 'e']]
    """
    ends = np.cumsum(lengths).tolist()
    return [values[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores of one row, best first, ties by position.

    The same selection as the batched paths (:func:`top_k_rows`), so single and batched
    lists agree exactly.
    """
    n = len(scores)
    if k <= 0 or n == 0:
        return np.zeros(0, np.int64)
    block, width = padded_width(n, k)
    padded = np.full((1, width), -np.inf, np.float32)
    padded[0, :n] = as_float32(scores)
    top = top_k_rows(padded, k, block)[0][0]
    return top[top >= 0]
