"""Redis: where apps read recommendations and dashboards read metrics (layout in docs)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recsys_online.json_safe import json_safe
from recsys_online.recommender import Recommendation
from schemas import ItemEvent
from streamer.client import (
    REDIS_ERRORS,
    RecommendationsUnavailable,
    SentinelURL,
    aclose_client,
    close_client,
    parse_list,
    read_live_workers,
    redis_client,
)
from streamer.metrics import fleet_metrics
from streamer.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def list_document(
    user: str | None, recs: Sequence[Recommendation], version: int, updated_at: float
) -> bytes:
    """The JSON document stored under ``recs:{user}`` (and ``popular``), stable for readers.

    Encoded with orjson: a worker writes one per touched user per batch, and the standard
    library took 23 us for a 10-item list against 8 us here.

    >>> import json
    >>> from recsys_online.recommender import Recommendation
    >>> doc = list_document("u1", [Recommendation("i9", 0.5, "popular now", "popular")], 3, 1.0)
    >>> sorted(json.loads(doc)["items"][0].items())[:3]
    [('because', None), ('item_id', 'i9'), ('reason', 'popular now')]
    """
    return list_documents({user: recs}, version, updated_at)[0]


def list_documents(
    lists: Mapping[str | None, Sequence[Recommendation]],
    version: int,
    updated_at: float,
    subject: str = "user_id",
) -> list[bytes]:
    """:func:`list_document` of each user's list, scores rounded to 6 decimals
    (``subject="item_id"``: of each item's "more like this" list).

    Every score of the batch is rounded in one array operation: Python's ``round`` took
    5 of a 10-item document's 9 us (the same values on a million float32 scores).

    >>> from recsys_online.recommender import Recommendation
    >>> docs = list_documents({"u1": [Recommendation("i9", 0.12345678, "r", "popular")]}, 1, 2.0)
    >>> docs[0][:60]
    b'{"user_id":"u1","items":[{"item_id":"i9","score":0.123457,"r'
    """
    scores = np.fromiter((r.score for recs in lists.values() for r in recs), np.float64)
    rounded = iter(np.round(scores, 6).tolist())  # each list takes its own, in order
    return [
        orjson.dumps(
            {
                subject: user,
                "items": [
                    {
                        "item_id": item,
                        "score": score,
                        "reason": reason,
                        "source": source,
                        "because": because,
                    }
                    for (item, _, reason, source, because), score in zip(
                        recs, rounded, strict=False
                    )
                ],
                "model_version": version,
                "updated_at": updated_at,
            }
        )
        for user, recs in lists.items()
    ]


# SET each key to its value with the TTL, in one script call: atomic as a MULTI/EXEC of
# the SETs, but one command to encode and one reply to parse instead of one per list
# (300 lists: 3.9 ms against 7.7-8.4 ms for a transaction of SETs, Redis on this machine).
# Each key (ARGV: its TTL in seconds, its document; ...): with that TTL, or, for a TTL of
# 0, only where the key still exists and with the TTL it has (XX KEEPTTL, Redis >= 6).
_SET_ALL = """
for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[2 * i - 1])
  if ttl > 0 then
    redis.call('SET', key, ARGV[2 * i], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[2 * i], 'XX', 'KEEPTTL')
  end
end
return #KEYS
"""

#: ``RedisSink.publish_lists``' ``ttl`` for lists rewritten without their users doing
#: anything: only lists still in Redis, which keep their expiry.
KEEP_TTL = 0

# Replace a hash whole (ARGV: a TTL in seconds, 0 for none, then field, value, ...): one
# key, so atomic on a cluster too, where a transaction cannot span the metrics keys.
_REPLACE_HASH = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# A worker's entry in the registry of live workers, scored by the Redis server's clock
# (as the worker hashes' TTLs run), and entries older than ARGV[2] seconds dropped: by
# the workers' own clocks, one whose clock ran ahead dropped the entries of the others.
_REGISTER_WORKER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
"""


def unreachable(exc: BaseException) -> bool:
    """Redis away for now, which the sink waits out: refused or lost connections,
    timeouts, a cluster that is down, has a slot no node serves, or gave up redirecting
    a command (``TTL exhausted``, during a failover), or none of whose nodes answer.
    Also a Redis that refuses writes for a while (:func:`refusing_writes`). Not a
    programming error (a cross-slot transaction, say), which would never pass.
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ClusterError):
        return True
    if isinstance(exc, SlotNotCoveredError) or refusing_writes(exc):
        return True
    # (redis-py has no classes of their own for a cluster none of whose nodes answer, or
    # whose slot map is being changed, when its client builds the map)
    return type(exc) is RedisClusterException and any(why in str(exc) for why in _CLUSTER_AWAY)


_CLUSTER_AWAY = ("cannot be connected", "All slots are not covered", "could not agree")


def refusing_writes(exc: BaseException) -> bool:
    """Redis answers but refuses writes, for a time its operators or its own work end:
    out of memory under ``noeviction`` (until keys expire or memory is added), a failed
    background save (``MISCONF``), a replica that the connection still reaches after a
    failover (``READONLY``: the sink reconnects), a primary away (``MASTERDOWN``), a
    cluster slot being moved (``TRYAGAIN``), a primary whose ``min-replicas-to-write``
    replicas are away (``NOREPLICAS``), another client's script running (``BUSY``).

    >>> from redis.exceptions import OutOfMemoryError, ResponseError
    >>> refusing_writes(OutOfMemoryError("command not allowed when used memory > 'maxmemory'"))
    True
    >>> refusing_writes(ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    True
    >>> refusing_writes(ResponseError("NOREPLICAS Not enough good replicas to write."))
    True
    >>> refusing_writes(ResponseError("BUSY Redis is busy running a script."))
    True
    >>> refusing_writes(ResponseError("Command # 1 (SET k v) of pipeline caused error: "
    ...                               "('NOREPLICAS Not enough good replicas to write.',)"))
    True
    >>> from redis.exceptions import ExecAbortError
    >>> refusing_writes(ExecAbortError("Transaction discarded because of: OOM command not "
    ...                                "allowed when used memory > 'maxmemory'."))
    True
    >>> refusing_writes(ResponseError("WRONGTYPE Operation against a key"))
    False
    """
    if isinstance(exc, OutOfMemoryError | ReadOnlyError | MasterDownError | TryAgainError):
        return True
    if not isinstance(exc, ResponseError):
        return False
    # (a pipeline's error is Redis's, after "Command # n (...) of pipeline caused error: ",
    # as it is or as a tuple's repr: "('NOREPLICAS ...',)"; a transaction refused at EXEC
    # after its commands were queued says why after "Transaction discarded because of: ")
    said = str(exc).rpartition("of pipeline caused error: ")[2].lstrip("('\"")
    said = said.rpartition("Transaction discarded because of: ")[2]
    return said.startswith(_REFUSING)


# Redis's words for a refusal of writes, read where redis-py gives no class of its own
# (and, inside a pipeline's or a discarded transaction's message, where it gives none).
_REFUSING = ("MISCONF", "NOREPLICAS", "BUSY ", "OOM", "READONLY", "MASTERDOWN")


WORKER_TTL_S = 30  # a worker's own metrics hash lives at least this long after its last write


def worker_ttl_s(settings: Settings) -> float:
    """How long a worker's metrics hash and registry entry outlive its last write: three
    refresh periods (each publishes them), at least ``WORKER_TTL_S``, so a worker whose
    timer runs every minute is not taken for gone between two ticks.

    >>> worker_ttl_s(Settings()), worker_ttl_s(Settings(refresh_every_s=60))
    (30, 180)
    """
    return max(WORKER_TTL_S, math.ceil(3 * settings.refresh_every_s))


def redis_refusal(redis_url: str, timeout_s: float = 5.0, cluster: bool = False) -> str | None:
    """Why the worker could never write to Redis at ``redis_url`` (the credentials
    refused, the server's TLS certificate not trusted, a cluster node taken for a lone
    Redis or the other way round, ``cluster`` saying which is expected), or None: when
    Redis answers, and when it does not answer yet (the sink waits for a Redis that is
    down, so a worker may start first). One line, without the password.

    >>> redis_refusal("redis://127.0.0.1:1/0", timeout_s=0.2) is None  # not up: waited for
    True
    """
    import ssl

    import redis

    from streamer.client import is_sentinel, redacted_url, sentinel_url

    where = redacted_url(redis_url)
    options = _probe_options(timeout_s)
    if is_sentinel(redis_url):
        url = sentinel_url(redis_url)
        refused, master = _sentinel_master_address(url, where, timeout_s)
        if refused is not None or master is None:  # (no sentinel answers yet: waited for)
            return refused
        # The master the sentinels name, asked directly: through the sentinels, redis-py
        # would retry each one that does not answer, for minutes.
        client = redis.Redis(host=master[0], port=master[1], **url.master, **options)
    else:
        client = redis_client(redis_url, **options)
    try:
        client.ping()
        return _too_old(client, where) or _cluster_mismatch(client, where, cluster)
    except redis.AuthenticationError as exc:
        return f"Redis at {where} refused the credentials: {exc}"
    except redis.ConnectionError as exc:
        if isinstance(exc.__context__, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
            return f"Redis at {where}: TLS failed: {exc}"
        return None
    except redis.TimeoutError:  # slow, or not up yet: waited for, as when it is down
        return None
    except redis.ResponseError as exc:  # e.g. NOAUTH from a server that wants a password
        return f"Redis at {where} refused the connection: {exc}"
    finally:
        close_client(client)


def _probe_options(timeout_s: float) -> dict:
    """One try of ``timeout_s`` per question at start (redis-py's default retries a
    timeout three times with backoff: a silent host cost 7.7 s at a 0.5 s timeout)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }


def _sentinel_master_address(
    url: SentinelURL, where: str, timeout_s: float
) -> tuple[str | None, tuple[str, int] | None]:
    """Ask each sentinel of ``url``: why the worker could never use them (they
    answer but watch no master of the URL's name, a misspelling that would otherwise be
    waited for forever; they refuse the credentials; they are no sentinels), and the
    master's address as the first that knows it names it (None: none answers yet)."""
    import redis

    watched: set[str] = set()
    answered = False
    master = None
    not_sentinels = []  # addresses where something else answered
    for host, port in url.sentinels:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sentinel = redis.Redis(host=host, port=port, **_probe_options(timeout_s), **url.sentinel)
        try:
            masters = sentinel.sentinel_masters()
            watched |= set(masters)
            answered = True
            known = masters.get(url.service)
            if master is None and known:
                master = (str(known["ip"]), int(known["port"]))
        except redis.AuthenticationError as exc:
            return f"Redis Sentinel at {address} refused the credentials: {exc}", None
        except (redis.ConnectionError, redis.TimeoutError):  # away or slow: the others
            continue
        except (redis.ResponseError, redis.InvalidResponse):  # a Redis, or no Redis at all
            not_sentinels.append(address)
        finally:
            sentinel.close()
    if answered and url.service not in watched:
        names = ", ".join(sorted(watched)) or "none"
        why = f"no sentinel of {where} watches a master named {url.service!r} (they watch: {names})"
        return why, None
    if not answered and not_sentinels:
        return f"not a Redis Sentinel at {', '.join(not_sentinels)} (of {where})", None
    return None, master


def _too_old(client, where: str) -> str | None:
    """A Redis before 6.0 refuses ``SET ... KEEPTTL`` (lists rewritten for a new or
    deleted item keep their expiry): the worker's writes would be tried forever.

    >>> class Old:
    ...     def info(self, section): return {"redis_version": "5.0.14"}
    >>> _too_old(Old(), "redis://r:6379/0")
    'Redis at redis://r:6379/0 is 5.0.14: the worker needs Redis 6.0 or later (SET ... KEEPTTL)'
    """
    import redis

    try:
        version = str(client.info("server").get("redis_version", ""))
    except (redis.ResponseError, redis.TimeoutError):  # (not known: a managed Redis)
        return None
    major = version.split(".")[0]
    if major.isdigit() and int(major) < 6:
        return (
            f"Redis at {where} is {version}: the worker needs Redis 6.0 or later (SET ... KEEPTTL)"
        )
    return None


def _cluster_mismatch(client, where: str, cluster: bool) -> str | None:
    """A worker told of a lone Redis writing to a cluster node would fail at its first
    write of several keys (CROSSSLOT); told of a cluster, it would find no slot map."""
    import redis

    try:
        enabled = bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except (redis.ResponseError, redis.TimeoutError):  # (INFO renamed or refused, or
        return None  # slow: a managed Redis) not known
    if enabled and not cluster:
        return f"Redis at {where} is a cluster node: set RECSYS_REDIS_CLUSTER=true"
    if cluster and not enabled:
        return f"RECSYS_REDIS_CLUSTER is set, but Redis at {where} is not a cluster node"
    return None


def _item_ids(document: bytes | None, k: int) -> list[str] | None:
    """The item ids of a list document, read as the clients read it (None: no document,
    or not one they would serve)."""
    if document is None:
        return None
    try:
        return [r.item_id for r in parse_list("", None, document, k).items]
    except RecommendationsUnavailable:
        return None


class RedisSink:
    """Writes lists, item metadata and metrics, each batch atomically (one script call or
    one MULTI/EXEC transaction).

    On a Redis Cluster (``settings.redis_cluster``) a batch's keys live on several
    nodes, which no transaction spans: each batch is one pipeline (split by node) whose
    every command writes one key whole (a list's SET, a hash replaced by a script), so
    a reader still never sees a half-written list or hash.

    Every per-user list carries a TTL (``recs_ttl_s``) from its user's last rating or
    declaration, so lists of users who went away expire instead of growing without
    bound: a list rewritten for anything else (a deleted or new item, the refresh
    timer) keeps its expiry, and one expired is not written again (:data:`KEEP_TTL`).

    A write Redis cannot take (connection refused or lost, a timeout, Redis loading its
    data) is tried again, waiting twice as long each time up to ``max_wait_s``, until it
    lands: the worker stops taking events meanwhile (its lag grows, nothing is lost) and
    goes on where it was when Redis is back.
    """

    max_wait_s = 5.0

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.cluster = settings.redis_cluster
        self.redis = client or redis_client(
            settings.redis_url, cluster=self.cluster, asynchronous=True
        )
        self._set_all = self.redis.register_script(_SET_ALL)  # (reloaded if Redis lost it)
        # Lists are written one batch at a time, in the order they were ranked (the lock
        # is first come, first served): two writes each waiting out Redis could otherwise
        # land in either order, an older list over a newer one.
        self._lists_written = asyncio.Lock()
        # When each write still being tried again began (monotonic), by call: one write
        # landing says nothing of another still waiting.
        self._waiting: dict[object, float] = {}

    def waiting_s(self) -> float:
        """How long the oldest write still tried again has waited (0: none waits)."""
        since = min(self._waiting.values(), default=None)
        return 0.0 if since is None else time.monotonic() - since

    async def _until_written(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``, tried again while Redis is unreachable (marked waiting, for
        :meth:`waiting_s`, from its first failed try until it lands or gives up)."""
        wait, failures, token = 0.05, 0, object()
        try:
            while True:
                try:
                    result = await write()
                except REDIS_ERRORS as exc:
                    if not unreachable(exc):
                        raise
                    if isinstance(exc, ReadOnlyError):  # a replica now: the next try reconnects
                        await self._reconnect()
                    failures += 1
                    self._waiting.setdefault(token, time.monotonic())
                    if failures == 1 or failures % 20 == 0:
                        log.warning(
                            "Redis did not take %s (%s); trying again (%d tries so far)",
                            what,
                            exc,
                            failures,
                        )
                    await asyncio.sleep(wait)
                    wait = min(2 * wait, self.max_wait_s)
                    continue
                if failures:
                    log.warning("Redis took %s after %d failed tries", what, failures)
                return result
        finally:
            self._waiting.pop(token, None)

    async def _reconnect(self) -> None:
        """Drop the pooled connections, so the next command connects afresh (to the
        primary the address names now)."""
        pool = getattr(self.redis, "connection_pool", None)
        if pool is not None:
            try:
                await pool.disconnect(inuse_connections=False)  # (others in use: theirs)
            except (*REDIS_ERRORS, OSError):
                pass

    async def _transaction(self, what: str, queue: Callable[[Pipeline], None]) -> None:
        """The commands ``queue`` adds to a pipeline, run as one MULTI/EXEC transaction
        (again, from the start, while Redis is unreachable); on a cluster, as one
        pipeline of commands that each write one key."""

        async def write() -> None:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                queue(pipe)
                await pipe.execute()

        await self._until_written(what, write)

    async def publish_lists(
        self,
        lists: Mapping[str, Sequence[Recommendation]],
        version: int,
        similar: bool = False,
        ttl: int | Mapping[str, int] | None = None,
    ) -> float:
        """Store each user's list (``similar``: each item's "more like this" list, under
        ``similar:{item}``); returns the time the transaction completed.

        ``ttl``: each list's lifetime in seconds, ``recs_ttl_s`` when None (or for a
        name a mapping leaves out); :data:`KEEP_TTL` rewrites only lists still in Redis
        and keeps their expiry (a list rewritten for a deleted or new item, not for
        anything its user did, must not outlive the user's last visit).
        """
        if not lists:
            return time.time()
        now = time.time()
        key = self.settings.key
        kind, subject = ("similar", "item_id") if similar else ("recs", "user_id")
        keys = [key(kind, name) for name in lists]
        documents = list_documents(lists, version, now, subject)
        full = self.settings.recs_ttl_s
        if isinstance(ttl, Mapping):
            ttls = [max(0, math.ceil(ttl.get(name, full))) for name in lists]
        else:
            ttls = [full if ttl is None else max(0, math.ceil(ttl))] * len(keys)
        async with self._lists_written:
            if self.cluster:

                def queue(pipe: Pipeline) -> None:
                    for k, document, ex in zip(keys, documents, ttls, strict=True):
                        if ex > 0:
                            pipe.set(k, document, ex=ex)
                        else:
                            pipe.set(k, document, xx=True, keepttl=True)

                await self._transaction("lists", queue)
            else:
                args = [part for pair in zip(ttls, documents, strict=True) for part in pair]
                await self._until_written("lists", lambda: self._set_all(keys=keys, args=args))
        return time.time()

    async def publish_state(
        self,
        popular: Sequence[Recommendation],
        metrics: Mapping[str, float | int],
        version: int,
        worker_id: str,
        metrics_url: str = "",
        popular_owner: bool = True,
        partitions: Iterable[int] | None = None,
    ) -> list[str] | None:
        """The popularity list (``popular_owner``: written; else only where there is none
        yet) and the metrics: this worker's own ``metrics:worker:{id}`` (expiring if the
        worker dies), the shared ``metrics`` hash (every live worker's figures together,
        :func:`~streamer.metrics.fleet_metrics`, as this worker read the others' hashes
        just before, replaced whole), and one snapshot pushed on ``metrics:history``
        (newest first, capped at ``metrics_history`` entries) for the dashboard's charts.
        ``partitions``: the ratings partitions the worker holds, in its own hash: another
        worker's figures from before it handed one of them on are left out of the
        fleet's (:func:`~streamer.registry.superseded`).

        Returns the item ids of the popular list Redis holds after the write, the one
        apps show unknown users (None: none there, or not a list document).
        """
        key = self.settings.key
        now = time.time()
        own_fields = {k: str(v) for k, v in metrics.items()}
        about = {"worker": worker_id, "updated_at": str(now), "metrics_url": metrics_url}
        held = ",".join(map(str, sorted(partitions or ())))
        mapping = own_fields | about | {"partitions": held}
        snapshot = json.dumps(
            json_safe(dict(metrics)) | {"worker": worker_id, "t": now},
            separators=(",", ":"),
        )
        own = key("metrics", "worker", worker_id)
        ttl = worker_ttl_s(self.settings)
        history = key("metrics", "history")
        workers = key("metrics", "workers")  # worker id -> its last publish time
        fields = [part for pair in mapping.items() for part in pair]

        def queue(pipe: Pipeline, fleet: Mapping[str, float | int]) -> None:
            if popular_owner or popular:  # (an empty list where there was none: no list)
                document = list_document(None, popular, version, now)
                pipe.set(key("popular"), document, nx=not popular_owner)
            # Replaced whole: a field no live worker publishes (snapshots or sharing off)
            # must not stay behind from an earlier one.
            shared = {k: str(v) for k, v in fleet.items()} | about
            shared_fields = [part for pair in shared.items() for part in pair]
            # (With the workers' TTL: once none publishes, it goes, as their own hashes do,
            # instead of showing a stopped fleet's last figures as current.)
            pipe.execute_command("EVAL", _REPLACE_HASH, 1, key("metrics"), ttl, *shared_fields)
            pipe.execute_command("EVAL", _REPLACE_HASH, 1, own, ttl, *fields)
            # Readers list live workers from this registry, not by scanning the keyspace;
            # ids not heard from for a worker hash's lifetime leave it.
            pipe.execute_command("EVAL", _REGISTER_WORKER, 1, workers, worker_id, ttl)
            pipe.lpush(history, snapshot)
            pipe.ltrim(history, 0, self.settings.metrics_history - 1)
            pipe.get(key("popular"))  # (last: what the write left there)

        async def write() -> bytes | None:
            # (the other live workers' figures, as readers count them: this worker's own
            # replace any it held the partitions of before)
            others = await read_live_workers(self.redis, key, latest=(worker_id, held))
            fleet = fleet_metrics({**others, worker_id: own_fields}, self.settings.metrics_window)
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                queue(pipe, fleet)
                return (await pipe.execute())[-1]

        return _item_ids(await self._until_written("metrics", write), self.settings.k)

    async def withdraw(self, worker_id: str) -> None:
        """A worker stopping: its own metrics hash and its entry in the registry of live
        workers go at once, instead of lasting out their TTL (``recsys-online metrics``
        counted a stopped worker as live meanwhile), and the shared hash with the last
        one. One key a command (a cluster's slots)."""
        key = self.settings.key
        await self.redis.zrem(key("metrics", "workers"), worker_id)
        await self.redis.delete(key("metrics", "worker", worker_id))
        # The last one out takes the fleet's figures too: they lasted out their TTL, and
        # readers showed "0 live workers" beside them. (A worker starting meanwhile
        # writes them again at its next publish, within a second.)
        if not await self.redis.zcard(key("metrics", "workers")):
            await self.redis.delete(key("metrics"))

    async def publish_items(self, events: Sequence[ItemEvent]) -> None:
        """Item metadata for apps rendering lists (``item:{item_id}`` hashes), one
        transaction per batch; a delete removes the item's hash (its "more like this"
        list is removed by :meth:`delete_similar`, once the model has dropped it)."""
        if not events:
            return
        now = time.time()

        def queue(pipe: Pipeline) -> None:
            for event in events:
                key = self.settings.key("item", event.item_id)
                if event.op == "delete":
                    pipe.delete(key)
                else:
                    pipe.hset(
                        key,
                        mapping={
                            "title": event.title or "",
                            "tags": json.dumps(dict(event.tags)),
                            "updated_at": now,
                        },
                    )

        await self._transaction("item metadata", queue)

    DELETE_CHUNK = 1000  # keys removed per transaction (the event loop runs between)

    async def delete_similar(self, items: Sequence[str]) -> None:
        """Remove deleted items' "more like this" lists (one key each, so on a cluster
        too), ``DELETE_CHUNK`` at a time: a catalog read at a start can delete many."""
        for lo in range(0, len(items), self.DELETE_CHUNK):
            chunk = items[lo : lo + self.DELETE_CHUNK]

            def queue(pipe: Pipeline, chunk: Sequence[str] = chunk) -> None:
                for item in chunk:
                    pipe.delete(self.settings.key("similar", item))

            await self._transaction("similar lists removed", queue)

    async def close(self) -> None:
        await aclose_client(self.redis)
