"""One settings object for the worker, read from environment variables."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from recsys_online.events import MAX_SCALE
from recsys_online.factors import FactorParams
from schemas import parse_event

_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_DB_PATH = re.compile(r"/[0-9]+")

E = TypeVar("E")


class SettingsError(ValueError):
    """A setting the worker cannot run with; the message names the variable."""


def _parse_bool(raw: str) -> bool:
    """``true``/``false`` and their usual spellings (``bool("false")`` would be True).

    An empty value is refused, as for numbers: ``RECSYS_ADAPTIVE: ${UNSET}`` in a compose
    file would otherwise turn a setting whose default is true off without a word.

    >>> [_parse_bool(v) for v in ("1", "true", "Yes", "on", "0", "false", "no", "off")]
    [True, True, True, True, False, False, False, False]
    """
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True)
class Settings:
    """Everything the worker can be told. Each field reads ``RECSYS_<FIELD>`` (upper case).

    ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` are also honoured for the two addresses,
    since the project's service script prints them. See docs/streamer.md for the table.
    """

    brokers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # ``redis_url`` names a node of a Redis Cluster (docs/streamer.md, "Redis Cluster").
    redis_cluster: bool = False
    key_prefix: str = "recsys:"
    app_id: str = "recsys-online"
    ratings_topic: str = "recsys.ratings"
    items_topic: str = "recsys.items"
    users_topic: str = "recsys.users"
    deadletter_topic: str = "recsys.deadletter"
    item_changes_topic: str = "recsys.item-changes"
    partitions: int = 8
    k: int = 10
    batch_max: int = 1000
    batch_within_s: float = 0.02
    learn_window_s: float = 3600.0
    learn_step_max: int = 64
    fetch_partition_bytes: int = 1_048_576
    fetch_max_wait_ms: int = 50
    n_factors: int = 32
    # How the factors learn (recsys_online.factors.FactorParams): step sizes, L2, and
    # AdaGrad's per-row rates (off: plain SGD). A restored model learns on with these.
    lr_bias: float = FactorParams.lr_bias
    lr_factor: float = FactorParams.lr_factor
    l2_bias: float = FactorParams.l2_bias
    l2_factor: float = FactorParams.l2_factor
    adaptive: bool = FactorParams.adaptive
    rating_low: float = 1.0
    rating_high: float = 5.0
    relevant: float = 4.0
    max_payload_bytes: int = 65_536
    recs_ttl_s: int = 7 * 86_400
    refresh_every_s: float = 1.0
    refresh_users: int = 5_000
    metrics_window: int = 1_000
    fresh_eval_share: float = 0.1
    processing_guarantee: str = "at_least_once"
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    metrics_history: int = 3_600
    dashboard_port: int = 8080
    session_timeout_s: float = 30.0
    data_dir: str = "~/.cache/recsys-online/faust"
    # Where snapshots go, when not under data_dir: a volume every worker's machine mounts.
    snapshot_dir: str = ""
    snapshot_every_s: float = 60.0
    share_items_every_s: float = 0.0
    similar_every_s: float = 300.0  # "more like this" lists: at most this often per rated item
    similar_content_weight: float = 0.1  # a shared tag, against the heaviest co-occurrence
    dedupe_window: int = 100_000
    compact_share: float = 0.25
    seed: int = 42
    gc_young: int = 50_000
    log_format: str = "text"  # or json: one JSON object per log line
    # How every Kafka client of the project connects (docs/streamer.md, "Connecting to a
    # secured Kafka"): the worker's, the producers', the commands'.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)  # (never printed)
    kafka_ssl_cafile: str = ""  # PEM CA bundle; empty: the system's CAs
    kafka_ssl_certfile: str = ""  # a client certificate (PEM), for mutual TLS
    kafka_ssl_keyfile: str = ""  # its private key (PEM)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default ``os.environ``); bad values fail with the name.

        >>> Settings.from_env({"RECSYS_K": "20", "KAFKA_BOOTSTRAP_SERVERS": "h:1"}).k
        20
        >>> Settings.from_env({"RECSYS_K": "many"})
        Traceback (most recent call last):
        ...
        streamer.settings.SettingsError: RECSYS_K: 'many' is not a valid int
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        named: dict[str, str] = {}  # the name the checks' messages say -> the variable set
        for plain, ours, said in (
            ("KAFKA_BOOTSTRAP_SERVERS", "brokers", "RECSYS_BROKERS"),
            ("REDIS_URL", "redis_url", "REDIS_URL"),
        ):
            mine = f"RECSYS_{ours.upper()}"
            # (Set but empty is set: a `$UNSET` in a deploy script must not mean localhost.)
            if plain in env and mine in env and env[plain] != env[mine]:
                # (one left over in a shell would silently send a run elsewhere)
                raise SettingsError(f"{plain} and {mine} are both set, to different values")
            if plain in env:
                values[ours] = env[plain]
            named[said] = plain if plain in env and mine not in env else mine
        for f in fields(cls):
            name = f"RECSYS_{f.name.upper()}"
            if name not in env:
                continue
            raw = env[name]
            kind = type(f.default)
            try:
                values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise SettingsError(f"{name}: {raw!r} is not a valid {kind.__name__}") from None
        unknown = sorted(
            name
            for name in env
            if name.startswith("RECSYS_") and name not in _ENV_NAMES and name not in _OTHER_NAMES
        )
        if unknown:  # a misspelt setting would otherwise be ignored without a word
            warnings.warn(f"unknown settings ignored: {', '.join(unknown)}", stacklevel=2)
        settings = cls(**values)
        try:
            settings.check()
        except SettingsError as exc:  # (naming the variable set: an alias, or ours)
            message = str(exc)
            for checked, name in named.items():
                message = re.sub(rf"(?<![A-Z_]){checked}\b", name, message)
            raise SettingsError(message) from None
        return settings

    # The settings a learned model depends on: a snapshot made under others is not used.
    MODEL_SETTINGS = (
        "ratings_topic",
        # The catalog read again after a restore only adds what it finds (another
        # topic's items would stay listed), and the dead letters say which records a
        # replay skips: a snapshot goes with the topics it was made from.
        "items_topic",
        "users_topic",
        "deadletter_topic",
        "partitions",
        "k",
        "learn_window_s",
        "learn_step_max",
        "n_factors",
        "rating_low",
        "rating_high",
        "relevant",
        "seed",
    )

    @property
    def snapshot_path(self) -> Path:
        """Where this app's workers keep their model snapshots: under ``data_dir`` (this
        machine's), or under ``snapshot_dir`` when set (shared by every machine that
        mounts it, so a worker restored anywhere replays only the log's tail).

        >>> str(Settings(data_dir="/d", app_id="a").snapshot_path)
        '/d/a/snapshots'
        >>> str(Settings(data_dir="/d", app_id="a", snapshot_dir="/shared").snapshot_path)
        '/shared/a'
        """
        if self.snapshot_dir:
            return Path(self.snapshot_dir).expanduser() / self.app_id
        return Path(self.data_dir).expanduser() / self.app_id / "snapshots"

    def model_fingerprint(self) -> dict[str, object]:
        """The values of :attr:`MODEL_SETTINGS`.

        >>> Settings(n_factors=16).model_fingerprint()["n_factors"]
        16
        """
        return {name: getattr(self, name) for name in self.MODEL_SETTINGS}

    def check(self) -> None:
        """Reject settings the worker cannot run with, naming the variable.

        >>> Settings(refresh_every_s=0).check()
        Traceback (most recent call last):
        ...
        streamer.settings.SettingsError: RECSYS_REFRESH_EVERY_S must be > 0
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"RECSYS_{f.name.upper()} must be a finite number, got {value}")
        if not self.rating_low < self.rating_high:
            raise SettingsError("RECSYS_RATING_LOW must be below RECSYS_RATING_HIGH")
        if not self.rating_low <= self.relevant <= self.rating_high:
            raise SettingsError(
                "RECSYS_RELEVANT must be within the rating scale "
                f"[{self.rating_low}, {self.rating_high}], got {self.relevant}"
            )
        for names, allowed, rule in _BOUNDS:
            for name in names:
                if not allowed(getattr(self, name)):
                    raise SettingsError(f"RECSYS_{name.upper()} {rule}")
        topics = {
            name: getattr(self, name)
            for name in (
                "ratings_topic",
                "items_topic",
                "users_topic",
                "deadletter_topic",
                "item_changes_topic",
            )
        }
        for name, value in {**topics, "brokers": self.brokers, "app_id": self.app_id}.items():
            if not value.strip():
                raise SettingsError(f"RECSYS_{name.upper()} must not be empty")
        for name, value in topics.items():
            if not _KAFKA_TOPIC.fullmatch(value) or value in (".", ".."):
                raise SettingsError(
                    f"RECSYS_{name.upper()}: {value!r} is not a Kafka topic name (1 to 249 "
                    "of the letters, digits, '.', '_' and '-', not '.' or '..')"
                )
        # (Kafka refuses two topics whose names differ only by '.' against '_')
        if len({value.replace(".", "_") for value in topics.values()}) < len(topics):
            named = ", ".join(f"RECSYS_{n.upper()}={v}" for n, v in topics.items())
            raise SettingsError(
                f"the five topics must have distinct names, '.' and '_' alike: {named}"
            )
        self._check_brokers()
        if self.processing_guarantee not in ("at_least_once", "exactly_once"):
            raise SettingsError("RECSYS_PROCESSING_GUARANTEE must be at_least_once or exactly_once")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"RECSYS_LOG_FORMAT must be text or json, got {self.log_format!r}")
        self._check_redis()
        self._check_kafka_security()

    def _check_brokers(self) -> None:
        """Every broker is ``host:port`` or ``host`` (port 9092): a port 1-65535, IPv6
        hosts in brackets.

        >>> Settings(brokers="h:9092,h2:notaport").check()
        Traceback (most recent call last):
        ...
        streamer.settings.SettingsError: RECSYS_BROKERS: 'h2:notaport' is not host or host:port ...
        """
        for broker in self.bootstrap_servers.split(","):
            host, _, port = broker.rpartition(":")
            if not host or host.endswith(":"):  # no port (or a bare IPv6 address)
                host, port = broker, "9092"
            ok = bool(host) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
            if not ok or (":" in host and not (host.startswith("[") and host.endswith("]"))):
                raise SettingsError(
                    f"RECSYS_BROKERS: {broker!r} is not host or host:port (a port 1-65535), in "
                    f"{self.brokers!r}"
                )

    def _check_redis(self) -> None:
        """A ``redis+sentinel://`` URL that cannot be used, or one with a cluster.

        >>> Settings(redis_url="redis+sentinel://h:26379/m", redis_cluster=True).check()
        Traceback (most recent call last):
        ...
        streamer.settings.SettingsError: RECSYS_REDIS_CLUSTER with a redis+sentinel:// ...
        """
        from redis.connection import ConnectionPool

        from streamer.client import is_sentinel, redacted_url, sentinel_url

        shown = redacted_url(self.redis_url)  # (never the password, even in a typo)
        scheme = self.redis_url.partition("://")[0] if "://" in self.redis_url else ""
        if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
            raise SettingsError(
                f"REDIS_URL: {shown!r} is not a Redis URL (redis://host:port/db, "
                "rediss://, unix://, redis+sentinel://)"
            )
        if not is_sentinel(self.redis_url):
            path = urlsplit(self.redis_url).path
            if scheme != "unix" and path not in ("", "/") and not _DB_PATH.fullmatch(path):
                raise SettingsError(
                    f"REDIS_URL: {shown!r}: the database after the address must be a "
                    "number (redis://host:port/0)"
                )
            try:  # what redis-py reads of it (no connection is made)
                ConnectionPool.from_url(self.redis_url).make_connection()
            except (ValueError, TypeError) as exc:
                why = "" if "@" in self.redis_url else f": {exc}"  # (it may quote a password)
                raise SettingsError(f"REDIS_URL: {shown!r} cannot be used{why}") from None
            return
        try:
            sentinel_url(self.redis_url)
        except ValueError as exc:
            why = f"{exc}" if "@" not in self.redis_url else "not a Sentinel URL"
            raise SettingsError(f"REDIS_URL: {shown!r}: {why}") from None
        if self.redis_cluster:
            raise SettingsError(
                "RECSYS_REDIS_CLUSTER with a redis+sentinel:// REDIS_URL: Sentinel watches "
                "one master (and its replicas), a cluster has no Sentinel"
            )

    def _check_kafka_security(self) -> None:
        """The Kafka connection settings hang together (names the variable when not).

        >>> Settings(kafka_security_protocol="SASL_SSL").check()
        Traceback (most recent call last):
        ...
        streamer.settings.SettingsError: RECSYS_KAFKA_SASL_USERNAME and RECSYS_KAFKA_SASL_PASSWORD \
are needed with RECSYS_KAFKA_SECURITY_PROTOCOL=SASL_SSL
        """
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise SettingsError(
                f"RECSYS_KAFKA_SECURITY_PROTOCOL must be one of "
                f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}, got {protocol!r}"
            )
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(
                f"RECSYS_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
                f"got {mechanism!r}"
            )
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise SettingsError(
                "RECSYS_KAFKA_SASL_USERNAME and RECSYS_KAFKA_SASL_PASSWORD are needed with "
                f"RECSYS_KAFKA_SECURITY_PROTOCOL={protocol}"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise SettingsError(
                "RECSYS_KAFKA_SSL_CERTFILE and RECSYS_KAFKA_SSL_KEYFILE go together"
            )
        tls = protocol in ("SSL", "SASL_SSL")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path and not tls:
                raise SettingsError(
                    f"RECSYS_{name.upper()} is set but RECSYS_KAFKA_SECURITY_PROTOCOL={protocol} "
                    "does not use TLS (SSL or SASL_SSL)"
                )
            if path and not Path(path).expanduser().is_file():
                raise SettingsError(f"RECSYS_{name.upper()}: no file {path!r}")
        if tls:  # files that are not PEM, a key that does not match: said now, in one line
            import ssl

            try:
                self.kafka_ssl_context()
            except (ssl.SSLError, OSError) as exc:
                raise SettingsError(
                    "RECSYS_KAFKA_SSL_CAFILE / _CERTFILE / _KEYFILE cannot be used (a "
                    f"PEM CA bundle, certificate and unencrypted key are): {exc}"
                ) from None

    def kafka_security(self) -> dict[str, object]:
        """Keyword arguments that make an aiokafka client (producer, consumer, admin)
        connect as these settings say; ``{}`` for a plain connection.

        >>> Settings().kafka_security()
        {}
        >>> opts = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="app",
        ...                 kafka_sasl_password="pw", kafka_sasl_mechanism="SCRAM-SHA-256"
        ...                 ).kafka_security()
        >>> opts["security_protocol"], opts["sasl_mechanism"], opts["sasl_plain_username"]
        ('SASL_PLAINTEXT', 'SCRAM-SHA-256', 'app')
        """
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, object] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.kafka_ssl_context()
        if protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        return options

    def kafka_ssl_context(self):
        """The TLS context of Kafka connections: the broker's certificate checked against
        ``kafka_ssl_cafile`` (the system's CAs when empty) and its host name; the client
        certificate when given."""
        import ssl

        def path(value: str) -> str | None:
            return str(Path(value).expanduser()) if value else None

        context = ssl.create_default_context(cafile=path(self.kafka_ssl_cafile))
        if self.kafka_ssl_certfile:
            context.load_cert_chain(path(self.kafka_ssl_certfile), path(self.kafka_ssl_keyfile))
        return context

    @property
    def kafka_url(self) -> str:
        """Broker list in Faust's form (``kafka://host:port;host:port``)."""
        hosts = [h.strip().removeprefix("kafka://") for h in self.brokers.split(",")]
        return ";".join(f"kafka://{h}" for h in hosts if h)

    @property
    def bootstrap_servers(self) -> str:
        """Broker list in aiokafka's form (``host:port,host:port``)."""
        return ",".join(h.strip().removeprefix("kafka://") for h in self.brokers.split(","))

    def parse(self, raw: bytes, kind: type[E], now: float | None = None) -> E:
        """``raw`` validated as a ``kind`` event with this deployment's rating scale and
        payload limit: what the worker accepts (``EventError`` names the field). ``now``
        is the clock for the future-timestamp bound (the wall clock if None).

        >>> from schemas import RatingEvent
        >>> raw = b'{"user_id": "u", "item_id": "i", "rating": 8, "timestamp": 1}'
        >>> Settings(rating_high=10.0).parse(raw, RatingEvent).rating
        8.0
        """
        return parse_event(
            raw,
            kind,
            rating_scale=(self.rating_low, self.rating_high),
            max_bytes=self.max_payload_bytes,
            now=now,
        )

    def key(self, *parts: str) -> str:
        """A Redis key under the prefix: ``key("recs", "u1") == "recsys:recs:u1"``."""
        return self.key_prefix + ":".join(parts)


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Numeric settings by the values they take: (names, allowed, the rule a refusal states).
_BOUNDS: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "partitions",
            "k",
            "batch_max",
            "learn_step_max",
            "fetch_partition_bytes",
            "fetch_max_wait_ms",
            "refresh_users",
            "metrics_history",
            "metrics_window",
            "max_payload_bytes",
            "recs_ttl_s",
        ),
        lambda v: v >= 1,
        "must be >= 1",
    ),
    (("refresh_every_s", "session_timeout_s", "learn_window_s"), lambda v: v > 0, "must be > 0"),
    (
        (
            "batch_within_s",
            "snapshot_every_s",
            "share_items_every_s",
            "similar_every_s",
            "similar_content_weight",
            "dedupe_window",
            "gc_young",
        ),
        lambda v: v >= 0,
        "must be >= 0 (0: off)",
    ),
    (
        ("web_port", "dashboard_port"),
        lambda v: 0 <= v <= 65535,
        "must be a port, 0-65535 (0: any free)",
    ),
    (("fresh_eval_share", "compact_share"), lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    (("seed",), lambda v: v >= 0, "must be >= 0"),
    # (float32 in the scores: 1e39 turned inf, every "more like this" list NaN, empty)
    (("similar_content_weight",), lambda v: v <= 1e6, "must be at most 1e6"),
    # (Another worker writing to the same directory deletes a set of snapshots nobody
    # wrote for a day, snapshot.STALE_S: a set written less often than that went.)
    (
        ("snapshot_every_s",),
        lambda v: v <= 43_200,
        "must be at most 43200 (12 h: a day without a new snapshot, another worker "
        "sharing its directory takes the set for one nobody owns and deletes it)",
    ),
    (("lr_bias", "lr_factor"), lambda v: v >= 0, "must be >= 0 (0: frozen)"),
    (("l2_bias", "l2_factor"), lambda v: v >= 0, "must be >= 0"),
    # (as replay's --factors: 1,024 float32 per user and item is already 4 KB each)
    (("n_factors",), lambda v: 1 <= v <= 1024, "must be 1 to 1024"),
    # (the model's bound on its rating scale)
    (
        ("rating_low", "rating_high"),
        lambda v: abs(v) <= MAX_SCALE,
        "must be within +-1e6",  # (MAX_SCALE)
    ),
    # Kafka's bounds: the broker refuses a group session under 6 s by default, and Faust
    # one longer than its request timeout (90 s); a fetch must end within that request.
    (("session_timeout_s",), lambda v: 6 <= v <= 90, "must be 6 to 90 seconds"),
    (("fetch_max_wait_ms",), lambda v: v <= 60_000, "must be at most 60000 (a minute)"),
    # (32-bit fields of Kafka's fetch request and of CPython's collector thresholds)
    (("fetch_partition_bytes", "gc_young"), lambda v: v < 2**31, "must be below 2**31"),
)
_ENV_NAMES = {f"RECSYS_{f.name.upper()}" for f in fields(Settings)}
# Read by the project's scripts and tests, not by the worker.
_OTHER_NAMES = {
    "RECSYS_ARTIFACTS_DIR",
    "RECSYS_CACHE_DIR",
    "RECSYS_CHROMIUM",
    "RECSYS_KAFKA_LIBS",
    "RECSYS_MAVEN_REPO",
    "RECSYS_STATE_DIR",
    "RECSYS_SERVICES_STATE",
}
