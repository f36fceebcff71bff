"""StreamEngine: figures that monitoring relies on."""

from __future__ import annotations

import itertools
import math
import pickle
import time

import pytest

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
    assert before["model_version"] > 0  # (lists never carry a version gone back)
    for name in (
        "model_version",
        "evaluated",
        "deadletters",
        "rmse",
        "mae",
        "ndcg_at_k",
        "recall_at_k",
        "freshness_ms_p50",
        "freshness_ms_p50_total",
    ):
        assert after[name] == before[name], name
    assert new.freshness_hist.count == 1 and new.freshness_all.count == 1
    new.learn_ratings([Rating("u1", "i3", 4.0, 3.0)])
    assert new.metrics()["evaluated"] == 3


def catching_up() -> StreamEngine:
    engine = StreamEngine(Settings(k=5, n_factors=4))
    engine.live = False
    for j, ts in enumerate((10.0, 20.0, 300.0, 400.0)):
        engine.upsert_item(f"i{j}", {"jazz": 1.0}, timestamp=ts)
    return engine


def test_ratings_replayed_from_the_log_leave_the_rate_once_the_window_passes() -> None:
    """``events_per_s`` is the last window's ratings: ratings replayed from the log
    (after a restart, or a partition gained) count while they are learned, then leave
    the figure, which falls to zero when nothing more comes."""
    import time

    engine = engine_with_history()
    window = engine.RATE_WINDOW_S
    replayed = [Rating(f"r{n}", "i1", 4.0, 10.0 + n) for n in range(500)]
    engine.relearn(replayed)
    now = time.monotonic()
    assert engine.events_per_s(now=now) > 0
    assert engine.events_per_s(now=now + window + 1.0) == 0.0
    assert engine.events_per_s(now=now + 3600.0) == 0.0


def test_a_backlog_never_shows_items_from_the_future() -> None:
    engine = catching_up()
    lists = engine.learn_ratings([Rating("u1", "i0", 5.0, 25.0)])
    assert [r.item for r in lists["u1"]] == ["i1"]  # i2 and i3 arrive after t=25
    assert sorted(engine.pending) == ["i2", "i3"]
    lists = engine.learn_ratings([Rating("u1", "i1", 5.0, 350.0)])
    assert [r.item for r in lists["u1"]] == ["i2"]
    assert list(engine.pending) == ["i3"]


def test_a_rating_of_a_waiting_item_brings_it_in_before_learning() -> None:
    engine = catching_up()
    assert engine.knows_item("i3") and not engine.knows_item("nope")
    engine.learn_ratings([Rating("u1", "i3", 5.0, 30.0)])
    assert "i3" not in engine.pending
    assert engine.model.items.get("i3") is not None and engine.model.n_events == 1
    engine.relearn([Rating("u2", "i2", 4.0, 31.0)])
    assert not engine.pending


def test_the_same_waiting_upsert_twice_enters_once_and_loses_no_item() -> None:
    """An item event delivered twice (a producer's retry, the catalog read again) leaves
    two equal entries in the queue of waiting upserts: the item enters once, and the
    other items due with it still enter (they were lost when the second entry failed)."""
    engine = catching_up()
    engine.upsert_item("i2", {"jazz": 1.0}, timestamp=300.0)  # i2's upsert, again
    engine.upsert_item("i2", {"jazz": 1.0}, timestamp=300.0)
    engine.learn_ratings([Rating("u1", "i0", 5.0, 5_000.0)])  # past every item's time
    assert not engine.pending
    assert all(engine.model.items.get(i) is not None for i in ("i0", "i1", "i2", "i3"))
    assert engine.metrics()["items"] == 4


def test_going_live_applies_every_waiting_item_and_deletes_apply_to_waiting_items() -> None:
    engine = catching_up()
    engine.delete_item("i2")
    assert engine.model.is_deleted("i2") and sorted(engine.pending) == ["i0", "i1", "i3"]
    engine.live = True
    assert not engine.pending and engine.metrics()["items"] == 3
    engine.upsert_item("late", {"jazz": 1.0}, timestamp=10_000.0)  # live: applies at once
    assert engine.model.items.get("late") is not None


def test_refresh_reranks_only_the_users_a_new_item_belongs_to() -> None:
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for j in range(8):  # five of each are rated: the fan has one jazz item left to see
        if j < 6:
            engine.upsert_item(f"jazz{j}", {"jazz": 1.0}, timestamp=1.0)
        engine.upsert_item(f"rock{j}", {"rock": 1.0}, timestamp=1.0)
    ratings = []  # each user's dislikes, then their likes (their latest session)
    for n in range(5):
        ratings += [Rating("fan", f"rock{n}", 1.0, 10.0 + n)]
        ratings += [Rating("fan", f"jazz{n}", 5.0, 20.0 + n)]
        ratings += [Rating("other", f"jazz{n}", 1.0, 10.0 + n)]
        ratings += [Rating("other", f"rock{n}", 5.0, 20.0 + n)]
    engine.learn_ratings(ratings)
    assert engine.refresh() == {}  # nothing changed since the lists were served
    engine.upsert_item("new-jazz", {"jazz": 1.0}, timestamp=50.0)
    lists = engine.refresh()
    assert set(lists) == {"fan"}  # "other" dislikes jazz: no re-rank for them
    assert "new-jazz" in [r.item for r in lists["fan"]]
    assert engine.refresh() == {}


def test_a_list_showing_an_item_retagged_since_is_ranked_again() -> None:
    """An item whose tags changed away from a user's taste leaves their list at the next
    refresh (its place and its reason may be gone), not when the user next acts."""
    engine = StreamEngine(Settings(k=2, n_factors=4))
    for item, tag in [("a", "jazz"), ("b", "jazz"), ("c", "jazz"), ("d", "jazz")]:
        engine.upsert_item(item, {tag: 1.0})
    for item in ("r1", "r2", "r3"):
        engine.upsert_item(item, {"rock": 1.0})
    engine.learn_ratings([Rating("u", "a", 5.0, 1.0), Rating("u", "r1", 1.0, 2.0)])
    engine.refresh()
    shown = engine.served["u"][0]
    engine.upsert_item(shown, {"rock": 1.0})  # now like the item the user rated 1
    lists = engine.refresh()
    assert shown not in [r.item for r in lists["u"]] and shown not in engine.served["u"]
    assert engine.refresh() == {}


def _jazz_fans_served(n_fans: int) -> StreamEngine:
    """An engine that served ``n_fans`` jazz fans and one rock fan their lists."""
    engine = StreamEngine(Settings(k=2, n_factors=4))
    for j in range(4):
        engine.upsert_item(f"jazz{j}", {"jazz": 1.0})
        engine.upsert_item(f"rock{j}", {"rock": 1.0})
    ratings = [Rating(f"fan{n}", "jazz0", 5.0, 1.0 + n) for n in range(n_fans)]
    ratings += [Rating("rocker", "rock0", 5.0, 1.0), Rating("rocker", "jazz0", 1.0, 2.0)]
    engine.learn_ratings(ratings)
    engine.refresh()
    return engine


def test_the_refresh_check_goes_through_the_served_users_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users are checked ``REFRESH_USERS`` at a time (each pass bounded), yielding
    between passes; the answer is the one a single pass gives, both for users a new
    item belongs to and for lists showing an item retagged since."""
    answers = []
    for per_pass in (1_000, 2):
        monkeypatch.setattr(StreamEngine, "REFRESH_USERS", per_pass)
        engine = _jazz_fans_served(5)
        shown = engine.served["rocker"][0]  # retagged: due whatever it scores now
        engine.upsert_item("new-jazz", {"jazz": 1.0})
        engine.upsert_item(shown, {"jazz": 1.0, "rock": 0.1})
        steps = list(engine.refresh_steps())
        answers.append(sorted(steps[-1]))
        assert len(steps) == -(-len(engine.served) // per_pass)  # one pass per slice
        assert all(set(a) <= set(b) for a, b in itertools.pairwise(steps))
    assert answers[0] == answers[1] == sorted([f"fan{n}" for n in range(5)] + ["rocker"])


def _two_raters(window_s: float, apart_s: float, replay: bool) -> StreamEngine:
    """An engine that learned two users' ratings of one item ``apart_s`` apart,
    live (evaluated first) or replayed, in steps of ``window_s`` of event time."""
    engine = StreamEngine(Settings(k=2, n_factors=4, learn_window_s=window_s))
    engine.upsert_item("x", {"jazz": 1.0})
    engine.upsert_item("y", {"jazz": 1.0})
    ratings = [Rating("u1", "x", 5.0, 0.0), Rating("u2", "x", 2.0, apart_s)]
    if replay:
        engine.relearn(ratings)
    else:
        engine.learn_ratings(ratings)
    return engine


@pytest.mark.parametrize("replay", [False, True])
def test_a_batch_is_learned_in_steps_of_the_learn_window(replay: bool) -> None:
    """Two ratings further apart in event time than ``learn_window_s`` are learned in
    two steps (the second predicted, and learned, after the first is learned); within
    the window, in one step, as if simultaneous. Live and replayed alike."""

    def outcome(window_s: float, apart_s: float) -> float:
        engine = _two_raters(window_s, apart_s, replay)
        if replay:
            return engine.model.predict_rating("u3", "x")
        return engine.metrics()["rmse"]

    assert outcome(3600.0, 100.0) == outcome(1e9, 100.0)  # one step either way
    assert outcome(3600.0, 10_000.0) != outcome(1e9, 10_000.0)  # two steps, or one
    assert outcome(60.0, 100.0) == outcome(3600.0, 10_000.0)  # two steps both


def _run_with_share(share: float) -> StreamEngine:
    from recsys_online import synth

    ds = synth.generate(n_users=80, n_items=60, n_ratings=1500, seed=5)
    engine = StreamEngine(Settings(k=5, n_factors=4, fresh_eval_share=share))
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags)
    for lo in range(0, len(ds.ratings), 100):
        engine.learn_ratings(ds.ratings[lo : lo + 100])
    return engine


def test_fresh_list_figures_cover_the_sampled_share_and_leave_the_served_ones_alone() -> None:
    """``ranking_now`` covers every relevant rating at share 1, none at 0 and the
    sampled ratings in between; the as-served figures and the model do not
    depend on the share (ranking a list to sample it changes nothing)."""
    every, none, some = (_run_with_share(s) for s in (1.0, 0.0, 0.5))
    assert every.ranking_now.n == every.ranking.n > 0
    assert none.ranking_now.n == 0
    assert 0 < some.ranking_now.n < every.ranking.n
    for engine in (none, some):
        assert engine.ranking.summary() == every.ranking.summary()
        assert engine.errors.summary() == every.errors.summary()
        assert engine.served == every.served
    assert 0 < sum(some._sampled(u, "i1") for u in every.served) < len(every.served)


def test_a_large_step_is_learned_in_slices_in_order() -> None:
    """Five ratings by five users are one step; with ``learn_step_max=2`` the model
    learns them as three calls of at most two, in order (and replays the same way)."""
    engine = StreamEngine(Settings(k=2, n_factors=4, learn_step_max=2))
    for j in range(3):
        engine.upsert_item(f"i{j}", {"t": 1.0})
    calls: list[list[str]] = []
    learn = engine.model.learn_many

    def spy(users, items, values, stamps, shared=True):
        calls.append(list(users))
        return learn(users, items, values, stamps, shared=shared)

    engine.model.learn_many = spy
    ratings = [Rating(f"u{n}", f"i{n % 3}", 4.0, float(n)) for n in range(5)]
    engine.learn_ratings(ratings)
    assert calls == [["u0", "u1"], ["u2", "u3"], ["u4"]]
    calls.clear()
    engine.relearn([Rating(f"v{n}", "i0", 3.0, 10.0 + n) for n in range(3)])
    assert calls == [["v0", "v1"], ["v2"]]


def test_a_re_rating_counts_in_the_error_not_in_the_ranking() -> None:
    engine = StreamEngine(Settings(k=2, n_factors=4, fresh_eval_share=1.0))
    for item in "abcd":
        engine.upsert_item(item, {"t": 1.0})
    engine.learn_ratings([Rating("u", "a", 5.0, 1.0)])
    engine.learn_ratings([Rating("u", "a", 5.0, 2.0)])  # rated before: cannot be listed
    assert engine.errors.n == 2
    assert engine.ranking.n == 1 and engine.ranking_now.n == 1


def _compacted_engine() -> StreamEngine:
    """Items a-d listed and rated, then a and b deleted and their rows freed."""
    engine = StreamEngine(Settings(k=3, n_factors=4, compact_share=0.5))
    for item in "abcd":
        engine.upsert_item(item, {"jazz": 1.0})
    engine.learn_ratings([Rating("u1", "a", 5.0, 1.0), Rating("u2", "c", 4.0, 2.0)])
    engine.delete_item("a")
    engine.delete_item("b")
    assert engine.compact_if_due() == 2 and engine.model.n_items == 2
    return engine


def test_compaction_waits_for_a_live_engine_and_its_share() -> None:
    engine = StreamEngine(Settings(k=3, n_factors=4, compact_share=0.5))
    for item in "abcd":
        engine.upsert_item(item, {"jazz": 1.0})
    engine.delete_item("a")
    assert not engine.compact_due() and engine.compact_if_due() == 0  # 1 of 4 rows
    engine.delete_item("b")
    engine.live = False  # (catching up: a replay learns ratings of items deleted since)
    assert engine.compact_due() and engine.compact_if_due() == 0
    engine.live = True
    assert engine.compact_if_due() == 2


def test_a_freed_item_stays_known_as_deleted() -> None:
    engine = _compacted_engine()
    assert engine.was_freed("a") and not engine.knows_item("a")
    engine.delete_item("a")  # the catalog read again: no row comes back for it
    assert engine.model.n_items == 2
    engine.upsert_item("a", {"jazz": 1.0})  # listed again: an item like any other
    assert not engine.was_freed("a") and engine.model.n_items == 3


def test_a_replayed_rating_of_a_freed_item_is_learned_without_listing_it() -> None:
    engine = _compacted_engine()
    events = engine.events
    engine.bring_back_deleted("b")  # what the replay does before a rating of b
    assert engine.knows_item("b") and engine.model.is_deleted("b")
    engine.learn_ratings([Rating("u3", "b", 5.0, 3.0)])
    assert engine.events == events + 1
    lists = engine.serve(["u2", "u3"])
    assert lists["u3"] and all(r.item != "b" for recs in lists.values() for r in recs)


def test_whole_run_freshness_covers_every_rating_the_rolling_one_the_last() -> None:
    engine = StreamEngine(Settings(k=3, n_factors=4, metrics_window=100))
    engine.record_freshness([1000.0] * 900, published_at=1.5)  # 900 ratings 500 ms late
    engine.record_freshness([1000.0] * 100, published_at=1.01)  # then 100 at 10 ms
    m = engine.metrics()
    assert m["freshness_ms_p50"] == pytest.approx(10.0)  # the window: the last 100
    assert m["freshness_ms_p50_total"] == pytest.approx(500.0, rel=0.01)  # all 1,000
    assert m["freshness_ms_p99_total"] == pytest.approx(500.0, rel=0.01)


def test_figures_with_nothing_measured_yet_are_nan_not_zero() -> None:
    # A fresh worker has predicted nothing: RMSE 0 would read as perfect, NDCG 0 as a
    # model that never lists a liked item. NaN is "no data" to Prometheus and the
    # dashboard (null there), and "nan" in the Redis hash.
    m = StreamEngine(Settings(k=3, n_factors=4)).metrics()
    for name in ("rmse", "mae", "rmse_total", "ndcg_at_k", "recall_at_k", "ndcg_at_k_total"):
        assert math.isnan(m[name]), name
    for name in ("freshness_ms_p50", "freshness_ms_p99", "freshness_ms_p50_total"):
        assert math.isnan(m[name]), name
    assert m["events"] == 0 and m["deadletters"] == 0  # counts are 0, not NaN
    measured = engine_with_history().metrics()
    assert not any(math.isnan(measured[n]) for n in ("rmse", "ndcg_at_k", "freshness_ms_p50"))


def test_a_snapshot_from_before_whole_run_freshness_still_loads() -> None:
    engine = engine_with_history()
    state = engine.__dict__.copy()
    del state["freshness_all"]
    old = StreamEngine.__new__(StreamEngine)
    old.__setstate__(state)
    assert math.isnan(old.metrics()["freshness_ms_p50_total"])  # none observed yet
    old.record_freshness([1000.0], published_at=1.02)
    assert old.metrics()["freshness_ms_p50_total"] == pytest.approx(20.0, rel=0.01)


def test_a_restored_engine_follows_the_settings_a_model_does_not_depend_on() -> None:
    """A snapshot is used only under the same model settings; the others may have
    changed since it was taken, and the restored engine follows the current ones: the
    "more like this" content weight, the fresh-list share, and the dedupe window (with
    dedupe off, no id of the snapshot's may make a redelivered rating look learned)."""
    import pickle

    engine = engine_with_history()
    engine.remember(["e1", "e2"])
    restored = pickle.loads(pickle.dumps(engine))
    now = Settings(
        k=3, n_factors=4, dedupe_window=0, similar_content_weight=0.7, fresh_eval_share=1.0
    )
    restored.adopt(now)
    assert restored.settings is now and restored.model.config.similar_content_weight == 0.7
    assert not restored.learned_id("e1") and not restored.repeats("e1")
    assert all(restored._sampled(f"u{n}", "i0") for n in range(50))
    kept = pickle.loads(pickle.dumps(engine))
    kept.adopt(Settings(k=3, n_factors=4, dedupe_window=1))
    assert kept.learned_id("e2") and not kept.learned_id("e1")  # the newest within 1


def test_a_delete_reaches_every_list_holding_the_item_not_only_the_tracked_users() -> None:
    """A delete re-ranks every list the model wrote that holds the item. It used to
    re-rank only the users the LRU of served lists still held (the 200,000 most recent):
    anyone past it kept the deleted item until their next rating or the list's TTL
    (7 days). Kept through a compaction, which renumbers the item rows, and a snapshot."""
    engine, written = _jazz_lists(
        StreamEngine(Settings(k=2, n_factors=4, compact_share=0.2), max_tracked_users=2), 4, 6
    )
    holders = _holders(written, "a")
    assert len(holders) > 2 and len(engine.served) == 2
    again = engine.delete_item("a")
    assert set(again) == holders
    assert all(r.item != "a" for recs in again.values() for r in recs)
    written.update(again)
    assert engine.compact_if_due() == 1  # (the rows of b, c, d move down one)
    engine = pickle.loads(pickle.dumps(engine))
    holders = _holders(written, "c")
    assert len(holders) > 2
    again = engine.delete_item("c")
    assert set(again) == holders
    assert all(r.item not in "ac" for recs in again.values() for r in recs)


def test_a_snapshot_from_before_the_shown_lists_reaches_the_lists_its_lru_holds() -> None:
    """An engine pickled before it kept every served user's list as rows gets them from
    its LRU of served lists: a delete re-ranks those users, as it did then."""
    engine, written = _jazz_lists(StreamEngine(Settings(k=2, n_factors=4)), 3, 3)
    state = engine.__dict__.copy()
    del state["shown"]
    old = StreamEngine.__new__(StreamEngine)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    holders = _holders(written, "a")
    assert holders and set(old.delete_item("a")) == holders


def _jazz_lists(engine: StreamEngine, n_items: int, n_users: int) -> tuple[StreamEngine, dict]:
    """``engine`` with items ``a``, ``b``, ... and users ``u0``, ``u1``, ... all of one
    tag, live, and the lists it wrote for the users."""
    for item in "abcdefgh"[:n_items]:
        engine.upsert_item(item, {"jazz": 1.0})
    engine.live = True
    written: dict = {}
    for n in range(n_users):
        written.update(engine.upsert_user(f"u{n}", {"jazz": 1.0}))
    return engine, written


def _holders(lists: dict, item: str) -> set[str]:
    """The users whose list holds ``item``."""
    return {u for u, recs in lists.items() if item in {r.item for r in recs}}


def _last_hit(engine: StreamEngine) -> float:
    return engine.ranking.rolling_recall.values().tolist()[-1]


def test_as_served_past_the_tracked_users_is_the_list_written_not_one_ranked_now() -> None:
    """A user out of the tracked users' cache still has their list in Redis, and the
    engine its item rows: ``ndcg_at_k`` ranked their rating in a list ranked now (a miss
    here, where the list written holds the item)."""
    engine = StreamEngine(Settings(k=2, n_factors=4), max_tracked_users=1)
    engine.upsert_item("a", {"jazz": 1.0, "rock": 1.0})
    engine.upsert_item("b", {"jazz": 1.0, "rock": 1.0})
    engine.upsert_item("c", {"jazz": 1.0})
    assert [r.item for r in engine.learn_ratings([Rating("u1", "a", 5.0, 1.0)])["u1"]] == ["b", "c"]
    engine.learn_ratings([Rating("u2", "a", 5.0, 2.0)])  # u1 leaves the cache
    engine.upsert_item("d", {"jazz": 1.0, "rock": 1.0})
    engine.refresh()
    assert "u1" not in engine.served
    engine.learn_ratings([Rating("u1", "c", 5.0, 3.0)])
    assert _last_hit(engine) == 1.0


def test_a_user_with_an_empty_list_is_scored_against_the_popular_list_they_see() -> None:
    engine = StreamEngine(Settings(k=2, n_factors=4, refresh_users=1))
    for item in "ab":
        engine.upsert_item(item, {"jazz": 1.0})
    lists = engine.learn_ratings([Rating("u", "a", 5.0, 1.0), Rating("u", "b", 4.0, 2.0)])
    assert lists["u"] == []
    engine.upsert_item("c", {"rock": 1.0})
    engine.learn_ratings([Rating(f"v{n}", "c", 5.0, 3.0 + n) for n in range(3)])
    engine.refresh()
    assert engine.served["u"] == [] and "c" in [r.item for r in engine.popular()]
    engine.learn_ratings([Rating("u", "c", 5.0, 10.0)])
    assert _last_hit(engine) == 1.0  # (a sure miss against the empty list)


def test_a_rating_of_an_item_deleted_since_is_not_ranked() -> None:
    """Catching up, a delete applies at once while the ratings made before it, while the
    item was listed, are learned: ranked, each was a sure miss."""
    engine = StreamEngine(Settings(k=2, n_factors=4, fresh_eval_share=1.0))
    for item in "abc":
        engine.upsert_item(item, {"jazz": 1.0}, 0.0)
    engine.live = False
    engine.learn_ratings([Rating("u", "a", 5.0, 1.0)])
    ranked = engine.ranking.n
    engine.delete_item("b", 100.0)
    assert engine.rated_while_listed("b", 50.0)
    engine.learn_ratings([Rating("u", "b", 5.0, 50.0)])
    assert engine.ranking.n == ranked and engine.model.n_events == 2


def test_a_rating_makes_due_the_similar_lists_of_the_items_it_pairs_with() -> None:
    """u rated a, then b: the pair (a, b) moved both ways, and a's list (the one "rated
    next" is for) waited for a's own next rating, or an hour."""
    engine = StreamEngine(Settings(k=3, n_factors=4, similar_every_s=300.0))
    for item, tag in zip("abc", ("jazz", "rock", "folk"), strict=True):
        engine.upsert_item(item, {tag: 1.0})
    engine.similar_lists(now=0.0)
    engine.similar_clock = lambda: 1.0
    engine.learn_ratings([Rating("u", "a", 5.0, 1.0)])
    engine.similar_lists(now=400.0)
    engine.similar_clock = lambda: 401.0
    engine.learn_ratings([Rating("u", "b", 5.0, 2.0)])
    written = {k: [r.item for r in v] for k, v in engine.similar_lists(now=800.0).items()}
    assert written == {"a": ["b"], "b": ["a"]}


def test_a_restored_engines_rate_counts_from_its_own_clock() -> None:
    """The rate's samples are ``time.monotonic()`` of the process that took them: after a
    restore on a machine whose clock was behind, events_per_s read 0 for 10,000 batches."""
    engine = StreamEngine(Settings(k=2, n_factors=4))
    engine.upsert_item("a", {"jazz": 1.0})
    engine._rate.append((time.monotonic() + 1e6, 1))  # (the other machine's clock)
    loaded = pickle.loads(pickle.dumps(engine))
    loaded.learn_ratings([Rating(f"u{n}", "a", 5.0, 1.0) for n in range(50)])
    time.sleep(0.05)
    loaded.learn_ratings([Rating(f"w{n}", "a", 5.0, 2.0) for n in range(50)])
    assert loaded.metrics()["events_per_s"] > 0


def test_an_item_freed_then_listed_again_is_ranked_again() -> None:
    engine = StreamEngine(Settings(k=3, n_factors=4, compact_share=0.5))
    for item in "abcd":
        engine.upsert_item(item, {"jazz": 1.0})
    engine.delete_item("a")
    engine.delete_item("b")
    assert engine.compact_if_due() == 2
    engine.upsert_item("a", {"jazz": 1.0})
    engine.learn_ratings([Rating("u1", "c", 5.0, 1.0)])
    ranked = engine.ranking.n
    engine.learn_ratings([Rating("u1", "a", 5.0, 2.0)])
    assert engine.ranking.n == ranked + 1


def _factor_state(engine: StreamEngine) -> list:
    """The users' and items' biases and vectors (their rows in use, not the spare ones)."""
    mf = engine.model.mf
    users, items = slice(mf.n_users), slice(mf.n_items)
    return [a.copy() for a in (mf.user_bias[users], mf.item_bias[items], mf.P[users], mf.V[items])]


def test_the_factors_learn_with_the_rates_the_settings_give_and_a_restore_takes_new_ones() -> None:
    def engine(**rates) -> StreamEngine:
        e = StreamEngine(Settings(k=3, n_factors=4, **rates))
        for j in range(4):
            e.upsert_item(f"i{j}", {})
        e.learn_ratings([Rating("u1", "i0", 5.0, 1.0), Rating("u2", "i1", 1.0, 2.0)])
        return e

    frozen = engine(lr_bias=0.0, lr_factor=0.0)
    assert not frozen.model.mf.user_bias.any() and not frozen.model.mf.item_bias.any()
    assert engine().model.mf.user_bias.any()  # (the defaults learn)
    sgd, ada = engine(adaptive=False), engine()
    assert not sgd.model.mf._acc and ada.model.mf._acc  # (AdaGrad's state, only with it)
    assert sgd.model.mf.P.tolist() != ada.model.mf.P.tolist()
    # A restored engine learns on under the settings it is started with.
    restored = pickle.loads(pickle.dumps(engine()))
    restored.adopt(Settings(k=3, n_factors=4, lr_bias=0.0, lr_factor=0.0))
    before = _factor_state(restored)
    restored.learn_ratings([Rating("u1", "i2", 4.0, 3.0), Rating("u3", "i3", 2.0, 4.0)])
    after = _factor_state(restored)
    assert restored.model.config.factors is restored.model.mf.params
    assert len(after[0]) == len(before[0]) + 1  # (u3)
    assert all((a[: len(b)] == b).all() for a, b in zip(after, before, strict=True))
    assert after[0][-1] == 0.0  # (u3's bias: new, and frozen at 0)


def test_deleting_an_item_deleted_already_changes_nothing_and_reads_no_list() -> None:
    """The catalog read again into a restored model deletes its deleted items again:
    each must not cost a pass over every served user's list (4-5 ms at 200,000)."""
    engine = StreamEngine(Settings(k=3, n_factors=4))
    for j in range(4):
        engine.upsert_item(f"i{j}", {"t": 1.0})
    engine.learn_ratings([Rating("u1", "i0", 5.0, 1.0)])
    shown = engine.served["u1"]
    assert engine.delete_item(shown[0], timestamp=2.0).keys() == {"u1"}

    def no_pass(item: str) -> list[str]:
        raise AssertionError("a pass over the served lists")

    engine.shown_to = no_pass
    assert engine.delete_item(shown[0], timestamp=3.0) == {}
    assert engine.deleted_at[shown[0]] == 2.0  # (the first delete's time stands)


def test_the_mean_rating_is_nan_until_a_rating_is_learned() -> None:
    """(Published as 0.0 before: a chart of it started from a mean of 0.)"""
    engine = StreamEngine(Settings(k=3, n_factors=4))
    engine.upsert_item("i0", {})
    assert math.isnan(engine.metrics()["mean_rating"])
    engine.learn_ratings([Rating("u1", "i0", 4.0, 1.0)])
    assert engine.metrics()["mean_rating"] == 4.0


def test_a_snapshot_with_old_histogram_buckets_is_restored_with_todays() -> None:
    """A snapshot from a version whose freshness buckets stopped at 10 s restores with
    today's buckets (kept, the worker's quantiles would stay capped, and Prometheus would
    sum its buckets with other workers' different ones), on through later snapshots."""
    from streamer.metrics import FRESHNESS_BUCKETS, REFRESH_BUCKETS, Histogram

    engine = StreamEngine(Settings(k=2, n_factors=4))
    engine.freshness_hist = Histogram(FRESHNESS_BUCKETS[:11])
    engine.freshness_hist.observe_many([45.0])
    restored = pickle.loads(pickle.dumps(engine))
    assert restored.freshness_hist.bounds.tolist() == list(FRESHNESS_BUCKETS)
    assert restored.refresh_hist.bounds.tolist() == list(REFRESH_BUCKETS)
    again = pickle.loads(pickle.dumps(restored.successor()))
    assert again.freshness_hist.bounds.tolist() == list(FRESHNESS_BUCKETS)
    restored.record_freshness([1000.0], published_at=46.0)  # 45 s
    counts = dict(zip(FRESHNESS_BUCKETS, restored.freshness_hist.cumulative(), strict=False))
    assert counts[30.0] == 0 and counts[60.0] == 1


@pytest.mark.parametrize("compacted", [False, True])
def test_a_second_delete_keeps_the_first_delete_time_freed_or_not(compacted: bool) -> None:
    """A tombstone after a delete (a later record time) must not let ratings made after
    the first delete in as made while the item was listed, whether or not compaction
    freed the item in between (workers compact at different times)."""
    engine = StreamEngine(Settings(k=2, n_factors=4, compact_share=0.5))
    for item in "ab":
        engine.upsert_item(item, {"jazz": 1.0})
    engine.live = True
    engine.delete_item("a", 100.0)
    if compacted:
        assert engine.compact_if_due() == 1 and engine.was_freed("a")
    engine.delete_item("a", 200.0)
    assert not engine.rated_while_listed("a", 150.0)
    assert engine.rated_while_listed("a", 99.0)
    engine.delete_item("a", 50.0)  # (an earlier time, read later: it stands)
    assert not engine.rated_while_listed("a", 60.0)


@pytest.mark.parametrize("restored", [False, True])
def test_the_first_batch_after_a_start_counts_in_the_rate(restored: bool) -> None:
    """The first batch a started (or restored) engine learns is in ``events_per_s``: its
    rate took its first sample after learning, the baseline, and read 0 until a second
    batch came."""
    engine = StreamEngine(Settings(k=2, n_factors=4))
    engine.upsert_item("a", {"jazz": 1.0})
    if restored:
        engine = pickle.loads(pickle.dumps(engine))
    engine.learn_ratings([Rating(f"u{n}", "a", 5.0, 1.0) for n in range(200)])
    assert engine.metrics()["events_per_s"] > 0


@pytest.mark.parametrize("tracked", [1, 100])
def test_an_empty_list_counts_as_the_popular_one_past_the_tracked_users(tracked: int) -> None:
    """A user whose list was written empty is shown the popular list: so it is ranked,
    whether or not the user is still among the tracked users (past them, an empty list
    looked like none written, and the rating was ranked in a fresh list instead)."""
    engine = StreamEngine(
        Settings(k=2, n_factors=4, fresh_eval_share=0.0, similar_every_s=0),
        max_tracked_users=tracked,
    )
    for item in "ab":
        engine.upsert_item(item, {"jazz": 1.0})
    engine.learn_ratings([Rating("u1", "a", 3.0, 1.0), Rating("u2", "a", 5.0, 1.0)])
    engine.learn_ratings([Rating("u1", "b", 3.0, 2.0)])  # u1 rated everything: []
    engine.learn_ratings([Rating("u2", "b", 3.0, 3.0)])  # u2 served last
    engine.upsert_item("c", {"jazz": 1.0})
    engine.popular()
    assert engine._as_served("u1") == engine.popular_served
    assert engine._as_served("nobody") is None
    restored = pickle.loads(pickle.dumps(engine))
    assert restored._as_served("u1") == restored.popular_served
