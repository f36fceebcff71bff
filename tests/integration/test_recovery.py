"""Crash recovery and scale-out: workers killed with SIGKILL, against the real services."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer
from own_services import free_port
from polling import wait_until

from recsys_online import synth
from recsys_online.events import Rating
from recsys_online.recommender import Recommender, RecommenderConfig
from schemas import ItemEvent, RatingEvent, UserEvent
from streamer.app import ensure_topics
from streamer.metrics import numeric_figures as numeric
from streamer.process import clear_run, isolated_env, start_worker, stop_process
from streamer.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]


class Run:
    """One isolated set of topics and keys, and the worker processes started on it."""

    def __init__(self, kafka: str, redis_url: str, log_dir: Path, **extra: str) -> None:
        self.env = isolated_env(
            "test",
            KAFKA_BOOTSTRAP_SERVERS=kafka,
            REDIS_URL=redis_url,
            RECSYS_PARTITIONS="4",
            RECSYS_REFRESH_EVERY_S="0.3",
            RECSYS_SESSION_TIMEOUT_S="6",
            RECSYS_BATCH_MAX="200",
            RECSYS_DATA_DIR=str(log_dir / "data"),
            **extra,
        )
        self.prefix = self.env["RECSYS_KEY_PREFIX"]
        self.ratings_topic = self.env["RECSYS_RATINGS_TOPIC"]
        self.items_topic = self.env["RECSYS_ITEMS_TOPIC"]
        self.redis = redis.Redis.from_url(redis_url)
        self.log_dir = log_dir
        # Topics first, with the stated partition counts (as `recsys-online worker` does).
        asyncio.run(ensure_topics(Settings.from_env(self.env)))
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, **env: str) -> subprocess.Popen:
        """A worker of this run (``env``: settings of its own, e.g. another machine's
        ``RECSYS_DATA_DIR``)."""
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        process = start_worker({**self.env, **env}, log)
        self.workers.append(process)
        return process

    def restart_and_settle(self, n: int, **env: str) -> tuple[subprocess.Popen, dict[str, float]]:
        """Start a worker, wait until it accounts for ``n`` ratings, then a little longer
        (a rating learned twice would show by then); its process and final figures."""
        process = self.start_worker(**env)
        self.wait(
            "the restarted worker to account for every rating",
            lambda: self.worker_metrics(process).get("events", 0) >= n,
            timeout=180,
        )
        time.sleep(1.5)  # nothing more may arrive: a duplicate would show up now
        return process, self.worker_metrics(process)

    def holds(self, process: subprocess.Popen, n: int) -> bool:
        """The worker's model holds exactly ``n`` ratings, with no lag."""
        figures = self.worker_metrics(process)
        return figures.get("events", 0) == n and figures.get("lag", 1) == 0

    def shared_between(self, a: subprocess.Popen, b: subprocess.Popen, n: int):
        """Both workers' figures when together they hold ``n`` ratings and each holds
        some (they share the partitions), else None."""
        ma, mb = self.worker_metrics(a), self.worker_metrics(b)
        if ma and mb and ma["events"] + mb["events"] == n and min(ma["events"], mb["events"]):
            return ma, mb
        return None

    def fleet(self) -> dict[str, float]:
        """The shared metrics hash: every live worker's figures together."""
        raw = {
            k.decode(): v.decode() for k, v in self.redis.hgetall(f"{self.prefix}metrics").items()
        }
        return numeric(raw)

    def similar_owned(self, *processes: subprocess.Popen) -> list[int]:
        """How many items' "more like this" lists each worker writes (empty: a worker's
        figures not published yet)."""
        figures = [self.worker_metrics(p) for p in processes]
        if not all("similar_owned" in f for f in figures):
            return []
        return [int(f["similar_owned"]) for f in figures]

    def worker_metrics(self, process: subprocess.Popen) -> dict[str, float]:
        for key in self.redis.scan_iter(f"{self.prefix}metrics:worker:*"):
            raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
            if f":{process.pid}-" in raw.get("worker", ""):  # (host:pid-token)
                return numeric(raw)
        return {}

    def logs(self) -> str:
        return "\n".join(
            p.name + ":\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.log_dir.glob("worker-*.log"))
        )

    def wait(self, what: str, check, timeout: float = 120.0):
        return wait_until(check, what, self.logs, timeout, interval=0.2)

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.redis.close()
        clear_run(self.env)


@pytest.fixture
def make_run(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator:
    runs: list[Run] = []

    def make(**extra: str) -> Run:
        run = Run(kafka_bootstrap, redis_url, tmp_path / f"run{len(runs)}", **extra)
        run.log_dir.mkdir()
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


async def _produce(
    kafka: str, messages: list[tuple[str, bytes, bytes]], timestamp_ms: int | None = None
) -> None:
    """Send ``messages`` (their records stamped ``timestamp_ms`` when given, as a
    producer's clock would)."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()


def produce_catalog(run: Run, ds) -> None:
    messages = [
        (
            run.items_topic,
            item.item.encode(),
            ItemEvent(op="upsert", item_id=item.item, tags=item.tags, timestamp=1.7e9).to_bytes(),
        )
        for item in ds.items.values()
    ]
    asyncio.run(_produce(run.env["KAFKA_BOOTSTRAP_SERVERS"], messages))


def produce_ratings(run: Run, ratings: list[Rating]) -> None:
    messages = [
        (
            run.ratings_topic,
            r.user.encode(),
            RatingEvent(
                user_id=r.user, item_id=r.item, rating=r.rating, timestamp=r.timestamp
            ).to_bytes(),
        )
        for r in ratings
    ]
    asyncio.run(_produce(run.env["KAFKA_BOOTSTRAP_SERVERS"], messages))


@pytest.fixture(scope="module")
def stream():
    ds = synth.generate(n_users=150, n_items=300, n_ratings=4000, seed=5, cold_item_share=0.0)
    return ds


def exact_mean(ratings: list[Rating]) -> float:
    return sum(r.rating for r in ratings) / len(ratings)


# The model keeps its running mean in float32 steps (~1e-8 off); one rating lost or learned
# twice moves the mean of these ~4,000 whole-star ratings by at least 1e-4.
MEAN_TOLERANCE = 1e-6


def test_kill_9_loses_no_rating_and_applies_none_twice(make_run, stream) -> None:
    """The same input with and without a SIGKILL mid-stream ends in the same learned state:
    every rating learned exactly once (count and exact running mean agree)."""
    ratings = stream.ratings
    half = len(ratings) // 2

    calm = make_run()
    produce_catalog(calm, stream)
    w = calm.start_worker()
    produce_ratings(calm, ratings)
    calm.wait(
        "the calm run to learn everything",
        lambda: calm.worker_metrics(w).get("events") == len(ratings),
    )
    calm_state = calm.worker_metrics(w)

    crash = make_run()
    produce_catalog(crash, stream)
    first = crash.start_worker()
    produce_ratings(crash, ratings[:half])
    crash.wait(
        "the first worker to learn part of the stream",
        lambda: crash.worker_metrics(first).get("events", 0) >= half // 2,
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    produce_ratings(crash, ratings[half:])
    _, state = crash.restart_and_settle(len(ratings))

    assert state["events"] == len(ratings) == calm_state["events"]
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)
    assert calm_state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)
    assert state["users"] == calm_state["users"] == stream.n_users
    # Lists are served for users whose ratings were only ever replayed.
    early_users = {r.user for r in ratings[: half // 4]}
    served = [u for u in early_users if crash.redis.exists(f"{crash.prefix}recs:{u}")]
    assert len(served) == len(early_users)


def replayed(log: Path) -> int:
    """Ratings a worker relearned from the log, by its log lines."""
    found = re.findall(r"replayed (\d+) ratings of partition", log.read_text(errors="replace"))
    return sum(map(int, found))


def test_a_restart_loads_the_snapshot_and_replays_only_the_tail(make_run, stream) -> None:
    """With snapshots, a worker killed with SIGKILL mid-stream and restarted relearns only
    what came after its last usable snapshot, and still ends with every rating learned
    exactly once."""
    ratings = stream.ratings
    half = len(ratings) // 2
    run = make_run(RECSYS_SNAPSHOT_EVERY_S="1")
    snapshots = Path(run.env["RECSYS_DATA_DIR"]) / run.env["RECSYS_APP_ID"] / "snapshots"
    produce_catalog(run, stream)
    first = run.start_worker()
    produce_ratings(run, ratings[:half])
    run.wait("the first worker to learn the first half", lambda: run.holds(first, half))
    made = time.monotonic()
    run.wait("a snapshot of the whole first half", lambda: snapshot_covers(snapshots, half))
    run.wait(  # and the worker says so, for monitoring
        "the worker to report its snapshot",
        lambda: (
            run.worker_metrics(first).get("snapshot_ratings", 0) >= half
            and run.worker_metrics(first).get("snapshot_age_s", -1) >= 0
        ),
    )
    time.sleep(max(0.0, made + 4.0 - time.monotonic()))  # the group commits meanwhile
    produce_ratings(run, ratings[half:])
    run.wait(
        "the first worker to learn part of the second half",
        lambda: run.worker_metrics(first).get("events", 0) >= half + half // 2,
    )
    first.send_signal(signal.SIGKILL)  # mid-stream, maybe between a snapshot and a commit
    first.wait()
    _, state = run.restart_and_settle(len(ratings))
    log = run.log_dir / "worker-1.log"

    # Without the snapshot, at least the first half (committed before the kill) would be
    # relearned; with it, only what the group committed after the snapshot.
    assert "restored snapshot" in log.read_text(errors="replace"), run.logs()
    assert replayed(log) < half, run.logs()
    assert state["snapshot_ratings"] >= half and state["snapshot_bytes"] > 0
    assert state["events"] == len(ratings)
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)
    assert state["users"] == stream.n_users


def probe(port: int, path: str) -> tuple[int, str] | None:
    """``GET http://127.0.0.1:{port}{path}``: status and body, or None while nothing
    answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def test_a_restarted_worker_is_ready_only_once_its_history_is_in_the_model(
    make_run, stream
) -> None:
    """``/readyz``, a readiness probe: a worker restarted on a committed history answers
    503 (saying what it waits for) until the group assigned it its partitions, the
    catalog is read and their history relearned; at its first 200 the model already
    holds every rating, and ``/healthz`` answered all along."""
    ratings = stream.ratings
    port = free_port()
    run = make_run(RECSYS_WEB_PORT=str(port))
    produce_catalog(run, stream)
    first = run.start_worker()
    produce_ratings(run, ratings)
    run.wait("the first worker to learn every rating", lambda: run.holds(first, len(ratings)))
    time.sleep(4.0)  # the group commits every rating
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = run.start_worker()
    seen: list[tuple[int, dict]] = []
    deadline = time.monotonic() + 120
    while not (seen and seen[-1][0] == 200):
        assert time.monotonic() < deadline and second.poll() is None, run.logs()
        answer = probe(port, "/readyz")
        if answer is not None:
            seen.append((answer[0], json.loads(answer[1])))
            assert probe(port, "/healthz") == (200, '{"ok": true}')
        time.sleep(0.02)
    status, first_answer = seen[0]
    assert status == 503 and first_answer["ready"] is False and first_answer["waiting_for"]
    last = seen[-1][1]
    assert last["ready"] is True and last["waiting_for"] == []
    assert last["partitions"] == [0, 1, 2, 3] and last["events"] == len(ratings)
    waited = {reason for _, answer in seen for reason in answer["waiting_for"]}
    assert any(reason.startswith("the history of ratings partitions") for reason in waited) or (
        "the consumer group's assignment" in waited
    ), waited


def test_a_graceful_stop_snapshots_so_the_next_worker_replays_nothing(make_run, stream) -> None:
    """SIGTERM (a deploy, a scale-in): the worker commits what it took and snapshots the
    model at those offsets, so the worker after it loads the snapshot and relearns no
    rating (here the only snapshot: the periodic one is an hour away), and still counts
    every rating once."""
    ratings = stream.ratings
    run = make_run(RECSYS_SNAPSHOT_EVERY_S="3600")
    snapshots = Path(run.env["RECSYS_DATA_DIR"]) / run.env["RECSYS_APP_ID"] / "snapshots"
    produce_catalog(run, stream)
    first = run.start_worker()
    produce_ratings(run, ratings)
    run.wait("the first worker to learn every rating", lambda: run.holds(first, len(ratings)))
    assert not snapshot_covers(snapshots, 1)
    stop_process(first)  # SIGTERM, as a deploy stops it
    assert first.returncode == 0, run.logs()
    assert snapshot_covers(snapshots, len(ratings)), run.logs()
    _, state = run.restart_and_settle(len(ratings))
    log = run.log_dir / "worker-1.log"
    assert "restored snapshot" in log.read_text(errors="replace"), run.logs()
    assert replayed(log) == 0, run.logs()
    assert state["events"] == len(ratings)
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)


def test_a_worker_on_another_machine_restores_from_a_shared_snapshot_dir(
    make_run, stream, tmp_path: Path
) -> None:
    """With ``RECSYS_SNAPSHOT_DIR`` on a volume both machines mount, a worker started
    where the killed one never ran (a ``RECSYS_DATA_DIR`` of its own, empty) loads the
    killed worker's snapshot and replays only what came after it."""
    ratings = stream.ratings
    half = len(ratings) // 2
    shared = tmp_path / "shared-volume"
    run = make_run(RECSYS_SNAPSHOT_EVERY_S="1", RECSYS_SNAPSHOT_DIR=str(shared))
    snapshots = shared / run.env["RECSYS_APP_ID"]
    produce_catalog(run, stream)
    first = run.start_worker()
    produce_ratings(run, ratings[:half])
    run.wait("the first worker to learn the first half", lambda: run.holds(first, half))
    made = time.monotonic()
    run.wait(
        "a snapshot of the first half on the shared volume",
        lambda: snapshot_covers(snapshots, half),
    )
    time.sleep(max(0.0, made + 4.0 - time.monotonic()))  # the group commits meanwhile
    first.send_signal(signal.SIGKILL)
    first.wait()
    produce_ratings(run, ratings[half:])
    elsewhere = tmp_path / "other-machine"
    _, state = run.restart_and_settle(len(ratings), RECSYS_DATA_DIR=str(elsewhere))
    log = run.log_dir / "worker-1.log"
    assert "restored snapshot" in log.read_text(errors="replace"), run.logs()
    assert replayed(log) < half, run.logs()
    assert state["events"] == len(ratings)
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)
    # Neither machine kept a snapshot of its own.
    local = [Path(run.env["RECSYS_DATA_DIR"]), elsewhere]
    assert not [p for d in local for p in d.rglob("snapshot-*.pkl")]


def snapshot_covers(directory: Path, n: int) -> bool:
    """Some snapshot in ``directory`` holds at least ``n`` ratings (by its offsets)."""
    from streamer.snapshot import SnapshotStore

    return any(sum(s.offsets.values()) >= n for s in SnapshotStore(directory).list())


def test_two_workers_share_partitions_and_one_takes_over_after_a_kill(make_run, stream) -> None:
    ratings = stream.ratings
    head, tail = ratings[:3000], ratings[3000:]
    run = make_run()
    produce_catalog(run, stream)
    a, b = run.start_worker(), run.start_worker()
    produce_ratings(run, head)

    run.wait(
        "both workers to share the partitions and learn the head",
        lambda: run.shared_between(a, b, len(head)),
    )
    # The shared metrics hash counts both workers' ratings, whichever wrote it last.
    run.wait(
        "the shared metrics to hold both workers' figures",
        lambda: (m := run.fleet()).get("workers") == 2 and m.get("events") == len(head),
    )
    # Each item's "more like this" list is one worker's to write, by partition.
    n_items = len(stream.items)
    owned = run.wait(
        "the workers to split the items' more-like-this lists",
        lambda: (o := run.similar_owned(a, b)) and sum(o) == n_items and o,
    )
    assert min(owned) > 0, owned
    rebuilds = run.worker_metrics(b)["rebuilds"]
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed_at = time.time()
    produce_ratings(run, tail)
    run.wait(
        "the survivor to take every partition over",
        lambda: run.worker_metrics(b).get("events", 0) >= len(ratings),
        timeout=180,
    )
    time.sleep(1.5)
    state = run.worker_metrics(b)
    assert state["events"] == len(ratings)
    # It kept its model (every partition it had came back to it) and replayed only the
    # partitions it took over.
    assert state["rebuilds"] == rebuilds, run.logs()
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)
    assert state["users"] == stream.n_users
    # Users of the tail (on every partition) have lists written after the kill.
    fresh = 0
    for user in {r.user for r in tail}:
        raw = run.redis.get(f"{run.prefix}recs:{user}")
        assert raw is not None, user
        fresh += (
            b'"updated_at"' in raw
            and float(raw.rsplit(b'"updated_at":', 1)[1].rstrip(b"}")) > killed_at
        )
    assert fresh == len({r.user for r in tail})
    run.wait("the survivor to write every item's list", lambda: run.similar_owned(b) == [n_items])


def test_declared_user_tags_survive_a_kill(make_run) -> None:
    """A user known only by declared tags (no ratings) is served again after a SIGKILL:
    the restarted worker reads the users topic of its partitions before their ratings."""
    run = make_run()
    catalog = [
        (
            run.items_topic,
            f"t{j}".encode(),
            ItemEvent(
                op="upsert", item_id=f"t{j}", tags=["jazz" if j % 2 else "rock"], timestamp=1.7e9
            ).to_bytes(),
        )
        for j in range(10)
    ]
    kafka = run.env["KAFKA_BOOTSTRAP_SERVERS"]
    asyncio.run(_produce(kafka, catalog))
    first = run.start_worker()
    run.wait("the first worker's metrics", lambda: run.worker_metrics(first))
    declared = UserEvent(user_id="fan", tags=["jazz"], timestamp=1.7e9).to_bytes()
    asyncio.run(_produce(kafka, [(run.env["RECSYS_USERS_TOPIC"], b"fan", declared)]))
    key = f"{run.prefix}recs:fan"

    def jazz_list() -> list[str]:
        raw = run.redis.get(key)
        items = [] if raw is None else json.loads(raw)["items"]
        return [r["item_id"] for r in items if "matches your tags jazz" in r["reason"]]

    before = run.wait("fan's list from declared tags", jazz_list)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run.redis.delete(key)
    run.start_worker()
    after = run.wait("fan's list again after the restart", jazz_list, timeout=90)
    assert set(after) == set(before) and all(int(i[1:]) % 2 for i in after)


def test_catalog_and_user_events_refused_as_ahead_stay_refused_when_read_later(
    make_run,
) -> None:
    """An item and a user's tags a day and a half hour ahead, by a producer whose clock
    runs 50 minutes ahead (the broker refuses records stamped more than an hour ahead),
    are refused live as more than a day in the future of the worker's clock. A worker
    started an hour later reads the catalog and the users topic again and judges them by
    their records' time, when they pass: it used to list the item and serve the user's
    tags, though every worker before refused them and their dead letters wait for a
    redrive. It skips them by their dead letters, as a replay skips refused ratings."""
    from worker_process import cli

    run = make_run(RECSYS_SNAPSHOT_EVERY_S="0")
    kafka, users_topic = run.env["KAFKA_BOOTSTRAP_SERVERS"], run.env["RECSYS_USERS_TOPIC"]

    now = time.time()
    catalog = [
        (
            run.items_topic,
            f"t{j}".encode(),
            ItemEvent(op="upsert", item_id=f"t{j}", tags=["jazz"], timestamp=now).to_bytes(),
        )
        for j in range(5)
    ]
    asyncio.run(_produce(kafka, catalog))
    first = run.start_worker()
    run.wait("the catalog", lambda: run.worker_metrics(first).get("items") == 5)
    ahead = now + 86_400 + 1_800
    # (Written as such a producer's JSON: the models refuse to make them, as they should.)
    item = {"op": "upsert", "item_id": "ahead", "tags": ["jazz"], "timestamp": ahead}
    user = {"user_id": "fan", "tags": ["jazz"], "timestamp": ahead}
    skewed = [
        (run.items_topic, b"ahead", json.dumps(item).encode()),
        (users_topic, b"fan", json.dumps(user).encode()),
    ]
    asyncio.run(_produce(kafka, skewed, timestamp_ms=int((now + 3_000) * 1000)))
    on_time = UserEvent(user_id="ok", tags=["jazz"], timestamp=now).to_bytes()
    asyncio.run(_produce(kafka, [(users_topic, b"ok", on_time)]))

    def letters() -> list[dict]:
        done = cli(run.env, "deadletters", "--reason", "in the future", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    run.wait("both dead letters", lambda: len(letters()) == 2)
    run.wait("ok's list", lambda: run.redis.get(f"{run.prefix}recs:ok"))
    # (Committed, so the next worker reads them again only as a start does.)
    run.wait("the users' offsets committed", lambda: _committed(run, users_topic) == 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run.redis.delete(f"{run.prefix}recs:ok", f"{run.prefix}recs:fan")
    later = {
        "PYTHONPATH": str(Path(__file__).parents[1] / "clock_ahead"),
        "RECSYS_TEST_CLOCK_AHEAD_S": "3300",  # (its own records stay within the hour)
    }
    second = run.start_worker(**later)
    run.wait("the catalog again", lambda: run.worker_metrics(second).get("items", 0) >= 5)
    run.wait("ok's list again", lambda: run.redis.get(f"{run.prefix}recs:ok"), timeout=90)
    time.sleep(1.0)  # (the item would be counted, and fan served, by now)
    assert run.worker_metrics(second)["items"] == 5, run.logs()
    served = json.loads(run.redis.get(f"{run.prefix}recs:ok"))["items"]
    assert "ahead" not in {r["item_id"] for r in served}
    assert run.redis.get(f"{run.prefix}recs:fan") is None, run.logs()


def test_a_snapshot_that_cannot_be_written_does_not_stop_the_worker(make_run, stream) -> None:
    """Bad disk (here: the snapshot folder's path is taken by a file): the worker logs it
    and goes on learning every rating."""
    ratings = stream.ratings[:1000]
    run = make_run(RECSYS_SNAPSHOT_EVERY_S="0.5")
    blocked = Path(run.env["RECSYS_DATA_DIR"]) / run.env["RECSYS_APP_ID"] / "snapshots"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    produce_catalog(run, stream)
    worker = run.start_worker()
    produce_ratings(run, ratings)
    run.wait(
        "the worker to learn every rating",
        lambda: run.worker_metrics(worker).get("events", 0) == len(ratings),
    )
    log = run.log_dir / "worker-0.log"
    run.wait("the failed snapshot to be logged", lambda: "snapshot not written" in log.read_text())
    produce_ratings(run, stream.ratings[1000:1200])
    run.wait(
        "the worker to go on learning",
        lambda: run.worker_metrics(worker).get("events", 0) == 1200,
    )
    assert worker.poll() is None
    assert "snapshot_age_s" not in run.worker_metrics(worker)


def two_workers_sharing(make_run, stream, head: list[Rating], every_s: str):
    """A run whose two workers exchange item changes every ``every_s`` seconds, once
    both have learned ``head`` between them and each has added in the other's changes:
    the run and the two processes."""
    run = make_run(RECSYS_SHARE_ITEMS_EVERY_S=every_s)
    produce_catalog(run, stream)
    a, b = run.start_worker(), run.start_worker()
    produce_ratings(run, head)

    def exchanged() -> bool:
        both = run.shared_between(a, b, len(head))
        return both is not None and min(m["items_received"] for m in both) > 0

    run.wait("both workers to learn and exchange item changes", exchanged)
    return run, a, b


def test_two_workers_exchange_item_changes_when_asked(make_run, stream) -> None:
    """With RECSYS_SHARE_ITEMS_EVERY_S, each worker sends what its learning changed on
    the item side (item and tag vectors and biases, popularity, co-occurrence pairs; not
    the blend's weights nor the item counts) and adds in what the other sent; the
    ratings are still learned once."""
    head = stream.ratings[:3000]
    run, a, b = two_workers_sharing(make_run, stream, head, every_s="0.5")
    time.sleep(1.5)  # the last changes arrive
    ma, mb = run.worker_metrics(a), run.worker_metrics(b)
    assert ma["events"] + mb["events"] == len(head)
    # Each applies at most what the other sent (items it does not know are skipped).
    assert 0 < ma["items_received"] <= mb["items_shared"]
    assert 0 < mb["items_received"] <= ma["items_shared"]


def test_a_sharing_worker_killed_leaves_a_survivor_that_counts_each_rating_once(
    make_run, stream
) -> None:
    """The survivor added in the killed worker's item changes (its ratings' popularity,
    among them) before the kill, then takes the killed worker's partitions over and
    replays them: it must rebuild first, or those ratings count twice. Popularity sums
    every rating, in any order, so the survivor's popular list must score like one model
    that learned each rating once."""
    ratings = stream.ratings
    head, tail = ratings[:3000], ratings[3000:]
    run, a, b = two_workers_sharing(make_run, stream, head, every_s="0.3")
    time.sleep(1.0)  # more of the killed worker's changes reach the survivor
    assert run.worker_metrics(b)["items_received"] > 0
    a.send_signal(signal.SIGKILL)
    a.wait()
    produce_ratings(run, tail)
    run.wait(
        "the survivor to take every partition over",
        lambda: run.worker_metrics(b).get("events", 0) >= len(ratings),
        timeout=180,
    )
    time.sleep(1.5)  # a rating counted twice, or changes added in late, would show now
    state = run.worker_metrics(b)
    assert state["events"] == len(ratings)
    assert state["mean_rating"] == pytest.approx(exact_mean(ratings), abs=MEAN_TOLERANCE)

    once = Recommender(RecommenderConfig(signals=("pop",)))
    once.learn_many(*zip(*((r.user, r.item, r.rating, r.timestamp) for r in ratings), strict=True))
    expected = {r.item: r.score for r in once.popular(10)}
    served = json.loads(run.redis.get(f"{run.prefix}popular"))["items"]
    assert sorted(x["score"] for x in served) == pytest.approx(
        sorted(expected.values()), rel=1e-4
    ), (served, expected)
    assert {x["item_id"] for x in served} == set(expected)


def test_a_rating_sent_back_is_learned_once_by_rebuilds_before_and_after_the_redrive(
    make_run, stream
) -> None:
    """A rating refused for an item not listed yet, then its item listed: a rebuild
    (a restart without a snapshot) skips it as live did, by its dead letter; sent back
    with ``deadletters --redrive``, its copy is learned, and a rebuild after that learns
    the copy only. Without the dead letters a rebuild learned the original too, so the
    redriven rating counted twice."""
    from worker_process import cli

    ratings = stream.ratings[:1000]
    run = make_run(RECSYS_SNAPSHOT_EVERY_S="0")
    produce_catalog(run, stream)
    first = run.start_worker()
    late = Rating(ratings[0].user, "late-item", 5.0, ratings[-1].timestamp + 1.0)
    produce_ratings(run, [*ratings, late])
    reason = "item_id: unknown item 'late-item'"

    def letters() -> list[dict]:
        done = cli(run.env, "deadletters", "--reason", reason, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    run.wait("the late rating's dead letter", letters)
    run.wait("the ratings learned", lambda: run.holds(first, len(ratings)))
    # (Committed, so the next worker replays them: one that processed them live again
    # would learn the late rating, its item listed by then, as the first would have.)
    run.wait("the offsets committed", lambda: _committed(run) == len(ratings) + 1)
    listed = ItemEvent(op="upsert", item_id="late-item", tags=["t0"], timestamp=late.timestamp)
    kafka = run.env["KAFKA_BOOTSTRAP_SERVERS"]
    asyncio.run(_produce(kafka, [(run.items_topic, b"late-item", listed.to_bytes())]))
    # A user's declared tags too: the replay reads the users topic of its partitions
    # (which once hid the dead-letter topic from the replay's own consumer).
    declared = UserEvent(user_id=late.user, tags=["t0"], timestamp=late.timestamp)
    users_topic = run.env["RECSYS_USERS_TOPIC"]
    asyncio.run(_produce(kafka, [(users_topic, late.user.encode(), declared.to_bytes())]))
    first.send_signal(signal.SIGKILL)
    first.wait()
    second, state = run.restart_and_settle(len(ratings))
    assert state["events"] == len(ratings), run.logs()  # the original skipped
    sent = cli(run.env, "deadletters", "--redrive", "--reason", reason, "--json")
    assert sent.returncode == 0 and len(json.loads(sent.stdout)["sent"]) == 1, sent.stderr
    run.wait("the copy learned", lambda: run.holds(second, len(ratings) + 1))
    second.send_signal(signal.SIGKILL)
    second.wait()
    _, state = run.restart_and_settle(len(ratings) + 1)
    assert state["events"] == len(ratings) + 1, run.logs()  # the copy only


def _committed(run: Run, topic: str | None = None) -> int:
    """The sum of the group's committed offsets on ``topic`` (the ratings topic)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=run.env["KAFKA_BOOTSTRAP_SERVERS"])
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(run.env["RECSYS_APP_ID"])
        finally:
            await admin.close()
        wanted = topic or run.ratings_topic
        return sum(m.offset for tp, m in offsets.items() if tp.topic == wanted)

    return asyncio.run(read())
