"""The item changes workers exchange: the wire format and the worker's use of it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from recsys_online.recommender import Recommender
from recsys_online.sharing import ItemChanges
from streamer.app import RecsysWorker
from streamer.item_changes import decode_item_changes, encode_item_changes
from streamer.settings import Settings

K = 32


def learned_changes(n_items: int = 40, n_ratings: int = 400) -> tuple[Recommender, ItemChanges]:
    rng = np.random.default_rng(1)
    model = Recommender()
    items = [f"item-é-{j}" for j in range(n_items)]
    model.upsert_items(items, [{f"tag{j % 7}": 1.0, f"g{j % 3}": 2.0} for j in range(n_items)])
    model.track_item_changes()
    for n in range(n_ratings):
        user = f"u{rng.integers(30)}"
        model.learn_many([user], [items[rng.integers(n_items)]], [4.0], [1.7e9 + n])
    return model, model.take_item_changes()


def fresh_copy(n_items: int = 40) -> Recommender:
    model = Recommender()
    items = [f"item-é-{j}" for j in range(n_items)]
    model.upsert_items(items, [{f"tag{j % 7}": 1.0, f"g{j % 3}": 2.0} for j in range(n_items)])
    return model


@pytest.mark.parametrize("limit", [600_000, 700])
def test_changes_cut_into_messages_apply_as_the_changes_themselves(limit: int) -> None:
    """Every part survives the wire, whole or cut into many small messages: a model fed
    the decoded messages ends up exactly where one fed the changes directly does."""
    _, changes = learned_changes()
    assert changes.items and changes.tags and changes.rated and len(changes.pair_w)
    messages = encode_item_changes("w1", [3], changes, limit)
    assert (len(messages) == 4) == (limit == 600_000)
    direct, wired = fresh_copy(), fresh_copy()
    assert direct.apply_item_changes(changes) == len(changes)
    applied = 0
    for raw in messages:
        worker, _, part = decode_item_changes(raw, K)
        assert worker == "w1"
        applied += wired.apply_item_changes(part)
    assert applied == len(changes)
    np.testing.assert_array_equal(wired.mf.V, direct.mf.V)
    np.testing.assert_array_equal(wired.mf.E, direct.mf.E)
    np.testing.assert_array_equal(wired.popularity.log_mass, direct.popularity.log_mass)
    for row in range(40):  # (40 items: no neighbour list overflows, so order is moot)
        ours = dict(zip(wired.cooc.nbr[row].tolist(), wired.cooc.weight[row].tolist(), strict=True))
        theirs = dict(
            zip(direct.cooc.nbr[row].tolist(), direct.cooc.weight[row].tolist(), strict=True)
        )
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_item_changes_from_anywhere_are_checked_before_they_touch_the_model() -> None:
    """The topic can hold anything a foreign producer or a worker with other settings
    put there: each such message is a ValueError (logged, skipped), never an exception
    that stops the worker, NaN in the model or an index out of range."""
    _, changes = learned_changes()
    good = {
        json.loads(raw.partition(b"\n")[0])["part"]: raw
        for raw in encode_item_changes("w", [0, 1], changes)
    }
    assert sorted(good) == ["items", "pairs", "popular", "tags"]

    def with_header(raw: bytes, **change) -> bytes:
        head, _, body = raw.partition(b"\n")
        return json.dumps({**json.loads(head), **change}).encode() + b"\n" + body

    def with_value(raw: bytes, at: int, dtype: str, value) -> bytes:
        head, _, body = raw.partition(b"\n")
        array = np.frombuffer(body, np.uint8).copy()
        array[at : at + np.dtype(dtype).itemsize] = np.frombuffer(
            np.array([value], dtype).tobytes(), np.uint8
        )
        return head + b"\n" + array.tobytes()

    n_pairs = json.loads(good["pairs"].partition(b"\n")[0])["n"]
    n_rated = len(changes.rated)
    bad = {
        "no value": None,
        "not json": b"not json\n",
        "an old message": b'{"worker": "w", "items": ["a"], "k": 4}\n' + bytes(20),
        "an unknown part": with_header(good["items"], part="users"),
        "ids not strings": with_header(good["items"], ids=[["a"]] * len(changes.items)),
        "k not an int": with_header(good["items"], k=1e400),
        "a body cut short": good["tags"][:-1],
        "no body": good["items"].partition(b"\n")[0],
        "a NaN vector": with_value(good["items"], 0, "<f4", np.nan),
        "an infinite mass": with_value(good["popular"], 8 * (n_rated - 1), "<f8", np.inf),
        "a mass cut short": good["popular"][:-8],
        "now not finite": with_header(good["popular"], now="soon"),
        "a pair naming no id": with_value(good["pairs"], 0, "<i4", 10**6),
        "a negative pair index": with_value(good["pairs"], 4, "<i4", -1),
        "a negative weight": with_value(good["pairs"], 8 * n_pairs, "<f4", -0.5),
        "n not matching": with_header(good["pairs"], n=n_pairs + 1),
        "no partitions": with_header(good["items"], partitions=None),
        "a negative partition": with_header(good["items"], partitions=[-1]),
        "a partition not an integer": with_header(good["items"], partitions=[1.5]),
        # (each stopped every worker at once, or left the model at NaN or a clock in the
        # year 10^292 for good)
        "a header nested 1,000 deep": b"[" * 1001 + b"\n",
        "a huge vector change": with_value(good["items"], 0, "<f4", 3e38),
        "a huge pair weight": with_value(good["pairs"], 8 * n_pairs, "<f4", 1e30),
        "a clock in the far future": with_header(good["popular"], now=1e300),
    }
    for what, raw in bad.items():
        with pytest.raises(ValueError):
            decode_item_changes(raw, K)
            pytest.fail(f"{what} was accepted")
    with pytest.raises(ValueError, match="this model has 8"):
        decode_item_changes(good["items"], 8)


async def test_shared_item_changes_stay_under_the_producers_message_limit() -> None:
    """Long item ids (up to 128 characters) and more factors make bigger entries:
    messages are cut by bytes, so none reaches Kafka's 1 MB limit, for every part, ids
    with quotes and backslashes (escaped in JSON: twice their bytes) included."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    n, k = 12_000, 64
    escaped = "\\" * 120 + '"' * 3  # (schemas take both in ids)
    items = [f"{escaped}{j:05d}" for j in range(n)]
    sizes: list[int] = []

    class Topic:
        async def send(self, key: bytes, value: bytes) -> None:
            sizes.append(len(value))

    rng = np.random.default_rng(0)
    big = ItemChanges(
        items=items,
        dv=np.zeros((n, k), np.float32),
        db=np.zeros(n, np.float32),
        tags=items,
        de=np.zeros((n, k), np.float32),
        dtb=np.zeros(n, np.float32),
        rated=items,
        mass=np.ones(n),
        now=1.0,
        pair_items=items,
        pair_a=rng.integers(0, n, 200_000).astype(np.int32),
        pair_b=rng.integers(0, n, 200_000).astype(np.int32),
        pair_w=np.ones(200_000, np.float32),
    )
    worker.item_changes = Topic()
    worker.engine.model.take_item_changes = lambda: big
    await worker.share_items()
    assert worker.items_shared == len(big) and len(sizes) > 4
    assert max(sizes) < 1_000_000


async def test_changes_from_partitions_this_worker_learns_are_never_counted_twice(
    monkeypatch,
) -> None:
    """A worker skips another's changes learned from ratings partitions it learns
    itself (in flight across a rebalance), and rebuilds its model before replaying a
    partition whose ratings already reached it through shared changes (a snapshot keeps
    which): either way, no rating's co-occurrence or popularity is added twice."""
    settings = Settings(ratings_topic="r", items_topic="i", users_topic="u")
    worker = RecsysWorker(settings)
    worker.catalog.ready.set()
    _, changes = learned_changes()
    worker.engine.model = fresh_copy()
    assigned = {0, 1}
    monkeypatch.setattr(RecsysWorker, "_assigned", lambda self: set(assigned))
    worker._replayed = {0, 1}

    [raw] = [m for m in encode_item_changes("other", [1, 2], changes) if b'"items"' in m[:300]]
    worker._add_in_item_changes(raw, 0)  # partition 1 is ours: skipped
    assert worker.items_skipped == len(changes.items) and worker.items_received == 0
    for raw in encode_item_changes("other", [2, 3], changes):
        worker._add_in_item_changes(raw, 1)
    assert worker.items_received == len(changes) and worker.engine.shared_from == {2, 3}
    pairs = worker.engine.model.cooc.weight.copy()
    assert pairs.sum() > 0
    for raw in encode_item_changes(worker.worker_id, [5], changes):  # its own: ignored
        worker._add_in_item_changes(raw, 2)
    np.testing.assert_array_equal(worker.engine.model.cooc.weight, pairs)

    assigned.add(3)  # a rebalance gives us partition 3, whose changes are in the model
    worker.engine = pickle.loads(pickle.dumps(worker.engine))  # (as a snapshot keeps it)
    old = worker.engine
    await worker._reset_if_pending()
    assert worker.engine is not old and worker.engine.shared_from == set()
    assert worker.engine.model.cooc.weight.sum() == 0  # replays start from an empty model

    assigned.add(4)  # a partition never shared: replayed into the model as it is
    worker._replayed = {0, 1, 3}
    current = worker.engine
    await worker._reset_if_pending()
    assert worker.engine is current


def test_two_workers_never_share_an_id() -> None:
    """Containers with the host's network share its name and each run as pid 1: the
    id's token keeps two such workers from taking each other's changes for their own."""
    import os
    import re
    import socket

    a, b = (
        RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u")) for _ in "ab"
    )
    assert a.worker_id != b.worker_id
    pattern = rf"{re.escape(socket.gethostname())}:{os.getpid()}-[0-9a-f]{{6}}"
    assert re.fullmatch(pattern, a.worker_id)


def test_a_foreign_message_never_stops_the_worker_nor_spoils_popularity() -> None:
    """Whatever a message holds, adding it in logs and skips it: a popularity mass
    beyond its own clock (a log-sum past e^60 ratings at ``now``) is not added."""
    settings = Settings(ratings_topic="r", items_topic="i", users_topic="u")
    worker = RecsysWorker(settings)
    worker.engine.model = fresh_copy()
    _, changes = learned_changes()
    [raw] = [m for m in encode_item_changes("other", [7], changes) if b'"popular"' in m[:300]]
    head, _, body = raw.partition(b"\n")
    mass = np.frombuffer(body, "<f8").copy()
    mass[0] = json.loads(head)["now"] * worker.engine.model.popularity.log_rate + 500.0
    before = worker.engine.model.popularity.log_mass.copy()
    worker._add_in_item_changes(head + b"\n" + mass.tobytes(), 3)
    worker._add_in_item_changes(b"[" * 5000 + b"\n", 4)
    np.testing.assert_array_equal(worker.engine.model.popularity.log_mass, before)
    assert worker.items_received == 0
