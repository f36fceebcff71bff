"""Logging for the worker: one JSON object per line on request, and the Kafka client's
repeated complaints, summarised.

With ``RECSYS_LOG_FORMAT=json`` every line the worker logs (its own, Faust's, the Kafka
client's) is one JSON object (:class:`JsonFormatter`), for log pipelines that index
fields instead of parsing text.

While a broker is down, aiokafka logs every failed attempt of every connection (to
connect, to fetch, to update metadata, to find the group coordinator) about every 50 ms:
measured on a worker during a 15-second broker restart, some 2,500 ERROR lines, 170 a
second. :class:`RepeatFilter` lets the first message of each kind through, then one per
``window`` seconds saying how many like it it stood for. The count held back after the
last one to pass (at the end of an outage) is not reported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

#: The loggers of the Kafka client whose messages repeat during an outage.
KAFKA_CLIENT_LOGGERS = (
    "aiokafka",  # (the client's own: connections and metadata)
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.consumer.subscription_state",
    "aiokafka.admin.client",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)


class RepeatFilter(logging.Filter):
    """Pass a message of a kind (its logger, level, format string and the types of its
    arguments: a refused connection and a failed authentication share a format string
    but not the error's type) at most once per ``window`` seconds; the next one to pass
    says how many were held back meanwhile.

    >>> clock = iter([0.0, 1.0, 2.0, 11.0]).__next__
    >>> f = RepeatFilter(window=10.0, clock=clock)
    >>> def record(n):
    ...     return logging.LogRecord("aiokafka.client", logging.ERROR, "", 0,
    ...                              "Unable connect to node %s", (n,), None)
    >>> passed = [r.getMessage() for r in map(record, [1, 1, 1, 1]) if f.filter(r)]
    >>> passed
    ['Unable connect to node 1', 'Unable connect to node 1 (and 2 more like it in 11 s)']
    """

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._kinds: dict[tuple, tuple[float, int]] = {}  # kind -> (passed at, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        kind = (record.name, record.levelno, str(record.msg), *(type(a).__name__ for a in args))
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            self._kinds[kind] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {seen[1]} more like it in {now - seen[0]:.0f} s)"
        if len(self._kinds) > 1000:  # kinds are format strings: few, but never unbounded
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return True


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message`` (arguments merged in), ``process``, and ``exception`` (the traceback)
    when there is one.

    >>> record = logging.LogRecord("streamer.app", logging.INFO, "", 0, "at %s", ("s1",), None)
    >>> record.created = 0.0
    >>> doc = json.loads(JsonFormatter().format(record))
    >>> doc["time"], doc["level"], doc["logger"], doc["message"]
    ('1970-01-01T00:00:00.000Z', 'INFO', 'streamer.app', 'at s1')
    """

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        doc = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def logging_config(log_format: str, level: str) -> dict | None:
    """The ``logging.config.dictConfig`` for the worker's ``RECSYS_LOG_FORMAT`` (None:
    Faust's own text lines).

    >>> logging_config("json", "info")["handlers"]["default"]["formatter"]
    'json'
    >>> logging_config("text", "info") is None
    True
    """
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def quiet_kafka_client(window: float = 10.0) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on the Kafka client's loggers; returns it."""
    repeat = RepeatFilter(window)
    for name in KAFKA_CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(repeat)
    return repeat


class LongTickFilter(logging.Filter):
    """Passes mode's "Timer ... is overlapping" warning of the worker's refresh timer at
    INFO: a tick that ran past its interval (the first one restores a snapshot and
    replays idle partitions; a refresh of thousands of users takes its time) only
    delays the next, which starts when it ends. Every worker logged it once at start,
    which read as a fault. Other timers' warnings pass as they are.

    >>> record = logging.LogRecord("mode.timers", logging.WARNING, "", 0,
    ...     "Timer %s is overlapping (interval=%r runtime=%r)",
    ...     ("streamer.app.RecsysWorker.refresh_lists", 1.0, 1.2), None)
    >>> logging.getLogger("mode.timers").setLevel(logging.INFO)  # (a worker at --loglevel info)
    >>> LongTickFilter().filter(record), record.levelname
    (True, 'INFO')
    >>> logging.getLogger("mode.timers").setLevel(logging.WARNING)  # (at warning: not shown)
    >>> LongTickFilter().filter(record)
    False
    >>> logging.getLogger("mode.timers").setLevel(logging.NOTSET)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        ours = bool(args) and str(args[0]).endswith(".refresh_lists")
        if ours and str(record.msg).startswith("Timer %s is overlapping"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def quiet_long_ticks() -> None:
    """Put :class:`LongTickFilter` on mode's timer logger."""
    logging.getLogger("mode.timers").addFilter(LongTickFilter())
