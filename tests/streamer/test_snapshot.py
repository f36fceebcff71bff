"""Snapshot files: what is kept, which one a restarting worker may use, and that a loaded
model goes on exactly as the one that was saved."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from recsys_online import synth
from streamer import snapshot as snapshot_module
from streamer.engine import StreamEngine
from streamer.settings import Settings
from streamer.snapshot import KEEP, STALE_S, SnapshotStore


def small_engine(n_ratings: int = 600) -> tuple[StreamEngine, list]:
    ds = synth.generate(n_users=60, n_items=120, n_ratings=n_ratings + 200, seed=3)
    engine = StreamEngine(Settings(n_factors=8))
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    for lo in range(0, n_ratings, 100):
        engine.learn_ratings(ds.ratings[lo : lo + 100])
    return engine, ds.ratings[n_ratings:]


def test_a_loaded_engine_learns_and_ranks_as_the_saved_one(tmp_path) -> None:
    engine, rest = small_engine()
    store = SnapshotStore(tmp_path)
    fingerprint = engine.settings.model_fingerprint()
    store.save(engine, {0: 300, 1: 300}, fingerprint)
    [snapshot] = store.list()
    assert snapshot.offsets == {0: 300, 1: 300} and snapshot.fingerprint == fingerprint
    loaded = store.load(snapshot)
    assert loaded.events == engine.events == 600
    lists_a = engine.learn_ratings(rest)
    lists_b = loaded.learn_ratings(rest)
    assert {u: [r.item for r in recs] for u, recs in lists_a.items()} == {
        u: [r.item for r in recs] for u, recs in lists_b.items()
    }
    assert loaded.metrics()["rmse"] == engine.metrics()["rmse"]


def test_only_the_newest_snapshots_of_a_partition_set_are_kept(tmp_path) -> None:
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fingerprint = engine.settings.model_fingerprint()
    for n in range(KEEP + 2):
        store.save(engine, {0: n, 1: n}, fingerprint)
        time.sleep(0.002)
    store.save(engine, {2: 7}, fingerprint)  # another worker's partitions: kept apart
    offsets = [s.offsets for s in store.list()]
    assert offsets == [{2: 7}] + [{0: n, 1: n} for n in reversed(range(2, KEEP + 2))]


def test_a_new_snapshot_is_on_disk_for_good_before_older_ones_go(tmp_path, monkeypatch) -> None:
    """The file's bytes and then its directory's entry are synced before any older
    snapshot is deleted: after a power loss, the newest snapshot named is there."""
    import os
    import stat

    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fingerprint = engine.settings.model_fingerprint()
    for n in range(KEEP):
        store.save(engine, {0: n}, fingerprint)
        time.sleep(0.002)
    done: list[str] = []
    fsync, unlink = os.fsync, type(tmp_path).unlink

    def synced(fd: int) -> None:
        done.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    def removed(path, missing_ok=False) -> None:
        done.append("older removed")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(snapshot_module.os, "fsync", synced)
    monkeypatch.setattr(type(tmp_path), "unlink", removed)
    store.save(engine, {0: KEEP}, fingerprint)
    assert done == ["file", "directory", "older removed"]


def test_snapshots_made_faster_than_commits_keep_one_usable(tmp_path) -> None:
    """Snapshots every second, commits every few: the newest ones are all ahead of the
    commits, so the newest one within them is kept too (a worker killed now restores)."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    for n in range(6):
        store.write(store.dumps(engine, {0: n * 10}, fp), {0: n * 10}, committed={0: 25})
        time.sleep(0.002)
    kept = [s.offsets[0] for s in store.list()]
    assert kept == [50, 40, 20]
    assert store.best(fp, {0}, {0: 25}).offsets == {0: 20}
    # When one of the newest is usable, nothing older is kept.
    store.write(store.dumps(engine, {0: 60}, fp), {0: 60}, committed={0: 55})
    assert [s.offsets[0] for s in store.list()] == [60, 50]


def test_the_best_snapshot_is_usable_and_covers_the_most_partitions(tmp_path) -> None:
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    store.save(engine, {0: 50}, fp)
    store.save(engine, {0: 40, 1: 40}, fp)
    store.save(engine, {0: 90, 1: 90}, fp)  # newest, but past the committed offsets
    committed = {0: 60, 1: 60}
    assert store.best(fp, {0, 1}, committed).offsets == {0: 40, 1: 40}
    assert store.best(fp, {0}, committed).offsets == {0: 50}  # partition 1 is not ours
    other = Settings(n_factors=16).model_fingerprint()
    assert store.best(other, {0, 1}, committed) is None  # made under other settings
    # Made from other topics: the catalog read again would leave that catalog's items
    # listed, and the dead letters of another topic skip other records in a replay.
    for topic in ("items_topic", "users_topic", "deadletter_topic"):
        moved = replace(engine.settings, **{topic: "elsewhere"}).model_fingerprint()
        assert store.best(moved, {0, 1}, committed) is None, topic
    # Which settings keep them from use is said (a start replaying the whole log after an
    # upgrade that added a setting to the fingerprint gave no reason).
    assert store.unlike(fp) == (0, [])
    assert store.unlike(other) == (3, ["n_factors"])
    older = {k: v for k, v in fp.items() if k != "users_topic"}
    assert store.unlike({**older, "n_factors": 16}) == (3, ["n_factors", "users_topic"])
    assert store.best(fp, {0, 1}, {}) is None  # nothing committed yet


def test_unreadable_files_are_skipped(tmp_path) -> None:
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    store.save(engine, {0: 5}, engine.settings.model_fingerprint())
    (tmp_path / "snapshot-p0-1.pkl").write_bytes(b"not a pickle")
    (tmp_path / "snapshot-p0-2.pkl").write_bytes(b"")
    assert [s.offsets for s in store.list()] == [{0: 5}]


def test_a_set_whose_name_extends_another_is_not_pruned_with_it(tmp_path) -> None:
    """Partitions {1} and {1, 2}: writing one set's snapshots never deletes the other's
    (nor the one just written)."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    store.save(engine, {1: 5, 2: 5}, fp)
    for n in range(KEEP + 1):
        written = store.save(engine, {1: 10 + n}, fp)
        assert written.exists()
        time.sleep(0.002)
    assert store.best(fp, {1}, {1: 99}).offsets == {1: 10 + KEEP}
    assert store.best(fp, {1, 2}, {1: 99, 2: 99}).offsets == {1: 5, 2: 5}


def test_stale_sets_and_leftover_temporary_files_are_deleted(tmp_path, monkeypatch) -> None:
    """A set of partitions no worker has written for STALE_S (owned before a
    rebalance), and the temporary file of a failed write, do not stay on disk."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    six = store.save(engine, {6: 1}, fp)
    seven = store.save(engine, {7: 1}, fp)
    day_ago = time.time() - STALE_S - 1
    for path in (six, seven):
        os.utime(path, (day_ago, day_ago))
    store.save(engine, {7: 2}, fp)  # {6} is stale now; {7} is this worker's
    assert sorted(s.offsets[7] for s in store.list() if 7 in s.offsets) == [1, 2]
    assert not [s for s in store.list() if 6 in s.offsets]

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module.os, "fsync", full_disk)
    with pytest.raises(OSError):
        store.save(engine, {7: 3}, fp)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_set_kept_current_is_not_stale_for_another_worker_sharing_the_folder(
    tmp_path,
) -> None:
    """A worker whose partitions saw no rating for a day writes no new snapshot; it
    marks its newest one current instead, and another worker writing to the same
    folder keeps it (it was deleted as a set nobody owns, and the next restart replayed
    the whole log)."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    idle = store.save(engine, {4: 1, 5: 1}, fp)
    day_ago = time.time() - STALE_S - 1
    os.utime(idle, (day_ago, day_ago))
    store.keep({4, 5})  # (the idle worker: nothing new to save)
    store.save(engine, {0: 1, 1: 1}, fp)  # the other worker's
    assert idle.exists()
    os.utime(idle, (day_ago, day_ago))  # nobody marked it: gone at the next write
    store.save(engine, {0: 2, 1: 2}, fp)
    assert not idle.exists()


def test_a_worker_with_many_partitions_writes_and_keeps_its_snapshots(tmp_path) -> None:
    """A file name holds 255 bytes: 128 partitions named one by one (400 characters)
    could never be written. Runs, or a hash past 160 characters, name the set; each set
    still keeps its newest two."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    every, scattered = set(range(128)), set(range(0, 1024, 2))
    for n in (1, 2, 3):
        store.save(engine, dict.fromkeys(every, n), fp)
        store.save(engine, dict.fromkeys(scattered, n), fp)
    names = sorted(path.name for path in tmp_path.glob("*.pkl"))
    assert len(names) == 4 and max(map(len, names)) < 100
    kept = sorted((len(s.offsets), s.offsets[0]) for s in store.list())
    assert kept == [(128, 2), (128, 3), (512, 2), (512, 3)]
    usable = store.best(fp, every | {200}, dict.fromkeys(every, 3))
    assert usable is not None and usable.offsets == dict.fromkeys(every, 3)


def test_a_written_snapshot_is_not_reported_failed_when_an_old_one_cannot_go(
    tmp_path, monkeypatch
) -> None:
    """Deleting an old snapshot may fail (a shared volume, another user's file): the
    new one is written, and saving says so."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    first = store.save(engine, {0: 1}, fp)
    store.save(engine, {0: 2}, fp)
    unlink = Path.unlink

    def refused(self, missing_ok=False):
        if self == first:
            raise PermissionError(13, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    third = store.save(engine, {0: 3}, fp)  # (first is past the newest two: refused)
    assert third.exists() and first.exists()
    assert store.best(fp, {0}, {0: 3}).offsets == {0: 3}


def test_a_damaged_header_is_skipped_not_raised(tmp_path) -> None:
    """Any damage to a file (here its header's keys and sizes altered) must never stop a
    worker looking for a snapshot."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    good = store.save(engine, {0: 5}, fp)
    data = good.read_bytes()
    (tmp_path / "snapshot-p0_1.pkl").write_bytes(data.replace(b"offsets", b"offsetz", 1))
    (tmp_path / "snapshot-p0_2.pkl").write_bytes(data[:2] + b"\xff\xff\xff\x7f" + data[6:])
    assert [s.path for s in store.list()] == [good]
    assert store.best(fp, {0}, {0: 9}).path == good


def test_snapshot_interval_is_a_setting() -> None:
    assert Settings.from_env({"RECSYS_SNAPSHOT_EVERY_S": "0"}).snapshot_every_s == 0.0
    with pytest.raises(ValueError, match="RECSYS_SNAPSHOT_EVERY_S"):
        Settings.from_env({"RECSYS_SNAPSHOT_EVERY_S": "often"})


def test_a_snapshot_whose_model_is_damaged_leaves_the_next_one_to_try(tmp_path) -> None:
    """A file whose header reads but whose model part is cut short is still listed (only
    loading it tells); the worker then tries the next candidate, not the whole log."""
    engine, _ = small_engine(100)
    store = SnapshotStore(tmp_path)
    fp = engine.settings.model_fingerprint()
    older = store.save(engine, {0: 4}, fp)
    time.sleep(0.002)
    newer = store.save(engine, {0: 5}, fp)
    newer.write_bytes(newer.read_bytes()[:-1000])
    first, second = store.candidates(fp, {0}, {0: 9})
    assert (first.path, second.path) == (newer, older)
    with pytest.raises(Exception):  # noqa: B017 (unpickling cut bytes raises what it may)
        store.load(first)
    assert store.load(second).events == engine.events


def test_a_snapshot_of_an_older_layout_is_refused_at_load_not_at_the_first_batch(
    tmp_path,
) -> None:
    """Snapshots written by older code unpickled, then stopped the worker at its first
    batch ('ErrorScore' object has no attribute 'n'), at every restart. Loaded with an
    empty engine to compare, one lacking an attribute is refused (the next snapshot, or
    the log, is used); a snapshot of this code loads."""
    from streamer.app import _fresh_engine

    engine, _ = small_engine(200)
    store = SnapshotStore(tmp_path)
    store.save(engine, {0: 100}, engine.settings.model_fingerprint())
    [current] = store.list()
    assert store.load(current, _fresh_engine).events == 200
    del engine.errors.__dict__["n"]  # (as ErrorScore was pickled before it counted)
    del engine.similar.__dict__["to_score"]
    time.sleep(0.01)
    store.save(engine, {0: 100}, engine.settings.model_fingerprint())
    older = store.list()[0]
    assert older.created > current.created
    with pytest.raises(ValueError, match=r"an older layout, without errors\.n, similar\.to_score"):
        store.load(older, _fresh_engine)


def test_a_snapshot_without_a_field_its_class_defaults_is_not_refused(tmp_path) -> None:
    """A config field added with a default (read through the class) is no gap: such
    snapshots load and work, and refusing them replayed the whole log at an upgrade."""
    from streamer.app import _fresh_engine

    engine, _ = small_engine(200)
    del engine.model.config.__dict__["similar_content_weight"]  # (as pickled before it)
    store = SnapshotStore(tmp_path)
    store.save(engine, {0: 100}, engine.settings.model_fingerprint())
    [snapshot] = store.list()
    assert store.load(snapshot, _fresh_engine).model.config.similar_content_weight >= 0


def test_a_snapshot_holds_no_secret_and_only_its_owner_reads_it(tmp_path) -> None:
    """The engine kept the whole settings: the Kafka password and the Redis URL's
    credentials were in every snapshot, readable by any user (0644 under umask 022)."""
    engine, _ = small_engine(200)
    engine.settings = replace(
        engine.settings,
        kafka_sasl_username="KUSER",
        kafka_sasl_password="hunter2-SECRET",
        redis_url="rediss://ruser:redispw@h:6379/0?ssl_password=keypass",
    )
    store = SnapshotStore(tmp_path)
    path = store.save(engine, {0: 10}, engine.settings.model_fingerprint())
    data = path.read_bytes()
    for secret in (b"KUSER", b"hunter2-SECRET", b"ruser", b"redispw", b"keypass"):
        assert secret not in data, secret
    assert path.stat().st_mode & 0o077 == 0
    loaded = store.load(store.list()[0])
    assert loaded.settings.redis_url == Settings().redis_url and loaded.events == engine.events


def test_a_writer_whose_clock_is_behind_keeps_the_snapshot_it_wrote(tmp_path, monkeypatch) -> None:
    """Files are named by the writer's clock: a machine behind another that shares the
    directory named its new snapshot older than the others' and deleted it at once; a
    restart then took the older one. The one just written stays."""
    engine, _ = small_engine(200)
    fingerprint = engine.settings.model_fingerprint()
    store = SnapshotStore(tmp_path)
    ahead = time.time_ns() + 600 * 10**9
    for n, offset in enumerate((5, 6)):
        monkeypatch.setattr(snapshot_module.time, "time_ns", lambda n=n: ahead + n)
        store.save(engine, {0: offset, 1: offset}, fingerprint)
    monkeypatch.undo()
    path = store.save(engine, {0: 100, 1: 100}, fingerprint)  # (this machine: 10 min behind)
    assert path.exists()
    best = store.best(fingerprint, {0, 1}, {0: 1000, 1: 1000})
    assert best is not None and best.offsets == {0: 100, 1: 100}
    for offset in (200, 300):
        assert store.save(engine, {0: offset, 1: offset}, fingerprint).exists()
