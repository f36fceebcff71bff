"""The users' commands: produce, stream, recs and metrics against the real Kafka and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import redis
from topic_reading import read_records

from schemas import ItemEvent, RatingEvent, UserEvent
from streamer.cli import main
from streamer.client import Recommended
from streamer.commands import format_metrics, format_recs, parse_tags
from streamer.process import isolated_env, remove_topics


@pytest.fixture
def topics(monkeypatch, kafka_bootstrap: str, redis_url: str, redis_key_prefix: str):
    """The run's own topics (deleted afterwards), named in the environment."""
    env = isolated_env(
        "cmd",
        {},
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        RECSYS_KEY_PREFIX=redis_key_prefix,
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield {kind: env[f"RECSYS_{kind.upper()}_TOPIC"] for kind in ("ratings", "items", "users")}
    remove_topics(env)


def consume(bootstrap: str, topic: str, n: int, timeout: float = 20.0) -> list:
    return asyncio.run(read_records(bootstrap, topic, n, timeout))


def test_parse_tags_and_tables() -> None:
    assert parse_tags(["a", "b=2"]) == {"a": 1.0, "b": 2.0}
    table = format_recs([Recommended("i1", 0.5, "popular now", title="Solaris")])
    assert table.splitlines()[1].split() == ["1", "i1", "Solaris", "0.500", "popular", "now"]
    text = format_metrics({"k": "10", "rmse": "0.9"}, {"w1": {"rmse": "0.9"}, "w2": {}})
    assert "RMSE (rolling)" in text
    assert text.splitlines()[0].split() == ["figure", "all", "workers", "w1", "w2"]


def test_invalid_events_are_refused_before_kafka(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # never contacted
    assert main(["produce", "rating", "u1", "i1", "9"]) == 2
    assert "rating: 9.0 is outside the rating scale" in capsys.readouterr().err
    assert main(["produce", "item", "i1", "--tag", "x=lots"]) == 2
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"user_id":"u","item_id":"i","rating":4,"timestamp":1}\n{"oops"\n')
    assert main(["produce", "jsonl", "rating", str(lines)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_unreachable_kafka_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    assert main(["produce", "rating", "u1", "i1", "4"]) == 1
    assert "cannot reach Kafka at 127.0.0.1:9" in capsys.readouterr().err
    assert main(["deadletters"]) == 1
    assert "cannot read recsys.deadletter at 127.0.0.1:9" in capsys.readouterr().err


def test_produce_sends_validated_keyed_events(topics, kafka_bootstrap: str, tmp_path) -> None:
    iso = ["--timestamp", "2026-11-26T18:00:00Z"]  # (ISO-8601, as events in JSON take)
    assert main(["produce", "rating", "u1", "i7", "4.5", "--event-id", "e1", *iso]) == 0
    assert (
        main(
            ["produce", "item", "i7", "--tag", "scifi", "--tag", "drama=0.5", "--title", "Solaris"]
        )
        == 0
    )
    assert main(["produce", "item", "i8", "--delete"]) == 0
    assert main(["produce", "user", "u1", "--tag", "jazz"]) == 0
    lines = tmp_path / "r.jsonl"
    lines.write_text(
        "".join(
            json.dumps({"user_id": f"u{j}", "item_id": "i7", "rating": 3, "timestamp": 1}) + "\n"
            for j in range(3)
        )
    )
    assert main(["produce", "jsonl", "rating", str(lines)]) == 0

    # Partitions interleave; each event is checked by its content and its key.
    ratings = [
        (m.key, RatingEvent.model_validate_json(m.value))
        for m in consume(kafka_bootstrap, topics["ratings"], 4)
    ]
    assert sorted(key for key, _ in ratings) == [b"u0", b"u1", b"u1", b"u2"]
    assert all(key == e.user_id.encode() for key, e in ratings)
    (single,) = [e for _, e in ratings if e.event_id == "e1"]
    assert (single.user_id, single.item_id, single.rating) == ("u1", "i7", 4.5)
    assert single.timestamp == 1795716000.0  # 2026-11-26T18:00:00Z
    items = {
        m.key: ItemEvent.model_validate_json(m.value)
        for m in consume(kafka_bootstrap, topics["items"], 2)
    }
    assert items[b"i7"].title == "Solaris" and items[b"i7"].op == "upsert"
    assert dict(items[b"i7"].tags) == {"scifi": 1.0, "drama": 0.5}
    assert items[b"i8"].op == "delete"
    users = consume(kafka_bootstrap, topics["users"], 1)
    assert UserEvent.model_validate_json(users[0].value).user_id == "u1"


def test_stream_stamp_now_sends_the_send_time(topics, kafka_bootstrap, tmp_path, capsys):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(f"u{j},i{j},4,{1_600_000_000 + j}\n" for j in range(10))
    )
    before = time.time()
    argv = ["stream", str(ratings), "--rate", "1000", "--stamp-now", "--quiet"]
    assert main(argv) == 0
    got = consume(kafka_bootstrap, topics["ratings"], 10)
    stamps = [RatingEvent.model_validate_json(m.value).timestamp for m in got]
    assert len(stamps) == 10 and all(before <= t <= time.time() for t in stamps)


def test_stream_replays_a_file_with_its_catalog(topics, kafka_bootstrap, tmp_path, capsys):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(f"u{j % 7},i{j % 5},{1 + j % 5},{1_600_000_000 + j}\n" for j in range(60))
    )
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title,tags\n" + "".join(f"i{j},Item {j},t{j % 2}\n" for j in range(5))
    )
    assert (
        main(
            [
                "stream",
                str(ratings),
                "--items",
                str(items),
                "--rate",
                "2000",
                "--limit",
                "50",
                "--quiet",
            ]
        )
        == 0
    )
    assert "sent 50 ratings" in capsys.readouterr().out
    got = consume(kafka_bootstrap, topics["ratings"], 50)
    assert len(got) == 50
    events = [(m.key, RatingEvent.model_validate_json(m.value)) for m in got]
    assert all(key == e.user_id.encode() for key, e in events)  # keyed by user
    for user in {e.user_id for _, e in events}:  # each user's ratings in time order
        times = [e.timestamp for _, e in events if e.user_id == user]
        assert times == sorted(times)
    catalog = consume(kafka_bootstrap, topics["items"], 5)
    assert {ItemEvent.model_validate_json(m.value).item_id for m in catalog} == {
        f"i{j}" for j in range(5)
    }


def test_recs_and_metrics_print_what_redis_holds(topics, redis_url, redis_key_prefix, capsys):
    r = redis.Redis.from_url(redis_url)
    p = redis_key_prefix
    r.set(
        f"{p}recs:u1",
        json.dumps(
            {
                "user_id": "u1",
                "model_version": 4,
                "updated_at": 1.0,
                "items": [
                    {
                        "item_id": "i3",
                        "score": 0.25,
                        "reason": "because you liked i1",
                        "source": "cooc",
                        "because": "i1",
                    }
                ],
            }
        ),
    )
    r.hset(f"{p}item:i3", mapping={"title": "Stalker"})
    r.hset(f"{p}metrics", mapping={"events": "120", "rmse": "0.93", "k": "10"})
    r.hset(f"{p}metrics:worker:h:1", mapping={"events": "120", "rmse": "0.93"})
    r.zadd(f"{p}metrics:workers", {"h:1": time.time()})  # the live workers' registry
    assert main(["recs", "u1"]) == 0
    out = capsys.readouterr().out
    assert "model version 4" in out and "Stalker" in out and "because you liked i1" in out
    assert main(["recs", " u1 ", "--json"]) == 0  # (the id as events spell it)
    shown = json.loads(capsys.readouterr().out)
    assert shown["items"][0]["title"] == "Stalker" and shown["user_id"] == "u1"
    similar = json.loads(r.get(f"{p}recs:u1"))
    del similar["user_id"]
    r.set(f"{p}similar:i1", json.dumps(similar | {"item_id": "i1"}))
    assert main(["similar", "i1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("i1: model version 4") and "Stalker" in out
    assert main(["similar", "i1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_id"] == "i1"
    assert main(["similar", "i9"]) == 1  # no list, and no popular list either
    assert "no lists under" in capsys.readouterr().out
    assert main(["similar", "i9", "--json"]) == 1  # the same status for scripts
    assert json.loads(capsys.readouterr().out)["served_from"] == "none"
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert "1 live worker" in out and "0.9300" in out and "h:1" in out
    r.close()


def _dead_letter_records(topics: dict[str, str]) -> list[tuple[bytes, bytes, list]]:
    """Dead letters as a worker writes them: key, original bytes, reason and source."""

    def headers(reason: str, topic: str, offset: int, *extra: tuple[str, bytes]) -> list:
        return [
            ("recsys.reason", reason.encode()),
            ("recsys.source.topic", topic.encode()),
            ("recsys.source.partition", b"0"),
            ("recsys.source.offset", str(offset).encode()),
            *extra,
        ]

    late = b'{"user_id": "u1", "item_id": "late", "rating": 5, "timestamp": 1700000000}'
    return [
        (
            b"u1",
            late,
            headers("item_id: unknown item 'late'", topics["ratings"], 7, ("traceparent", b"00-1")),
        ),
        (b"u2", b"{not json", headers("malformed JSON: oops", topics["ratings"], 8)),
        (
            b"u3",
            late[:10],
            headers(
                "item_id: unknown item 'late'",
                topics["ratings"],
                9,
                ("recsys.truncated.from", b"2000000"),
            ),
        ),
        (b"u4", late, headers("item_id: unknown item 'late'", "someone.elses", 3)),
        # The first letter again (a worker reprocessing after a crash), and an event that
        # was sent back once already and refused again.
        (b"u1", late, headers("item_id: unknown item 'late'", topics["ratings"], 7)),
        (
            b"u5",
            b"{",
            headers("malformed JSON: x", topics["ratings"], 11, ("recsys.redriven.from", b"d")),
        ),
        # A record with neither key nor value (dead-lettered with an empty key).
        (
            b"",
            None,
            headers("no value: a tombstone", topics["ratings"], 12, ("recsys.source.key", b"none")),
        ),
    ]


def test_deadletters_lists_and_sends_back_each_dead_letter_once(
    topics, kafka_bootstrap, redis_key_prefix, capsys, monkeypatch
) -> None:
    """Listing shows reason, source and bytes; --redrive sends the matching ones back to
    their topic unchanged (a header names the dead letter), never the same one twice,
    and never one whose value was cut or that came from another deployment's topic."""
    deadletter = os.environ["RECSYS_DEADLETTER_TOPIC"]  # (the run's own, from ``topics``)
    letters = _dead_letter_records(topics)
    from streamer.app import ensure_topics  # (as a worker creates them: one dead-letter partition)
    from streamer.settings import Settings

    asyncio.run(ensure_topics(Settings.from_env()))
    _write_records(kafka_bootstrap, deadletter, letters)
    assert main(["deadletters", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == ["u1", "u2", "u3", "u4", "u1", "u5", None]
    assert rows[0]["source"] == f"{topics['ratings']}[0]@7" and rows[2]["truncated_from"]
    assert main(["deadletters", "--topic", "items", "--json"]) == 0  # (all from ratings)
    assert json.loads(capsys.readouterr().out) == []
    assert main(["deadletters", "--topic", "ratings", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6  # (the seventh: another deployment's)
    assert main(["deadletters", "--kind", "malformed", "--json"]) == 0  # (as the metrics count)
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == ["u2", "u5", None]
    assert main(["deadletters", "--reason", "malformed JSON: oops"]) == 0
    out = capsys.readouterr().out
    assert "1 dead letter(s)" in out and "malformed JSON: oops" in out and "u1" not in out
    # A filter keeps the last matching ones, not the matching ones among the last read.
    assert main(["deadletters", "--reason", "malformed JSON: oops", "--last", "2"]) == 0
    assert "1 dead letter(s)" in capsys.readouterr().out
    assert main(["deadletters", "--kind", "malformed", "--last", "2", "--json"]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == ["u5", None]
    # The bytes as they are, in the JSON (a key or value that is not UTF-8 too).
    assert base64.b64decode(rows[0]["value_b64"]) == letters[0][1]
    assert base64.b64decode(rows[0]["key_b64"]) == b"u1"
    assert rows[-1]["key_b64"] is None and rows[-1]["value_b64"] is None
    unknown = ["--reason", "unknown item", "--json"]
    assert main(["deadletters", "--redrive", "--dry-run", *unknown]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["sent"] == ["0:0"] and dry["already"] == ["0:4"]
    assert set(dry["unsendable"]) == {"0:2", "0:3"}
    assert main(["deadletters", "--redrive", *unknown]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sent"] == ["0:0"] and report["already"] == ["0:4"] and report["matched"] == 4
    assert "value was cut" in report["unsendable"]["0:2"]
    assert "not one of this deployment's topics" in report["unsendable"]["0:3"]
    (back,) = consume(kafka_bootstrap, topics["ratings"], 1)
    assert (back.key, back.value) == (letters[0][0], letters[0][1])
    assert dict(back.headers)["recsys.redriven.from"] == f"{deadletter}[0:0]".encode()
    assert dict(back.headers)["traceparent"] == b"00-1"  # (its own headers, as they were)
    # Again, with any filter: nothing is sent twice, nor what came back refused again.
    # (A member whose dead letter left the topic, with retention, is dropped.)
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    ledger_key = f"{redis_key_prefix}redrive:{deadletter}"
    # (An earlier version's set of events sent back: read as sent, then dropped.)
    legacy_key = f"{redis_key_prefix}redriven:{deadletter}"
    r.sadd(legacy_key, f"{topics['ratings']}:1:99")
    assert main(["deadletters", "--redrive", "--json"]) == 2  # (which? said, or --all)
    assert "--all for every dead letter" in capsys.readouterr().err
    assert main(["deadletters", "--redrive", "--all", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sent"] == ["0:1"] and again["already"] == ["0:0", "0:4"]
    assert "sent back once already" in again["unsendable"]["0:5"]
    assert "neither a key nor a value" in again["unsendable"]["0:6"]
    assert len(consume(kafka_bootstrap, topics["ratings"], 2)) == 2
    # The ledger holds a claim per source record sent back, and no other.
    ledger = {k.decode(): v.decode() for k, v in r.hgetall(ledger_key).items()}
    assert r.smembers(legacy_key) == {f"{topics['ratings']}:1:99".encode()}  # (kept, read)
    r.close()
    ratings = topics["ratings"]
    assert ledger == {f"{ratings}:0:7": "sent 0:0", f"{ratings}:0:8": "sent 0:1"}
    # A topic that cannot be read to its end in time (a transaction left open) is said
    # so, and nothing is sent (a redrive must see the whole topic).
    from streamer import deadletters

    monkeypatch.setattr(deadletters, "READ_TIMEOUT_S", -1.0)
    assert main(["deadletters", "--redrive", "--all"]) == 1
    assert "could not be read to its end" in capsys.readouterr().err


def _write_records(kafka_bootstrap: str, topic: str, records: list) -> None:
    async def write() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(write())


def test_a_redrive_claim_left_pending_is_settled_once_never_sent_twice(
    topics, kafka_bootstrap, redis_key_prefix, capsys, monkeypatch
) -> None:
    """A claim is pending until Kafka acknowledges the copy. One left pending (the run
    stopped after claiming; the acknowledgement was lost although the copy landed) is
    settled by the next run: sent if its copy is not in the topic, marked sent if it is
    (a second copy would be learned twice), and left alone while it may be another
    run's send in flight."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError

    from streamer import deadletters
    from streamer.app import ensure_topics
    from streamer.settings import Settings

    deadletter = os.environ["RECSYS_DEADLETTER_TOPIC"]
    ratings = topics["ratings"]
    asyncio.run(ensure_topics(Settings.from_env()))
    value = b'{"user_id": "u1", "item_id": "late", "rating": 5, "timestamp": 1700000000}'

    def letter(offset: int) -> tuple:
        return (
            b"u1",
            value,
            [
                ("recsys.reason", b"item_id: unknown item 'late'"),
                ("recsys.source.topic", ratings.encode()),
                ("recsys.source.partition", b"0"),
                ("recsys.source.offset", str(offset).encode()),
            ],
        )

    _write_records(kafka_bootstrap, deadletter, [letter(n) for n in (7, 8, 9, 10)])
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"{redis_key_prefix}redrive:{deadletter}"
    long_ago, now = int((time.time() - 600) * 1000), int(time.time() * 1000)
    r.hset(key, f"{ratings}:0:7", f"pending 0:0 {long_ago}")  # stopped after claiming
    r.hset(key, f"{ratings}:0:8", f"pending 0:1 {long_ago}")  # its copy landed:
    copy = [("recsys.redriven.from", f"{deadletter}[0:1]".encode())]
    _write_records(kafka_bootstrap, ratings, [(b"u1", value, copy)])
    r.hset(key, f"{ratings}:0:9", f"pending 0:2 {now}")  # another run's, in flight

    class AckLost(AIOKafkaProducer):  # the copy lands, its acknowledgement is lost
        async def send(self, *args, **kwargs):
            landed = await super().send(*args, **kwargs)

            async def lost():
                await landed
                raise KafkaTimeoutError("acknowledgement lost")

            return asyncio.ensure_future(lost())

    monkeypatch.setattr(deadletters, "AIOKafkaProducer", AckLost)
    assert main(["deadletters", "--redrive", "--all", "--json"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert first["already"] == ["0:1"] and first["in_progress"] == ["0:2"]
    assert set(first["unconfirmed"]) == {"0:0", "0:3"} and first["sent"] == []
    monkeypatch.setattr(deadletters, "AIOKafkaProducer", AIOKafkaProducer)
    assert main(["deadletters", "--redrive", "--all", "--json"]) == 1  # (not known sent)
    again = json.loads(capsys.readouterr().out)  # (pending a moment ago: in flight)
    assert sorted(again["in_progress"]) == ["0:0", "0:2", "0:3"] and again["sent"] == []
    monkeypatch.setattr(deadletters, "PENDING_GRACE_S", 0.0)
    assert main(["deadletters", "--redrive", "--all", "--json"]) == 0
    settled = json.loads(capsys.readouterr().out)
    # 0:2's copy is nowhere (its run stopped): sent now; the others' copies landed.
    assert settled["sent"] == ["0:2"] and sorted(settled["already"]) == ["0:0", "0:1", "0:3"]
    ledger = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
    r.close()
    assert ledger == {f"{ratings}:0:{7 + n}": f"sent 0:{n}" for n in range(4)}
    copies = consume(kafka_bootstrap, ratings, 4)
    named = [dict(c.headers)["recsys.redriven.from"].decode() for c in copies]
    assert sorted(named) == [f"{deadletter}[0:{n}]" for n in range(4)]  # one copy each
    with pytest.raises(TimeoutError):  # (and no fifth)
        consume(kafka_bootstrap, ratings, 5, timeout=3.0)


def test_a_catalog_dead_letter_with_a_later_event_of_its_key_is_not_sent_back(
    topics, kafka_bootstrap, redis_key_prefix, capsys
) -> None:
    """An item event sets its key's state, the latest in the log winning: sent back, one
    refused before a newer event of its item would overwrite the newer state. It is
    refused, saying so; another item's is sent, and a second run finds that one sent
    already (its own copy, now the latest of its key, does not count as newer). A later
    event refused too holds an older one back unless both are sent back, in order."""
    from aiokafka import AIOKafkaProducer

    from streamer.app import ensure_topics
    from streamer.settings import Settings

    deadletter = os.environ["RECSYS_DEADLETTER_TOPIC"]
    asyncio.run(ensure_topics(Settings.from_env()))
    old = b'{"op": "upsert", "item_id": "x", "tags": ["jazz"], "timestamp": 1}'
    new = b'{"op": "upsert", "item_id": "x", "tags": ["rock"], "timestamp": 2}'
    other = b'{"op": "upsert", "item_id": "y", "tags": ["jazz"], "timestamp": 1}'

    zed = b'{"op": "upsert", "item_id": "z", "tags": ["jazz"], "timestamp": 1}'
    log = [(b"x", old), (b"y", other), (b"x", new), (b"z", zed), (b"z", b"{")]
    letters = [(0, "tags: too many"), (1, "tags: too many"), (3, "tags: too many")]
    letters.append((4, "malformed JSON"))  # a later event of z, refused too: no state

    async def write() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for key, value in log:
                await producer.send_and_wait(topics["items"], value, key=key, partition=0)
            for offset, reason in letters:
                headers = [
                    ("recsys.reason", reason.encode()),
                    ("recsys.source.topic", topics["items"].encode()),
                    ("recsys.source.partition", b"0"),
                    ("recsys.source.offset", str(offset).encode()),
                ]
                key, value = log[offset]
                await producer.send_and_wait(deadletter, value, key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(write())
    tags = ["--reason", "tags", "--json"]
    assert main(["deadletters", "--redrive", *tags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sent"] == ["0:1"] and sorted(report["unsendable"]) == ["0:0", "0:2"]
    assert "later event of its key (offset 2)" in report["unsendable"]["0:0"]
    # A claim of x's letter left pending (a run stopped after claiming it): x's newer
    # event is the latest of its key, which no copy sent now may overwrite. (A scan for
    # the copy alone would find none: compaction may keep only the newer record.)
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"{redis_key_prefix}redrive:{deadletter}"
    r.hset(key, f"{topics['items']}:0:0", f"pending 0:0 {int((time.time() - 600) * 1000)}")
    # z's later event was refused too, but may be sent back another time: it would then
    # be the newer state, which z's older one sent back now would stand in front of.
    assert "later event of its key (offset 4)" in report["unsendable"]["0:2"]
    assert main(["deadletters", "--redrive", "--all", "--json"]) == 0  # both of z: in order
    again = json.loads(capsys.readouterr().out)
    assert again["sent"] == ["0:2", "0:3"] and again["already"] == ["0:0", "0:1"]
    assert not again["unsendable"]
    assert r.hget(key, f"{topics['items']}:0:0") == b"sent 0:0"
    r.close()
    back = [(r.key, r.value) for r in consume(kafka_bootstrap, topics["items"], 8)][5:]
    assert back == [(b"y", other), (b"z", zed), (b"z", b"{")]


def test_arguments_a_command_cannot_use_are_refused(capsys) -> None:
    """A watch period that is not a number of seconds, and a title or tags given with a
    delete (which carries neither), are usage errors (status 2), not a traceback or a
    silent delete."""
    for watch in ("nan", "inf", "1e300", "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["metrics", "--watch", watch])
        assert stop.value.code == 2
    assert "must be" in capsys.readouterr().err
    assert main(["produce", "item", "i9", "--delete", "--title", "Solaris"]) == 2
    assert "--delete takes no --title or --tag" in capsys.readouterr().err


def test_recs_without_redis_fails_clearly(monkeypatch, capsys) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    assert main(["recs", "u1"]) == 1
    assert "cannot reach Redis at redis://127.0.0.1:9/0" in capsys.readouterr().err


def test_snapshots_lists_what_a_restart_may_load(monkeypatch, tmp_path, capsys) -> None:
    from streamer.engine import StreamEngine
    from streamer.settings import Settings
    from streamer.snapshot import SnapshotStore

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECSYS_APP_ID", "snaps")
    assert main(["snapshots"]) == 0
    assert "no snapshots in" in capsys.readouterr().out
    store = SnapshotStore(tmp_path / "snaps" / "snapshots")
    engine = StreamEngine(Settings())
    store.save(engine, {0: 10, 1: 20}, Settings().model_fingerprint())
    time.sleep(0.002)
    store.save(engine, {2: 5}, Settings(n_factors=8).model_fingerprint())
    assert main(["snapshots"]) == 0
    out = capsys.readouterr().out
    assert "2 snapshot(s)" in out and "partitions [0, 1]" in out and "30 offsets" in out
    assert out.count("other model settings") == 1
    assert main(["snapshots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["partitions"], r["same_settings"]) for r in rows] == [([2], False), ([0, 1], True)]


async def test_core_records_are_sent_on_the_deployments_rating_scale() -> None:
    """A half-star data set (MovieLens 10M and later) streams when the worker's scale
    takes half stars: the producer validates on the same scale, not the default 1-5."""
    from recsys_online.events import Rating
    from schemas import EventError
    from streamer.producer import EventProducer
    from streamer.settings import Settings

    producer = EventProducer(Settings(rating_low=0.5))  # built, never started
    sent = []

    async def send(topic: str, key: str, value: bytes) -> None:
        sent.append(json.loads(value))

    producer._send = send
    await producer.send_core_event(Rating("u", "i", 0.5, 1.0))
    assert [e["rating"] for e in sent] == [0.5]
    with pytest.raises(EventError, match=r"rating: 0\.25 is outside the rating scale"):
        await producer.send_core_event(Rating("u", "i", 0.25, 1.0))


async def test_the_producer_sends_on_the_deployments_scale_keyed_as_the_worker_reads() -> None:
    """An app on a 0.5-10 scale builds ``RatingEvent(rating=8)`` and sends it; a rating
    off that scale is an ``EventError`` at the send (not pydantic's error at the build);
    an id set with spaces around it after validation (``model_copy``) is keyed as the
    worker reads it, stripped; an oversized core record keeps its code; and an event of
    the wrong kind for a ``send_*`` is a ``TypeError`` naming what came."""
    from recsys_online.events import Rating
    from schemas import EventError, ItemEvent, RatingEvent, UserEvent
    from streamer.producer import EventProducer
    from streamer.settings import Settings

    producer = EventProducer(Settings(rating_low=0.5, rating_high=10.0, max_payload_bytes=200))
    sent = []

    async def send(topic: str, key: str, value: bytes) -> None:
        sent.append((topic, key))

    producer._send = send
    await producer.send_rating(RatingEvent(user_id="u1", item_id="i1", rating=8, timestamp=1))
    with pytest.raises(EventError, match=r"rating: 10\.5 is outside the rating scale"):
        await producer.send_rating(
            RatingEvent(user_id="u1", item_id="i1", rating=10.5, timestamp=1)
        )
    event = UserEvent(user_id="u2", timestamp=1).model_copy(update={"user_id": " u2 "})
    await producer.send_user(event)
    item = ItemEvent(op="delete", item_id="i3", timestamp=1)
    await producer.send_item(item.model_copy(update={"item_id": "i3 "}))
    assert sent == [("recsys.ratings", "u1"), ("recsys.users", "u2"), ("recsys.items", "i3")]
    with pytest.raises(EventError) as caught:
        await producer.send_core_event(Rating("u" * 100, "i" * 100, 5.0, 1.0))
    assert caught.value.code == "oversized"
    with pytest.raises(TypeError, match="expected a RatingEvent, got a UserEvent"):
        await producer.send_rating(UserEvent(user_id="u1", timestamp=1))
    with pytest.raises(TypeError, match="expected a RatingEvent or ItemEvent or UserEvent"):
        await producer.send({"user_id": "u1"})
    assert len(sent) == 3


async def test_a_flush_reports_every_failed_send_and_an_interrupted_one_forgets_none() -> None:
    """flush() raises for failed sends (naming how many); a flush cut short (a timeout)
    keeps its sends for the next one, which then reports them."""
    from streamer.producer import DeliveryError, EventProducer
    from streamer.settings import Settings

    producer = EventProducer(Settings())  # built, never started
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    producer._pending = [("r", f"u{n}", f) for n, f in enumerate(futures)]
    flushed = asyncio.Event()

    class Client:
        async def flush(self) -> None:
            await flushed.wait()

    producer._producer = Client()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(producer.flush(), 0.05)
    futures[0].set_result(None)
    for f in futures[1:]:
        f.set_exception(RuntimeError("batch expired"))
    flushed.set()
    with pytest.raises(DeliveryError, match=r"key 'u1'.*batch expired \(and 1 more\)"):
        await producer.flush()
    await producer.flush()  # reported once: nothing left to report


async def test_the_producer_is_idempotent() -> None:
    """Kafka writes a batch the client retries (its acknowledgement lost) once: the
    client runs with idempotence (a producer id and sequence numbers), all replicas
    acknowledging."""
    from streamer.producer import EventProducer
    from streamer.settings import Settings

    client = EventProducer(Settings())._producer  # built, never started
    assert client._txn_manager is not None  # (aiokafka's idempotence state)
    assert client._sender._acks == -1


async def test_send_refuses_what_this_deployments_workers_would_dead_letter() -> None:
    """Every event is checked before it leaves the process against what the workers of
    this deployment check: a rating off its scale, a payload over its limit."""
    from recsys_online import events
    from schemas import EventError, ItemEvent, RatingEvent
    from streamer.producer import EventProducer
    from streamer.settings import Settings

    producer = EventProducer(Settings(rating_high=4.0, max_payload_bytes=300))  # never started
    sent: list[tuple[str, str, bytes]] = []

    async def send(topic: str, key: str, value: bytes) -> None:
        sent.append((topic, key, value))

    producer._send = send
    await producer.send_rating(RatingEvent(user_id="u", item_id="i", rating=4.0, timestamp=1.0))
    with pytest.raises(EventError, match=r"rating: 5\.0 is outside the rating scale"):
        await producer.send_rating(RatingEvent(user_id="u", item_id="i", rating=5.0, timestamp=1.0))
    tags = {f"tag{n}": 1.0 for n in range(30)}
    with pytest.raises(EventError, match="payload too large"):
        await producer.send_item(ItemEvent(op="upsert", item_id="x", tags=tags, timestamp=1.0))
    with pytest.raises(EventError, match="payload too large"):
        await producer.send_core_event(events.ItemUpsert("x", tags, timestamp=1.0))
    assert [key for _, key, _ in sent] == ["u"]


def test_the_sync_producer_holds_a_caller_while_its_queue_is_full(monkeypatch) -> None:
    """Memory stays bounded when Kafka is slower than the app: a send waits while
    ``QUEUE_MAX`` events wait to go, and goes on as they leave; nothing is lost."""
    import threading

    from schemas import RatingEvent
    from streamer import producer as module
    from streamer.settings import Settings

    sent: list[str] = []
    gate = threading.Event()  # Kafka taking nothing until it is set

    class Producer:  # the asyncio producer, Kafka left out
        def __init__(self, settings, linger_ms) -> None:
            self.settings = Settings()

        async def start(self) -> None: ...

        async def _send(self, topic: str, key: str, value: bytes) -> None:
            while not gate.is_set():
                await asyncio.sleep(0.005)
            sent.append(key)

        async def flush(self) -> None: ...

        async def stop(self) -> None: ...

    monkeypatch.setattr(module, "EventProducer", Producer)
    monkeypatch.setattr(module.SyncEventProducer, "QUEUE_MAX", 2)
    producer = module.SyncEventProducer()
    users = [f"u{n}" for n in range(8)]

    def send_all() -> None:
        for user in users:
            producer.send_rating(RatingEvent(user_id=user, item_id="i", rating=4.0, timestamp=1.0))

    sender = threading.Thread(target=send_all)
    sender.start()
    sender.join(0.3)
    try:
        assert sender.is_alive()  # held: the queue is full
        assert len(producer._queue) == 2 and not sent
    finally:
        gate.set()
        sender.join(5)
    producer.close()
    assert not sender.is_alive() and sent == users


def test_the_sync_producer_sends_in_order_and_closes_after_what_is_queued(monkeypatch) -> None:
    """Events are validated in the caller's thread and queued: a send returns at once,
    the producer's own thread sends them in order. A close waits for what is queued (from
    any thread), later sends are refused, and a close interrupted while it waited is
    finished by the next one."""
    import threading

    from schemas import EventError, RatingEvent
    from streamer import producer as module
    from streamer.settings import Settings

    log: list[str] = []

    class Producer:  # the asyncio producer, Kafka left out
        def __init__(self, settings, linger_ms) -> None:
            self.settings = Settings(rating_high=4.0)

        async def start(self) -> None: ...

        async def _send(self, topic: str, key: str, value: bytes) -> None:
            await asyncio.sleep(0.01)
            log.append(f"sent {key}")

        async def flush(self) -> None:
            log.append("flushed")

        async def stop(self) -> None:
            log.append("stopped")

    def rating(user: str, value: float = 4.0) -> RatingEvent:
        return RatingEvent(user_id=user, item_id="i", rating=value, timestamp=1.0)

    monkeypatch.setattr(module, "EventProducer", Producer)
    producer = module.SyncEventProducer()
    started = time.perf_counter()
    for n in range(20):
        producer.send_rating(rating(f"u{n}"))
    assert time.perf_counter() - started < 0.15  # queued: not sent one by one meanwhile
    with pytest.raises(EventError, match="outside the rating scale"):  # (this deployment's)
        producer.send_rating(rating("u99", 5.0))
    sender = threading.Thread(target=producer.send_rating, args=(rating("t"),))
    sender.start()
    sender.join(2)  # queued from another thread (a close first would refuse it)
    assert not sender.is_alive() and len(log) < 20  # (the first 20 still going out)
    producer.close()
    assert log == [f"sent u{n}" for n in range(20)] + ["sent t", "stopped"]
    with pytest.raises(RuntimeError, match="closed"):
        producer.send_rating(rating("late"))
    producer.close()  # again: nothing
    # A close interrupted while it waited (Ctrl-C) is finished by the next one.
    log.clear()
    producer = module.SyncEventProducer()
    producer.send_rating(rating("e3"))
    waits = producer._calls.wait_for

    def interrupted(predicate):
        producer._calls.wait_for = waits
        raise KeyboardInterrupt

    producer._calls.wait_for = interrupted
    with pytest.raises(KeyboardInterrupt):
        producer.close()
    producer.close()
    assert log == ["sent e3", "stopped"] and not producer._thread.is_alive()


def test_the_sync_producer_reports_any_failed_send_and_flushes_what_came_before(
    monkeypatch,
) -> None:
    """A send the client refuses in any way is reported by the next flush, the events
    after it sent all the same; a flush waits for what was queued before it, not for
    what another thread goes on sending."""
    import threading

    from schemas import RatingEvent
    from streamer import producer as module
    from streamer.producer import DeliveryError
    from streamer.settings import Settings

    sent: list[str] = []

    class Producer:
        def __init__(self, settings, linger_ms) -> None:
            self.settings = Settings()

        async def start(self) -> None: ...

        async def _send(self, topic: str, key: str, value: bytes) -> None:
            await asyncio.sleep(0 if key == "s" else 0.001)
            if key == "u1":
                raise ValueError("boom")
            sent.append(key)

        async def flush(self) -> None: ...

        async def stop(self) -> None: ...

    def rating(user: str) -> RatingEvent:
        return RatingEvent(user_id=user, item_id="i", rating=4.0, timestamp=1.0)

    monkeypatch.setattr(module, "EventProducer", Producer)
    with module.SyncEventProducer() as producer:
        for n in range(4):
            producer.send_rating(rating(f"u{n}"))
        with pytest.raises(DeliveryError, match=r"key 'u1'.*ValueError\('boom'\)"):
            producer.flush()
        assert sent == ["u0", "u2", "u3"]
        stop = threading.Event()

        def steady() -> None:
            while not stop.is_set():
                producer.send_rating(rating("s"))

        sender = threading.Thread(target=steady)
        sender.start()
        try:
            flushing = threading.Thread(target=producer.flush)
            flushing.start()
            flushing.join(5)
            assert not flushing.is_alive()  # (it waited for the sender to stop before)
        finally:
            stop.set()
            sender.join(5)


async def test_a_send_past_10000_unflushed_raises_for_nothing_it_did_not_fail() -> None:
    """Every 10,000 sends the producer waits for the acknowledgements (bounded memory):
    a failure found then is an earlier event's, kept for the next flush, so that the send
    that found it (and is sent) does not raise and is not retried into a duplicate."""
    from streamer.producer import DeliveryError, EventProducer
    from streamer.settings import Settings

    producer = EventProducer(Settings())  # built, never started
    loop = asyncio.get_running_loop()

    class Client:
        async def send(self, topic, key, value):
            fut = loop.create_future()
            if key == b"u0":
                fut.set_exception(RuntimeError("batch expired"))
            else:
                fut.set_result(None)
            return fut

        async def flush(self) -> None:
            return None

    producer._producer = Client()
    for n in range(10_000):
        await producer._send("r", f"u{n}", b"{}")  # the last one settles the first 10,000
    assert producer.sent == 10_000 and not producer._pending
    with pytest.raises(DeliveryError, match=r"key 'u0'.*batch expired"):
        await producer.flush()
    await producer.flush()


@pytest.mark.parametrize("args", [["--rate", "0"], ["--rate", "nan"], ["--ratings", "-5"]])
def test_the_demo_refuses_a_rate_or_size_it_cannot_use_before_starting_anything(
    capsys, args
) -> None:
    """Checked when the command is read, not after Kafka, Redis and a worker started
    (a rate of 0 divided by zero there, a negative size failed in the generator)."""
    with pytest.raises(SystemExit) as stop:
        main(["demo", *args])
    assert stop.value.code == 2 and "must be" in capsys.readouterr().err


def test_services_and_demo_need_a_source_checkout(monkeypatch, capsys, tmp_path) -> None:
    """Installed from a wheel, the project's scripts are not there: a clear error."""
    import streamer.cli as cli_module

    monkeypatch.setattr(cli_module, "SERVICES", tmp_path / "missing" / "services.sh")
    assert main(["services", "status"]) == 2
    assert "needs a source checkout" in capsys.readouterr().err


def test_the_demo_reads_shell_quoted_addresses_and_leaves_running_services_up(
    monkeypatch,
) -> None:
    """services.sh prints its exports shell-quoted (a path with spaces survives eval);
    the demo reads them back, and treats services already up as not its own."""
    import subprocess

    from streamer import demo

    calls: list[list[str]] = []
    status = "kafka: up    127.0.0.1:9092 (pid 7)\nredis: DOWN  127.0.0.1:6379 (refused)\n"

    def run(args, **kwargs):
        calls.append(args[2:])
        out = "export RECSYS_KAFKA_LIBS=/home/a\\ b/libs\nexport REDIS_URL=redis://h:1/0\n"
        return subprocess.CompletedProcess(
            args, 0, stdout=status if args[2:] == ["status"] else out
        )

    monkeypatch.setattr(demo.subprocess, "run", run)
    assert demo.services_up() == {
        "RECSYS_KAFKA_LIBS": "/home/a b/libs",
        "REDIS_URL": "redis://h:1/0",
    }
    # Only what is down is the demo's to start and then stop: here Redis, not Kafka.
    assert demo.services_down() == ["redis"] and calls == [["up"], ["status"]]


def test_dead_letters_with_odd_headers_are_listed_and_duplicates_never_sent_back() -> None:
    """Headers another producer wrote (an offset "--5", a superscript digit) read as
    unknown instead of stopping the listing; a letter whose key was cut, or which repeats
    a rating already learned, is listed but never sent back (a second copy of a learned
    rating would count twice once its id left the dedupe window)."""
    from aiokafka import ConsumerRecord

    from streamer.deadletters import DeadLetter, _unsendable
    from streamer.settings import Settings

    def letter(
        reason: str,
        headers: dict[str, bytes] | None = None,
        topic: bytes = b"recsys.ratings",
        value: bytes | None = b"{}",
    ) -> DeadLetter:
        raw = [("recsys.reason", reason.encode()), ("recsys.source.topic", topic)]
        raw += list((headers or {}).items())
        return DeadLetter.from_record(
            ConsumerRecord("dlq", 0, 3, 0, 0, b"u1", value, None, 0, 2, raw)
        )

    odd = letter(
        "malformed JSON: x",
        {"recsys.source.partition": "²".encode(), "recsys.source.offset": b"--5"},
    )
    assert (odd.source_partition, odd.source_offset) == (-1, -1) and odd.row()["id"] == "0:3"
    settings = Settings()
    placed = {"recsys.source.partition": b"0", "recsys.source.offset": b"5"}
    assert _unsendable(settings, letter("malformed JSON: x", placed)) is None
    # Without its source offset a replay could not skip the original: never sent back
    # (and two such letters would count as one event).
    assert "source partition or offset is unknown" in _unsendable(settings, odd)
    duplicate = letter("event_id: duplicate 'e1', already learned", placed)
    assert "already learned" in _unsendable(settings, duplicate)
    cut = letter(
        "key: b'uuu', but ratings are keyed by their user_id 'u'",
        {"recsys.truncated.key_from": b"9", **placed},
    )
    assert cut.truncated_key_from == 9 and "key was cut" in _unsendable(settings, cut)
    # Tombstones refused for their key, or on the ratings topic (which takes none): sent
    # back as they are, each was refused again, a second letter for nothing.
    tombstone = letter(
        "tombstone: its key is not a valid item_id: ' i7 ' is not spelt as events spell ids",
        placed,
        topic=b"recsys.items",
        value=None,
    )
    assert "key it was refused for" in _unsendable(settings, tombstone)
    no_value = letter("no value: a tombstone", placed, value=None)
    assert "tombstone on the ratings topic" in _unsendable(settings, no_value)


def test_the_replays_lean_read_of_a_dead_letters_source_agrees_with_the_full_one() -> None:
    """``refused_offsets`` reads only the source headers of each letter (``source_of``):
    on headers another producer wrote (missing, not numbers, digits of other scripts,
    repeated), it names the same source as the full read, or none where that reads -1."""
    from aiokafka import ConsumerRecord

    from streamer.deadletters import DeadLetter, source_of

    cases = [
        [
            ("recsys.source.topic", b"recsys.ratings"),
            ("recsys.source.partition", b"3"),
            ("recsys.source.offset", b"41"),
        ],
        [("recsys.source.partition", b"3"), ("recsys.source.offset", b"41")],
        [
            ("recsys.source.topic", b"t"),
            ("recsys.source.partition", "\u0663".encode()),
            ("recsys.source.offset", b" 7 "),
        ],
        [
            ("recsys.source.topic", b"t"),
            ("recsys.source.offset", b"1"),
            ("recsys.source.offset", b"2"),
            ("recsys.source.partition", b"--5"),
        ],
        [],
    ]
    seen = []
    for headers in cases:
        record = ConsumerRecord("dlq", 0, 3, 0, 0, b"u1", b"{}", None, 0, 2, headers)
        full = DeadLetter.from_record(record)
        topic, partition, offset = source_of(record)
        assert (topic or b"").decode() == full.source_topic
        assert (-1 if partition is None else partition) == full.source_partition
        assert (-1 if offset is None else offset) == full.source_offset
        seen.append((topic, partition, offset))
    assert seen == [
        (b"recsys.ratings", 3, 41),
        (None, 3, 41),
        (b"t", None, 7),
        (b"t", None, 2),
        (None, None, None),
    ]


def test_stream_checks_the_datas_scale_and_emptiness_before_sending_anything(
    tmp_path, capsys, monkeypatch
) -> None:
    """A half-star file on the default 1-5 scale stopped at its first 0.5, part of it
    sent; a header-only file said "sent 0 ratings" and exited 0. Both are one line and
    exit status 2 before any connection (the broker here is a closed port)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    half = tmp_path / "half.csv"
    half.write_text("user_id,item_id,rating,timestamp\nu1,i1,4.0,1\nu1,i2,0.5,2\n")
    assert main(["stream", str(half), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ratings run from 0.5 to 4, outside this deployment's scale [1, 5]" in err
    assert "RECSYS_RATING_LOW" in err and "nothing sent" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id,rating,timestamp\n")
    assert main(["stream", str(empty), "--quiet"]) == 2
    assert "no ratings to stream" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dashboard", "--port", "70000"], "argument --port: 70000 is not a port (0-65535)"),
        (["dashboard", "--port", "-1"], "argument --port: -1 is not a port (0-65535)"),
        (["worker", "--loglevel", "infoo"], "argument --loglevel: invalid choice: 'infoo'"),
    ],
)
def test_a_port_or_log_level_out_of_range_is_one_line_before_anything_starts(
    args: list[str], expected: str, capsys
) -> None:
    """(A port past 65535 was a bind() traceback; a misspelt level, Faust's 30-line
    dump after the topics were made.)"""
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_runs_folder_goes_with_its_topics(kafka_bootstrap: str, tmp_path) -> None:
    """An isolated run's Faust files and snapshots go when its topics do (every test and
    benchmark run left one behind: 1.8 GB over a day on one machine); another run's
    folder stays."""
    env = isolated_env("cmd", {}, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    env["RECSYS_DATA_DIR"] = str(tmp_path)
    own = tmp_path / env["RECSYS_APP_ID"] / "snapshots"
    own.mkdir(parents=True)
    (own / "snapshot-p0_1.pkl").write_bytes(b"x")
    other = tmp_path / "cmd-another" / "snapshots"
    other.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (its topics were never made)
        remove_topics(env)
    assert not own.parent.exists() and other.exists()


def test_the_demo_prints_a_dash_for_a_figure_not_measured_yet() -> None:
    """Before its first rating a worker writes NaN figures; the demo's progress line
    shows ``-`` for them, not ``nan``, and the measured figures as numbers."""
    from streamer import demo

    class Hash:
        def __init__(self, fields: dict[str, str]) -> None:
            self.fields = {k.encode(): v.encode() for k, v in fields.items()}

        def hgetall(self, key: str) -> dict[bytes, bytes]:
            return self.fields

    figures = {"k": "10", "events": "0", "lag": "3", "rmse": "nan", "ndcg_at_k": "nan"}
    figures |= {"recall_at_k": "nan", "freshness_ms_p50": "nan", "freshness_ms_p99": "nan"}
    line = demo.metrics_line(Hash(figures), "recsys:metrics:w")
    assert "nan" not in line
    assert line.startswith("learned       0  RMSE -  NDCG@10 -  Recall@10 -")
    assert "fresh p50/p99 -/- ms  lag 3" in line
    figures |= {"events": "1200", "rmse": "0.8123", "freshness_ms_p50": "41.6"}
    line = demo.metrics_line(Hash(figures), "recsys:metrics:w")
    assert "learned   1,200  RMSE 0.812  NDCG@10 -" in line and "p50/p99 42/- ms" in line


def test_the_demo_names_the_command_where_the_path_would_not_find_it(tmp_path, monkeypatch) -> None:
    """Where the scripts installed into ``.venv``, the demo's shell never activated it:
    its hints give the command's path; where the PATH finds this install, its name."""
    from streamer import demo

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    command = bin_dir / "recsys-online"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo.sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert demo.command() == ".venv/bin/recsys-online"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert demo.command() == "recsys-online"
    spaced = tmp_path / "my venv" / "bin"  # (a path a shell splits: quoted)
    spaced.mkdir(parents=True)
    (spaced / "recsys-online").write_text("#!/bin/sh\n")
    monkeypatch.setattr(demo.sys, "executable", str(spaced / "python"))
    assert demo.command() == "'my venv/bin/recsys-online'"


def test_stream_checks_every_record_before_sending_any(tmp_path, capsys, monkeypatch) -> None:
    """A record the workers would refuse (here a tag past 64 characters, on the 3rd item)
    was found mid-stream, after the records before it were sent: streaming the file
    again after the fix sent those twice. Now one line, exit 2, before any connection
    (the broker is a closed port)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(f"u{n},i{n % 3},4.0,{100 + n}\n" for n in range(30))
    )
    items = tmp_path / "items.csv"
    items.write_text(f"item_id,tags\ni0,jazz\ni1,rock\ni2,{'x' * 70}\n")
    assert main(["stream", str(ratings), "--items", str(items), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "invalid record, nothing sent" in err and "more than 64" in err


def test_stream_of_a_file_with_no_time_column_says_so(tmp_path, capsys, monkeypatch) -> None:
    """Without a time column the ratings go with timestamps 0, 1, 2, ...: 1970 to the
    workers. ``replay`` said so; ``stream`` sent them without a word."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("user_id,item_id,rating\nu1,i1,4.0\nu2,i1,5.0\n")
    assert main(["stream", str(untimed), "--quiet"]) == 1  # (then: Kafka is not there)
    err = capsys.readouterr().err
    assert "no time column in untimed.csv" in err and "--stamp-now" in err
    assert main(["stream", str(untimed), "--quiet", "--stamp-now"]) == 1
    assert "no time column" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["produce", "rating", "u1", "i1", "4", "--event-id", ""], "event_id"),
        (["deadletters", "--all"], "--all goes with --redrive"),
        (["deadletters", "--dry-run"], "--dry-run goes with --redrive"),
    ],
)
def test_a_flag_that_would_be_ignored_is_refused(args, expected, capsys, monkeypatch) -> None:
    """An empty ``--event-id`` was dropped (no de-duplication, without a word); ``--all``
    and ``--dry-run`` without ``--redrive`` were ignored (a listing of the last 20)."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(args) == 2
    assert expected in capsys.readouterr().err


def test_produce_of_no_events_is_not_a_success(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    empty = tmp_path / "none.jsonl"
    empty.write_text("\n")
    assert main(["produce", "jsonl", "rating", str(empty)]) == 2
    assert f"no events in {empty}" in capsys.readouterr().err


def test_metrics_shows_the_live_workers_when_the_shared_hash_is_gone(monkeypatch, capsys) -> None:
    """The shared hash gone (expired, or deleted) while workers' own hashes live: their
    figures, not "is a worker running?" and exit 1."""
    from streamer import commands

    class Client:
        def __init__(self, *args, **kwargs) -> None: ...

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None: ...

        def metrics(self) -> dict:
            return {}

        def worker_metrics(self) -> dict:
            return {"h:1": {"events": "12", "metrics_url": "http://h:8"}}

    monkeypatch.setattr(commands, "RecommendationClient", Client)
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert "1 live worker(s)" in out and "http://h:8" in out and "12" in out
