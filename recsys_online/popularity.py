"""Recency-decayed item popularity, kept in log space so it never needs a decay pass."""

from __future__ import annotations

import math

import numpy as np

from recsys_online.ids import grown


class Popularity:
    r"""Exponentially decayed rating counts with a half-life.

    Each rating of item ``i`` at time ``t`` adds :math:`2^{(t - t_0)/h}` to a log-space
    accumulator, so the decayed count at time ``now`` is
    :math:`\exp(\ell_i - (now - t_0)\ln 2 / h)` without touching other items.

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

    def ensure(self, n_items: int) -> None:
        """Grow storage for rows below ``n_items``."""
        if n_items > self.n_items:
            self.log_mass = grown(self.log_mass, n_items, fill=-np.inf)
            self.n_items = n_items

    def learn(self, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Count one rating of each item at its time."""
        ts = np.asarray(timestamps, np.float64)
        if self.t0 is None:
            self.t0 = float(ts.min())
        self.now = max(self.now, float(ts.max()))
        np.logaddexp.at(self.log_mass, items, (ts - self.t0) * self._rate)
        self.version += 1

    def item_scores(self, now: float | None = None, items: np.ndarray | None = None) -> np.ndarray:
        """``log(1 + decayed count)`` of ``items`` (all when None) at time ``now``."""
        mass = self.log_mass[: self.n_items] if items is None else self.log_mass[items]
        if self.t0 is None:
            return np.zeros(len(mass), np.float32)
        shift = ((self.now if now is None else now) - self.t0) * self._rate
        scores = np.logaddexp(0.0, mass - shift)
        # Long-forgotten items would land in float32's subnormal range, which slows every
        # matrix product they enter by an order of magnitude: count them as zero.
        scores[scores < 1e-30] = 0.0
        return scores.astype(np.float32)
