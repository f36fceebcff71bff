"""Figures made ready for JSON, which has no NaN or infinity (browsers reject them).

A figure with nothing to measure is NaN (NDCG with no relevant rating): in JSON it is
null. No numpy here, so the dashboard can import it and stay light.
"""

from __future__ import annotations

import math


def json_safe(value: object) -> object:
    """``value`` with every non-finite float, in dicts, lists and tuples too, replaced
    by None.

    >>> json_safe({"a": [1.0, float("nan")], "b": float("inf"), "c": "x", "n": (0,)})
    {'a': [1.0, None], 'b': None, 'c': 'x', 'n': [0]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
