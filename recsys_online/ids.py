"""Id-to-row maps and amortised growth for the dense float32 state."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class IdIndex:
    """Map external string ids to dense row numbers, assigning rows on first touch.

    Rows are never reused, so arrays indexed by row stay valid while the index grows.

    Examples
    --------
    >>> ids = IdIndex()
    >>> ids.row("u1"), ids.row("u2"), ids.row("u1")
    (0, 1, 0)
    >>> ids.get("nobody") is None, len(ids), ids.id_of(1)
    (True, 2, 'u2')
    >>> ids.rows(["u2", "u3"]).tolist()
    [1, 2]
    """

    __slots__ = ("_ids", "_rows")

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def row(self, key: str) -> int:
        """Row of ``key``, assigning the next row when the id is new."""
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = len(self._ids)
            self._ids.append(key)
        return row

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Rows of many ids (assigning new ones) as an int64 array."""
        keys = keys if isinstance(keys, list | tuple) else list(keys)
        rows = list(map(self._rows.get, keys))  # C-level lookups of known ids
        if None in rows:  # unseen ids get rows in order of first appearance
            row = self.row
            rows = [r if r is not None else row(k) for r, k in zip(rows, keys, strict=True)]
        return np.fromiter(rows, np.int64, len(rows))

    def get(self, key: str) -> int | None:
        """Row of ``key`` or ``None`` when the id was never seen."""
        return self._rows.get(key)

    def id_of(self, row: int) -> str:
        """The external id stored at ``row``."""
        return self._ids[row]

    @property
    def ids(self) -> list[str]:
        """All ids in row order (do not mutate)."""
        return self._ids


def grown(array: np.ndarray, n_rows: int, fill: float = 0.0) -> np.ndarray:
    """Return ``array`` with at least ``n_rows`` rows, doubling capacity when it must grow.

    Examples
    --------
    >>> a = np.zeros((2, 3), dtype=np.float32)
    >>> grown(a, 2) is a, grown(a, 3).shape, grown(a, 9).shape
    (True, (4, 3), (9, 3))
    """
    if n_rows <= len(array):
        return array
    capacity = max(n_rows, 2 * len(array))
    out = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
