"""Recency-decayed item popularity, kept in log space so it never needs a decay pass."""

from __future__ import annotations

import math

import numpy as np

from recsys_online.ids import grown, kept_rows


class Popularity:
    r"""Exponentially decayed rating counts with a half-life.

    Each rating of item ``i`` at time ``t`` adds :math:`2^{(t - t_0)/h}` to a log-space
    accumulator, so the decayed count at time ``now`` is
    :math:`\exp(\ell_i - (now - t_0)\ln 2 / h)` without touching other items.

    Scores are taken at ``now`` rounded down to 1/1024 of the half-life (about ten
    minutes for a week), so within that step the catalog's scores are kept and only the
    items rated since are recomputed: a refresh after a few ratings costs a few
    evaluations, not one per item. The rounding moves a score by at most 0.07%.

    Examples
    --------
    >>> pop = Popularity(half_life=10.0)
    >>> pop.ensure(3)
    >>> pop.learn(np.array([0, 0, 1]), np.array([0.0, 0.0, 10.0]))
    >>> [round(float(x), 3) for x in np.expm1(pop.item_scores(now=10.0))]
    [1.0, 1.0, 0.0]
    """

    def __init__(self, half_life: float = 7 * 86400.0) -> None:
        self.half_life = half_life
        self._rate = math.log(2.0) / half_life
        self.t0: float | None = None
        self.now = 0.0
        self.n_items = 0
        self.log_mass = np.zeros(0, np.float64)
        self.version = 0  # bumped by every learn: cached scores are stale
        self._scores = np.zeros(0, np.float32)  # every item's score at ``_shift``
        self._shift: float | None = None
        self._dirty: list[np.ndarray] = []  # items learned since ``_scores`` was taken

    def ensure(self, n_items: int) -> None:
        """Grow storage for rows below ``n_items``."""
        if n_items > self.n_items:
            self.log_mass = grown(self.log_mass, n_items, fill=-np.inf)
            self.n_items = n_items
            self._shift = None

    def keep_items(self, keep: np.ndarray) -> None:
        """Keep item rows ``keep`` only (ascending), renumbered ``0, 1, ...``."""
        self.log_mass = kept_rows(self.log_mass, keep, fill=-np.inf)
        self.n_items = len(keep)
        self._dirty.clear()
        self._shift = None
        self.version += 1

    def learn(self, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Count one rating of each item at its time."""
        ts = np.asarray(timestamps, np.float64)
        if self.t0 is None:
            self.t0 = float(ts.min())
        self.now = max(self.now, float(ts.max()))
        np.logaddexp.at(self.log_mass, items, (ts - self.t0) * self._rate)
        self._changed(items)

    def _changed(self, items: np.ndarray) -> None:
        self._dirty.append(np.asarray(items))
        if len(self._dirty) > 1024:  # nobody asks for all scores: start afresh when asked
            self._dirty.clear()
            self._shift = None
        self.version += 1

    def add_mass(self, items: np.ndarray, mass: np.ndarray, now: float) -> None:
        """Add ratings counted elsewhere: ``mass[n]`` is :math:`\\log \\sum 2^{t/h}` over
        the ratings of ``items[n]`` at times ``t`` (:attr:`log_rate` times each time,
        log-summed), ``now`` the latest of them."""
        if self.t0 is None:
            self.t0 = now
        self.now = max(self.now, now)
        np.logaddexp.at(self.log_mass, items, np.asarray(mass, np.float64) - self.t0 * self._rate)
        self._changed(items)

    @property
    def log_rate(self) -> float:
        """ln 2 / half-life: a rating at time ``t`` weighs :math:`e^{t \\cdot rate}`."""
        return self._rate

    def item_scores(self, now: float | None = None, items: np.ndarray | None = None) -> np.ndarray:
        """``log(1 + decayed count)`` of ``items`` (all when None) at time ``now``.

        The array of all items is shared between calls: read it, do not write to it.
        """
        if self.t0 is None:
            return np.zeros(self.n_items if items is None else len(items), np.float32)
        shift = ((self.now if now is None else now) - self.t0) * self._rate
        shift = math.floor(shift / _SHIFT_STEP + 1e-9) * _SHIFT_STEP  # exact steps stay
        if items is not None:
            return _scores(self.log_mass[items], shift)
        if shift != self._shift:
            self._scores = _scores(self.log_mass[: self.n_items], shift)
            self._shift = shift
        elif self._dirty:
            rows = np.unique(np.concatenate(self._dirty))
            self._scores[rows] = _scores(self.log_mass[rows], shift)
        self._dirty.clear()
        return self._scores


_SHIFT_STEP = math.log(2.0) / 1024  # scores are taken every 1/1024 of a half-life


def _scores(log_mass: np.ndarray, shift: float) -> np.ndarray:
    scores = np.logaddexp(0.0, log_mass - shift)
    # Long-forgotten items would land in float32's subnormal range, which slows every
    # matrix product they enter by an order of magnitude: count them as zero.
    scores[scores < 1e-30] = 0.0
    return scores.astype(np.float32)
