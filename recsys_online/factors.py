"""Online biased matrix factorisation with LightFM-style tag embeddings, learned by SGD."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsys_online.ids import grown, kept_rows
from recsys_online.tags import ItemTags


@dataclass(frozen=True)
class FactorParams:
    """Hyperparameters of :class:`FactorModel` (stored under their own names).

    ``adaptive`` (the default) uses row-wise AdaGrad: one accumulated squared gradient per
    bias and per vector (the mean over its coordinates), the learning rates acting as
    AdaGrad's step sizes, so the adaptive state costs 4 bytes per row instead of a second
    copy of every vector; without it, plain SGD, where a row met several times in a
    micro-batch moves by the mean of its gradients (their sum, from one stale state,
    diverged once an item came a few hundred times in a batch; the mean learns a tag
    shared by many of a batch's items one rating's step at a time, about half as fast
    as the sum on a small two-camp test at lr 0.02: raise the rates, or keep AdaGrad).
    On the synthetic stream (``recsys-online synth DIR --seed 0``, 100,000 ratings;
    ``recsys-online replay DIR/ratings.csv --items DIR/items.csv --model mf``),
    prequential RMSE 0.737 with the defaults, 0.751 with ``--sgd`` at the same rates,
    0.832 with ``--sgd`` at 0.02.
    """

    n_factors: int = 32
    lr_bias: float = 0.1
    lr_factor: float = 0.1
    l2_bias: float = 0.005
    l2_factor: float = 0.01
    init_std: float = 0.1
    clip_error: float = 4.0
    adaptive: bool = True
    seed: int = 42

    def __post_init__(self) -> None:
        """Refuse, by name, a setting that would learn nothing or NaN without a word.

        >>> FactorParams(lr_factor=float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: factors.lr_factor must be a finite number >= 0 (0: frozen), got nan
        """
        check_numbers(self, _PARAM_RULES, "factors.")
        seed = self.seed  # (None: numpy's fresh entropy, as default_rng takes it)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise ValueError(f"factors.seed must be an integer >= 0 or None, got {seed!r}")
        if not isinstance(self.adaptive, bool | np.bool_):
            raise ValueError(f"factors.adaptive must be True or False, got {self.adaptive!r}")


#: The step sizes and L2 of :class:`FactorParams`: what a deployment may set (the worker's
#: ``RECSYS_LR_*``/``RECSYS_L2_*``, replay's flags) beside the factor count and seed.
RATES = ("lr_bias", "lr_factor", "l2_bias", "l2_factor")


def check_numbers(
    obj: object, rules: Sequence[tuple[str, Callable[[float], bool], str]], prefix: str = ""
) -> None:
    """A ``ValueError`` naming the first of ``obj``'s fields that is not a number (a bool
    is not one) or breaks its rule: ``rules`` are (field, test, the rule stated)."""
    for name, ok, rule in rules:
        value = getattr(obj, name)
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not number or not ok(value):
            raise ValueError(f"{prefix}{name} must be {rule}, got {value!r}")


def _not_negative(v: float) -> bool:
    return 0.0 <= v < math.inf


#: (field, test, the rule a ``ValueError`` states) for :class:`FactorParams`.
_PARAM_RULES = (
    ("n_factors", lambda v: isinstance(v, int | np.integer) and v >= 1, "an integer >= 1"),
    ("lr_bias", _not_negative, "a finite number >= 0 (0: frozen)"),
    ("lr_factor", _not_negative, "a finite number >= 0 (0: frozen)"),
    ("l2_bias", _not_negative, "a finite number >= 0"),
    ("l2_factor", _not_negative, "a finite number >= 0"),
    ("init_std", _not_negative, "a finite number >= 0"),
    ("clip_error", lambda v: v > 0, "a number > 0 (inf: no clipping)"),
)


class FactorModel:
    r"""Biased MF whose item vectors include the embeddings of the item's tags.

    .. math::

        \hat r_{ui} = \mu + b_u + b_i + \sum_t s_{it} c_t
                      + p_u \cdot \big(v_i + \sum_t s_{it} e_t\big)

    where :math:`s_{it}` are the item's tag weights normalised to sum to one, :math:`c_t`
    and :math:`e_t` are learned tag biases and embeddings, and :math:`\mu` is the running
    mean rating. An item that arrives with tags and no ratings is scored from its tags at
    once. Each rating takes one SGD step (or AdaGrad, with ``adaptive``) on every term.

    The model works on dense rows; :class:`recsys_online.recommender.Recommender` maps ids
    to rows. ``learn`` takes a micro-batch: every prediction in the batch uses the state
    from before the batch and the gradients of rows met twice add up, AdaGrad scaling
    their sum, or, with plain SGD, average (batch of one is exact sequential SGD).

    The model stores its parameters only: an item's vector ``q_i = v_i + S·E`` and bias
    are computed when asked for (:meth:`items`), from its few tags. Ranking the catalog
    wants them stacked: :class:`ItemVectors` keeps that copy, for those who rank.

    Examples
    --------
    >>> m = FactorModel(FactorParams(n_factors=4, seed=1))
    >>> m.ensure(n_users=2, n_items=2)
    >>> for _ in range(200):
    ...     _ = m.learn(np.array([0, 1]), np.array([0, 0]), np.array([5.0, 1.0]))
    >>> [round(float(x), 1) for x in m.predict(np.array([0, 1]), np.array([0, 0]))]
    [5.0, 1.0]
    """

    def __init__(
        self,
        params: FactorParams | None = None,
        tags: ItemTags | None = None,
        scale: tuple[float, float] = (1.0, 5.0),
        refresh_every: int = 2000,
    ) -> None:
        self.params = p = params or FactorParams()
        self.tags = tags if tags is not None else ItemTags()
        self.scale = scale
        self.refresh_every = refresh_every
        self.rng = np.random.default_rng(p.seed)
        k = p.n_factors
        self.mu = 0.0
        self.n_ratings = 0
        self.n_users = self.n_items = 0
        f32 = np.float32
        self.user_bias, self.item_bias, self.tag_bias = (np.zeros(0, f32) for _ in range(3))
        self.P, self.V, self.E = (np.zeros((0, k), f32) for _ in range(3))
        # AdaGrad accumulators (allocated lazily, one number per row of a parameter).
        self._acc: dict[str, np.ndarray] = {}
        self._since_refresh = 0
        self._changes = 0  # parameter writes, which forget the last items() answer
        self._memo: tuple | None = None
        # Bumped every ``refresh_every`` ratings: the tag embeddings have moved every
        # item's vector since, so stacked copies of them (ItemVectors) are rebuilt.
        self.full_refreshes = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memo": None}

    def __setstate__(self, state: dict) -> None:
        for cached in ("Q", "item_bias_eff", "Q_norm"):  # (pickled when they were kept)
            state.pop(cached, None)
        state.setdefault("_changes", 0)
        state["_memo"] = None
        self.__dict__.update(state)

    # ---------------------------------------------------------------- storage
    def ensure(self, n_users: int = 0, n_items: int = 0) -> None:
        """Grow storage for rows below ``n_users`` / ``n_items``, initialising new rows."""
        if n_users > self.n_users:
            old = self.n_users
            self.P = grown(self.P, n_users)
            self.user_bias = grown(self.user_bias, n_users)
            self.P[old:n_users] = self._init_rows(n_users - old)
            self.n_users = n_users
        self._ensure_tags()
        if n_items > self.n_items:
            self._changes += 1  # (rows past the last item may have been read: now set)
            old = self.n_items
            self.V = grown(self.V, n_items)
            self.item_bias = grown(self.item_bias, n_items)
            self.V[old:n_items] = self._init_rows(n_items - old)
            self.n_items = n_items
            self.tags.ensure_items(n_items)

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep item rows ``keep`` only (ascending), renumbered ``0, 1, ...``; the tags'
        rows too (:meth:`Recommender.compact`)."""
        self.V, self.item_bias = kept_rows(self.V, keep), kept_rows(self.item_bias, keep)
        for name in ("V", "item_bias"):
            if name in self._acc:
                self._acc[name] = kept_rows(self._acc[name], keep)
        self.n_items = len(keep)
        self.tags.keep_items(keep)
        self._changes += 1

    def _ensure_tags(self) -> None:
        n_tags = max(1, self.tags.n_tags)  # row 0 also backs the padding slots
        if n_tags > len(self.tag_bias) or n_tags > len(self.E):
            old = len(self.E)
            self.E = grown(self.E, n_tags)
            self.tag_bias = grown(self.tag_bias, n_tags)
            self.E[old:] = self._init_rows(len(self.E) - old)

    def _init_rows(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal((n, self.params.n_factors)) * self.params.init_std).astype(
            np.float32
        )

    def set_item_tags(self, item_row: int) -> None:
        """Call after the item's tags changed (new tags get their embeddings)."""
        self.set_items_tags(np.array([item_row]))

    def set_items_tags(self, item_rows: np.ndarray) -> None:
        """:meth:`set_item_tags` for many rows at once."""
        if len(item_rows) == 0:
            return
        self.ensure(n_items=int(np.max(item_rows)) + 1)
        self._ensure_tags()

    def items(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items' vectors ``v_i + S·E`` and biases ``b_i + S·c`` (``rows`` of any
        shape: vectors of shape ``(*rows.shape, k)``; read-only arrays).

        The last answer (for up to ``_GATHER_MAX`` rows) is remembered until the model or
        the tags change: a batch that is predicted and then learned computes its items
        once.
        """
        rows = np.asarray(rows)
        known = self._remembered(rows)
        if known is not None:
            return known[0], known[1]
        return self._computed(rows, self.tags.rows[rows], self.tags.shares_of(rows))

    def _remembered(self, rows: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """:meth:`items` of ``rows`` and their tag rows and shares, when it is the answer
        remembered, else None."""
        memo = self._memo
        if (
            memo is not None
            and memo[0] == (self._changes, self.tags.changes)
            and memo[1].shape == rows.shape
            and np.array_equal(memo[1], rows)
        ):
            return memo[2:]
        return None

    def _computed(
        self, rows: np.ndarray, t: np.ndarray, s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`items` of ``rows`` from their tag rows ``t`` and shares ``s``."""
        q = self.V[rows] + _tag_sum(t, s, self.E)
        b = np.asarray(self.item_bias[rows] + _tag_sum(t, s, self.tag_bias))  # (one row: 0-d)
        q.flags.writeable = b.flags.writeable = False
        if rows.size <= _GATHER_MAX:  # (a batch's, not a catalog's: kept small)
            self._memo = ((self._changes, self.tags.changes), rows.copy(), q, b, t, s)
        return q, b

    def add_to_items(self, rows: np.ndarray, dv: np.ndarray, db: np.ndarray) -> None:
        """Add ``dv`` to the items' own vectors and ``db`` to their biases (rows may
        repeat: their changes add up)."""
        np.add.at(self.V, rows, dv)
        np.add.at(self.item_bias, rows, db)
        self._changes += 1

    def add_to_tags(self, rows: np.ndarray, de: np.ndarray, dtb: np.ndarray) -> None:
        """Add ``de`` to the tags' embeddings and ``dtb`` to their biases (rows may
        repeat); stacked item vectors follow at the next full refresh, as when learning."""
        np.add.at(self.E, rows, de)
        np.add.at(self.tag_bias, rows, dtb)
        self._changes += 1

    # ---------------------------------------------------------------- predict
    def raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Unclipped predictions for aligned arrays of user and item rows."""
        q, b = self.items(items)
        return self.mu + self.user_bias[users] + b + np.einsum("ij,ij->i", self.P[users], q)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings, clipped to the rating scale."""
        return np.clip(self.raw(users, items), *self.scale)

    # ---------------------------------------------------------------- learn
    def learn(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> np.ndarray:
        """One SGD step on a micro-batch of ratings; returns the pre-update raw predictions."""
        if len(users) == 0:
            return np.zeros(0, np.float32)
        if len(users) == 1:
            return np.array([self._learn_one(int(users[0]), int(items[0]), float(ratings[0]))])
        return self._learn_batch(users, items, ratings)

    def _learn_batch(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> np.ndarray:
        p = self.params
        ratings = np.asarray(ratings, dtype=np.float32)
        rows = np.asarray(items)  # (their items() answer: remembered after a prediction)
        known = self._remembered(rows)
        if known is None:
            t, s = self.tags.rows[rows], self.tags.shares_of(rows)
            known = (*self._computed(rows, t, s), t, s)
        qi, bi_eff, t, s = known
        pu, vi = self.P[users], self.V[items]
        bu, bi = self.user_bias[users], self.item_bias[items]
        pred = self.mu + bu + bi_eff + np.einsum("ij,ij->i", pu, qi)
        self._changes += 1
        # Running mean, then errors against the state from before the batch.
        self.n_ratings += len(ratings)
        self.mu += float((ratings - self.mu).sum()) / self.n_ratings
        err = np.clip(ratings - pred, -p.clip_error, p.clip_error).astype(np.float32)
        has_tag = s > 0
        tag_rows = t[has_tag]  # one entry per (rating, tag) pair
        of_rating = np.nonzero(has_tag)[0]
        es = err[of_rating] * s[has_tag]  # error share of each tag
        # Gradients (of the negative loss) with L2, biases first.
        g_bu = err - p.l2_bias * bu
        g_bi = err - p.l2_bias * bi
        g_p = err[:, None] * qi - p.l2_factor * pu
        g_v = err[:, None] * pu - p.l2_factor * vi
        # Step: the gradients of rows met more than once in the batch add up (plain SGD:
        # their mean, :meth:`_apply`).
        self._step(users, "user_bias", g_bu, "P", g_p)
        self._step(items, "item_bias", g_bi, "V", g_v)
        self._step_tags(tag_rows, of_rating, es, pu)
        self._count(len(ratings))
        return pred

    def _learn_one(self, u: int, i: int, r: float) -> float:
        """The same step as :meth:`learn` for one rating, on single rows (no scatter)."""
        p = self.params
        pu, vi = self.P[u], self.V[i]
        w = self.tags.weights[i]
        m = w > 0
        t, s = self.tags.rows[i][m], w[m] / w[m].sum()
        bu, bi = float(self.user_bias[u]), float(self.item_bias[i])
        qi = vi + s @ self.E[t] if len(t) else vi.copy()
        bi_eff = bi + float(s @ self.tag_bias[t]) if len(t) else bi
        pred = self.mu + bu + bi_eff + float(pu @ qi)
        self.n_ratings += 1
        self.mu += (r - self.mu) / self.n_ratings
        self._changes += 1
        e = min(max(r - pred, -p.clip_error), p.clip_error)
        pu_old = pu.copy()
        self._step_one("user_bias", u, e - p.l2_bias * bu, p.lr_bias)
        self._step_one("item_bias", i, e - p.l2_bias * bi, p.lr_bias)
        self._step_one("P", u, e * qi - p.l2_factor * pu, p.lr_factor)
        self._step_one("V", i, e * pu_old - p.l2_factor * vi, p.lr_factor)
        if len(t):
            self._step_one("tag_bias", t, e * s - p.l2_bias * self.tag_bias[t], p.lr_bias)
            g_e = e * s[:, None] * pu_old - p.l2_factor * self.E[t]
            self._step_one("E", t, g_e, p.lr_factor)
        self._count(1)
        return pred

    def _count(self, n: int) -> None:
        self._since_refresh += n
        if self._since_refresh >= self.refresh_every:
            self._since_refresh = 0
            self.full_refreshes += 1

    def _step_one(self, name: str, rows: int | np.ndarray, grad, lr: float) -> None:
        """Step distinct ``rows`` of a parameter (plain indexing, no scatter)."""
        param = getattr(self, name)
        if self.params.adaptive:
            acc = self._accumulator(name, param)
            acc[rows] += _squared(grad, param)
            grad = grad * _per_row(1.0 / np.sqrt(acc[rows] + 1e-8), param)
        param[rows] += lr * grad

    def _accumulator(self, name: str, param: np.ndarray) -> np.ndarray:
        """AdaGrad's sum of squared gradients for ``param``, one number per row (row-wise
        AdaGrad: the mean square over a vector's coordinates), grown alongside it."""
        acc = self._acc.get(name)
        if acc is None or len(acc) < len(param):
            acc = self._acc[name] = grown(
                acc if acc is not None else np.zeros(0, np.float32), len(param)
            )
        return acc

    def _step(
        self, rows: np.ndarray, bias: str, g_bias: np.ndarray, vectors: str, g_vec: np.ndarray
    ) -> None:
        """Step a bias and a vector parameter on ``rows`` (one row per entry; rows repeat).

        Each entry's gradient is scattered (:meth:`_apply`): the gradients of a row met
        more than once add up, and row-wise AdaGrad's scale, one number per row read after
        all of the row's squares were added, factors out of the row's sum (plain SGD
        takes their mean instead).
        """
        sq = None
        if self.params.adaptive:
            sq_v = np.einsum("ij,ij->i", g_vec, g_vec)
            sq_v *= np.float32(1.0 / g_vec.shape[1])
            sq = (g_bias * g_bias, sq_v)
        self._apply(rows, bias, g_bias, vectors, g_vec, sq)

    def _step_tags(
        self, tag_rows: np.ndarray, of_rating: np.ndarray, es: np.ndarray, pu: np.ndarray
    ) -> None:
        """Step tag biases and embeddings: entry ``e`` is tag ``tag_rows[e]`` of rating
        ``of_rating[e]``, with error share ``es[e]``; ``pu`` are the ratings' user vectors.

        A tag meets many ratings in a batch, so instead of one gradient vector per entry
        (summed like :meth:`_step`), each tag's summed gradient is one matrix product:
        ``sum_e es_e p_u - l2 n_t e_t``, with the squared norms of the entries (for AdaGrad)
        expanded the same way. Same step, without the ``(entries, k)`` intermediates.
        """
        if len(tag_rows) == 0:
            return
        p = self.params
        k = pu.shape[1]
        rows, inv = _distinct(tag_rows, len(self.E))
        n_rows = len(rows)
        n = np.bincount(inv, minlength=n_rows).astype(np.float32)
        c, e = self.tag_bias[rows], self.E[rows]
        share = np.zeros((n_rows, len(pu)), np.float32)  # (tags, ratings): error shares
        share[inv, of_rating] = es  # a rating's tags are distinct: no pair repeats
        sp = share @ pu  # per tag: sum_e es_e p_u
        s1 = np.bincount(inv, es, n_rows).astype(np.float32)  # per tag: sum_e es_e
        l2b, l2f = np.float32(p.l2_bias), np.float32(p.l2_factor)
        g_c = s1 - l2b * n * c
        g_e = sp - (l2f * n)[:, None] * e
        sq = None
        if p.adaptive:
            # Per tag, sum_e (es_e - l2 c_t)^2 and sum_e |es_e p_u - l2 e_t|^2, expanded
            # into sums over the entries (bincounts) and the products above.
            es2 = es * es
            pn = np.einsum("ij,ij->i", pu, pu)[of_rating]
            s2 = np.bincount(inv, es2, n_rows)
            s2p = np.bincount(inv, es2 * pn, n_rows)
            lc = l2b * c
            sq_c = s2 - 2.0 * lc * s1 + n * lc * lc
            sq_e = (
                s2p
                - (2.0 * l2f) * np.einsum("ij,ij->i", e, sp)
                + (l2f * l2f) * n * np.einsum("ij,ij->i", e, e)
            )
            sq = (sq_c, sq_e / k)
        else:  # plain SGD: a tag moves by the mean of its entries' gradients (``_apply``)
            g_c, g_e = g_c / n, g_e / n[:, None]
        self._apply(rows, "tag_bias", g_c, "E", g_e, sq)

    def _apply(
        self,
        rows: np.ndarray,
        bias: str,
        g_bias: np.ndarray,
        vectors: str,
        g_vec: np.ndarray,
        squared: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """Add gradients to ``rows`` (rows may repeat: a row's gradients add up, as with
        ``np.add.at``; with plain SGD, each weighs 1/n for a row met n times). AdaGrad
        first adds every entry's squares (``squared``: of the bias and the mean over the
        vector's coordinates) to its row's accumulator, then scales each entry by its
        row's accumulator as it stands after all of them. The scatters are
        one-dimensional (:func:`_scatter_rows` for the vectors), numpy's fast path."""
        p = self.params
        lr_b, lr_v = np.float32(p.lr_bias), np.float32(p.lr_factor)
        if not p.adaptive:
            # Plain SGD: a row met n times moves by the mean of its gradients. Summed, a
            # popular item's step grew with the batch: its L2 part alone scaled the row
            # by 1 - lr * l2 * n, below -1 past n = 200 at the defaults, and the
            # factors diverged (AdaGrad's accumulated squares bound its step).
            _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
            if len(counts) < len(rows):
                share = np.float32(1.0) / counts[inverse].astype(np.float32)
                lr_b, lr_v = lr_b * share, (lr_v * share)[:, None]
        if p.adaptive and squared is not None:
            acc_b = self._accumulator(bias, getattr(self, bias))
            acc_v = self._accumulator(vectors, getattr(self, vectors))
            np.add.at(acc_b, rows, squared[0].astype(np.float32))
            np.add.at(acc_v, rows, squared[1].astype(np.float32))
            eps = np.float32(1e-8)
            lr_b = lr_b / np.sqrt(acc_b[rows] + eps)
            lr_v = (lr_v / np.sqrt(acc_v[rows] + eps))[:, None]
        np.add.at(getattr(self, bias), rows, lr_b * g_bias)
        _scatter_rows(getattr(self, vectors), rows, lr_v * g_vec)


class ItemVectors:
    """Every item's vector, bias and vector norm from a :class:`FactorModel`, stacked:
    what ranking the catalog reads (``Q``, ``bias``, ``norm``, indexed by item row).

    :meth:`update` rewrites the rows given (the items a batch learned, or whose tags
    changed); the rest follow their tags' embeddings at the model's next full refresh
    (every ``refresh_every`` ratings), when every row is rewritten.

    >>> m = FactorModel(FactorParams(n_factors=2, seed=0)); m.ensure(n_users=1, n_items=3)
    >>> vectors = ItemVectors(m); vectors.update(np.array([0, 1, 2]))
    >>> bool(np.allclose(vectors.Q[:3], m.items(np.arange(3))[0])), vectors.Q.shape[1]
    (True, 2)
    """

    def __init__(self, model: FactorModel) -> None:
        self.model = model
        k = model.params.n_factors
        self.Q = np.zeros((0, k), np.float32)
        self.bias = np.zeros(0, np.float32)
        self.norm = np.zeros(0, np.float32)
        self._seen = -1  # the model's full refreshes these rows follow
        self._n = 0  # rows written

    def behind(self) -> bool:
        """Whether some row is not written yet, or the model had a full refresh since."""
        return self._n != self.model.n_items or self._seen != self.model.full_refreshes

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep rows ``keep`` only (ascending), renumbered ``0, 1, ...``, as they are
        (after :meth:`FactorModel.keep_items`)."""
        if len(keep) and keep[-1] >= self._n:  # a row kept was never written: all anew
            self._seen = -1
        self.Q, self.bias, self.norm = (kept_rows(a, keep) for a in (self.Q, self.bias, self.norm))
        self._n = len(keep)

    def update(self, rows: np.ndarray) -> None:
        """Rewrite ``rows`` (and every row, after a full refresh of the model; new rows
        always)."""
        m = self.model
        n = m.n_items
        if len(self.Q) < n:
            self.Q, self.bias, self.norm = (grown(a, n) for a in (self.Q, self.bias, self.norm))
        if self._seen != m.full_refreshes:
            self._seen = m.full_refreshes
            rows = np.arange(n)
        elif self._n < n:
            rows = np.union1d(np.asarray(rows, np.int64), np.arange(self._n, n))
        self._n = n
        if len(rows) == 0:
            return
        q, b = m.items(rows)
        self.Q[rows], self.bias[rows] = q, b
        self.norm[rows] = np.sqrt(np.einsum("ij,ij->i", q, q))


def _tag_sum(t: np.ndarray, s: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``sum_j s[..., j] * table[t[..., j]]`` for items' tag rows ``t`` and shares ``s``
    (both ``(..., width)``): one gather and product for a few items, a column at a time
    for many (without a ``(..., width, k)`` gather of the whole catalog).

    >>> _tag_sum(np.array([[0, 1]]), np.array([[0.25, 0.75]], np.float32), np.eye(2)).tolist()
    [[0.25, 0.75]]
    """
    if table.ndim == 1:
        return np.einsum("...j,...j->...", s, table[t])
    if t.size <= _GATHER_MAX:
        return np.matmul(s[..., None, :], table[t])[..., 0, :]
    out = np.zeros((*t.shape[:-1], table.shape[1]), np.float32)
    for j in range(t.shape[-1]):
        sj = s[..., j]
        if sj.any():
            out += sj[..., None] * table[t[..., j]]
    return out


_GATHER_MAX = 4096  # (item, tag) pairs up to which tag vectors are gathered at once


def _distinct(index: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of ``index`` (all in ``[0, bound)``) and each entry's position
    among them, as ``np.unique(..., return_inverse=True)``; by a dense mark when ``bound``
    is small (tags), which is several times faster than sorting.

    >>> [a.tolist() for a in _distinct(np.array([4, 1, 4]), 6)]
    [[1, 4], [1, 0, 1]]
    """
    if bound > 8 * len(index) + 1024:
        return np.unique(index, return_inverse=True)
    seen = np.zeros(bound, bool)
    seen[index] = True
    rows = np.flatnonzero(seen)
    position = np.cumsum(seen) - 1
    return rows, position[index]


def _scatter_rows(param: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``np.add.at(param, rows, values)`` for a 2-D ``param`` (rows may repeat), as a
    one-dimensional scatter over the flat array: numpy's fast path, several times faster
    than scattering row blocks.

    >>> a = np.zeros((3, 2), np.float32)
    >>> _scatter_rows(a, np.array([2, 0, 2]), np.ones((3, 2), np.float32)); a.tolist()
    [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]
    """
    if not param.flags.c_contiguous:  # (no flat view to scatter into)
        np.add.at(param, rows, values)
        return
    k = param.shape[1]
    flat = (np.asarray(rows, np.intp)[:, None] * k + np.arange(k)).ravel()
    np.add.at(param.reshape(-1), flat, values.ravel())


def _squared(grad: np.ndarray, param: np.ndarray) -> np.ndarray:
    """Squared gradient, averaged over a vector's coordinates for 2-D parameters."""
    if param.ndim == 2:
        return np.einsum("...j,...j->...", grad, grad) * np.float32(1.0 / grad.shape[-1])
    return grad * grad


def _per_row(scale: np.ndarray, param: np.ndarray) -> np.ndarray:
    """A per-row factor shaped to multiply the gradient of ``param``'s rows."""
    scale = np.asarray(scale, np.float32)
    return scale[..., None] if param.ndim == 2 else scale
