""" "More like this" lists: which items' lists a worker writes, and what they hold."""

from __future__ import annotations

import pickle
import time

import numpy as np

from recsys_online.events import Rating
from streamer.engine import SIMILAR_MAX_AGE_S, StreamEngine
from streamer.settings import Settings
from streamer.similar import SimilarDue, item_keys, shard_of

LIVE = np.ones(8, bool)


def written(due: SimilarDue, rows: list[int], now: float, listed: list[list[int]] | None = None):
    taken = due.take(8, LIVE, 100, now)
    assert taken.tolist() == rows
    due.wrote(taken, np.array(listed or [[-1]] * len(rows), np.int32), np.zeros(len(rows)), now)


def test_every_live_item_is_due_once_then_only_when_something_moves() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0)  # never written: all, at once
    assert due.take(8, LIVE, 100, now=1.0).tolist() == []
    due.changed(np.array([3]), now=2.0)  # tags changed: at once
    assert due.take(8, LIVE, 100, now=2.0).tolist() == [3]


def test_a_rated_item_waits_every_s_after_its_last_write() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0)
    due.rated(np.array([5, 5, 6]), now=10.0, every_s=30.0)
    assert due.take(8, LIVE, 100, now=29.9).tolist() == []
    written(due, [5, 6], now=30.0)
    due.rated(np.array([6]), now=100.0, every_s=30.0)  # long since written: at once
    assert due.take(8, LIVE, 100, now=100.0).tolist() == [6]


def test_lists_showing_a_deleted_item_are_due_at_once_and_its_own_never() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0, listed=[[7, 1], [7, -1]] + [[1, 2]] * 6)
    due.deleted(7, now=5.0)
    live = LIVE.copy()
    live[7] = False
    assert due.take(8, live, 100, now=5.0).tolist() == [0, 1]
    assert due.take(8, live, 100, now=6.0).tolist() == []
    assert due.listed[7].tolist() == [-1, -1]  # listed again, it starts afresh


def test_lists_showing_a_deleted_item_go_before_lists_long_due() -> None:
    """An app reading a list that shows a deleted item would show it: such lists are
    written first, ahead of lists that are merely due (rated items, aged lists), however
    long those have waited."""
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0, listed=[[1, 2]] * 6 + [[7, 1], [2, 3]])
    due.rated(np.arange(6), now=1.0, every_s=0.0)  # due since t=1
    due.deleted(7, now=50.0)
    live = LIVE.copy()
    live[7] = False
    assert due.take(8, live, 1, now=50.0).tolist() == [6]  # one slice: it goes first
    assert due.take(8, live, 100, now=50.0).tolist() == [0, 1, 2, 3, 4, 5]


def test_lists_showing_a_deleted_item_go_before_lists_never_written() -> None:
    """Lists never written (new items, lists gained in a rebalance, a restored snapshot)
    are due at once, but after those showing a deleted item: a bulk import before a
    delete held those back behind every new item's list."""
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0, listed=[[7, 1]] + [[1, 2]] * 7)
    n = 5000  # a bulk import: rows 8.. never written
    live = np.ones(n, bool)
    due.ensure(n)
    due.deleted(7, now=5.0)
    live[7] = False
    assert due.take(n, live, 64, now=5.0).tolist()[0] == 0  # in the first slice
    assert 0 not in due.take(n, live, 64, now=5.0).tolist()


def test_lists_older_than_max_age_are_written_again_the_oldest_first() -> None:
    due = SimilarDue(max_age_s=100.0)
    written(due, [0, 1, 2, 3, 4, 5, 6, 7], now=0.0)
    due.changed(np.array([4]), now=50.0)
    assert due.take(8, LIVE, 100, now=50.0).tolist() == [4]
    assert due.take(8, LIVE, 3, now=120.0).tolist() == [0, 1, 2]  # a limit: oldest first
    assert due.take(8, LIVE, 100, now=120.0).tolist() == [3, 5, 6, 7]  # 4: written at 50


def test_renumbered_rows_keep_their_due_times_and_lists() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0, listed=[[2, 5]] * 8)
    due.changed(np.array([6]), now=1.0)
    keep = np.array([0, 1, 3, 4, 5, 6, 7])  # row 2 freed
    new_row = np.full(9, -1, np.int32)
    new_row[keep] = np.arange(7)
    due.keep_items(keep, new_row)
    assert due.listed[:7].tolist() == [[-1, 4]] * 7
    assert due.take(7, LIVE, 100, now=1.0).tolist() == [5]  # old row 6


def _engine(**settings) -> StreamEngine:
    engine = StreamEngine(Settings(k=3, n_factors=4, **settings))
    for j in range(3):
        engine.upsert_item(f"jazz{j}", {"jazz": 1.0})
    engine.upsert_item("rock", {"rock": 1.0})
    return engine


def _items(lists) -> dict[str, list[str]]:
    return {item: [r.item for r in recs] for item, recs in lists.items()}


def test_the_engine_lists_items_by_tags_then_by_ratings_together() -> None:
    engine = _engine(similar_every_s=30.0)
    now = time.time()
    first = _items(engine.similar_lists(now=now))
    assert first["jazz0"] == ["jazz1", "jazz2"] and first["rock"] == []
    assert engine.similar_lists(now=now) == {}
    # Users who rate rock right after jazz0: rock joins jazz0's list once it is due.
    engine.learn_ratings(
        [Rating(f"u{j}", "jazz0", 5.0, 1.0 + j) for j in range(3)]
        + [Rating(f"u{j}", "rock", 5.0, 10.0 + j) for j in range(3)]
    )
    rated_at = engine.similar.written_at[0]
    assert engine.similar_lists(now=rated_at + 29.0) == {}  # within every_s of its write
    lists = engine.similar_lists(now=rated_at + 31.0)
    assert set(lists) == {"jazz0", "rock"}
    assert _items(lists)["jazz0"] == ["rock", "jazz1", "jazz2"]  # (rated together: first)
    rock = next(r for r in lists["jazz0"] if r.item == "rock")
    assert rock.source == "co-occurrence" and rock.because == "jazz0"
    assert rock.reason == "rated together with jazz0"
    assert lists["rock"][0].item == "jazz0"


def test_a_deleted_item_leaves_the_lists_that_showed_it_at_the_next_take() -> None:
    engine = _engine()
    lists = _items(engine.similar_lists())
    assert "jazz1" in lists["jazz0"]
    engine.delete_item("jazz1")
    again = _items(engine.similar_lists())
    assert set(again) == {"jazz0", "jazz2"}  # not jazz1's, not rock's
    assert all("jazz1" not in listed for listed in again.values())


def test_after_rows_are_freed_the_lists_still_name_the_right_items() -> None:
    engine = _engine(compact_share=0.2)
    engine.similar_lists()
    engine.delete_item("jazz0")
    assert engine.compact_if_due() == 1
    assert set(_items(engine.similar_lists())) == {"jazz1", "jazz2"}
    engine.delete_item("jazz2")  # its row moved: the lists showing it must still be found
    assert _items(engine.similar_lists()) == {"jazz1": []}


def test_off_when_the_setting_is_zero_and_aged_lists_come_back() -> None:
    engine = _engine(similar_every_s=0.0)
    assert engine.similar_lists() == {}
    on = _engine()
    on.similar_lists(now=0.0)
    assert on.similar_lists(now=SIMILAR_MAX_AGE_S - 1) == {}
    assert len(on.similar_lists(now=SIMILAR_MAX_AGE_S + 1)) == 4


def test_a_snapshot_from_before_similar_lists_loads_with_every_list_due() -> None:
    import pickle

    engine = _engine()
    state = engine.__dict__.copy()
    del state["similar"]
    old = StreamEngine.__new__(StreamEngine)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert len(old.similar_lists()) == 4


def test_a_new_item_makes_due_the_lists_it_enters_and_those_that_show_it() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0, listed=[[5, -1]] * 5 + [[-1, -1]] * 3)
    due.floor[:8] = [0.9, 0.2, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    due.changed(np.array([6]), now=1.0)  # changed, scoring 0.3 against rows 0-3
    best = np.array([0.3, 0.3, 0.3, 0.3, 0.0, 0.0, 1.0, 0.0])
    taken = due.take(8, LIVE, 100, now=1.0, scores=lambda rows, among: best[among])
    assert taken.tolist() == [1, 2, 6]  # beats 0.2, and 0 (a short list); 6: its own
    due.changed(np.array([5]), now=2.0)  # its tags changed: every list showing it is due
    assert due.take(8, LIVE, 100, now=2.0).tolist() == [0, 1, 2, 3, 4, 5]


def test_the_engine_puts_a_new_item_into_the_lists_it_belongs_to_at_once() -> None:
    engine = _engine()
    engine.similar_lists()
    engine.upsert_item("jazz-new", {"jazz": 1.0})
    engine.upsert_item("metal", {"metal": 1.0})
    lists = _items(engine.similar_lists())
    assert set(lists) == {"jazz0", "jazz1", "jazz2", "jazz-new", "metal"}  # not rock's
    assert all("jazz-new" in lists[f"jazz{j}"] for j in range(3))


def test_within_a_limit_the_longest_due_go_first_whatever_their_rows() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0)
    for row, when in ((6, 1.0), (2, 2.0), (7, 3.0), (0, 4.0)):
        due.changed(np.array([row]), now=when)
    assert due.take(8, LIVE, 2, now=10.0).tolist() == [2, 6]
    assert due.take(8, LIVE, 2, now=10.0).tolist() == [0, 7]


def test_a_weak_new_item_leaves_full_lists_alone() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0)
    due.floor[:8] = 0.9  # full lists, their last place at 0.9
    due.changed(np.array([3]), now=1.0)
    best = np.full(8, 0.5)  # it scores 0.5 against everyone
    assert due.take(8, LIVE, 100, now=1.0, scores=lambda rows, among: best[among]).tolist() == [3]


def test_changes_waiting_to_be_scored_follow_renumbered_rows() -> None:
    due = SimilarDue(max_age_s=3600.0)
    written(due, list(range(8)), now=0.0)
    due.floor[:8] = 0.5
    due.changed(np.array([5]), now=1.0)
    due.take(8, LIVE, 1, now=1.0)  # takes 5; its entering is not checked without scores
    due.changed(np.array([6]), now=2.0)
    due._settle(2.0)  # (what the next take does first)
    keep = np.array([0, 1, 3, 4, 5, 6, 7])
    new_row = np.full(9, -1, np.int32)
    new_row[keep] = np.arange(7)
    due.keep_items(keep, new_row)
    seen: list[list[int]] = []

    def scores(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
        seen.append(rows.tolist())
        return np.zeros(len(among))

    due.take(7, LIVE, 100, now=3.0, scores=scores)
    assert seen == [[5]]  # old row 6


def test_a_bulk_import_is_checked_a_chunk_per_take() -> None:
    from streamer import similar

    due = SimilarDue(max_age_s=3600.0)
    n = similar.CHUNK * 2 + 10
    live = np.ones(n, bool)
    due.ensure(n)
    first = due.take(n, live, n, now=0.0)
    due.wrote(first, np.full((n, 1), -1, np.int32), np.zeros(n), now=0.0)
    due.changed(np.arange(n), now=1.0)
    sizes: list[int] = []

    def scores(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
        sizes.append(len(rows))
        return np.zeros(len(among))

    for _ in range(4):
        due.take(n, live, 0, now=1.0, scores=scores)
    assert sizes == [similar.CHUNK, similar.CHUNK, 10]


def test_an_item_whose_tags_change_enters_the_lists_it_co_occurs_in() -> None:
    engine = StreamEngine(Settings(k=2, n_factors=4, similar_every_s=300.0))
    for item, tag in (("X", "jazz"), ("A", "jazz"), ("B", "jazz"), ("Y", "rock")):
        engine.upsert_item(item, {tag: 1.0})
    ratings, t = [], 0.0
    # Shares of X's heaviest neighbour A: Y's a little above B's, by less than the
    # weight of a shared tag (SIMILAR_CONTENT_WEIGHT), which only B has at first.
    for other, times in (("Y", 11), ("A", 20), ("B", 10)):
        for j in range(times):
            ratings += [
                Rating(f"u{other}{j}", "X", 5.0, t + 1),
                Rating(f"u{other}{j}", other, 5.0, t + 2),
            ]
            t += 2
    engine.learn_ratings(ratings)
    assert [r.item for r in engine.similar_lists(now=1e9)["X"]] == ["A", "B"]
    engine.upsert_item("Y", {"jazz": 1.0})  # now a shared tag too: above B
    lists = engine.similar_lists(now=1e9 + 1)
    assert [r.item for r in lists["X"]] == ["A", "Y"]


def test_co_occurrence_another_worker_shared_makes_lists_due() -> None:
    engine = _engine(similar_every_s=30.0)
    engine.similar_clock = lambda: 110.0
    engine.similar_lists(now=100.0)
    engine.similar_moved(["jazz0", "unknown"])  # at 110: due 30 s after its write
    assert engine.similar_lists(now=129.0) == {}
    assert set(engine.similar_lists(now=131.0)) == {"jazz0"}


def test_deleted_items_keys_are_the_engines_to_remove_once_not_listed_again() -> None:
    engine = _engine()
    engine.similar_lists()
    engine.delete_item("jazz0")
    engine.delete_item("rock")
    engine.upsert_item("rock", {"rock": 1.0})  # listed again before the tick
    assert engine.similar_deleted() == ["jazz0"]
    # Queued until the worker says the key is gone (a stop or crash while Redis was away
    # lost it: the next start's catalog read found the item deleted and queued nothing).
    assert "jazz0" not in engine.similar_lists() and engine.similar_deleted() == ["jazz0"]
    restored = pickle.loads(pickle.dumps(engine))  # (a snapshot keeps it queued too)
    assert restored.similar_deleted() == ["jazz0"]
    engine.similar_removed(["jazz0"])
    assert engine.similar_deleted() == []


def test_when_every_content_vector_moves_every_list_falls_due_after_every_s() -> None:
    engine = _engine(similar_every_s=30.0)
    engine.similar_lists(now=100.0)
    assert engine.similar_lists(now=200.0) == {}
    engine.model.content.refresh()  # (tag weights recomputed over the catalog)
    assert engine.similar_lists(now=129.0) == {}
    assert len(engine.similar_lists(now=131.0)) == 4


def test_the_lists_are_tested_before_learning_against_the_popular_list() -> None:
    """A relevant rating counts a hit when its item is in the "more like this" list of
    the item its user rated just before (as written), and the same ratings are looked up
    in the popular list as served, the baseline."""
    engine = _engine()
    engine.similar_lists()  # jazz0: [jazz1, jazz2]; rock: []
    engine.popular()
    engine.learn_ratings([Rating("ann", "jazz0", 5.0, 1.0), Rating("bob", "rock", 5.0, 1.0)])
    assert engine.metrics()["similar_evaluated"] == 0  # nobody rated anything before
    engine.learn_ratings(
        [
            Rating("ann", "jazz2", 5.0, 2.0),  # in jazz0's list, second place
            Rating("bob", "jazz1", 5.0, 2.0),  # rock's list is empty: not counted
        ]
    )
    m = engine.metrics()
    assert m["similar_evaluated"] == 1 and m["similar_recall_at_k"] == 1.0
    assert abs(m["similar_ndcg_at_k"] - 1 / np.log2(3)) < 1e-9
    assert m["similar_recall_at_k_popular"] == float("jazz2" in engine.popular_served)
    engine.learn_ratings([Rating("ann", "rock", 4.0, 3.0)])  # not in jazz2's list
    assert engine.metrics()["similar_recall_at_k"] == 0.5


def test_with_a_shard_only_the_rows_held_are_taken_and_a_row_gained_is_due_at_once() -> None:
    due = SimilarDue(max_age_s=3600.0)
    mine = np.array([True, False] * 4)
    assert due.take(8, LIVE, 100, now=0.0, mine=mine).tolist() == [0, 2, 4, 6]
    due.wrote(np.array([0, 2, 4, 6]), np.full((4, 1), -1, np.int32), np.full(4, 0.5), 0.0)
    due.changed(np.array([1, 2]), now=1.0)
    best = np.ones(8)
    scored: list[list[int]] = []

    def scores(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
        scored.append(among.tolist())
        return best[among]

    assert due.take(8, LIVE, 100, now=1.0, scores=scores, mine=mine).tolist() == [0, 2, 4, 6]
    assert scored == [[0, 2, 4, 6]]  # (the lists it writes: those that a change may enter)
    # The partitions moved: rows 1 and 3 are its lists now, never written by it: at once.
    gained = np.array([False, True, False, True, False, False, False, False])
    assert due.take(8, LIVE, 100, now=2.0, mine=gained).tolist() == [1, 3]
    assert due.take(8, LIVE, 100, now=3.0, mine=gained).tolist() == []


def test_workers_share_the_lists_by_partition_each_list_written_by_one() -> None:
    engines = [_engine(), _engine()]
    names = ["jazz0", "jazz1", "jazz2", "rock"]
    count = 4
    held = [{0, 1}, {2, 3}]
    lists = [e.similar_lists(shard=(h, count)) for e, h in zip(engines, held, strict=True)]
    assert set(lists[0]).isdisjoint(lists[1])
    assert set(lists[0]) | set(lists[1]) == set(names)
    for part, h in zip(lists, held, strict=True):
        assert all(p in h for p in shard_of(list(part), count).tolist())
    assert [e.similar_owned() for e in engines] == [len(lists[0]), len(lists[1])]
    assert _engine().similar_owned() == 4  # a worker alone writes every list
    # The first worker takes every partition over (the other one stopped): it writes
    # the other's lists now, and only those.
    taken_over = engines[0].similar_lists(shard=({0, 1, 2, 3}, count))
    assert set(taken_over) == set(lists[1])
    assert engines[0].similar_owned() == 4


def test_a_worker_scores_only_the_lists_it_writes() -> None:
    engine = _engine()
    engine.similar_lists(shard=({0, 1, 2, 3}, 4))  # every list, once
    engine.similar_lists(shard=({1}, 4))  # then it holds one partition: jazz0's and jazz2's
    assert shard_of(["jazz0", "jazz1"], 4).tolist() == [1, 3]
    engine.learn_ratings([Rating("u1", "jazz0", 5.0, 1.0), Rating("u2", "jazz1", 5.0, 1.0)])
    # Each rates an item in the list of their previous one, as this worker wrote them;
    # jazz1's list is another worker's now: its rating is that worker's to test.
    engine.learn_ratings([Rating("u1", "jazz1", 5.0, 2.0), Rating("u2", "jazz0", 5.0, 2.0)])
    assert engine.metrics()["similar_evaluated"] == 1


def test_a_snapshot_from_before_shards_loads_and_hashes_its_items() -> None:
    import pickle

    engine = _engine()
    engine.similar_lists()
    del engine.similar.__dict__["key"], engine.similar.__dict__["mine"]
    old = pickle.loads(pickle.dumps(engine))
    assert old.similar.mine is None and len(old.similar.key) == 0
    old.similar_lists(now=time.time() + 2 * SIMILAR_MAX_AGE_S, shard=({0, 1, 2, 3}, 4))
    assert (old.similar.key[:4] == item_keys(["jazz0", "jazz1", "jazz2", "rock"])).all()


def test_a_list_lost_then_gained_again_is_written_at_once_another_worker_wrote_it() -> None:
    due = SimilarDue(max_age_s=3600.0)
    every = np.ones(8, bool)
    taken = due.take(8, LIVE, 100, now=0.0, mine=every)
    due.wrote(taken, np.array([[1, 2]] * 8, np.int32), np.zeros(8), 0.0)
    assert due.take(8, LIVE, 100, now=1.0, mine=every).tolist() == []  # (still its own)
    evens = np.array([True, False] * 4)
    assert due.take(8, LIVE, 100, now=2.0, mine=evens).tolist() == []
    assert due.listed[1].tolist() == [-1, -1]  # the odd rows' lists are another's now
    # Back (the other worker stopped): the lists it wrote at 0 s were written over since.
    assert due.take(8, LIVE, 100, now=3.0, mine=every).tolist() == [1, 3, 5, 7]


def test_a_restored_worker_writes_the_lists_it_holds_again() -> None:
    import pickle

    engine = _engine()
    shard = ({0, 1, 2, 3}, 4)
    assert len(engine.similar_lists(shard=shard)) == 4
    assert engine.similar_lists(shard=shard) == {}
    # Its snapshot, restored: another worker may have written its lists meanwhile.
    restored = pickle.loads(pickle.dumps(engine))
    assert len(restored.similar_lists(shard=shard)) == 4
    assert restored.similar_lists(shard=shard) == {}
    # Alone (no shard), a restored worker keeps what it wrote.
    alone = _engine()
    alone.similar_lists()
    assert pickle.loads(pickle.dumps(alone)).similar_lists() == {}


def test_freed_rows_keep_which_lists_are_this_workers() -> None:
    engine = _engine(compact_share=0.2)
    shard = ({1}, 4)  # jazz0 and jazz2 (see shard_of)
    assert set(engine.similar_lists(shard=shard)) == {"jazz0", "jazz2"}
    engine.delete_item("jazz1")
    assert engine.compact_if_due() == 1  # (jazz2's row moves down)
    assert engine.similar_owned() == 2
    # The lists that showed jazz1 are written again, and only those.
    assert set(engine.similar_lists(shard=shard)) == {"jazz0", "jazz2"}
    assert engine.similar_lists(shard=shard) == {}


def test_the_workers_content_weight_comes_from_its_settings() -> None:
    settings = Settings.from_env({"RECSYS_SIMILAR_CONTENT_WEIGHT": "0.5"})
    assert StreamEngine(settings).model.config.similar_content_weight == 0.5


def test_past_content_dim_tags_a_new_item_sharing_a_tag_enters_lists_its_hash_hides() -> None:
    """Tag rows 71 and 135 land in one content column with opposite signs: x's hashed
    vector points away from n's though both carry "a" (cosine -0.66). The bound that
    decides which lists a new item may enter read those vectors, so x's list never fell
    due; it reads the tags themselves, as the lists' scores do."""
    engine = StreamEngine(Settings(k=3, n_factors=4, similar_every_s=300.0))
    for j in range(71):
        engine.upsert_item(f"f{j}", {f"own{j}": 1.0})
    engine.upsert_item("pre", {"a": 1.0})
    for j in range(63):
        engine.upsert_item(f"g{j}", {f"gown{j}": 1.0})
    engine.upsert_item("x", {"a": 1.0, "b": 1.0})
    model = engine.model
    assert (model.tags.index.get("a"), model.tags.index.get("b")) == (71, 135)
    while engine.similar_lists(now=1.0):
        pass
    engine.upsert_item("n", {"a": 1.0, "d": 1.0})
    x, n = model.items.get("x"), model.items.get("n")
    assert float(model.content.C[x] @ model.content.C[n]) < 0
    written: dict[str, list[str]] = {}
    while lists := engine.similar_lists(now=1.0):
        written.update(_items(lists))
    assert written.get("x") == ["pre", "n"] == [r.item for r in model.similar_items("x", 3)]


def test_lists_are_written_again_before_their_ttl_ends() -> None:
    """A list no rating moved was written again at the hour whatever the TTL: with
    ``RECSYS_RECS_TTL_S=600`` it was missing 50 minutes of every hour. Due at 90% of a
    TTL under an hour, also for an engine restored with another TTL."""
    engine = StreamEngine(Settings(recs_ttl_s=600, n_factors=4))
    assert engine.similar.max_age_s == 540.0
    for item in ("a", "b"):
        engine.upsert_item(item, {"jazz": 1.0})
    engine.similar.changed(np.array([0, 1]), now=0.0)
    taken = engine.similar.take(2, np.ones(2, bool), 10, now=0.0)
    engine.similar.wrote(taken, np.array([[1], [0]]), np.zeros(2, np.float32), 0.0)
    assert not len(engine.similar.take(2, np.ones(2, bool), 10, now=539.0))
    assert engine.similar.take(2, np.ones(2, bool), 10, now=540.0).tolist() == [0, 1]
    engine.adopt(Settings(n_factors=4))  # restored under the default week: the hour
    assert engine.similar.max_age_s == 3600.0
