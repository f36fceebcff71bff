"""StreamEngine: figures that monitoring relies on."""

from __future__ import annotations

from recsys_online.events import Rating
from streamer.engine import StreamEngine
from streamer.settings import Settings


def engine_with_history() -> StreamEngine:
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for j in range(6):
        engine.upsert_item(f"i{j}", {"t": 1.0})
    engine.learn_ratings([Rating("u1", "i0", 5.0, 1.0), Rating("u2", "i1", 1.0, 2.0)])
    engine.relearn([Rating("u3", "i2", 4.0, 0.5)])
    engine.deadletters = 3
    engine.record_freshness([1000.0], published_at=1.01)
    return engine


def test_events_count_the_model_and_evaluated_counts_live_ratings() -> None:
    engine = engine_with_history()
    m = engine.metrics()
    assert (m["events"], m["evaluated"]) == (3, 2)


def test_a_rebuilt_model_keeps_the_live_figures() -> None:
    old = engine_with_history()
    before = old.metrics()
    new = old.successor()
    after = new.metrics()
    assert new.model is not old.model and after["events"] == 0 and after["users"] == 0
    for name in (
        "evaluated",
        "deadletters",
        "rmse",
        "mae",
        "ndcg_at_k",
        "recall_at_k",
        "freshness_ms_p50",
    ):
        assert after[name] == before[name], name
    assert new.freshness_hist.count == 1
    new.learn_ratings([Rating("u1", "i3", 4.0, 3.0)])
    assert new.metrics()["evaluated"] == 3
