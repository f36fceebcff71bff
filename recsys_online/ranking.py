"""Vectorised top-K selection over score matrices (one row per user)."""

from __future__ import annotations

import numpy as np


def padded_width(n_items: int, k: int) -> tuple[int, int]:
    """Block size and padded row width that :func:`top_k_rows` works best with.

    >>> padded_width(10_000, 10)
    (200, 10000)
    >>> padded_width(1001, 10)
    (25, 1025)
    """
    block = int(max(1, min(200, n_items // max(4 * k, 1))))
    return block, -(-n_items // block) * block


def as_float32(scores: np.ndarray) -> np.ndarray:
    """``scores`` as float32, a finite score past float32's range its largest, not inf
    (which ranking takes for invalid); float32 scores as they are, not copied.

    >>> scores = as_float32(np.array([1e39, -np.inf, 0.5]))
    >>> bool(scores[0] > 3e38), scores.tolist()[1:]
    (True, [-inf, 0.5])
    """
    scores = np.asarray(scores)
    if scores.dtype == np.float32:
        return scores
    big = np.finfo(np.float32).max
    return np.where(np.isfinite(scores), np.clip(scores, -big, big), scores).astype(np.float32)


def top_k_rows(scores: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the ``k`` largest scores of each row, best first.

    ``scores`` has shape ``(B, width)`` with ``width`` a multiple of ``block`` (pad with
    ``-inf``). The k-th largest block maximum bounds each row's k-th largest score from
    below, so only the few blocks at or above it are searched: the work is one pass of
    block maxima plus a small sort, instead of a selection over every element. Ties go to
    the lower position. ``-inf`` marks an excluded item; NaN and ``+inf`` are invalid
    scores. None of them is ever returned: missing places hold position -1 and ``-inf``.
    Scores of another dtype are compared as float32 (the values returned are float32).

    Examples
    --------
    >>> s = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, -np.inf, 1.0, 2.0]], np.float32)
    >>> pos, val = top_k_rows(s, 2, block=2)
    >>> pos.tolist(), val.tolist()
    ([[1, 3], [0, 3]], [[0.8999999761581421, 0.699999988079071], [3.0, 2.0]])
    >>> top_k_rows(np.array([[-np.inf, 1.0]]), 2, block=1)[0].tolist()
    [[1, -1]]
    >>> top_k_rows(np.array([[0.1, 0.9], [3.0, 1.0]]), 1, block=1)[0].tolist()  # float64
    [[1], [0]]
    >>> top_k_rows(np.array([[1e39, 1.0], [2.0, 1.0]]), 1, block=1)[0].tolist()
    [[0], [0]]
    """
    scores = as_float32(scores)
    n_rows, width = scores.shape
    pos_out = np.full((n_rows, k), -1, np.int64)
    val_out = np.full((n_rows, k), -np.inf, np.float32)
    if k <= 0 or width == 0 or n_rows == 0:
        return pos_out, val_out
    n_blocks = width // block
    blocks = scores.reshape(n_rows, n_blocks, block)
    block_max = blocks.max(axis=2)
    if not block_max.max() < np.inf:  # NaN propagates through max and fails the test
        # Rare: NaN or +inf somewhere. Treat them as excluded (on a copy) and start over.
        blocks = np.where(np.isfinite(blocks), blocks, -np.inf)
        block_max = blocks.max(axis=2)
    if n_rows == 1:  # one user's list: the same selection in a third of the calls
        return _top_k_row(blocks.reshape(-1), block_max[0], k, pos_out, val_out)
    if n_blocks >= k:
        tau = np.partition(block_max, n_blocks - k, axis=1)[:, n_blocks - k]
    else:  # fewer blocks than places: every block is searched
        tau = np.full(n_rows, -np.inf, block_max.dtype)
    rb, bb = np.nonzero(block_max >= tau[:, None])
    cand = blocks[rb, bb]  # (m, block): the only blocks that can hold a top-k score
    # (One flat search and a division: 4x faster than a 2-D ``nonzero`` on this mask.)
    i, j = np.divmod(np.flatnonzero(cand >= tau[rb][:, None]), block)
    r, c, v = rb[i], bb[i] * block + j, cand[i, j]  # by row, then by position
    if tau.min() == -np.inf:  # -inf marks an excluded item: never returned
        finite = v > -np.inf
        r, c, v = r[finite], c[finite], v[finite]
    order = _by_row_then_score(r, v)
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    keep = rank < k
    pos_out[r[keep], rank[keep]] = c[keep]
    val_out[r[keep], rank[keep]] = v[keep]
    return pos_out, val_out


def _top_k_row(
    row: np.ndarray, block_max: np.ndarray, k: int, pos_out: np.ndarray, val_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_rows` of one row (no NaN or ``+inf`` left), given its block maxima:
    one user's list is mostly call overhead, so fewer, simpler calls."""
    n_blocks = len(block_max)
    tau = np.partition(block_max, n_blocks - k)[n_blocks - k] if n_blocks >= k else -np.inf
    c = np.flatnonzero(row >= tau) if tau > -np.inf else np.flatnonzero(row > -np.inf)
    v = row[c]
    order = np.argsort(-v, kind="stable")[:k]  # stable: ties by position
    pos_out[0, : len(order)] = c[order]
    val_out[0, : len(order)] = v[order]
    return pos_out, val_out


def _by_row_then_score(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The order of ``(rows, values)`` pairs by row, then by value from the largest; ties
    keep their order. ``values`` are finite float32.

    ``np.lexsort((-values, rows))`` in one stable sort of 64-bit keys (the row above, the
    value's bits turned into an order below), 4x faster on a thousand lists' candidates.

    >>> _by_row_then_score(np.array([0, 0, 0, 1]), np.float32([-1.0, 2.0, -0.0, 0.0])).tolist()
    [1, 2, 0, 3]
    >>> _by_row_then_score(np.array([0, 0]), np.float32([0.0, -0.0])).tolist()
    [0, 1]
    """
    bits = (values + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # (-0.0 -> +0.0)
    # Unsigned integers in the floats' order: negatives have every bit flipped, the
    # others the sign bit; then inverted, for the largest value first.
    ordered = np.where(bits >> 31 == 1, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    key = (rows.astype(np.uint64) << 32) | (0xFFFFFFFF - ordered)
    return np.argsort(key, kind="stable")
