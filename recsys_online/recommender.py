"""The hybrid recommender: learns from each event and ranks the catalog for a user."""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys_online.content import ContentModel
from recsys_online.cooc import CoOccurrence
from recsys_online.factors import FactorModel, FactorParams
from recsys_online.ids import IdIndex, grown
from recsys_online.popularity import Popularity
from recsys_online.ranking import padded_width, top_k_rows
from recsys_online.tags import ItemTags

SIGNALS = ("mf", "content", "cooc", "pop", "recent_tags", "recent_factors")

#: Ranking signals of each named model; ``hybrid`` blends them with learned weights.
MODELS: dict[str, tuple[str, ...]] = {
    "hybrid": SIGNALS,
    "mf": ("mf",),
    "content": ("content",),
    "cooc": ("cooc",),
    "popularity": ("pop",),
}


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One ranked item with the signal that placed it there and a readable reason.

    ``source`` is one of ``collaborative``, ``content``, ``co-occurrence``, ``popular``;
    ``because`` names the item the user liked that explains it, where there is one.
    """

    item: str
    score: float
    reason: str
    source: str
    because: str | None = None


@dataclass
class RecommenderConfig:
    """Settings of :class:`Recommender`; every field is a keyword of its own."""

    signals: tuple[str, ...] = SIGNALS
    factors: FactorParams = field(default_factory=FactorParams)
    scale: tuple[float, float] = (1.0, 5.0)
    relevant: float = 4.0
    content_dim: int = 64
    cooc_window: int = 10
    cooc_neighbours: int = 50
    cooc_decay: float = 0.8
    cooc_beta: float = 0.5
    popularity_half_life: float = 7 * 86400.0
    cold_ratings: float = 5.0
    learn_blend: bool = True
    blend_lr: float = 0.05
    blend_l2: float = 1e-4
    n_negatives: int = 4
    hard_negatives: int = 0
    hard_pool: int = 20
    history_limit: int = 2000
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = set(self.signals) - set(SIGNALS)
        if unknown or not self.signals:
            raise ValueError(f"signals must be a non-empty subset of {SIGNALS}, got {self.signals}")
        lo, hi = self.scale
        if not lo < hi:
            raise ValueError(f"scale must be (low, high) with low < high, got {self.scale}")


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
        self.content = ContentModel(self.tags, dim=cfg.content_dim)
        self.cooc = CoOccurrence(
            cfg.cooc_window, cfg.cooc_neighbours, cfg.cooc_decay, cfg.cooc_beta
        )
        self.popularity = Popularity(cfg.popularity_half_life)
        self.rng = np.random.default_rng(cfg.seed)
        self.active = np.zeros(0, bool)
        self.deleted = np.zeros(0, bool)
        self.user_n = np.zeros(0, np.float32)
        self.user_sum = np.zeros(0, np.float32)
        self.history: list[array] = []  # item rows each user rated, oldest first
        self.history_ratings: list[array] = []
        self.n_events = 0
        self.now = 0.0
        self._sizes = (-1, -1)  # (users, items) storage was last grown for
        self._declared: dict[int, np.ndarray] = {}  # user row -> declared tag vector
        n = len(SIGNALS)
        self._use = np.array([s in cfg.signals for s in SIGNALS], np.float32)
        self.w_cold = self._use.copy()
        self.w_warm = self._use.copy()
        self.signal_scale = np.ones(n, np.float32)
        self._scale_sq = np.ones(n, np.float64)
        self._scale_n = 0

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
        row = self.items.row(item)
        self._ensure()
        self.active[row] = True
        self.deleted[row] = False
        self.tags.set(row, dict(tags or {}))
        self.mf.set_item_tags(row)
        self.content.set_item(row)
        if timestamp is not None:
            self.now = max(self.now, float(timestamp))

    def delete_item(self, item: str) -> None:
        """Remove an item from every future recommendation (its learned state is dropped)."""
        row = self.items.get(item)
        if row is None:
            row = self.items.row(item)
            self._ensure()
        self.active[row] = False
        self.deleted[row] = True
        self.tags.clear(row)
        self.content.set_item(row)
        self.cooc.forget_item(row)

    def upsert_user(self, user: str, tags: Mapping[str, float]) -> None:
        """Declare a user's attributes or interests as weighted tags (user cold start).

        They seed the user's content profile with the weight of one rating above the
        user's mean, so a user with no ratings gets content-based lists ("matches your
        tags ...") instead of plain popularity; later ratings outweigh them. Declaring
        again replaces the previous declaration.
        """
        row = self.users.row(user)
        self._ensure()
        vec = self.content.tag_vector(dict(tags))
        old = self._declared.get(row)
        if old is not None:
            self.content.profile[row] -= old
        self.content.profile[row] += vec
        self._declared[row] = vec

    def _is_cold(self, row: int | None) -> bool:
        """No ratings and no declared tags: only popularity can rank for this user."""
        if row is None:
            return True
        declared = row in self._declared and "content" in self.config.signals
        return self.user_n[row] == 0 and not declared

    def is_deleted(self, item: str) -> bool:
        """True when the item was deleted from the catalog."""
        row = self.items.get(item)
        return row is not None and bool(self.deleted[row])

    # ------------------------------------------------------------ learning
    def learn_rating(self, user: str, item: str, rating: float, timestamp: float = 0.0) -> None:
        """Learn one rating (test-then-train callers predict and rank before this)."""
        self.learn_many([user], [item], [rating], [timestamp])

    def learn_many(
        self,
        users: Sequence[str],
        items: Sequence[str],
        ratings: Sequence[float],
        timestamps: Sequence[float],
    ) -> None:
        """Learn a micro-batch of ratings; every step sees the state from before the batch.

        Items never announced by a catalog event join the catalog on their first rating;
        ratings of deleted items update the factors but never bring the item back.
        """
        u = self.users.rows(users)
        i = self.items.rows(items)
        self._ensure()
        r = np.asarray(ratings, np.float32)
        ts = np.asarray(timestamps, np.float64)
        self.active[i] = ~self.deleted[i]
        self.now = max(self.now, float(ts.max()))
        if self.config.learn_blend and len(self.config.signals) > 1:
            relevant = r >= self.config.relevant
            for uu, ii in zip(u[relevant].tolist(), i[relevant].tolist(), strict=True):
                self._learn_blend(uu, ii)
        means = self._user_means(u)
        self.mf.learn(u, i, r)
        if "content" in self.config.signals:
            self.content.learn(u, i, r, means)
        if {"cooc", "recent_tags", "recent_factors"} & set(self.config.signals):
            for uu, ii in zip(u.tolist(), i.tolist(), strict=True):
                self.cooc.learn(uu, ii)
        self.popularity.learn(i, ts)
        np.add.at(self.user_n, u, 1.0)
        np.add.at(self.user_sum, u, r)
        limit = self.config.history_limit
        for uu, ii, rr in zip(u.tolist(), i.tolist(), r.tolist(), strict=True):
            hist, hr = self.history[uu], self.history_ratings[uu]
            hist.append(ii)
            hr.append(rr)
            if len(hist) > limit:
                del hist[0], hr[0]
        self.n_events += len(r)

    def _user_means(self, users: np.ndarray) -> np.ndarray:
        shrink = 2.0
        return (self.user_sum[users] + shrink * self.mf.mu) / (self.user_n[users] + shrink)

    def _alpha(self, users: np.ndarray) -> np.ndarray:
        n = self.user_n[users]
        return n / (n + self.config.cold_ratings)

    def _features(self, user: int, items: np.ndarray | None) -> np.ndarray:
        """Raw signal values, shape ``(len(SIGNALS), n)`` over ``items`` (all when None)."""
        parts = self._signals_many(np.array([user]), items)
        n = self.n_items if items is None else len(items)
        return np.stack([np.zeros(n, np.float32) if f is None else f[0] for f in parts])

    def _weights(self, users: np.ndarray) -> np.ndarray:
        """Effective per-signal weights for each user, shape ``(len(users), len(SIGNALS))``."""
        a = self._alpha(users)[:, None]
        return ((1.0 - a) * self.w_cold + a * self.w_warm) * self._use / self.signal_scale

    def _learn_blend(self, user: int, item: int) -> None:
        """One pairwise logistic (BPR) step on the blend weights for a relevant rating.

        The positive is the rated item; negatives are ``hard_negatives`` items drawn from
        the user's current top of the list (what the blend wrongly ranks high) plus
        uniform draws from the live catalog, all scored with the state before learning.
        """
        cfg = self.config
        live = self.active[: self.n_items].copy()
        live[np.frombuffer(self.history[user], np.int32)] = False
        live[item] = False
        live_rows = np.flatnonzero(live)
        if not len(live_rows):
            return
        n_hard = min(cfg.hard_negatives, len(live_rows))
        negs = live_rows[self.rng.integers(0, len(live_rows), cfg.n_negatives - n_hard)]
        a = float(self._alpha(np.array([user]))[0])
        w = ((1.0 - a) * self.w_cold + a * self.w_warm) * self._use
        if n_hard:
            x = self._features(user, None)  # (S, n_items): the whole catalog is scored
            scores = np.where(live, (w / self.signal_scale) @ x, -np.inf)
            pool = min(cfg.hard_pool, len(live_rows))
            top = np.argpartition(-scores, pool - 1)[:pool]
            negs = np.concatenate((negs, top[self.rng.integers(0, pool, n_hard)]))
            item_col, neg_cols, uniform = item, negs, x[:, live_rows]
        else:
            x = self._features(user, np.concatenate(([item], negs)))  # (S, 1 + n)
            item_col, neg_cols, uniform = 0, np.arange(1, x.shape[1]), x[:, 1:]
        # Running scale of each signal over uniform draws from the live catalog, so the
        # weights of signals with different units compare.
        self._scale_n += 1
        rate = max(1.0 / (self._scale_n + 20), 0.001)  # starts from a unit prior
        self._scale_sq += rate * (uniform.var(axis=1) - self._scale_sq)
        self.signal_scale = np.sqrt(np.maximum(self._scale_sq, 1e-8)).astype(np.float32)
        d = (x[:, [item_col]] - x[:, neg_cols]) / self.signal_scale[:, None]  # pos - neg
        g = 1.0 / (1.0 + np.exp(w @ d))  # sigmoid(-margin) per negative
        step = (d * g).mean(axis=1) * self._use
        lr, l2 = cfg.blend_lr, cfg.blend_l2
        self.w_cold += lr * ((1.0 - a) * step - l2 * self.w_cold)
        self.w_warm += lr * (a * step - l2 * self.w_warm)

    # ------------------------------------------------------------ prediction
    def predict_rating(self, user: str, item: str) -> float:
        """Predicted rating clipped to the scale; unseen ids fall back to biases and the mean."""
        return float(self.predict_many([user], [item])[0])

    def predict_many(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings for aligned lists of ids, without registering unseen ids."""
        u = np.array([self.users.get(x) for x in users], dtype=object)
        i = np.array([self.items.get(x) for x in items], dtype=object)
        known_u = np.array([x is not None for x in u], bool)
        known_i = np.array([x is not None for x in i], bool)
        ur = np.where(known_u, u, 0).astype(np.int64)
        ir = np.where(known_i, i, 0).astype(np.int64)
        mf = self.mf
        if mf.n_users == 0 or mf.n_items == 0:
            return np.full(len(u), mf.mu if mf.n_ratings else np.mean(self.config.scale))
        dots = np.einsum("ij,ij->i", mf.P[ur], mf.Q[ir]) * known_u
        pred = (
            mf.mu
            + np.where(known_u, mf.user_bias[ur], 0.0)
            + np.where(known_i, mf.item_bias_eff[ir], 0.0)
            + np.where(known_i, dots, 0.0)
        )
        return np.clip(pred, *self.config.scale)

    # ------------------------------------------------------------ ranking
    def candidates(self, user: int) -> np.ndarray | None:
        """Candidate item rows for ``user``: ``None`` means the whole catalog.

        The hook where an approximate-nearest-neighbour stage would narrow a very large
        catalog before ranking.
        """
        return None

    def recommend(self, user: str, k: int = 10) -> list[Recommendation]:
        """Top-``k`` live items the user has not rated, best first, each with a reason.

        Unknown users and users with no ratings get decayed popularity.
        """
        row = self.users.get(user)
        if self._is_cold(row):
            return self.popular(k)
        cands = self.candidates(row)
        x = self._features(row, cands)
        w = self._weights(np.array([row]))[0]
        scores = w @ x
        cand_rows = np.arange(self.n_items) if cands is None else cands
        scores = self._mask(scores, cand_rows, row)
        top = _top_k(scores, k)
        contrib = w[:, None] * (x[:, top] - x.mean(axis=1, keepdims=True))
        return [
            self._explain(row, int(cand_rows[j]), float(scores[j]), contrib[:, n])
            for n, j in enumerate(top)
        ]

    def recommend_many(self, users: Sequence[str], k: int = 10) -> list[list[Recommendation]]:
        """Batched :meth:`recommend`: one matrix product per signal for all the users."""
        rows = [self.users.get(u) for u in users]
        warm = [n for n, r in enumerate(rows) if not self._is_cold(r)]
        out: list[list[Recommendation]] = [[] for _ in users]
        if len(warm) < len(users):
            popular = self.popular(k)
            for n, r in enumerate(rows):
                if self._is_cold(r):
                    out[n] = popular
        if not warm:
            return out
        u = np.array([rows[n] for n in warm], np.int64)
        w = self._weights(u)
        parts = self._signals_many(u)
        top, top_scores = self._rank(u, w, parts, k)
        for b, n in enumerate(warm):
            picked = top[b]
            contrib = np.zeros((len(SIGNALS), len(picked)), np.float32)
            for j, f in enumerate(parts):
                if f is not None:
                    contrib[j] = w[b, j] * (f[b, picked] - f[b].mean())
            out[n] = [
                self._explain(int(u[b]), int(j), float(sc), contrib[:, c])
                for c, (j, sc) in enumerate(zip(picked, top_scores[b], strict=True))
            ]
        return out

    def top_items(self, users: Sequence[str], k: int = 10) -> list[list[str]]:
        """Just the ids of each user's top-``k`` list (no explanations), batched."""
        rows = [self.users.get(u) for u in users]
        warm = [n for n, r in enumerate(rows) if not self._is_cold(r)]
        out: list[list[str]] = [[] for _ in users]
        if len(warm) < len(users):
            popular = [r.item for r in self.popular(k)]
            for n, r in enumerate(rows):
                if self._is_cold(r):
                    out[n] = popular
        if warm:
            u = np.array([rows[n] for n in warm], np.int64)
            top, _ = self._rank(u, self._weights(u), self._signals_many(u), k)
            ids = self.items.ids
            for b, n in enumerate(warm):
                out[n] = [ids[j] for j in top[b].tolist()]
        return out

    def _signals_many(
        self, u: np.ndarray, items: np.ndarray | None = None
    ) -> list[np.ndarray | None]:
        """Each signal for users ``u`` over ``items`` (all when None), shape ``(B, n)``.

        ``None`` stands for a signal the model does not use.
        """
        use = self.config.signals
        n = self.n_items if items is None else len(items)
        mf, content = self.mf, self.content
        c = content.C[:n] if items is None else content.C[items]
        out: list[np.ndarray | None] = [None] * len(SIGNALS)
        if "mf" in use:
            q = mf.Q[:n] if items is None else mf.Q[items]
            b = mf.item_bias_eff[:n] if items is None else mf.item_bias_eff[items]
            out[0] = mf.P[u] @ q.T + b
        if "content" in use:
            out[1] = _unit_rows(content.profile[u]) @ c.T
        if "cooc" in use:
            out[2] = (
                self.cooc.item_scores_many(u)
                if items is None
                else np.stack([self.cooc.item_scores_for(r, items) for r in u.tolist()])
            )
        if "pop" in use:
            out[3] = np.broadcast_to(self.popularity.item_scores(self.now, items), (len(u), n))
        if "recent_tags" in use or "recent_factors" in use:
            ring = self.cooc.recent[u]  # (B, L) newest first, -1 empty
            w = self.cooc._recency * (ring >= 0)
            rows = np.maximum(ring, 0)
            if "recent_tags" in use:
                session = np.einsum("bl,bld->bd", w, content.C[rows])
                out[4] = _unit_rows(session) @ c.T
            if "recent_factors" in use:
                q_unit = mf.Q[rows] / np.maximum(mf.Q_norm[rows], 1e-9)[..., None]
                session = np.einsum("bl,bld->bd", w, q_unit)
                out[5] = mf.similarity_to(_unit_rows(session), items)
        return out

    def _rank(
        self, u: np.ndarray, w: np.ndarray, parts: list[np.ndarray | None], k: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Blend, mask and take the top-``k`` rows of each user, best first."""
        n = self.n_items
        block, width = padded_width(n, k)
        padded = np.full((len(u), width), -np.inf, np.float32)
        scores = padded[:, :n]
        scores[:] = 0.0
        for j, f in enumerate(parts):
            if f is not None:
                scores += w[:, j : j + 1] * f
        scores[:, ~self.active[:n]] = -np.inf
        for b, r in enumerate(u.tolist()):
            scores[b, np.frombuffer(self.history[r], np.int32)] = -np.inf
        top, top_scores = top_k_rows(padded, k, block)
        finite = top >= 0
        return [t[f] for t, f in zip(top, finite, strict=True)], [
            t[f] for t, f in zip(top_scores, finite, strict=True)
        ]

    def popular(self, k: int = 10) -> list[Recommendation]:
        """The ``k`` most popular live items right now (the fallback for unknown users)."""
        scores = self.popularity.item_scores(self.now).copy()
        scores[~self.active[: self.n_items]] = -np.inf
        return [
            Recommendation(self.items.id_of(int(j)), float(scores[j]), "popular now", "popular")
            for j in _top_k(scores, k)
        ]

    def similar_items(self, item: str, k: int = 10) -> list[Recommendation]:
        """More like this: live items closest to ``item`` by content and co-occurrence."""
        row = self.items.get(item)
        if row is None:
            return []
        scores = self.content.similar_items(row).copy()
        nbr, w = self.cooc.nbr[row], self.cooc.weight[row]
        if w.max(initial=0.0) > 0:
            scores[nbr[nbr >= 0]] += w[nbr >= 0] / w.max()
        scores[row] = -np.inf
        scores[~self.active[: self.n_items]] = -np.inf
        return [
            Recommendation(
                self.items.id_of(int(j)), float(scores[j]), f"similar to {item}", "content", item
            )
            for j in _top_k(scores, k)
        ]

    def _mask(self, scores: np.ndarray, cand_rows: np.ndarray, user: int) -> np.ndarray:
        scores = np.where(self.active[cand_rows], scores, -np.inf)
        rated = np.frombuffer(self.history[user], np.int32)
        if len(rated):
            if len(cand_rows) == self.n_items:
                scores[rated] = -np.inf
            else:
                scores[np.isin(cand_rows, rated)] = -np.inf
        return scores

    def _explain(self, user: int, item: int, score: float, contrib: np.ndarray) -> Recommendation:
        """Name the signal that lifted ``item`` most and say it in words.

        The model's signals are tried from the largest contribution down; the first that
        can give a truthful reason wins.
        """
        item_id = self.items.id_of(item)
        for j in np.argsort(-contrib, kind="stable").tolist():
            if not self._use[j]:
                continue
            name = SIGNALS[j]
            if name == "cooc":
                liked = self.cooc.because_of(user, item)
                if liked is not None:
                    liked_id = self.items.id_of(liked)
                    return Recommendation(
                        item_id, score, f"because you liked {liked_id}", "co-occurrence", liked_id
                    )
            elif name in ("content", "recent_tags"):
                tags = self.content.top_tags(user, item)
                if tags:
                    return Recommendation(
                        item_id, score, "matches your tags " + ", ".join(tags), "content"
                    )
            elif name in ("mf", "recent_factors"):
                liked = self._closest_liked(user, item)
                if liked is not None:
                    liked_id = self.items.id_of(liked)
                    return Recommendation(
                        item_id, score, f"because you liked {liked_id}", "collaborative", liked_id
                    )
            elif name == "pop":
                return Recommendation(item_id, score, "popular now", "popular")
        return Recommendation(item_id, score, "close to your tastes", "collaborative")

    def _closest_liked(self, user: int, item: int) -> int | None:
        """The item among the user's recent likes whose factors are closest to ``item``'s."""
        hist = np.frombuffer(self.history[user], np.int32)[-50:]
        ratings = np.frombuffer(self.history_ratings[user], np.float32)[-50:]
        liked = hist[ratings >= self._user_means(np.array([user]))[0]]
        if not len(liked):
            return None
        q = self.mf.Q[liked]
        sims = q @ self.mf.Q[item] / (np.linalg.norm(q, axis=1) + 1e-9)
        return int(liked[int(np.argmax(sims))])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


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
    padded[0, :n] = scores
    top = top_k_rows(padded, k, block)[0][0]
    return top[top >= 0]
