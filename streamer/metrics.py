"""Live figures in Prometheus' text format: histograms and the exposition of a worker.

The worker serves :func:`exposition` at ``/metrics`` (see ``streamer.web``); the same
figures go to Redis for the dashboard and ``recsys-online metrics``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from streamer.registry import TEXT_FIELDS

# Produce-to-Redis latency of a list, seconds (the freshness target is 20 ms p50, 100 ms p99;
# a worker catching up on a backlog takes seconds to minutes: histogram_quantile reads no
# further than the top bound, so the buckets reach 10 minutes).
FRESHNESS_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Time to rank one micro-batch's users and write their lists, seconds.
REFRESH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A cumulative Prometheus histogram: counts per upper bound, a sum and a count.

    >>> h = Histogram((0.1, 1.0))
    >>> h.observe_many([0.05, 0.5, 3.0])
    >>> h.cumulative(), h.count, round(h.sum, 2)
    ([1, 2, 3], 3, 3.55)
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above all bounds
        self.sum = 0.0
        self.count = 0

    def observe_many(self, values: Iterable[float]) -> None:
        x = np.fromiter(values, dtype=np.float64)
        if not len(x):
            return
        # side="left": a value equal to a bound counts in that bound's bucket (le).
        self._counts += np.bincount(
            np.searchsorted(self.bounds, x, side="left"), minlength=len(self._counts)
        )
        self.sum += float(x.sum())
        self.count += len(x)

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the total (the ``+Inf`` bucket)."""
        return np.cumsum(self._counts).tolist()


class Quantiles:
    """Quantiles of every value observed since the start, in fixed memory.

    Values ``v >= 0`` are counted in buckets of ``log(1 + v)`` a fixed width apart, so a
    quantile comes back within ``rel`` of ``1 + v`` (a few KB of counts up to ``top``,
    where larger values, infinity included, are counted; NaN is not counted). A rolling
    window of the last values tells what is happening now; this tells what a whole run
    was, at any length. The default ``top`` is a week of milliseconds: a worker catching
    up on a long outage reports its freshness as it was.

    >>> q = Quantiles()
    >>> q.observe_many([5.0, 10.0, 20.0, 40.0])
    >>> round(q.quantile(0.5), 1), round(q.quantile(0.99), 1), q.count
    (10.1, 40.0, 4)
    >>> Quantiles().quantile(0.5)  # nothing observed: no figure
    nan
    """

    def __init__(self, rel: float = 0.01, top: float = 6.048e8) -> None:
        self._log_g = math.log1p(2.0 * rel)  # bucket width; its middle is within rel
        self._top = top
        self._counts = np.zeros(int(math.log1p(top) / self._log_g) + 1, np.int64)
        self.count = 0

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "_top" not in state:  # (a snapshot from before the top was kept: its counts')
            self._top = math.expm1((len(self._counts) - 1) * self._log_g)

    def observe_many(self, values: Iterable[float]) -> None:
        x = np.fromiter(values, dtype=np.float64)
        x = x[~np.isnan(x)]
        if not len(x):
            return
        b = (np.log1p(np.clip(x, 0.0, self._top)) / self._log_g).astype(np.int64)
        np.minimum(b, len(self._counts) - 1, out=b)
        self._counts += np.bincount(b, minlength=len(self._counts))
        self.count += len(x)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of every value observed; NaN before any."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        b = int(np.searchsorted(np.cumsum(self._counts), rank))
        return math.expm1((b + 0.5) * self._log_g)


# name in Redis/engine metrics -> (Prometheus name, type, help)
GAUGES: dict[str, tuple[str, str, str]] = {
    "evaluated": (
        "recsys_events_total",
        "counter",
        "Live ratings processed (evaluated, then learned) by this worker.",
    ),
    "events": (
        "recsys_model_ratings",
        "gauge",
        "Ratings in this worker's model, live and replayed from the log.",
    ),
    "deadletters": (
        "recsys_deadletters_total",
        "counter",
        "Events sent to the dead-letter topic by this worker.",
    ),
    "lag": (
        "recsys_consumer_lag",
        "gauge",
        "Ratings in this worker's partitions not processed yet (high-water mark - position).",
    ),
    "rmse": ("recsys_rmse", "gauge", "Prequential RMSE over the last ratings (rolling window)."),
    "mae": ("recsys_mae", "gauge", "Prequential MAE over the last ratings (rolling window)."),
    "ndcg_at_k": (
        "recsys_ndcg_at_k",
        "gauge",
        "Prequential NDCG@K of relevant ratings in the list last served (rolling window).",
    ),
    "recall_at_k": (
        "recsys_recall_at_k",
        "gauge",
        "Prequential Recall@K (hit rate) of relevant ratings (rolling window).",
    ),
    "ndcg_at_k_fresh": (
        "recsys_ndcg_at_k_fresh",
        "gauge",
        "Prequential NDCG@K of relevant ratings in a list ranked at the rating (rolling).",
    ),
    "recall_at_k_fresh": (
        "recsys_recall_at_k_fresh",
        "gauge",
        "Prequential Recall@K in a list ranked at the rating (rolling window).",
    ),
    "similar_ndcg_at_k": (
        "recsys_similar_ndcg_at_k",
        "gauge",
        "NDCG@K of relevant ratings in the more-like-this list of the user's previous item "
        "(rolling window).",
    ),
    "similar_recall_at_k": (
        "recsys_similar_recall_at_k",
        "gauge",
        "Recall@K (hit rate) of relevant ratings in the more-like-this list of the user's "
        "previous item (rolling window).",
    ),
    "similar_recall_at_k_popular": (
        "recsys_similar_recall_at_k_popular",
        "gauge",
        "The same ratings' hit rate in the popular list as served: the baseline for "
        "recsys_similar_recall_at_k (rolling window).",
    ),
    "similar_owned": (
        "recsys_similar_lists_owned",
        "gauge",
        "Live items whose more-like-this list this worker writes: the items hashed to the "
        "ratings partitions it holds (all of them for a worker alone).",
    ),
    "ready": (
        "recsys_ready",
        "gauge",
        "1 while this worker serves its partitions (as /readyz says 200), 0 while it joins "
        "the group, reads the catalog, or replays or rebuilds its model from the log.",
    ),
    "redis_waiting_s": (
        "recsys_redis_write_waiting_seconds",
        "gauge",
        "How long a write to Redis has been tried again without landing (0: none "
        "waiting); the worker takes no ratings meanwhile.",
    ),
    "events_per_s": (
        "recsys_events_per_second",
        "gauge",
        "Ratings learned per second, recent throughput.",
    ),
    "model_version": ("recsys_model_version", "gauge", "Micro-batches learned by this worker."),
    "users": ("recsys_users", "gauge", "Users known to this worker's model."),
    "freshness_clock_ahead": (
        "recsys_freshness_clock_ahead_total",
        "counter",
        "Ratings produced at a time later than their list reached Redis: a producer's "
        "clock ahead of the worker's (their freshness counts as 0).",
    ),
    "items": ("recsys_items", "gauge", "Live (not deleted) catalog items."),
    "items_deleted": (
        "recsys_items_deleted",
        "gauge",
        "Deleted items whose rows are not freed yet (RECSYS_COMPACT_SHARE).",
    ),
    "snapshot_age_s": (
        "recsys_snapshot_age_seconds",
        "gauge",
        "Seconds since this worker's last model snapshot was made (absent: none yet).",
    ),
    "snapshot_ratings": (
        "recsys_snapshot_ratings",
        "gauge",
        "Ratings in this worker's last model snapshot: a restart replays the rest.",
    ),
    "snapshot_bytes": ("recsys_snapshot_bytes", "gauge", "Size of the last model snapshot."),
    "rebuilds": (
        "recsys_model_rebuilds_total",
        "counter",
        "Times this worker rebuilt its model from the log after a rebalance: one took "
        "ratings partitions away, or brought one whose ratings other workers' shared "
        "item changes already carried (a rebalance giving every partition back keeps it).",
    ),
    "items_shared": (
        "recsys_item_changes_sent_total",
        "counter",
        "Item-side changes this worker sent to the others (RECSYS_SHARE_ITEMS_EVERY_S): "
        "item and tag vectors, rated items, co-occurrence pairs.",
    ),
    "items_received": (
        "recsys_item_changes_applied_total",
        "counter",
        "Item-side changes from other workers added into this worker's model.",
    ),
    "items_skipped": (
        "recsys_item_changes_skipped_total",
        "counter",
        "Item-side changes from other workers left out: learned from ratings partitions "
        "this worker learns itself (sent before a rebalance).",
    ),
}


DEADLETTER_FIELD = "deadletters_"  # + kind: a figure counting one kind of dead letter
DEADLETTERS_BY_REASON = "recsys_deadletters_by_reason_total"  # its Prometheus family

#: What a dead letter's reason says, as one word: how each kind of reason the worker
#: writes begins (regular expressions matched at the start; the first that matches);
#: any other reason is a schema violation. A schema violation's reason begins with the
#: field's name, which is the producer's, so the worker's own reasons are matched on
#: more than their first word: an unknown field "key" is not a wrongly keyed record.
DEADLETTER_KINDS: tuple[tuple[str, str], ...] = (
    (r"payload too large: \d+ bytes", "oversized"),
    (r"malformed JSON: ", "malformed"),
    (r"no value(: a tombstone| and no key: )", "malformed"),
    (r"not a JSON object: got ", "not_object"),
    (r"key: .*, but .+ are keyed by their ", "wrong_key"),
    (r"partition: key .* belongs in partition \d+ of \d+ ", "wrong_partition"),
    (r"tombstone: its key is not ", "bad_tombstone"),
    (r"item_id: unknown item ", "unknown_item"),
    (r"item_id: item .* was deleted", "deleted_item"),
    (r"event_id: duplicate .*, already learned", "duplicate"),
)
_KIND_PATTERNS = [(re.compile(pattern, re.DOTALL), kind) for pattern, kind in DEADLETTER_KINDS]
#: Every kind a dead letter's reason may be counted as.
DEADLETTER_KIND_NAMES: tuple[str, ...] = (*dict.fromkeys(k for _, k in DEADLETTER_KINDS), "invalid")


def deadletter_kind(reason: str) -> str:
    """The kind of a dead letter's reason, for counting them apart.

    >>> deadletter_kind("item_id: unknown item 'i9'")
    'unknown_item'
    >>> deadletter_kind("item_id: item 'i9' was deleted")
    'deleted_item'
    >>> deadletter_kind("rating: 9.0 is outside the rating scale [1.0, 5.0]")
    'invalid'
    >>> deadletter_kind("key: b'u2', but ratings are keyed by their user_id 'u1'")
    'wrong_key'
    >>> deadletter_kind("key: Extra inputs are not permitted")  # a field named "key"
    'invalid'
    >>> deadletter_kind("partition: key b'u1' belongs in partition 0 of 8 (Kafka's ...")
    'wrong_partition'
    """
    for pattern, kind in _KIND_PATTERNS:
        if pattern.match(reason):
            return kind
    return "invalid"


def _number(value: float) -> str:
    """Prometheus' float syntax (NaN, +Inf) for any number.

    >>> _number(3), _number(float("nan")), _number(float("inf")), _number(0.25)
    ('3', 'NaN', '+Inf', '0.25')
    """
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() else repr(v)


_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _labels(labels: Mapping[str, str]) -> str:
    r"""Prometheus label text: backslash, double quote and line feed escaped.

    >>> print(_labels({"worker": 'a"b\nc\\'}))
    {worker="a\"b\nc\\"}
    """
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).translate(_LABEL_ESCAPES)}"' for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def exposition(
    metrics: Mapping[str, float | int],
    histograms: Mapping[str, tuple[Histogram, str]],
    labels: Mapping[str, str],
    counters: bool = True,
) -> str:
    """The text a Prometheus server scrapes (text format 0.0.4). Without ``counters``,
    the gauges only: a worker restoring a snapshot takes its counters' lifetime totals
    with it, and a series first seen at 0, then at the total, would be read as an
    increase by that much (alerts on any new dead letter fired at every restart).

    >>> h = Histogram((0.1,)); h.observe_many([0.05])
    >>> text = exposition({"evaluated": 7, "rmse": 0.9, "k": 10}, {"recsys_freshness_seconds":
    ...     (h, "Produce to Redis.")}, {"worker": "w1"})
    >>> text.count("recsys_deadletters_by_reason_total{")  # every kind, 0 until one comes
    10
    >>> print("\\n".join(x for x in text.splitlines() if "deadletters" not in x))
    # HELP recsys_events_total Live ratings processed (evaluated, then learned) by this worker.
    # TYPE recsys_events_total counter
    recsys_events_total{worker="w1"} 7
    # HELP recsys_rmse Prequential RMSE over the last ratings (rolling window).
    # TYPE recsys_rmse gauge
    recsys_rmse{worker="w1"} 0.9
    # HELP recsys_freshness_seconds Produce to Redis.
    # TYPE recsys_freshness_seconds histogram
    recsys_freshness_seconds_bucket{worker="w1",le="0.1"} 1
    recsys_freshness_seconds_bucket{worker="w1",le="+Inf"} 1
    recsys_freshness_seconds_sum{worker="w1"} 0.05
    recsys_freshness_seconds_count{worker="w1"} 1
    """
    lines: list[str] = []
    base = dict(labels)
    k = metrics.get("k")
    for field, (name, kind, text) in GAUGES.items():
        if field not in metrics or (kind == "counter" and not counters):
            continue
        # Every figure at K (``ndcg_at_k``, ``recall_at_k_fresh``...) carries K.
        extra = {"k": str(int(k))} if "_at_k" in field and k is not None else {}
        lines += [
            f"# HELP {name} {text}",
            f"# TYPE {name} {kind}",
            f"{name}{_labels(base | extra)} {_number(metrics[field])}",
        ]
    # One labelled series per kind of reason, every kind from the start at 0: a series
    # that first appears at 1 is no increase to Prometheus (an alert on the first
    # wrongly keyed event would not fire).
    if not counters:
        return "\n".join(lines) + "\n"
    every = {f"{DEADLETTER_FIELD}{kind}" for kind in DEADLETTER_KIND_NAMES}
    kinds = sorted(every | {f for f in metrics if f.startswith(DEADLETTER_FIELD)})
    name = DEADLETTERS_BY_REASON
    lines += [
        f"# HELP {name} Events sent to the dead-letter topic, by the kind of reason.",
        f"# TYPE {name} counter",
    ]
    for field in kinds:
        reason = {"reason": field.removeprefix(DEADLETTER_FIELD)}
        lines.append(f"{name}{_labels(base | reason)} {_number(metrics.get(field, 0))}")
    for name, (hist, text) in histograms.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
        bounds = [*(_number(b) for b in hist.bounds), "+Inf"]
        for le, count in zip(bounds, hist.cumulative(), strict=True):
            lines.append(f"{name}_bucket{_labels(base | {'le': le})} {count}")
        lines.append(f"{name}_sum{_labels(base)} {_number(hist.sum)}")
        lines.append(f"{name}_count{_labels(base)} {hist.count}")
    return "\n".join(lines) + "\n"


# How the shared ``metrics`` hash combines the live workers' figures (:func:`fleet_metrics`).
#: Figures that add up over workers: each holds its own ratings partitions, so its own
#: ratings, users, lag and dead letters (and ``deadletters_{kind}``).
FLEET_SUMS = frozenset(
    {
        "events",
        "evaluated",
        "relevant",
        "relevant_fresh",
        "deadletters",
        "lag",
        "events_per_s",
        "users",
        "similar_evaluated",
        "similar_owned",
        "freshness_clock_ahead",
        "rebuilds",
        "items_shared",
        "items_received",
        "items_skipped",
        "snapshot_ratings",
        "snapshot_bytes",
    }
)
#: Figures no sum or mean of the workers' can give: the largest worker's. Every worker
#: holds the whole catalog, so ``items`` is any one's; a percentile of the fleet's
#: freshness lies between the workers' own, so the worst (largest) bounds it.
FLEET_MAXIMA = frozenset(
    {
        "k",
        "items",
        "items_deleted",
        "model_version",
        "snapshot_age_s",
        "freshness_ms_p50",
        "freshness_ms_p99",
        "freshness_ms_p50_total",
        "freshness_ms_p99_total",
    }
)
#: Means, each worker's weighted by how many ratings it measured over: figure -> (the
#: count it was measured over, whether over the rolling window). RMSE is combined by
#: its squares.
FLEET_MEANS: dict[str, tuple[str, bool]] = {
    "rmse": ("evaluated", True),
    "mae": ("evaluated", True),
    "rmse_total": ("evaluated", False),
    "ndcg_at_k": ("relevant", True),
    "recall_at_k": ("relevant", True),
    "ndcg_at_k_total": ("relevant", False),
    "recall_at_k_total": ("relevant", False),
    "ndcg_at_k_fresh": ("relevant_fresh", True),
    "recall_at_k_fresh": ("relevant_fresh", True),
    "ndcg_at_k_fresh_total": ("relevant_fresh", False),
    "recall_at_k_fresh_total": ("relevant_fresh", False),
    "similar_ndcg_at_k": ("similar_evaluated", True),
    "similar_recall_at_k": ("similar_evaluated", True),
    "similar_recall_at_k_popular": ("similar_evaluated", True),
    "similar_recall_at_k_total": ("similar_evaluated", False),
    "similar_recall_at_k_popular_total": ("similar_evaluated", False),
    "mean_rating": ("events", False),
}


def numeric_figures(fields: Mapping[str, str]) -> dict[str, float]:
    """The figures of a metrics hash as numbers, its text fields (``worker``,
    ``metrics_url``, ``partitions``) left out.

    >>> numeric_figures({"events": "12", "rmse": "nan", "worker": "h:1", "partitions": "0,3"})
    {'events': 12.0, 'rmse': nan}
    >>> numeric_figures({"partitions": "3"})  # (one partition reads as a number, yet is none)
    {}
    """
    out = {}
    for name, value in fields.items():
        if name in TEXT_FIELDS:
            continue
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _float(value: object) -> float:
    """A figure as a finite float; NaN for anything else (damaged or foreign text, an
    infinity), which counts as not measured."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _tidy(x: float) -> float | int:
    """A whole number as an int (Redis then holds ``"30"``, as a worker writes it)."""
    return int(x) if math.isfinite(x) and x.is_integer() else x


def fleet_metrics(
    workers: Mapping[str, Mapping[str, object]], window: int
) -> dict[str, float | int]:
    """The live workers' figures as one fleet's: what the shared ``metrics`` hash holds.

    Counts add up (:data:`FLEET_SUMS`, and each kind of dead letter); rolling and
    lifetime RMSE, MAE, NDCG and recall are each worker's weighted by the ratings it
    measured them over (:data:`FLEET_MEANS`: the lifetime count, or at most ``window``
    of them for a rolling figure, every worker's window taken to be ``window``; RMSE by
    its squares; a worker that does not publish the count, as an earlier version did
    not, weighs its ``evaluated``), which is the fleet's own figure for the lifetime
    ones; freshness percentiles and the other figures of :data:`FLEET_MAXIMA` are the
    largest worker's. A worker's figure that is NaN (nothing measured yet), infinite,
    missing or not a number counts as not measured; a figure no worker measured is NaN.
    ``workers`` maps each worker's id to its figures (strings, as Redis gives them, or
    numbers); ``workers`` in the result is how many.

    >>> a = {"events": "300", "evaluated": "300", "rmse": "1.0", "lag": "4",
    ...      "freshness_ms_p99": "80", "deadletters": "1", "deadletters_malformed": "1"}
    >>> b = {"events": "100", "evaluated": "100", "rmse": "0.5", "lag": "nan",
    ...      "freshness_ms_p99": "120", "deadletters": "0"}
    >>> m = fleet_metrics({"w1": a, "w2": b}, window=1000)
    >>> m["events"], m["lag"], m["freshness_ms_p99"], m["deadletters_malformed"], m["workers"]
    (400, 4, 120, 1, 2)
    >>> round(m["rmse"], 4)  # sqrt((300 * 1.0^2 + 100 * 0.5^2) / 400)
    0.9014
    >>> fleet_metrics({"w1": {"rmse": "nan", "evaluated": "0"}}, 1000)["rmse"]
    nan
    """
    figures = [{name: _float(v) for name, v in fields.items()} for fields in workers.values()]
    names = {name for fields in figures for name in fields}
    out: dict[str, float | int] = {"workers": len(figures)}
    for name in sorted(names):
        values = [f.get(name, math.nan) for f in figures]
        measured = [v for v in values if not math.isnan(v)]
        if name in FLEET_SUMS or name.startswith(DEADLETTER_FIELD):
            out[name] = _tidy(_sum(measured))
        elif name in FLEET_MAXIMA:
            out[name] = _tidy(max(measured)) if measured else math.nan
        elif name in FLEET_MEANS:
            count, rolling = FLEET_MEANS[name]
            weights = [f.get(count, f.get("evaluated", math.nan)) for f in figures]
            if rolling:
                weights = [min(w, window) for w in weights]
            pairs = [
                (w, v) for w, v in zip(weights, values, strict=True) if w > 0 and not math.isnan(v)
            ]
            total = _sum([w for w, _ in pairs])
            if not total or math.isnan(total):
                out[name] = math.nan
            elif name.startswith("rmse"):
                out[name] = math.sqrt(_sum([w * v * v for w, v in pairs]) / total)
            else:
                out[name] = _sum([w * v for w, v in pairs]) / total
    return out


def _sum(values: Sequence[float]) -> float:
    """An exact sum of finite floats; NaN past the largest float (no exception: one
    worker's damaged figure must not stop the others publishing).

    >>> _sum([1e308, 1e308]), _sum([0.1] * 10)
    (nan, 1.0)
    """
    try:
        return math.fsum(values)
    except OverflowError:
        return math.nan
