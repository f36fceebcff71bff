"""Content-based user profiles: cosine similarity over TF-IDF item tag vectors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recsys_online.ids import grown, kept_rows
from recsys_online.tags import ItemTags


class ContentModel:
    r"""Item content vectors from tag weights and incremental user taste profiles.

    An item's content vector is its TF-IDF tag vector (tag weight × inverse document
    frequency over the live catalog), L2-normalised and stored in ``dim`` columns: tag row
    ``t`` lands in column ``t mod dim`` with a fixed pseudo-random sign, so memory per user
    stays bounded however many tags appear (exact cosine while there are at most ``dim``
    tags; beyond that, colliding tags add a little noise, in expectation zero).

    A user's profile is the rating-weighted, mean-centred sum of the content vectors of the
    items they rated, :math:`\pi_u = \sum_i (r_{ui} - \bar r_u) x_i`, where
    :math:`\bar r_u` is the user's (shrunk) mean at the time of the rating. Scores are
    cosines :math:`x_i \cdot \pi_u / \lVert \pi_u \rVert`.

    Inverse document frequencies drift as the catalog grows; item vectors are recomputed
    in one vectorised pass whenever the catalog has changed by ``refresh_share`` since the
    last pass.

    Examples
    --------
    >>> tags = ItemTags()
    >>> for row, t in enumerate([{"space": 1}, {"space": 1, "war": 1}, {"romance": 1}]):
    ...     _ = tags.set(row, t)
    >>> cm = ContentModel(tags, dim=8)
    >>> cm.ensure(n_users=1, n_items=3)
    >>> cm.refresh()
    >>> cm.learn(np.array([0]), np.array([0]), np.array([5.0]), np.array([3.0]))
    >>> [round(float(s), 2) for s in cm.item_scores(0)]
    [1.0, 0.61, 0.0]
    >>> cm.top_tags(0, 1)
    ['space']
    """

    def __init__(self, tags: ItemTags, dim: int = 64, refresh_share: float = 0.1) -> None:
        self.tags = tags
        self.dim = dim
        self.refresh_share = refresh_share
        self.n_users = self.n_items = 0
        self.C = np.zeros((0, dim), np.float32)  # item content vectors, unit rows
        self.profile = np.zeros((0, dim), np.float32)
        self._changes_since_refresh = 0
        self._live_at_refresh = 0
        self.full_refreshes = 0  # bumped whenever every item vector may change
        self._column_of = np.zeros(0, np.int64)  # hashed column of each tag row
        self._sign_of = np.zeros(0, np.float32)
        self._index: tuple[np.ndarray, ...] | None = None  # (:meth:`_tag_index`)
        self._index_key: tuple[int, int] | None = None

    @property
    def columns_shared(self) -> bool:
        """More tags than columns: some column holds several tags (with their signs),
        so cosines of these vectors are no longer those of the tags."""
        return self.tags.n_tags > self.dim

    def ensure(self, n_users: int = 0, n_items: int = 0) -> None:
        """Grow storage for rows below ``n_users`` / ``n_items``."""
        if n_users > self.n_users:
            self.profile = grown(self.profile, n_users)
            self.n_users = n_users
        if n_items > self.n_items:
            self.C = grown(self.C, n_items)
            self.n_items = n_items

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep item rows ``keep`` only (ascending), renumbered ``0, 1, ...``."""
        self.C = kept_rows(self.C, keep)
        self.n_items = len(keep)

    # ------------------------------------------------------------ item vectors
    def _columns(self, tag_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hashed column and sign of each tag row (looked up: computed once per tag row)."""
        if self.tags.n_tags >= len(self._column_of):
            rows = np.arange(2 * self.tags.n_tags + 64, dtype=np.uint64)
            h = (rows * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
            self._sign_of = np.where((h >> np.uint64(16)) & np.uint64(1), -1.0, 1.0).astype(
                np.float32
            )
            self._column_of = (rows % np.uint64(self.dim)).astype(np.int64)
        return self._column_of[tag_rows], self._sign_of[tag_rows]

    def _idf(self) -> np.ndarray:
        df = self.tags.tag_df.astype(np.float32)
        n_live = max(1.0, float(np.count_nonzero(self.tags.weights[: self.n_items, 0] > 0)))
        idf = np.log((1.0 + n_live) / (1.0 + df)) + 1.0
        return np.append(idf, 1.0).astype(np.float32)  # never empty, for padding rows

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        t, w = self.tags.rows[rows], self.tags.weights[rows]
        col, sign = self._columns(t)
        vals = w * self._idf()[t] * sign
        out = np.zeros((len(rows), self.dim), np.float32)
        np.add.at(out, (np.repeat(np.arange(len(rows)), t.shape[1]), col.ravel()), vals.ravel())
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)

    def exact_cosines(
        self, rows: np.ndarray, n: int, out: np.ndarray, among: np.ndarray | None = None
    ) -> np.ndarray:
        """The cosines of item ``rows``' TF-IDF tag vectors with those of items ``0..n-1``
        (or of the distinct items ``among`` only), computed from the tags themselves (no
        hashed column: exact however many tags), into ``out`` ``(len(rows), n)`` (or
        ``(len(rows), len(among))``): positive exactly where two items share a tag.

        One pass over an index of the catalog's tags (:meth:`_tag_index`): each of the
        asked items' tags adds its products with the items carrying it, nothing else.

        >>> tags = ItemTags()
        >>> for row, t in enumerate([{"a": 1, "b": 1}, {"b": 1}, {"c": 1}]):
        ...     _ = tags.set(row, t)
        >>> cm = ContentModel(tags, dim=1); cm.ensure(n_items=3)
        >>> cos = cm.exact_cosines(np.array([1]), 3, np.empty((1, 3), np.float32))
        >>> [round(float(c), 3) for c in cos[0]]  # ("a" is rarer than "b": it weighs more)
        [0.605, 1.0, 0.0]
        >>> cm.exact_cosines(np.array([1]), 3, np.empty((1, 1), np.float32), np.array([1]))
        array([[1.]], dtype=float32)
        """
        values, norms, index_tag, index_item, index_value = self._tag_index(n)
        asked, asked_slot = np.nonzero(self.tags.weights[rows] > 0)
        asked_tag = self.tags.rows[rows][asked, asked_slot]
        lo = np.searchsorted(index_tag, asked_tag, "left")
        count = np.searchsorted(index_tag, asked_tag, "right") - lo
        at = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        b, item = np.repeat(asked, count), index_item[at]
        value = np.repeat(values[rows][asked, asked_slot], count) * index_value[at]
        value /= norms[rows][b] * norms[item]  # (both carry a tag: norms > 0)
        if among is not None:
            column = np.full(n, -1, np.int64)
            column[among] = np.arange(len(among))
            item = column[item]
            keep = item >= 0
            b, item, value = b[keep], item[keep], value[keep]
        out[:] = 0.0
        np.add.at(out, (b, item), value)
        return out

    def _tag_index(self, n: int) -> tuple[np.ndarray, ...]:
        """The TF-IDF values of items ``0..n-1``'s tag slots, their norms, and the index
        of (tag, item, value) sorted by tag: kept until the tags change (a sort over the
        catalog's tag slots was most of a call over 300,000 items)."""
        key = (self.tags.changes, n)
        if self._index_key != key:
            t, w = self.tags.rows[:n], self.tags.weights[:n]
            values = w * self._idf()[t]  # (n, S): 0 in empty slots
            norms = np.sqrt(np.einsum("ns,ns->n", values, values))
            item, slot = np.nonzero(w > 0)
            order = np.argsort(t[item, slot], kind="stable")
            index = (t[item, slot][order], item[order], values[item, slot][order])
            self._index, self._index_key = (values, norms, *index), key
        return self._index

    def __getstate__(self) -> dict:
        """Pickled without :meth:`_tag_index`'s cache (made again when asked)."""
        return {**self.__dict__, "_index": None, "_index_key": None}

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_index", None)  # (pickled before it existed)
        state.setdefault("_index_key", None)
        self.__dict__.update(state)

    def tag_vector(self, tags: Mapping[str, float]) -> np.ndarray:
        """Unit TF-IDF vector of arbitrary weighted tags (e.g. a user's declared interests).

        Only tags the catalog has met count: one no item ever carried can match nothing,
        and is not added to the tag table (declarations would grow it without bound, and
        its hashed column, shared with a real tag, would match that tag's items).

        >>> tags = ItemTags(); _ = tags.set(0, {"jazz": 1.0})
        >>> cm = ContentModel(tags, dim=8); cm.set_item(0)
        >>> round(float(np.linalg.norm(cm.tag_vector({"jazz": 1.0, "knitting": 5.0}))), 3)
        1.0
        >>> float(np.abs(cm.tag_vector({"knitting": 1.0})).sum()), tags.n_tags
        (0.0, 1)
        """
        found = [(self.tags.index.get(t), w) for t, w in tags.items()]
        found = [(row, w) for row, w in found if row is not None]
        rows = np.array([row for row, _ in found], np.int64)
        out = np.zeros(self.dim, np.float32)
        if len(rows):
            idf = self._idf()
            known = rows < len(idf) - 1
            w = np.array([w for _, w in found], np.float32)
            w = w * np.where(known, idf[np.minimum(rows, len(idf) - 1)], idf.max())
            col, sign = self._columns(rows)
            np.add.at(out, col, w * sign)
        norm = float(np.linalg.norm(out))
        return out / norm if norm > 0 else out

    def set_item(self, item_row: int) -> None:
        """Recompute one item's vector after its tags changed (or it left the catalog)."""
        self.set_items(np.array([item_row]))

    def set_items(self, item_rows: np.ndarray) -> None:
        """:meth:`set_item` for many rows at once."""
        if len(item_rows) == 0:
            return
        self.ensure(n_items=int(item_rows.max()) + 1)
        self.C[item_rows] = self._vectors(item_rows)
        self._changes_since_refresh += len(item_rows)
        if self._changes_since_refresh > self.refresh_share * max(self._live_at_refresh, 10):
            self.refresh()

    def refresh(self) -> None:
        """Recompute every item vector with the current inverse document frequencies."""
        if self.n_items:
            self.C[: self.n_items] = self._vectors(np.arange(self.n_items))
        self.full_refreshes += 1
        self._changes_since_refresh = 0
        self._live_at_refresh = int(np.count_nonzero(self.tags.weights[: self.n_items, 0] > 0))

    # ------------------------------------------------------------ profiles
    def learn(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, user_means: np.ndarray
    ) -> None:
        """Add ``(rating - user mean) * x_item`` to each rater's profile."""
        weight = (np.asarray(ratings, np.float32) - user_means.astype(np.float32))[:, None]
        np.add.at(self.profile, users, weight * self.C[items])

    def _unit_profile(self, users: np.ndarray) -> np.ndarray:
        prof = self.profile[users]
        norms = np.linalg.norm(prof, axis=-1, keepdims=True)
        return np.divide(prof, norms, out=np.zeros_like(prof), where=norms > 0)

    def item_scores(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        """Cosine of the user's profile with ``items`` (all when None); 0 without a profile."""
        c = self.C[: self.n_items] if items is None else self.C[items]
        return c @ self._unit_profile(np.array([user]))[0]

    def item_scores_many(self, users: np.ndarray) -> np.ndarray:
        """Cosines of many users over every item, shape ``(len(users), n_items)``."""
        return self._unit_profile(users) @ self.C[: self.n_items].T

    def similar_items(self, item_row: int) -> np.ndarray:
        """Cosine of one item's content vector with every item ("more like this")."""
        return self.C[: self.n_items] @ self.C[item_row]

    def top_tags(self, user: int, item_row: int, n: int = 2) -> list[str]:
        """The item's tags that agree most with the user's profile, for explanations."""
        return self.top_tags_many(user, np.array([item_row]), n)[0]

    def top_tags_many(self, user: int, items: np.ndarray, n: int = 2) -> list[list[str]]:
        """:meth:`top_tags` for several items at once."""
        rows, ok = self.top_tag_rows(np.array([user]), np.asarray(items)[None, :], n)
        name = self.tags.index.id_of
        return [
            [name(int(t)) for t, good in zip(r, g, strict=True) if good]
            for r, g in zip(rows[0].tolist(), ok[0].tolist(), strict=True)
        ]

    def top_tag_rows(
        self, users: np.ndarray, items: np.ndarray, n: int = 2
    ) -> tuple[np.ndarray, np.ndarray]:
        """For users ``(B,)`` and their items ``(B, m)``: the rows of each item's ``n``
        tags that agree most with the user's profile, ``(B, m, n)``, best first, and
        whether each agrees at all (positive contribution); names come from
        ``tags.index.id_of``, only where an explanation needs them."""
        return best_tags(*self.tag_agreement(users, items), n)

    def tag_agreement(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For users ``(B,)`` and their items ``(B, m)``: each item's tag rows ``(B, m, T)``
        and how much each agrees with the user's profile (``-inf`` in empty tag slots)."""
        t, w = self.tags.rows[items], self.tags.weights[items]  # (B, m, T)
        col, sign = self._columns(t)
        agree = sign * self.profile[np.asarray(users)[:, None, None], col]
        return t, np.where(w > 0, agree, -np.inf)


def best_tags(tags: np.ndarray, agree: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` tag rows of each item (last axis) that agree most, best first (ties: the
    first slot), and whether each agrees at all (a positive contribution).

    >>> rows, ok = best_tags(np.array([[4, 7, 9]]), np.array([[0.1, 0.5, -0.2]]))
    >>> rows.tolist(), ok.tolist()
    ([[7, 4]], [[True, True]])
    """
    order = np.argsort(-agree, axis=-1, kind="stable")[..., :n]
    return np.take_along_axis(tags, order, -1), np.take_along_axis(agree, order, -1) > 0
