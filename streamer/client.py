"""Reading live recommendations from Redis: what a service calls to show a user's list.

Workers write ``{prefix}recs:{user_id}`` (one JSON document per user) and
``{prefix}popular`` (the list for users with none); see docs/streamer.md for the layout.
The client reads the user's list in one round trip and falls back to the popular list,
so an app always has something to show; the popular list, the same for every user, is
read again at most once a second (:attr:`_Keys.POPULAR_TTL_S`).

>>> client = RecommendationClient("redis://127.0.0.1:1/0", timeout=0.2)
>>> client.recommend("u1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamer.client.RecommendationsUnavailable: cannot reach Redis at redis://127.0.0.1:1/0: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import AskError, MovedError, RedisClusterException

from schemas import clean_id
from streamer.registry import superseded

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "recsys:"


class RecommendationsUnavailable(RuntimeError):
    """Redis cannot be reached, or what it holds is not a recommendation list."""


# What reading or writing Redis can raise when it is away or refuses: a cluster client
# that reaches no node raises RedisClusterException, which is not a RedisError.
REDIS_ERRORS = (redis.RedisError, RedisClusterException)
T = TypeVar("T")


def redis_client(url: str, cluster: bool = False, asynchronous: bool = False, **options):
    """A redis-py client of the Redis at ``url``, of the Redis Cluster whose node it
    names (``cluster``: the other nodes are found from it, and each key goes to the node
    serving its slot), or of the master that Redis Sentinel names (a
    ``redis+sentinel://`` URL, :func:`sentinel_url`). ``options`` go to the connections
    (timeouts, pool size).

    A cluster client connects when it is made (an asynchronous one at its first command)
    and raises ``redis.exceptions.RedisClusterException`` when no node answers. A
    Sentinel client asks the sentinels for the master at each new connection, so after a
    failover it writes to the new master.

    >>> redis_client("redis://127.0.0.1:1/0", socket_timeout=0.2).__class__.__name__
    'Redis'
    """
    if is_sentinel(url):
        return _sentinel_master(sentinel_url(url), asynchronous, options)
    if cluster:
        kind = aioredis.RedisCluster if asynchronous else redis.RedisCluster
    else:
        kind = aioredis.Redis if asynchronous else redis.Redis
    return kind.from_url(url, **options)


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    """``url`` names Redis Sentinel, not a Redis (``redis+sentinel://...``)."""
    return urlsplit(url).scheme in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL taken apart: where the sentinels are, which master
    they watch, and how to connect to it."""

    sentinels: list[tuple[str, int]]
    service: str
    master: dict[str, object]  # connection options of the master (and its replicas)
    sentinel: dict[str, object]  # connection options of the sentinels


def sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    (``rediss+sentinel://`` for TLS to the master; query options ``sentinel_password``,
    ``sentinel_username`` for sentinels that want them, ``ssl_ca_certs``). The user and
    password are the master's; sentinels listen on 26379 unless a port is given.

    >>> u = sentinel_url("redis+sentinel://:pw@h1,h2:26380/recsys/2?sentinel_password=sp")
    >>> u.sentinels, u.service, u.master, u.sentinel
    ([('h1', 26379), ('h2', 26380)], 'recsys', {'db': 2, 'password': 'pw'}, {'password': 'sp'})
    >>> sentinel_url("redis+sentinel://[::1]:5000,10.0.0.2/m").sentinels
    [('::1', 5000), ('10.0.0.2', 26379)]
    >>> sentinel_url("redis+sentinel://h1/")
    Traceback (most recent call last):
    ...
    ValueError: redis+sentinel://h1/: name the master the sentinels watch (redis+sentinel://host:26379/NAME/0)
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        if host.startswith("["):  # [IPv6]:port
            name, _, port = host[1:].partition("]")
            port = port.removeprefix(":")
        else:
            name, _, port = host.partition(":")
        try:
            sentinels.append((name, int(port) if port else SENTINEL_PORT))
        except ValueError:
            raise ValueError(f"{redacted_url(url)}: bad sentinel address {host!r}") from None
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not sentinels:
        raise ValueError(f"{redacted_url(url)}: no sentinel address")
    if not path:
        raise ValueError(
            f"{redacted_url(url)}: name the master the sentinels watch "
            "(redis+sentinel://host:26379/NAME/0)"
        )
    master: dict[str, object] = {}
    if len(path) > 1:
        try:
            master["db"] = int(path[1])
        except ValueError:
            raise ValueError(f"{redacted_url(url)}: bad database number {path[1]!r}") from None
    user, has_password, password = userinfo.partition(":")
    if user:
        master["username"] = unquote(user)
    if has_password:
        master["password"] = unquote(password)
    sentinel: dict[str, object] = {}
    for name, values in parse_qs(parts.query).items():
        if name in ("sentinel_password", "sentinel_username"):
            sentinel[name.removeprefix("sentinel_")] = values[-1]
        elif name == "ssl_ca_certs":
            if parts.scheme != "rediss+sentinel":  # (redis-py refuses it, with a TypeError)
                raise ValueError(
                    f"{redacted_url(url)}: ssl_ca_certs is for TLS: the scheme is rediss+sentinel://"
                )
            master[name] = values[-1]
        else:
            raise ValueError(f"{redacted_url(url)}: unknown option {name!r}")
    if parts.scheme == "rediss+sentinel":
        master["ssl"] = True
    return SentinelURL(sentinels, path[0], master, sentinel)


def _sentinel_master(url: SentinelURL, asynchronous: bool, options: dict):
    """A client of ``url``'s master, through a Sentinel manager of its own (kept on the
    client, for :func:`close_client` to close its connections to the sentinels too)."""
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel
    from redis.sentinel import Sentinel

    kind = AsyncSentinel if asynchronous else Sentinel
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    manager = kind(url.sentinels, sentinel_kwargs={**timeouts, **url.sentinel})
    client = manager.master_for(url.service, **url.master, **options)
    client.recsys_sentinels = manager
    return client


def close_client(client) -> None:
    """Close a client :func:`redis_client` made, and its connections to the sentinels."""
    client.close()
    manager = getattr(client, "recsys_sentinels", None)
    if manager is not None:
        manager.close()


async def aclose_client(client) -> None:
    """:func:`close_client` of an asynchronous client."""
    await client.aclose()
    manager = getattr(client, "recsys_sentinels", None)
    if manager is not None:
        await manager.aclose()


@dataclass(frozen=True)
class Recommended:
    """One item of a list: its id, blended score, why it is there, and optionally its title.

    ``source`` names the signal behind the reason (``collaborative``, ``content``,
    ``co-occurrence``, ``popular``) and ``because`` the item the user liked that led to
    it, when there is one.
    """

    item_id: str
    score: float
    reason: str
    source: str | None = None
    because: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Recommendations:
    """A user's current list as the workers last wrote it.

    ``served_from`` is ``"user"`` for the user's own list, ``"popular"`` for the fallback
    list (an unknown user, one whose list expired, or one whose list is empty), ``"none"``
    when no worker has written anything under this prefix yet.
    """

    user_id: str
    items: list[Recommended]
    model_version: int | None
    updated_at: float | None
    served_from: Literal["user", "popular", "none"]

    @property
    def fallback(self) -> bool:
        """True when these are not the user's own recommendations."""
        return self.served_from != "user"

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class SimilarItems:
    """An item's "more like this" list as the workers last wrote it.

    ``served_from`` is ``"item"`` for the item's own list (possibly empty: nothing shares
    a tag or was rated together with it), ``"popular"`` for the popular list when the
    item has none yet (a workers' refresh tick after it was listed) or was deleted,
    ``"none"`` when no worker has written anything under this prefix.
    """

    item_id: str
    items: list[Recommended]
    model_version: int | None
    updated_at: float | None
    served_from: Literal["item", "popular", "none"]

    @property
    def fallback(self) -> bool:
        """True when these are not the item's own list."""
        return self.served_from != "item"

    def __len__(self) -> int:
        return len(self.items)


def glob_escaped(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern (a key prefix may hold
    ``*``, ``?``, ``[`` or ``]``, which would match other keys).

    >>> glob_escaped("shop[eu]*:")
    'shop\\\\[eu\\\\]\\\\*:'
    """
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def check_k(k: object) -> None:
    """A list length the clients serve: an integer >= 1 (checked before any read).

    >>> check_k(0)
    Traceback (most recent call last):
    ...
    ValueError: k must be an integer >= 1, got 0
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def parse_list(
    user_id: str, own: bytes | None, popular: bytes | None, k: int, key: str = ""
) -> Recommendations:
    """The list to serve from the two raw documents (user's, popular), cut to ``k``. A
    user's own list that is empty (a user who rated everything the model could list)
    gives way to the popular list too, so an app always has something to show.

    >>> doc = b'{"items":[{"item_id":"i1","score":0.5,"reason":"popular now"}],"model_version":3}'
    >>> r = parse_list("u9", None, doc, 10)
    >>> r.served_from, r.items[0].item_id, r.fallback
    ('popular', 'i1', True)
    >>> parse_list("u9", b'{"items": []}', doc, 10).served_from
    'popular'
    >>> parse_list("u9", b"{oops", None, 10, key="recsys:recs:u9")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamer.client.RecommendationsUnavailable: recsys:recs:u9 is not a recommendation list: ...
    """
    recs = _parsed(user_id, own, popular, k, key)
    if _gives_way(recs) and popular is not None:
        return _parsed(user_id, None, popular, k)  # (``key`` names the user's document)
    return recs


def _gives_way(recs: Recommendations | SimilarItems) -> bool:
    """A user's own list that is empty: the popular list is served instead (an item's
    "more like this" list may be empty: nothing shares a tag or was rated with it)."""
    return isinstance(recs, Recommendations) and recs.served_from == "user" and not recs.items


def _parsed(
    user_id: str, own: bytes | None, popular: bytes | None, k: int, key: str = ""
) -> Recommendations:
    """The user's own list where there is one (even empty), else the popular list."""
    check_k(k)
    raw, served_from = (own, "user") if own is not None else (popular, "popular")
    if raw is None:
        return Recommendations(user_id, [], None, None, "none")
    try:
        doc = orjson.loads(raw)
        items = [
            Recommended(
                item_id=_typed(it["item_id"], str, "item_id"),
                score=float(_typed(it["score"], (int, float), "score")),
                reason=_typed(it["reason"], str, "reason"),
                source=_typed(it.get("source"), (str, type(None)), "source"),
                because=_typed(it.get("because"), (str, type(None)), "because"),
            )
            for it in _typed(doc["items"], list, "items")[:k]
        ]
        _typed(doc.get("model_version", 0), (int, type(None)), "model_version")
        _typed(doc.get("updated_at", 0.0), (int, float, type(None)), "updated_at")
    except (ValueError, KeyError, TypeError) as exc:  # (orjson's errors are ValueErrors)
        where = key or ("user list" if served_from == "user" else "popular list")
        raise RecommendationsUnavailable(f"{where} is not a recommendation list: {exc}") from None
    return Recommendations(
        user_id, items, doc.get("model_version"), doc.get("updated_at"), served_from
    )


def _typed(value: object, kinds, field: str):
    """``value`` when of one of ``kinds`` (never a bool for a number), else TypeError."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{field} {value!r} is not of the layout's type")
    return value


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages.

    >>> redacted_url("redis://:s3cret@host:6379/0"), redacted_url("redis://u:p@h/1")
    ('redis://:***@host:6379/0', 'redis://u:***@h/1')
    >>> redacted_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    >>> redacted_url("rediss://h:6380/0?password=s3cret&ssl_ca_certs=/ca.pem")
    'rediss://h:6380/0?password=***&ssl_ca_certs=/ca.pem'
    >>> redacted_url("redis+sentinel://:pw@h1,h2:26380/m/0?sentinel_password=sp")
    'redis+sentinel://:***@h1,h2:26380/m/0?sentinel_password=***'

    Not a URL (a slash missing, say), everything up to its last ``@`` is hidden:

    >>> redacted_url("redis//:s3cret@h:6379/0"), redacted_url("rediss:/:s3cret@h")
    ('***@h:6379/0', '***@h')
    >>> redacted_url("redis://:S3cr/et@h:6379/0"), redacted_url("redis://:S3cr#et@h/0")
    ('redis://***@h:6379/0', 'redis://***@h/0')
    >>> redacted_url("unix:///run/redis.sock?db=0&password=pw")
    'unix:///run/redis.sock?db=0&password=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # (not a URL: a slash missing, say)
        scheme, rest = "", url
    if "@" in rest.partition("?")[0] and "@" not in urlsplit(url).netloc:
        # A password holding '/', '#' or '?' ends the address early: hide all before '@'.
        return f"{scheme}{sep}***@{rest.partition('?')[0].rpartition('@')[2]}"
    parts = urlsplit(url)
    if parts.query:  # redis-py also takes the password as a query parameter
        query = [
            f"{name}=***" if name in ("password", "sentinel_password") else f"{name}{sep}{value}"
            for name, sep, value in (p.partition("=") for p in parts.query.split("&"))
        ]
        parts = parts._replace(query="&".join(query))
    if parts.password is None:
        text = urlunsplit(parts)
        # (``unix:///path``: urlunsplit drops the empty authority, and a slash pair)
        return text.replace(":", "://", 1) if sep and not parts.netloc else text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_similar(
    item_id: str, own: bytes | None, popular: bytes | None, k: int, key: str = ""
) -> SimilarItems:
    """:func:`parse_list` for an item's "more like this" list.

    >>> doc = b'{"item_id":"i1","items":[{"item_id":"i2","score":0.9,"reason":"similar to i1"}]}'
    >>> s = parse_similar("i1", doc, None, 10)
    >>> s.served_from, s.items[0].item_id, s.fallback
    ('item', 'i2', False)
    >>> [r.item_id for r in parse_similar("i2", None, doc, 1).items]  # never the item itself
    []
    """
    recs = _parsed(item_id, own, popular, k + (own is None), key)
    served_from = "item" if recs.served_from == "user" else recs.served_from
    items = [r for r in recs.items if r.item_id != item_id][:k]  # (popular may hold it)
    return SimilarItems(item_id, items, recs.model_version, recs.updated_at, served_from)


def wrong_type(exc: object) -> bool:
    """Redis refused a command because its key holds another type (``WRONGTYPE``)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def pipeline_results(results: Sequence[object]) -> list[object]:
    """A pipeline's results run with ``raise_on_error=False``: a key of another type
    reads as None; any other error is raised (a cluster pipeline returns even its
    timeouts and lost connections as results, which would otherwise pass for a key
    with nothing in it).

    >>> pipeline_results([b"x", redis.ResponseError("WRONGTYPE Operation against a key")])
    [b'x', None]
    >>> pipeline_results([redis.ConnectionError("gone")])
    Traceback (most recent call last):
    ...
    redis.exceptions.ConnectionError: gone
    """
    out: list[object] = []
    for value in results:
        if isinstance(value, Exception):
            if not wrong_type(value):
                raise value
            value = None
        out.append(value)
    return out


def with_titles(recs: T, titles: Sequence[object]) -> T:
    """``recs`` (a :class:`Recommendations` or :class:`SimilarItems`) with each item's
    title: None where there is none, or where its item key holds something else than a
    hash (the pipeline's error in its place: one such key cost the whole list)."""
    items = [
        Recommended(
            r.item_id,
            r.score,
            r.reason,
            r.source,
            r.because,
            t.decode(errors="replace") if isinstance(t, bytes) and t else None,
        )
        for r, t in zip(recs.items, titles, strict=True)
    ]
    return replace(recs, items=items)


def decode_hash(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


def live_workers(
    listed: Sequence[tuple[bytes, float]],
    hashes: Sequence[object],
    latest: tuple[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """The registry's workers (ids and publish times) with their own hashes, as the shared
    hash counts them: one whose hash expired (or is not a hash: None) is gone, though
    still listed; one holding a ratings partition a later publisher holds was replaced (a
    worker killed and restarted under a new id: :func:`~streamer.registry.superseded`).
    ``latest``: a worker publishing now (its id and partitions, ``"0,3"``), later than
    any listed, and left out of the answer (the sink's, for the figures of the others).

    >>> live_workers([(b"old", 1.0), (b"new", 5.0), (b"dead", 2.0)],
    ...              [{b"partitions": b"0,1"}, {b"partitions": b"1"}, {}])
    {'new': {'partitions': '1'}}
    >>> live_workers([(b"new", 5.0)], [{b"partitions": b"1"}], latest=("me", "1,2"))
    {}
    """
    found = {}
    for (worker, t), raw in zip(listed, hashes, strict=True):
        if isinstance(raw, Mapping) and raw:
            found[worker.decode(errors="replace")] = (float(t), decode_hash(raw))
    claims = {w: (t, f.get("partitions", "")) for w, (t, f) in found.items()}
    if latest is not None:
        found.pop(latest[0], None)
        claims[latest[0]] = (math.inf, latest[1])
    gone = superseded(claims)
    return {w: f for w, (_, f) in found.items() if w not in gone}


async def read_live_workers(
    redis_client: aioredis.Redis | aioredis.RedisCluster,
    key: Callable[..., str],
    latest: tuple[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """:func:`live_workers` as Redis holds them now: the registry
    (``key("metrics", "workers")``), then each listed worker's own hash in one
    pipeline (a key of another type there reads as none: :func:`pipeline_results`)."""
    listed = await redis_client.zrange(key("metrics", "workers"), 0, -1, withscores=True)
    if latest is not None:
        listed = [(w, t) for w, t in listed if w.decode(errors="replace") != latest[0]]
    hashes: list[object] = []
    if listed:
        async with redis_client.pipeline(transaction=False) as names:
            for w, _ in listed:
                names.hgetall(key("metrics", "worker", w.decode(errors="replace")))
            hashes = pipeline_results(await names.execute(raise_on_error=False))
    return live_workers(listed, hashes, latest)


class _Keys:
    """What both clients share: the address, the key layout, the error for Redis down."""

    _redis_class: type = redis.Redis
    _pool_class: type = redis.BlockingConnectionPool
    _asynchronous = False
    MAX_CONNECTIONS = 64

    def __init__(
        self,
        redis_url: str = DEFAULT_REDIS_URL,
        key_prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        cluster: bool = False,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = key_prefix
        self.cluster = cluster
        self._timeout = timeout
        self._pool = None
        self._redis = None
        self._making = threading.Lock()  # (the first reads of a client shared by threads)
        self._popular: tuple[bytes, float] | None = None  # (document, monotonic time read)
        # Cluster and Sentinel pools fail past their size instead of waiting: reads take
        # one of MAX_CONNECTIONS slots instead, waiting up to ``timeout`` for one.
        self._slots = None
        if is_sentinel(redis_url) or cluster:
            if is_sentinel(redis_url) and cluster:
                raise ValueError("a redis+sentinel:// URL names one master, not a cluster")
            if is_sentinel(redis_url):
                sentinel_url(redis_url)  # (a malformed URL fails here, not at a read)
            if self._asynchronous:
                self._slots = asyncio.Semaphore(self.MAX_CONNECTIONS)
            else:
                self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        else:
            # A blocking pool: past MAX_CONNECTIONS concurrent reads, a read waits (up to
            # ``timeout``) for a connection instead of failing as if Redis were down.
            self._pool = self._pool_class.from_url(
                redis_url,
                max_connections=self.MAX_CONNECTIONS,
                timeout=timeout,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
            )
            self._redis = self._redis_class(connection_pool=self._pool)

    @property
    def redis(self):
        """The redis-py client; of a cluster or of Sentinel's master, made at the first
        read (a cluster client connects when made), so that a client can be created
        while they are down."""
        if self._redis is None:
            # Threads reading at once would each make one, and all but one would never
            # be closed (nor their connections to the sentinels).
            with self._making:
                if self._redis is None:
                    try:
                        self._redis = redis_client(
                            self.redis_url,
                            cluster=self.cluster,
                            asynchronous=self._asynchronous,
                            socket_connect_timeout=self._timeout,
                            socket_timeout=self._timeout,
                        )
                    except RedisClusterException as exc:
                        raise self.unavailable(exc) from None
        return self._redis

    def _no_slot(self) -> RecommendationsUnavailable:
        return RecommendationsUnavailable(
            f"no free connection to Redis at {redacted_url(self.redis_url)} within "
            f"{self._timeout} s ({self.MAX_CONNECTIONS} reads at once at most)"
        )

    #: Seconds a client keeps the popular list it read (workers rewrite it about once a
    #: second): a read for a user with a list of their own is then one GET of one key.
    POPULAR_TTL_S = 1.0

    def _kept_popular(self) -> bytes | None:
        """The popular list read less than :attr:`POPULAR_TTL_S` ago, if any."""
        kept = self._popular
        if kept is not None and time.monotonic() - kept[1] < self.POPULAR_TTL_S:
            return kept[0]
        return None

    def _keep_popular(self, document: bytes | None) -> None:
        if document is not None:  # (none yet: asked again, until a worker writes one)
            self._popular = (document, time.monotonic())

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def registry(self) -> str:
        """The sorted set of live workers' ids, scored by their last publish time."""
        return self.key("metrics", "workers")

    def unavailable(self, exc: Exception) -> RecommendationsUnavailable:
        where = redacted_url(self.redis_url)
        if wrong_type(exc):
            # (Redis answered: something other than the layout's type is under a key)
            return RecommendationsUnavailable(f"Redis at {where} holds another type: {exc}")
        if isinstance(exc, MovedError | AskError):  # (a node that serves other slots)
            return RecommendationsUnavailable(
                f"Redis at {where} is a node of a Redis Cluster: read it with cluster=True "
                f"(slot {exc.slot_id} is on {exc.host}:{exc.port})"
            )
        if isinstance(exc, redis.ResponseError):  # answered, and refused the read
            return RecommendationsUnavailable(f"Redis at {where} refused the read: {exc}")
        return RecommendationsUnavailable(f"cannot reach Redis at {where}: {exc}")


class RecommendationClient(_Keys):
    """Synchronous reader of live recommendations.

    Parameters
    ----------
    redis_url
        Where the workers write (``RECSYS_REDIS_URL`` / ``REDIS_URL`` of the workers); a
        ``redis+sentinel://`` URL reads from the master Redis Sentinel names.
    key_prefix
        The workers' ``RECSYS_KEY_PREFIX``.
    timeout
        Seconds to connect and to wait for an answer before
        :class:`RecommendationsUnavailable` is raised.
    cluster
        ``redis_url`` names a node of a Redis Cluster (the workers'
        ``RECSYS_REDIS_CLUSTER``): keys are read from the nodes that hold them.

    Examples
    --------
    ::

        with RecommendationClient("redis://127.0.0.1:6379/0") as client:
            for rec in client.recommend("u42", k=5).items:
                print(rec.item_id, rec.score, rec.reason)
    """

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self._slots is None:
            yield
            return
        if not self._slots.acquire(timeout=self._timeout):
            raise self._no_slot()
        try:
            yield
        finally:
            self._slots.release()

    def recommend(self, user_id: str, k: int = 10, titles: bool = False) -> Recommendations:
        """The user's current top-``k`` (or the popular list when they have none)."""
        check_k(k)
        user_id = clean_id(user_id, "user_id")  # (as events spell it: " u7 " is u7)
        with self._slot():
            return self._read(parse_list, "recs", user_id, k, titles)

    def similar(self, item_id: str, k: int = 10, titles: bool = False) -> SimilarItems:
        """More like this: the ``k`` items closest to ``item_id`` by content and by
        co-occurrence (or the popular list while the item has none)."""
        check_k(k)
        item_id = clean_id(item_id, "item_id")
        with self._slot():
            return self._read(parse_similar, "similar", item_id, k, titles)

    def _read(self, parse: Callable[..., T], kind: str, name: str, k: int, titles: bool) -> T:
        own_key = self.key(kind, name)
        try:
            own = self.redis.get(own_key)
            recs = None if own is None else parse(name, own, None, k, own_key)
            if recs is None or _gives_way(recs):
                if (popular := self._kept_popular()) is None:
                    popular = self.redis.get(self.key("popular"))
                    self._keep_popular(popular)
                if recs is None or popular is not None:  # (else the empty list stands)
                    recs = parse(name, None, popular, k, self.key("popular"))
            if titles and recs.items:
                names = self.redis.pipeline(transaction=False)
                for r in recs.items:
                    names.hget(self.key("item", r.item_id), "title")
                recs = with_titles(recs, pipeline_results(names.execute(raise_on_error=False)))
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None
        return recs

    def metrics(self) -> dict[str, str]:
        """The shared metrics hash: every live worker's figures together (as the last
        worker to publish read them); empty before any worker."""
        try:
            return decode_hash(self.redis.hgetall(self.key("metrics")))
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    def worker_metrics(self) -> dict[str, dict[str, str]]:
        """Each live worker's own metrics hash, by worker id (they expire when it dies),
        as the shared hash counts them (:func:`live_workers`)."""
        try:
            listed = self.redis.zrange(self.registry(), 0, -1, withscores=True)
            names = self.redis.pipeline(transaction=False)
            for w, _ in listed:
                names.hgetall(self.key("metrics", "worker", w.decode(errors="replace")))
            hashes = pipeline_results(names.execute(raise_on_error=False)) if listed else []
            return live_workers(listed, hashes)
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    def close(self) -> None:
        if self._redis is not None:
            close_client(self._redis)
        if self._pool is not None:
            self._pool.disconnect()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRecommendationClient(_Keys):
    """The same reads for asyncio services (``await client.recommend(user_id)``)."""

    _redis_class = aioredis.Redis
    _pool_class = aioredis.BlockingConnectionPool
    _asynchronous = True

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        except TimeoutError:
            raise self._no_slot() from None
        try:
            yield
        finally:
            self._slots.release()

    async def recommend(self, user_id: str, k: int = 10, titles: bool = False) -> Recommendations:
        check_k(k)
        user_id = clean_id(user_id, "user_id")  # (as events spell it: " u7 " is u7)
        return await self._read_once_more(parse_list, "recs", user_id, k, titles)

    async def similar(self, item_id: str, k: int = 10, titles: bool = False) -> SimilarItems:
        check_k(k)
        item_id = clean_id(item_id, "item_id")
        return await self._read_once_more(parse_similar, "similar", item_id, k, titles)

    async def _read_once_more(
        self, parse: Callable[..., T], kind: str, name: str, k: int, titles: bool
    ) -> T:
        async with self._slot():
            # redis-py's asynchronous cluster client, in a burst of new connections, can
            # send on a connection another read's failure has just closed (1 to 3 of 192
            # reads at a cold start here, AttributeError inside redis-py; twice in a row
            # for one read of a CI run): up to three tries.
            for tries_left in (2, 1, 0):
                try:
                    return await self._read(parse, kind, name, k, titles)
                except AttributeError as exc:
                    if not self.cluster:
                        raise
                    if not tries_left:
                        raise self.unavailable(exc) from None
            raise AssertionError("unreachable")

    async def _read(self, parse: Callable[..., T], kind: str, name: str, k: int, titles: bool) -> T:
        own_key = self.key(kind, name)
        try:
            own = await self.redis.get(own_key)
            recs = None if own is None else parse(name, own, None, k, own_key)
            if recs is None or _gives_way(recs):
                if (popular := self._kept_popular()) is None:
                    popular = await self.redis.get(self.key("popular"))
                    self._keep_popular(popular)
                if recs is None or popular is not None:  # (else the empty list stands)
                    recs = parse(name, None, popular, k, self.key("popular"))
            if titles and recs.items:
                async with self.redis.pipeline(transaction=False) as names:
                    for r in recs.items:
                        names.hget(self.key("item", r.item_id), "title")
                    results = await names.execute(raise_on_error=False)
                    recs = with_titles(recs, pipeline_results(results))
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None
        return recs

    async def metrics(self) -> dict[str, str]:
        try:
            return decode_hash(await self.redis.hgetall(self.key("metrics")))
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    async def worker_metrics(self) -> dict[str, dict[str, str]]:
        """Each live worker's own metrics hash, by worker id (:func:`live_workers`)."""
        try:
            return await read_live_workers(self.redis, self.key)
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from None

    async def aclose(self) -> None:
        if self._redis is not None:
            await aclose_client(self._redis)
        if self._pool is not None:
            await self._pool.disconnect()

    async def __aenter__(self) -> AsyncRecommendationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
