"""The list documents apps read from Redis: their JSON, built for a batch of users."""

from __future__ import annotations

import json

import numpy as np

from recsys_online.recommender import Recommendation
from streamer.sink import list_document, list_documents


def test_a_batch_of_documents_is_each_list_with_scores_rounded_to_six_places() -> None:
    """Each document of a batch holds its own list, in order, every field as the
    recommendation has it and the score rounded as Python's ``round(score, 6)`` does,
    for lists of different lengths (empty included) and the popular list's null user."""
    rng = np.random.default_rng(3)
    lists: dict[str | None, list[Recommendation]] = {}
    for n, user in enumerate(["u1", "u2", None, "u3"]):
        scale = 10.0 ** rng.integers(-7, 3, 3 * n)
        scores = (rng.standard_normal(3 * n) * scale).astype(np.float32)
        lists[user] = [
            Recommendation(f"i{j}", float(s), f"why {j}", "content", None if j % 2 else f"b{j}")
            for j, s in enumerate(scores.tolist())
        ]
    docs = list_documents(lists, 7, 123.5)
    assert len(docs) == len(lists)
    for (user, recs), raw in zip(lists.items(), docs, strict=True):
        doc = json.loads(raw)
        assert doc["user_id"] == user and doc["model_version"] == 7
        assert doc["updated_at"] == 123.5
        want = [
            {
                "item_id": r.item,
                "score": round(r.score, 6),
                "reason": r.reason,
                "source": r.source,
                "because": r.because,
            }
            for r in recs
        ]
        assert doc["items"] == want
        assert raw == list_document(user, recs, 7, 123.5)
    assert sum(len(json.loads(d)["items"]) for d in docs) == 18


def test_the_sink_waits_out_redis_away_but_not_a_programming_error() -> None:
    from redis import exceptions as e
    from redis.sentinel import MasterNotFoundError

    from streamer.sink import unreachable

    away = [
        e.ConnectionError("refused"),
        e.TimeoutError("slow"),
        e.ClusterDownError("CLUSTERDOWN The cluster is down"),
        e.ClusterError("TTL exhausted."),  # redirections given up during a failover
        e.SlotNotCoveredError("no node serves slot 7"),
        e.RedisClusterException("Redis Cluster cannot be connected. Please provide ..."),
        e.RedisClusterException("All slots are not covered after query all startup_nodes."),
        e.RedisClusterException("startup_nodes could not agree on a valid slots cache"),
        MasterNotFoundError("No master found for 'recsys'"),  # a Sentinel failover
        # Redis answering, but refusing writes for a while:
        e.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        e.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."),
        e.ReadOnlyError("You can't write against a read only replica."),
        e.MasterDownError("MASTERDOWN Link with MASTER is down"),
        e.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        e.ResponseError("NOREPLICAS Not enough good replicas to write."),  # min-replicas
        e.ResponseError("BUSY Redis is busy running a script. You can only call ..."),
        # (inside MULTI/EXEC, or a cluster's pipeline: redis-py puts the command first)
        e.ResponseError("Command # 1 (SET k v) of pipeline caused error: MISCONF Redis is ..."),
        e.ResponseError("Command # 2 (HSET h f v) of pipeline caused error: NOREPLICAS Not ..."),
    ]
    never = [
        e.CrossSlotTransactionError("All keys must map to the same slot"),
        e.RedisClusterException("No way to dispatch this command to Redis Cluster."),
        e.ResponseError("WRONGTYPE"),
        e.ResponseError("ERR unknown command 'MISCONF'"),
        e.ResponseError("BUSYKEY Target key name already exists."),
    ]
    assert all(map(unreachable, away))
    assert not any(map(unreachable, never))


async def test_deleted_items_lists_are_removed_a_chunk_at_a_time(monkeypatch) -> None:
    """A start reads every delete the catalog kept: their keys went in one MULTI/EXEC
    (300,000 took 7.7 s, inside a tick); now ``DELETE_CHUNK`` at a time, every one."""
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    sink = RedisSink.__new__(RedisSink)
    sink.settings = Settings(key_prefix="p:")
    sent: list[list[str]] = []

    class Pipe:
        def __init__(self) -> None:
            self.keys: list[str] = []

        def delete(self, key: str) -> None:
            self.keys.append(key)

    async def transaction(what: str, queue) -> None:
        pipe = Pipe()
        queue(pipe)
        sent.append(pipe.keys)

    monkeypatch.setattr(sink, "_transaction", transaction)
    monkeypatch.setattr(RedisSink, "DELETE_CHUNK", 2)
    await sink.delete_similar([f"i{n}" for n in range(5)])
    assert sent == [
        ["p:similar:i0", "p:similar:i1"],
        ["p:similar:i2", "p:similar:i3"],
        ["p:similar:i4"],
    ]
