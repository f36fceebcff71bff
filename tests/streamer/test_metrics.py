"""The Prometheus exposition: parsed back by the reference client library."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys_online.evaluate import ErrorScore, RankingScore
from recsys_online.events import Rating
from streamer.engine import StreamEngine
from streamer.metrics import (
    FLEET_MAXIMA,
    FLEET_MEANS,
    FLEET_SUMS,
    FRESHNESS_BUCKETS,
    GAUGES,
    Histogram,
    Quantiles,
    exposition,
    fleet_metrics,
)
from streamer.settings import Settings


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.01, 0.1, 1.0))
    h.observe_many([0.01, 0.05, 0.1, 0.5, 7.0])
    assert h.cumulative() == [1, 3, 4, 5]  # a value equal to a bound is "le" that bound
    assert h.count == 5
    assert h.sum == pytest.approx(7.66)
    h.observe_many([])
    assert h.count == 5


@pytest.mark.parametrize("seed", [0, 1])
def test_quantiles_agree_with_numpy_within_one_percent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(3.0, 1.0, 20_000)  # milliseconds, a long right tail
    q = Quantiles(rel=0.01)
    for part in np.array_split(x, 7):
        q.observe_many(part.tolist())
    assert q.count == len(x)
    for p in (0.01, 0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(x, p, method="inverted_cdf")
        assert abs(q.quantile(p) - exact) <= 0.01 * (1 + exact), p


def test_quantiles_count_values_past_the_top_in_the_last_bucket() -> None:
    q = Quantiles(rel=0.01, top=1000.0)
    q.observe_many([-3.0, 1e9])  # a negative value counts as 0
    assert q.quantile(0.0) < 0.05 and 990.0 <= q.quantile(1.0) <= 1030.0


def test_quantiles_stay_within_one_percent_for_hours_and_skip_nan() -> None:
    """A worker catching up on an outage sees ratings hours old: its whole-run freshness
    still reads them within 1% (a week's milliseconds are counted); an infinite value
    counts as the top, NaN not at all, and neither breaks the counts."""
    q = Quantiles()
    five_hours = 5 * 3_600_000.0
    q.observe_many([five_hours] * 3 + [float("nan")])
    assert q.count == 3 and abs(q.quantile(0.5) - five_hours) <= 0.01 * five_hours
    q.observe_many([float("inf")])
    assert q.count == 4 and q.quantile(1.0) >= 6.0e8


def test_quantiles_from_an_old_snapshot_keep_counting() -> None:
    """Quantiles pickled before the top was kept (an hour's milliseconds) load and go on
    counting in their own buckets."""
    import pickle

    old = Quantiles(top=3.6e6)
    old.observe_many([10.0, 20.0])
    state = dict(old.__dict__)
    del state["_top"]
    restored = Quantiles.__new__(Quantiles)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    restored.observe_many([30.0, 1e9])
    assert restored.count == 4 and 3.5e6 <= restored.quantile(1.0) <= 3.7e6


def test_engine_exposition_parses_with_every_figure_the_issue_names() -> None:
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for j in range(5):
        engine.upsert_item(f"i{j}", {"t": 1.0})
    engine.learn_ratings([Rating("u1", "i0", 5.0, 1.0), Rating("u2", "i1", 2.0, 1.0)])
    engine.record_freshness([1000.0, 1030.0], published_at=1.05)  # 50 ms and 20 ms
    engine.record_refresh(0.002)
    text = exposition(engine.metrics(lag=7), engine.histograms(), {"worker": 'h"1'})
    fams = families(text)
    # prometheus_client drops the _total suffix from counter family names
    for name in (
        "recsys_events",
        "recsys_deadletters",
        "recsys_consumer_lag",
        "recsys_rmse",
        "recsys_mae",
        "recsys_ndcg_at_k",
        "recsys_recall_at_k",
        "recsys_ndcg_at_k_fresh",
        "recsys_recall_at_k_fresh",
        "recsys_similar_recall_at_k",
        "recsys_similar_recall_at_k_popular",
        "recsys_freshness_seconds",
        "recsys_refresh_seconds",
    ):
        assert name in fams, name
    events = fams["recsys_events"].samples[0]
    assert events.value == 2 and events.labels == {"worker": 'h"1'}
    assert fams["recsys_consumer_lag"].samples[0].value == 7
    for at_k in ("ndcg_at_k", "recall_at_k", "ndcg_at_k_fresh", "recall_at_k_fresh"):
        assert fams[f"recsys_{at_k}"].samples[0].labels["k"] == "3", at_k
    fresh = {
        s.labels.get("le"): s.value
        for s in fams["recsys_freshness_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert fresh["0.02"] == 1 and fresh["0.05"] == 2 and fresh["+Inf"] == 2
    assert len(fresh) == len(FRESHNESS_BUCKETS) + 1
    refresh_count = next(
        s for s in fams["recsys_refresh_seconds"].samples if s.name.endswith("_count")
    )
    assert refresh_count.value == 1


def test_dead_letters_are_counted_by_the_kind_of_their_reason() -> None:
    """Alerts want to tell a producer sending ratings before their items (unknown_item)
    from a broken payload (malformed): the reasons the worker writes map to kinds, and
    each kind seen is a labelled series (and a ``deadletters_{kind}`` figure in Redis)."""
    reasons = {
        "malformed JSON: Expecting value at line 1 column 1": "malformed",
        "no value: a tombstone (null record) is not an event": "malformed",
        "not a JSON object: got list": "not_object",
        "payload too large: 70000 bytes, more than 65536": "oversized",
        "key: b'zz', but item events are keyed by their item_id 'zz-other'": "wrong_key",
        "partition: key b'u1' belongs in partition 0 of 8 (Kafka's default partitioner, "
        "murmur2), not 6: a producer partitioning otherwise ...": "wrong_partition",
        "partition: Extra inputs are not permitted": "invalid",  # (a field "partition")
        "tombstone: its key is not UTF-8 (byte 0)": "bad_tombstone",
        "item_id: unknown item 'never'": "unknown_item",
        "item_id: item 'x0' was deleted": "deleted_item",
        "event_id: duplicate 'e-1', already learned": "duplicate",
        "rating: 9.0 is outside the rating scale [1.0, 5.0]": "invalid",
        "item_id: '' is empty": "invalid",
    }
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for reason in reasons:
        engine.count_deadletter(reason)
    text = exposition(engine.metrics(), {}, {"worker": "w1"})
    by_reason = {
        s.labels["reason"]: s.value
        for s in families(text)["recsys_deadletters_by_reason"].samples
        if s.name.endswith("_total")
    }
    expected: dict[str, float] = {}
    for kind in reasons.values():
        expected[kind] = expected.get(kind, 0) + 1
    assert by_reason == expected
    assert families(text)["recsys_deadletters"].samples[0].value == len(reasons)
    assert engine.metrics()["deadletters_malformed"] == 2


def test_a_label_with_a_line_feed_stays_valid_exposition() -> None:
    text = exposition({"rmse": 0.5}, {}, {"worker": "bad\nhost\\"})
    [sample] = families(text)["recsys_rmse"].samples
    assert sample.labels == {"worker": "bad\nhost\\"}


def test_nan_figures_are_valid_exposition() -> None:
    text = exposition({"rmse": math.nan, "events": 0}, {}, {})
    sample = families(text)["recsys_rmse"].samples[0]
    assert math.isnan(sample.value)


def test_dead_letters_of_fields_named_like_a_kind_count_as_schema_violations() -> None:
    """A schema violation's reason begins with the producer's field name: a payload with
    a field "key", "tombstone" or "payload too large" is invalid, not wrongly keyed, a
    bad tombstone or oversized; the worker's own reasons keep their kinds."""
    from schemas import EventError, RatingEvent, parse_event
    from streamer.metrics import deadletter_kind
    from streamer.records import item_event, key_problem

    def reason(payload: dict) -> str:
        with pytest.raises(EventError) as caught:
            parse_event(json.dumps(payload).encode(), RatingEvent)
        return str(caught.value)

    good = {"user_id": "u1", "item_id": "i1", "rating": 4, "timestamp": 1}
    fields = ("key", "tombstone", "payload too large", "no value", "item_id: unknown item x")
    for field in (*fields, "event_id: duplicate 'e', already learned", "malformed JSON: x"):
        assert deadletter_kind(reason({**good, field: 1})) == "invalid", field
    forged = {**good, "key": ", but ratings are keyed by their user_id 'u1'"}  # (its value too)
    assert deadletter_kind(reason(forged)) == "invalid"
    assert deadletter_kind(key_problem(b"u2", "u1", "ratings", "user_id")) == "wrong_key"
    with pytest.raises(EventError) as caught:
        item_event(Settings(), b"\xff", None, 1.0)
    assert deadletter_kind(str(caught.value)) == "bad_tombstone"
    assert deadletter_kind("payload too large: 70000 bytes, more than 65536") == "oversized"
    assert deadletter_kind("event_id: duplicate 'e1', already learned") == "duplicate"


def test_a_worker_exports_its_counters_once_it_first_serves(monkeypatch) -> None:
    """Before it first serves (joining, reading the catalog, restoring a snapshot whose
    lifetime totals it takes on), a worker exports gauges only, ``recsys_ready`` 0: a
    counter series seen at 0 and then at a snapshot's total was an increase by all of
    it to Prometheus, and alerts on any new dead letter fired at every restart."""
    from streamer.app import RecsysWorker

    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    monkeypatch.setattr(worker, "_lag", lambda: 0)  # (no consumer in this test)
    worker.engine.count_deadletter("key: b'x', but ratings are keyed by their user_id 'u'")
    text = worker.prometheus()
    assert 'recsys_ready{worker="' in text and "} 0\n" in text.split("recsys_ready", 2)[2]
    assert "recsys_deadletters_by_reason_total" not in text
    assert "recsys_events_total" not in text and "recsys_freshness_seconds_bucket" not in text
    assert "recsys_redis_write_waiting_seconds" in text
    monkeypatch.setattr(worker, "readiness", lambda: (True, {}))
    text = worker.prometheus()
    assert 'recsys_deadletters_by_reason_total{worker="' in text
    assert "recsys_events_total" in text and "recsys_freshness_seconds_bucket" in text
    monkeypatch.setattr(worker, "readiness", lambda: (False, {}))  # (a rebuild, later)
    assert "recsys_events_total" in worker.prometheus()  # (a series never goes away)


async def test_a_standby_worker_that_later_restores_goes_on_with_its_own_figures(
    monkeypatch, tmp_path
) -> None:
    """A worker with no partitions (one more than partitions) is ready, so it exports
    its counters at 0; given partitions later, the snapshot it restores must not bring
    its lifetime totals into those series (an increase by all of them, to Prometheus)."""
    from streamer.app import RecsysWorker
    from streamer.snapshot import SnapshotStore

    settings = Settings(ratings_topic="r", items_topic="i", users_topic="u", data_dir=str(tmp_path))
    worker = RecsysWorker(settings)
    monkeypatch.setattr(worker, "_lag", lambda: 0)
    monkeypatch.setattr(worker, "readiness", lambda: (True, {}))
    assert 'recsys_events_total{worker="' in worker.prometheus()  # (served, at 0)
    old = StreamEngine(settings)
    old.upsert_item("a", {"t": 1.0})
    old.learn_ratings([Rating("u1", "a", 4.0, 1.0)])
    SnapshotStore(settings.snapshot_path).save(old, {0: 1}, settings.model_fingerprint())

    async def committed(self):
        return {0: 1}

    monkeypatch.setattr(RecsysWorker, "_committed", committed)
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    await worker._restore_once()
    assert worker.engine.events == 1 and worker.engine.evaluated == 0


def _engine_with_figures() -> StreamEngine:
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for j in range(5):
        engine.upsert_item(f"i{j}", {"t": 1.0})
    engine.learn_ratings([Rating("u1", "i0", 5.0, 1.0), Rating("u2", "i1", 2.0, 1.0)])
    engine.count_deadletter("malformed JSON: oops")
    engine.record_freshness([1000.0], published_at=1.05)
    return engine


def test_a_freshness_of_minutes_is_measured_not_cut_at_the_top_bucket() -> None:
    """A worker catching up on a backlog serves lists minutes after their ratings: the
    histogram's quantiles must reach them (histogram_quantile returns the top bound for
    anything above it)."""
    h = Histogram(FRESHNESS_BUCKETS)
    h.observe_many([45.0] * 10)
    cumulative = dict(zip([*FRESHNESS_BUCKETS, math.inf], h.cumulative(), strict=True))
    assert cumulative[30.0] == 0 and cumulative[60.0] == 10


def test_every_figure_a_worker_publishes_has_a_rule_for_the_fleet() -> None:
    """The shared hash drops a figure with no rule: each of the engine's figures, and
    each the worker adds (those Prometheus knows), sums, takes the worst, or averages."""
    published = set(_engine_with_figures().metrics()) | set(GAUGES)
    published -= {"ready", "redis_waiting_s"}  # (Prometheus only: not in the hashes)
    ruled = FLEET_SUMS | FLEET_MAXIMA | set(FLEET_MEANS)
    missing = {f for f in published if f not in ruled and not f.startswith("deadletters_")}
    assert not missing
    assert all(count in FLEET_SUMS for count, _ in FLEET_MEANS.values())


def test_one_workers_fleet_figures_are_its_own() -> None:
    """As text too: a count or ``k`` stays ``"3"``, never ``"3.0"`` (readers parse ints,
    and the CLI names NDCG@{k})."""
    own = {k: str(v) for k, v in _engine_with_figures().metrics(lag=3).items()}
    fleet = fleet_metrics({"w1": own}, window=1000)
    assert fleet.pop("workers") == 1
    assert set(fleet) == set(own)
    for name, value in fleet.items():  # (a whole float may print as an int: "50")
        assert str(value) == own[name] or float(value) == float(own[name]), name
    for name in ("k", "items", "events", "evaluated", "lag", "model_version", "users"):
        assert str(fleet[name]) == own[name], name


def test_fleet_lifetime_figures_are_those_of_every_rating_together() -> None:
    """Two workers' lifetime RMSE, MAE, NDCG and recall combine into the figures of
    all their ratings measured in one place; rolling ones weigh at most a window each."""
    rng = np.random.default_rng(3)
    truth, predicted = rng.uniform(1, 5, 300), rng.uniform(1, 5, 300)
    ranks = [None if r >= 10 else int(r) for r in rng.integers(0, 20, 120)]
    workers, everything = {}, (ErrorScore(10_000), RankingScore(10_000))
    for name, part, rank_part in (
        ("a", slice(0, 220), slice(0, 40)),
        ("b", slice(220, 300), slice(40, 120)),
    ):
        errors, ranking = ErrorScore(10_000), RankingScore(10_000)
        errors.update_many(truth[part].tolist(), predicted[part].tolist())
        ranking.update_many(ranks[rank_part])
        e, r = errors.summary(), ranking.summary()
        workers[name] = {
            "evaluated": str(part.stop - part.start),
            "relevant": str(r["n"]),
            "rmse_total": str(e["rmse"]),
            "ndcg_at_k_total": str(r["ndcg_at_k"]),
            "recall_at_k_total": str(r["recall_at_k"]),
            "rmse": str(e["rolling_rmse"]),
        }
    everything[0].update_many(truth.tolist(), predicted.tolist())
    everything[1].update_many(ranks)
    fleet = fleet_metrics(workers, window=10_000)
    assert fleet["rmse_total"] == pytest.approx(everything[0].summary()["rmse"])
    assert fleet["ndcg_at_k_total"] == pytest.approx(everything[1].summary()["ndcg_at_k"])
    assert fleet["recall_at_k_total"] == pytest.approx(everything[1].summary()["recall_at_k"])
    assert fleet["evaluated"] == 300 and fleet["relevant"] == 120
    # Rolling over a window of 50: each worker's figure is over its last 50 ratings.
    a, b = float(workers["a"]["rmse"]), float(workers["b"]["rmse"])
    rolling = fleet_metrics(workers, window=50)["rmse"]
    assert rolling == pytest.approx(math.sqrt((a * a + b * b) / 2))


def test_fleet_figures_skip_what_a_worker_has_not_measured() -> None:
    """NaN (nothing measured yet), a missing field or damaged text is left out; a
    figure no worker has is NaN; the worst freshness is the largest."""
    fleet = fleet_metrics(
        {
            "new": {"evaluated": "0", "rmse": "nan", "lag": "2", "freshness_ms_p50": "nan"},
            "old": {"evaluated": "50", "rmse": "0.8", "lag": "oops", "freshness_ms_p50": "9"},
            "odd": {"evaluated": "5", "ndcg_at_k": "0.3"},  # (no relevant count: evaluated)
        },
        window=1000,
    )
    assert fleet["rmse"] == pytest.approx(0.8) and fleet["lag"] == 2
    assert fleet["freshness_ms_p50"] == 9.0 and fleet["ndcg_at_k"] == pytest.approx(0.3)
    assert fleet["workers"] == 3


def test_a_damaged_figure_never_stops_the_fleets_and_counts_as_unmeasured() -> None:
    """Infinities, text and sums past the largest float (one worker's damaged hash) give
    NaN for that figure, never an exception: every worker combines every hash."""
    fleet = fleet_metrics(
        {
            "a": {"lag": "inf", "events": "1e308", "rmse": "-inf", "evaluated": "5"},
            "b": {"lag": "-inf", "events": "1e308", "rmse": "0.5", "evaluated": "5"},
            "c": {"lag": "2", "events": "x", "freshness_ms_p99": "inf"},
        },
        window=1000,
    )
    assert fleet["lag"] == 2 and math.isnan(fleet["events"])
    assert fleet["rmse"] == 0.5 and math.isnan(fleet["freshness_ms_p99"])


def test_a_worker_of_an_earlier_version_weighs_its_ndcg_by_its_ratings() -> None:
    """A worker publishing no ``relevant`` count (an earlier version) still counts,
    weighed by ``evaluated``, during a rolling upgrade."""
    fleet = fleet_metrics(
        {
            "old": {"evaluated": "900", "ndcg_at_k": "0.9", "ndcg_at_k_total": "0.9"},
            "new": {"evaluated": "300", "relevant": "100", "ndcg_at_k": "0.1"},
        },
        window=10_000,
    )
    assert fleet["ndcg_at_k"] == pytest.approx((900 * 0.9 + 100 * 0.1) / 1000)
    assert fleet["ndcg_at_k_total"] == pytest.approx(0.9)
