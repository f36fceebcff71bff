"""Recency-weighted item-to-item co-occurrence, kept sparse as top-M neighbours per item."""

from __future__ import annotations

import numpy as np

from recsys_online.ids import grown, kept_rows, row_map

#: Up to this many (user, ring place, neighbour, item) comparisons, ``ring_contributions``
#: makes them in one broadcast; beyond it, one item place at a time (faster from about
#: 64 users by 10 items by a ring of 10 x 50 neighbours).
_BROADCAST_LIMIT = 1 << 18

#: Co-occurrence pairs as ``(rows, others, weights)``: ``rows[p]`` gains ``weights[p]``
#: on its neighbour ``others[p]``.
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]

# Items rated fewer times than this are damped as if rated this often (bench figures in
# docs/benchmarks.md, "Co-occurrence damping").
COUNT_FLOOR = 2.0


class CoOccurrence:
    r"""Because you watched X: items that follow each other in users' recent histories.

    Each user keeps a ring of their last ``window`` items. When a user rates item ``j``,
    every item ``i`` in the ring gains weight :math:`\gamma^k` on the pair ``(i, j)`` in
    both directions, ``k`` being how many items ago ``i`` was rated. Each item keeps only
    its ``n_neighbours`` heaviest neighbours in dense ``(n_items, M)`` arrays, maintained
    with the SpaceSaving rule (a newcomer replaces the lightest neighbour and inherits its
    weight), so memory is bounded and heavy pairs are never lost.

    A user's score for item ``j`` sums, over the items ``i`` of their ring,
    :math:`\gamma^k \, w_{ij} / (n_i^{1/2} n_j^{\beta})` where :math:`n` counts each
    item's ratings, and is at least ``count_floor``: a damped conditional probability that
    favours specific neighbours over merely popular ones as ``beta`` grows, without
    taking an item rated once or twice, whose few pairs are thin evidence, for the most
    specific of all.

    Examples
    --------
    >>> co = CoOccurrence(window=3, n_neighbours=4)
    >>> co.ensure(n_users=3, n_items=4)
    >>> for u, i in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]:
    ...     co.learn(u, i)
    >>> scores = co.item_scores(2)
    >>> int(np.argmax(scores)), round(float(scores[1]), 3)
    (1, 0.816)
    >>> co.because_of(2, 1)
    0
    """

    def __init__(
        self,
        window: int = 10,
        n_neighbours: int = 50,
        decay: float = 0.8,
        beta: float = 0.5,
        count_floor: float = COUNT_FLOOR,
    ) -> None:
        if count_floor <= 0:
            raise ValueError(f"count_floor must be positive, got {count_floor}")
        self.window = window
        self.n_neighbours = n_neighbours
        self.decay = decay
        self.beta = beta
        self.count_floor = count_floor
        self.n_users = self.n_items = 0
        self.recent = np.full((0, window), -1, np.int32)  # newest first
        self.nbr = np.full((0, n_neighbours), -1, np.int32)
        self.weight = np.zeros((0, n_neighbours), np.float32)
        self.error = np.zeros((0, n_neighbours), np.float32)  # SpaceSaving overestimate
        self.count = np.zeros(0, np.float32)
        self.damping = np.ones(0, np.float32)  # max(count, floor) ** -beta, kept with count
        self._recency = (decay ** np.arange(window)).astype(np.float32)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "count_floor" not in state:  # (pickled before the floor: damped from 1 up)
            self.count_floor = COUNT_FLOOR
            self.damping = self._floored(self.count) ** np.float32(-self.beta)

    def ensure(self, n_users: int = 0, n_items: int = 0) -> None:
        """Grow storage for rows below ``n_users`` / ``n_items``."""
        if n_users > self.n_users:
            self.recent = grown(self.recent, n_users, fill=-1)
            self.n_users = n_users
        if n_items > self.n_items:
            self.nbr = grown(self.nbr, n_items, fill=-1)
            self.weight = grown(self.weight, n_items)
            self.error = grown(self.error, n_items)
            self.count = grown(self.count, n_items)
            self.damping = grown(self.damping, n_items, fill=self._no_count_damping)
            self.n_items = n_items

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep item rows ``keep`` only (ascending), renumbered ``0, 1, ...``; neighbours
        and ring entries naming a row dropped become empty (-1)."""
        new_row = row_map(keep, self.n_items)
        nbr = kept_rows(self.nbr, keep, fill=-1)
        self.nbr = new_row[nbr]
        gone = (nbr >= 0) & (self.nbr < 0)
        self.weight, self.error = kept_rows(self.weight, keep), kept_rows(self.error, keep)
        self.weight[gone] = self.error[gone] = 0.0
        self.count = kept_rows(self.count, keep)
        self.damping = kept_rows(self.damping, keep, fill=self._no_count_damping)
        self.recent[: self.n_users] = new_row[self.recent[: self.n_users]]
        self.n_items = len(keep)

    def learn(self, user: int, item: int) -> None:
        """Record that ``user`` just rated ``item``."""
        self.learn_many([user], [item])

    def learn_many(self, users: list[int], items: list[int]) -> Pairs | None:
        """Record a batch of (user, item) ratings in order; returns the pairs it added
        (:meth:`add_pairs`' arguments), or None.

        Rings advance event by event; the pair weights the batch adds are then summed per
        pair and applied to the neighbour lists in one vectorised SpaceSaving step. When no
        user comes twice (every learning step of the evaluator and the worker), the rings
        advance as arrays, in the same order: the same pairs, weights and rings.
        """
        u = np.asarray(users, np.int64)
        if len(u) > 1 and len(np.unique(u)) == len(u):
            return self._learn_distinct(u, np.asarray(items, np.int64))
        return self._learn_in_order(users, items)

    def _learn_in_order(self, users: list[int], items: list[int]) -> Pairs | None:
        """:meth:`learn_many` one rating after another (a user may come twice)."""
        recency = self._recency.tolist()
        rings = self.recent
        a_rows: list[int] = []
        b_rows: list[int] = []
        weights: list[float] = []
        for user, item in zip(users, items, strict=True):
            ring = rings[user].tolist()
            for pos, prev in enumerate(ring):
                if prev >= 0 and prev != item:
                    a_rows += (item, prev)
                    b_rows += (prev, item)
                    weights += (recency[pos], recency[pos])
            rest = [x for x in ring if x >= 0 and x != item][: self.window - 1]
            rings[user] = [item, *rest, *([-1] * (self.window - 1 - len(rest)))]
        self._count(np.asarray(items, np.int64))
        if not a_rows:
            return None
        pairs = np.array(a_rows), np.array(b_rows), np.array(weights, np.float32)
        self.add_pairs(*pairs)
        return pairs

    def _learn_distinct(self, users: np.ndarray, items: np.ndarray) -> Pairs | None:
        """:meth:`learn_many` for ratings of distinct users, as array operations."""
        rings = self.recent[users]  # (B, L) newest first, -1 empty
        other = (rings >= 0) & (rings != items[:, None])  # ring places that pair up
        b, pos = np.nonzero(other)  # by rating, then by place: the loop's order
        prev, item = rings[b, pos].astype(np.int64), items[b]
        w = self._recency[pos]
        # The rated item goes first; the others keep their order, the oldest falls off.
        order = np.argsort(~other, axis=1, kind="stable")[:, : self.window - 1]
        kept = np.take_along_axis(rings, order, axis=1)
        kept[~np.take_along_axis(other, order, axis=1)] = -1
        self.recent[users, 0] = items
        self.recent[users, 1:] = kept
        self._count(items)
        if not len(b):
            return None
        pairs = (  # each pair both ways, interleaved as the loop adds them
            np.stack((item, prev), axis=1).ravel(),
            np.stack((prev, item), axis=1).ravel(),
            np.repeat(w, 2),
        )
        self.add_pairs(*pairs)
        return pairs

    def _count(self, items: np.ndarray) -> None:
        """``items`` (rows, may repeat) gain a rating each."""
        np.add.at(self.count, items, 1.0)
        self.damping[items] = self._floored(self.count[items]) ** np.float32(-self.beta)

    def _floored(self, count: np.ndarray) -> np.ndarray:
        return np.maximum(count, np.float32(self.count_floor))

    @property
    def _no_count_damping(self) -> float:
        """The damping of an item with no rating yet."""
        return float(np.float32(self.count_floor) ** np.float32(-self.beta))

    def add_pairs(self, rows: np.ndarray, others: np.ndarray, ws: np.ndarray) -> None:
        """Pairs ``(rows[p], others[p])`` gain ``ws[p]``; repeated pairs are summed first."""
        keys, inverse = np.unique(rows * np.int64(self.n_items) + others, return_inverse=True)
        ws = np.bincount(inverse, weights=ws).astype(np.float32)
        rows, others = keys // self.n_items, keys % self.n_items  # sorted by row
        match = self.nbr[rows] == others[:, None]  # (P, M)
        found = match.any(axis=1)
        slot = np.argmax(match, axis=1)
        self.weight[rows[found], slot[found]] += ws[found]
        new = ~found
        if not new.any():
            return
        rows, others, ws = rows[new], others[new], ws[new]
        # Heaviest newcomers of each row first, into that row's lightest slots.
        order = np.lexsort((-ws, rows))
        rows, others, ws = rows[order], others[order], ws[order]
        uniq, start = np.unique(rows, return_index=True)
        group = np.searchsorted(uniq, rows)
        rank = np.arange(len(rows)) - start[group]
        slot_weight = self.weight[uniq]  # (U, M)
        lightest = np.argsort(slot_weight, axis=1, kind="stable")
        # One at a time, SpaceSaving puts each newcomer in the lightest slot, which then
        # weighs more: many newcomers raise the lightest slots together, like water, and
        # replace only those below the level their total weight reaches. Newcomers past
        # that many (the lightest) would have replaced each other. Without this limit, a
        # popular item's many newcomers in one call (a large batch, or another worker's
        # changes) would replace its heaviest neighbours too.
        level_of = np.take_along_axis(slot_weight, lightest, axis=1)  # ascending
        mass = np.bincount(group, weights=ws, minlength=len(uniq))
        level = (mass[:, None] + np.cumsum(level_of, axis=1)) / np.arange(1, level_of.shape[1] + 1)
        fits = rank < np.count_nonzero(level_of < level, axis=1)[group]
        rows, others, ws, group, rank = rows[fits], others[fits], ws[fits], group[fits], rank[fits]
        slots = lightest[group, rank]
        # SpaceSaving: inherit the evicted weight, and remember it as possible error.
        self.error[rows, slots] = self.weight[rows, slots]
        self.nbr[rows, slots] = others
        self.weight[rows, slots] += ws

    def item_scores(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        """Co-occurrence score of ``items`` (all when None) for the user's recent items."""
        scores = self.item_scores_many(np.array([user]))[0]
        return scores if items is None else scores[items]

    def ring_weights(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour rows and their recency-weighted normalised weights: ``(B, L, M)`` each."""
        ring = self.recent[users]  # (B, L)
        rows = np.maximum(ring, 0)
        nbr = self.nbr[rows]
        # gamma^k / (n_i^(1/2) n_j^beta): the ring item's part per (user, place), the power
        # of n_j kept per item (``damping``); empty ring places weigh 0.
        ring_part = self._ring_part(np.arange(self.window), rows) * (ring >= 0)
        scale = self.damping[np.maximum(nbr, 0)]
        scale *= ring_part[..., None]
        w = self._guaranteed(rows) * scale
        return nbr, np.where(nbr >= 0, w, np.float32(0.0))

    def _ring_part(self, places: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What item ``rows`` at ring ``places`` (0: newest) weigh: gamma^k / n_i^(1/2)."""
        return self._recency[places] / np.sqrt(self._floored(self.count[rows]))

    def _guaranteed(self, rows: np.ndarray, slots=slice(None)) -> np.ndarray:
        """Neighbour weights of ``rows`` (at ``slots``) that scores count on: SpaceSaving's
        inherited share is not evidence that the pair co-occurs."""
        return self.weight[rows, slots] - self.error[rows, slots]

    def ring_items(
        self, users: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The users' rings as the distinct items in them and, for each ring place, its
        user, its item (as a position among the distinct ones) and what the place weighs
        (:meth:`ring_weights`' ring part) times ``weights[user]``: what
        :meth:`add_item_scores` needs, computed once for several calls."""
        ring = self.recent[users]  # (B, L)
        b, place = np.nonzero(ring >= 0)
        items, at = np.unique(ring[b, place], return_inverse=True)
        part = self._ring_part(place, items[at]) * weights[b]
        return items, b, at, part.astype(np.float32)

    def add_item_scores(
        self,
        scores: np.ndarray,
        column: np.ndarray,
        ring_items: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Add the scores of the items ``column`` maps (item row -> column of ``scores``,
        -1 for others) for the users of :meth:`ring_items`, in place: the sum of
        :meth:`add_scores`, over the neighbour lists of the distinct ring items only (a
        catalog's worth at most, not users x ring places x neighbours)."""
        items, b, at, part = ring_items
        nbr = self.nbr[items]  # (U, M)
        col = column[nbr]
        hp, hm = np.nonzero(col >= 0)  # (ring item, slot) pairs that reach a column
        if not len(hp):
            return
        hit_col = col[hp, hm]
        hit_val = self._guaranteed(items[hp], hm) * self.damping[nbr[hp, hm]]
        # Each ring place meets the hits of its item: hits are sorted by ring item.
        start = np.searchsorted(hp, at, "left")
        count = np.searchsorted(hp, at, "right") - start
        place = np.repeat(np.arange(len(at)), count)
        first = np.repeat(start - np.cumsum(count) + count, count)
        hit = first + np.arange(len(place))
        np.add.at(scores, (b[place], hit_col[hit]), part[place] * hit_val[hit])

    def pair_scores(self, users: np.ndarray, items: np.ndarray, ring=None) -> np.ndarray:
        """Scores of given items, ``items`` shaped ``(B, m)``, for users ``(B,)``.

        ``ring`` may pass :meth:`ring_weights` of the same users, computed once per call.
        """
        return self.ring_contributions(users, items, ring).sum(axis=1).astype(np.float32)

    def ring_contributions(self, users: np.ndarray, items: np.ndarray, ring=None) -> np.ndarray:
        """What each item of the users' rings adds to the scores of ``items`` ``(B, m)``:
        shape ``(B, L, m)``; summed over the ring, the scores; its argmax, the reason."""
        nbr, w = ring or self.ring_weights(users)  # (B, L, M)
        items = np.asarray(items, np.int32)  # compared as int32, like ``nbr``
        if nbr.size * items.shape[1] <= _BROADCAST_LIMIT:
            # Neighbours last (contiguous for the reduction): one (B, L, m, M) comparison.
            return np.einsum("blm,blnm->bln", w, nbr[:, :, None, :] == items[:, None, :, None])
        # Many users (a batched refresh): one (B, L, M) comparison per item place, as
        # float32 for the contraction. 2.5 against 4.0 ms for 1,000 users' top 10.
        out = np.empty((len(items), nbr.shape[1], items.shape[1]), np.float32)
        for j in range(items.shape[1]):
            hit = (nbr == items[:, j, None, None]).astype(np.float32)
            out[:, :, j] = np.einsum("blm,blm->bl", w, hit)
        return out

    def add_scores(
        self, scores: np.ndarray, users: np.ndarray, weights: np.ndarray, ring=None
    ) -> None:
        """Add ``weights[b]`` times user b's scores into row b of ``scores``, in place."""
        nbr, w = ring or self.ring_weights(users)
        # One flat index per entry: numpy's fast 1-D path of add.at (about 4x the 2-D one).
        # Empty slots (-1) carry weight 0 and add it to the row's first column: no change,
        # and no pass to mask them out.
        offset = np.arange(len(users)) * scores.shape[1]
        flat = scores.reshape(-1)
        if not np.shares_memory(flat, scores):
            raise ValueError("scores must be C-contiguous (it is updated in place)")
        index = np.maximum(nbr, 0) + offset[:, None, None]
        vals = (w * weights[:, None, None]).astype(scores.dtype)
        np.add.at(flat, index.ravel(), vals.ravel())

    def item_scores_many(self, users: np.ndarray) -> np.ndarray:
        """Scores of many users over every item, shape ``(len(users), n_items)``."""
        scores = np.zeros((len(users), self.n_items), np.float32)
        self.add_scores(scores, users, np.ones(len(users), np.float32))
        return scores

    def because_of(self, user: int, item: int) -> int | None:
        """The recent item of the user that contributes most to ``item``'s score."""
        best = int(self.because_of_many(user, np.array([item]))[0])
        return None if best < 0 else best

    def because_of_many(self, user: int, items: np.ndarray) -> np.ndarray:
        """For each item, the user's recent item contributing most to it (-1: none)."""
        return self.because_of_users(np.array([user]), np.asarray(items)[None, :])[0]

    def because_of_users(
        self, users: np.ndarray, items: np.ndarray, ring=None, contributions=None
    ) -> np.ndarray:
        """:meth:`because_of_many` for users ``(B,)`` and their items ``(B, m)``
        (``contributions``: their :meth:`ring_contributions`, when already computed)."""
        contrib = contributions
        if contrib is None:
            contrib = self.ring_contributions(users, items, ring)  # (B, L, m)
        best = np.argmax(contrib, axis=1)  # (B, m)
        found = contrib.max(axis=1) > 0
        ring = self.recent[users]  # (B, L)
        return np.where(found, ring[np.arange(len(best))[:, None], best], -1).astype(np.int64)

    def forget_item(self, item: int) -> None:
        """Remove an item from every neighbour list and ring (it left the catalog)."""
        n = self.n_items
        gone = self.nbr[:n] == item
        self.weight[:n][gone] = 0.0
        self.error[:n][gone] = 0.0
        self.nbr[:n][gone] = -1
        if item < n:
            self.nbr[item] = -1
            self.weight[item] = 0.0
            self.error[item] = 0.0
        rings = self.recent[: self.n_users]
        rings[rings == item] = -1
