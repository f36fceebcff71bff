"""The wire format of the item changes workers exchange (``RECSYS_ITEM_CHANGES_TOPIC``).

A worker's :class:`recsys_online.sharing.ItemChanges` travels as several messages, each
holding one part for some ids: a JSON line (the header), then little-endian arrays.

========== ============================================ =================================
``part``   header                                       arrays after the line
========== ============================================ =================================
``items``  ``ids`` (item ids), ``k``                    vector changes ``f4[n, k]``, bias
                                                        changes ``f4[n]``
``tags``   ``ids`` (tag names), ``k``                   the same, for tag embeddings
``popular`` ``ids`` (item ids), ``now``                 popularity mass ``f8[n]``
``pairs``  ``ids`` (item ids), ``n`` (pairs)            ``i4[n]`` and ``i4[n]`` (positions
                                                        in ``ids``), weights ``f4[n]``
========== ============================================ =================================

Every header also names the ``worker`` that sent it and the ratings ``partitions`` its
model has learned: a worker that learns one of those itself must not add the changes in
too (they would count those ratings twice). The topic may hold anything another producer
put there, so :func:`decode_item_changes` checks everything before a model sees it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable

import numpy as np

from recsys_online.recommender import MAX_ABS_TIMESTAMP
from recsys_online.sharing import ItemChanges

#: Most of a message's bytes (the producer's limit is 1 MB; JSON may double an id's bytes).
MESSAGE_BYTES = 600_000

PARTS = ("items", "tags", "popular", "pairs")


def encode_item_changes(
    worker: str, partitions: Iterable[int], changes: ItemChanges, limit: int = MESSAGE_BYTES
) -> list[bytes]:
    """The messages that carry ``changes`` of a model that learned the ratings
    ``partitions``, each about ``limit`` bytes at most.

    >>> import numpy as np
    >>> changes = ItemChanges(items=["a", "b"], dv=np.ones((2, 3)), db=np.zeros(2))
    >>> [raw] = encode_item_changes("w1", [0, 2], changes)
    >>> worker, partitions, got = decode_item_changes(raw, 3)
    >>> worker, partitions, got.items, got.dv.shape, got.db.tolist(), len(got)
    ('w1', {0, 2}, ['a', 'b'], (2, 3), [0.0, 0.0], 2)
    """
    sender = {"worker": worker, "partitions": sorted(partitions)}
    out: list[bytes] = []
    k = int(changes.dv.shape[1]) if changes.dv.ndim == 2 else 0
    for part, ids, rows, dtypes, extra in (
        ("items", changes.items, (changes.dv, changes.db), ("<f4", "<f4"), {"k": k}),
        ("tags", changes.tags, (changes.de, changes.dtb), ("<f4", "<f4"), {"k": k}),
        ("popular", changes.rated, (changes.mass,), ("<f8",), {"now": changes.now}),
    ):
        per_entry = sum(  # an entry's bytes in the arrays: a row of each
            np.dtype(t).itemsize * (a.shape[1] if a.ndim == 2 else 1)
            for a, t in zip(rows, dtypes, strict=True)
        )
        for lo, hi in _cuts([_id_bytes(x) + per_entry for x in ids], limit):
            head = {**sender, "part": part, "ids": list(ids[lo:hi]), **extra}
            arrays = (np.asarray(a[lo:hi], t) for a, t in zip(rows, dtypes, strict=True))
            out.append(_message(head, arrays))
    n_pairs = len(changes.pair_w)
    if n_pairs:
        names = changes.pair_items
        # Each pair costs 12 bytes and at most two ids: cut so that the worst case fits.
        per_pair = 12 + 2 * max(map(_id_bytes, names))
        step = max(1, limit // per_pair)
        for lo in range(0, n_pairs, step):
            a = changes.pair_a[lo : lo + step]
            b = changes.pair_b[lo : lo + step]
            used, at = np.unique(np.concatenate((a, b)), return_inverse=True)
            head = {
                **sender,
                "part": "pairs",
                "ids": [names[n] for n in used.tolist()],
                "n": len(a),
            }
            pa, pb = at.reshape(2, -1)
            out.append(
                _message(
                    head,
                    (
                        pa.astype("<i4"),
                        pb.astype("<i4"),
                        np.asarray(changes.pair_w[lo : lo + step], "<f4"),
                    ),
                )
            )
    return out


def _id_bytes(x: str) -> int:
    """What an id takes in a message's JSON head, separator included (quotes and
    backslashes are escaped: twice their bytes).

    >>> _id_bytes("a"), _id_bytes('a"b')
    (5, 8)
    """
    return len(json.dumps(x, ensure_ascii=False).encode()) + 2


def _cuts(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of entries whose sizes add up to about ``limit`` at most (one
    entry at least)."""
    cuts, lo = [], 0
    while lo < len(sizes):
        hi, size = lo, 0
        while hi < len(sizes) and (hi == lo or size + sizes[hi] < limit):
            size += sizes[hi]
            hi += 1
        cuts.append((lo, hi))
        lo = hi
    return cuts


def _message(head: dict, arrays) -> bytes:
    line = json.dumps(head, ensure_ascii=False).encode()  # ids as their UTF-8 bytes
    return line + b"\n" + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def decode_item_changes(raw: bytes | None, k: int) -> tuple[str, set[int], ItemChanges]:
    r"""``(worker, its model's partitions, changes)`` of one message; ValueError when
    it is not one (anything another producer may have put on the topic), when its vectors
    are not ``k`` long, or when a value is out of range (not finite, a negative count or
    weight, a pair naming no id, a partition that is not a natural number, a change past
    :data:`MAX_CHANGE` or a pair weight past :data:`MAX_PAIR_WEIGHT`, a clock more than
    two days ahead of this machine's).

    >>> decode_item_changes(None, 4)
    Traceback (most recent call last):
    ...
    ValueError: no value
    >>> head = b'{"worker": "w", "partitions": [0], "part": "items", "ids": ["a"], "k": -1}'
    >>> decode_item_changes(head + b"\n", 4)
    Traceback (most recent call last):
    ...
    ValueError: bad header: ValueError: k must be >= 0
    """
    if raw is None:
        raise ValueError("no value")
    head, sep, body = bytes(raw).partition(b"\n")
    try:
        header = json.loads(head)
        worker, part, ids = str(header["worker"]), header["part"], list(header["ids"])
        partitions = set(header["partitions"])
        if not all(type(p) is int and p >= 0 for p in partitions):
            raise ValueError("partitions must be integers >= 0")
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}")
        if not all(isinstance(x, str) for x in ids):
            raise ValueError("ids must be strings")
        if part in ("items", "tags"):
            n_factors = header["k"]
            if not isinstance(n_factors, int) or n_factors < 0:
                raise ValueError("k must be >= 0")
        elif part == "popular":
            now = header["now"]
            if not isinstance(now, (int, float)) or not np.isfinite(now):
                raise ValueError("now must be a finite number")
            # (a worker's clock is its latest rating's time, refused past a day ahead)
            if not -MAX_ABS_TIMESTAMP <= now <= time.time() + 2 * 86_400:
                raise ValueError(f"now {now:g} is out of range (more than 2 days ahead?)")
        elif part == "pairs":
            n = header["n"]
            if not isinstance(n, int) or n < 0:
                raise ValueError("n must be >= 0")
    except Exception as exc:  # (any: a header nested 1,000 deep is a RecursionError)
        raise ValueError(f"bad header: {type(exc).__name__}: {exc}"[:500]) from None
    if not sep:
        raise ValueError("no arrays after the header")
    out = ItemChanges(dv=np.zeros((0, k), np.float32), de=np.zeros((0, k), np.float32))
    if part in ("items", "tags"):
        if n_factors != k:
            raise ValueError(f"vectors of {n_factors} factors, this model has {k}")
        m = len(ids)
        values = _floats(body, "<f4", m * (k + 1), MAX_CHANGE)
        vectors, biases = values[: m * k].reshape(m, k), values[m * k :]
        if part == "items":
            out.items, out.dv, out.db = ids, vectors, biases
        else:
            out.tags, out.de, out.dtb = ids, vectors, biases
    elif part == "popular":
        out.rated, out.mass = ids, _floats(body, "<f8", len(ids))
        out.now = float(now)
    else:
        if len(body) != 12 * n:
            raise ValueError(f"{len(body)} bytes for {n} pairs")
        at = np.frombuffer(body[: 8 * n], "<i4").reshape(2, n)
        if n and (at.min() < 0 or at.max() >= len(ids)):
            raise ValueError("pairs naming no id")
        weights = _floats(body[8 * n :], "<f4", n, MAX_PAIR_WEIGHT)
        if (weights < 0).any():
            raise ValueError("negative pair weights")
        out.pair_items, out.pair_a, out.pair_b, out.pair_w = ids, at[0], at[1], weights
    return worker, partitions, out


#: Bounds on what one message may carry, far past what an exchange's learning makes (a
#: factor or bias moves by well under 1 per rating) and well short of float32's end,
#: where a sum overflows to inf and the model to NaN.
MAX_CHANGE = 1e4
MAX_PAIR_WEIGHT = 1e9


def _floats(body: bytes, dtype: str, n: int, limit: float = math.inf) -> np.ndarray:
    values = np.frombuffer(body, dtype)
    if len(values) * np.dtype(dtype).itemsize != len(body) or len(values) != n:
        raise ValueError(f"{len(body)} bytes for {n} values of {dtype}")
    if not np.isfinite(values).all():
        raise ValueError("values that are not finite")
    if len(values) and float(np.abs(values).max()) > limit:
        raise ValueError(f"values past {limit:g}")
    return values
