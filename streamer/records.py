"""Kafka records of the worker's topics read as events: the value validated, the record
key checked against the id its topic is keyed by, and tombstones read as a compacted
topic means them.

Every topic is keyed by the id that places an entity's events on one partition, in order:
ratings and user events by ``user_id``, catalog events by ``item_id``. A record keyed
otherwise is refused (dead-lettered by the worker). On the compacted items and users
topics a key mismatch would also defeat compaction, which keeps the latest record *per
key*: an item's upsert and its later delete under two keys both survive it, on two
partitions read in no fixed order, so a worker reading the catalog again could list the
item again.

A tombstone (a record with a key and no value) is how a compacted topic forgets a key,
and what change-data-capture connectors (Debezium, the JDBC source) send after a row's
delete. On the items topic it deletes the item its key names; on the users topic it
withdraws the user's declared tags. On the ratings topic it is not an event and is
refused.
"""

from __future__ import annotations

import time

from aiokafka.partitioner import murmur2

from schemas import EventError, ItemEvent, RatingEvent, UserEvent, validate_event
from streamer.settings import Settings

_SHOWN_KEY = 60  # characters of a refused key shown in a reason


def key_problem(key: bytes | None, expected: str, what: str, by: str) -> str | None:
    """Why a record key breaks its topic's keying (None when it is ``expected``).

    >>> key_problem(b"u1", "u1", "ratings", "user_id") is None
    True
    >>> key_problem(None, "u1", "ratings", "user_id")
    "key: none, but ratings are keyed by their user_id 'u1'"
    >>> print(key_problem(b"u1 ", "u1", "ratings", "user_id"))  # (keyed by the id as sent)
    key: b'u1 ', but ratings are keyed by their user_id 'u1' (ids are stripped of the ...
    """
    if key == expected.encode():
        return None
    shown = "none" if key is None else repr(key)[:_SHOWN_KEY]
    problem = f"key: {shown}, but {what} are keyed by their {by} {expected!r}"
    if key is not None and key.decode("utf-8", "replace").strip() == expected:
        problem += " (ids are stripped of the spaces around them: key by the stripped id)"
    return problem


def partition_problem(key: bytes | None, partition: int, count: int | None) -> str | None:
    """Why a keyed record is on another partition than Kafka's default partitioner puts
    its key in (murmur2, as Java's and aiokafka's producers do), or None (also while the
    topic's partition count is not known). A producer partitioning otherwise, as
    librdkafka's clients do by default (CRC32), sends one user's events to partitions
    two workers hold: their state split, without a word. (Not sent back by a redrive,
    which sends a record to its partition: its producer sends it anew.)

    >>> partition_problem(b"u1", 0, 8) is None, partition_problem(None, 3, 8)
    (True, None)
    >>> print(partition_problem(b"u1", 6, 8))  # (where librdkafka's CRC32 puts it)
    partition: key b'u1' belongs in partition 0 of 8 (Kafka's default partitioner, ...
    """
    if key is None or not count:
        return None
    expected = (murmur2(bytes(key)) & 0x7FFFFFFF) % count
    if expected == partition:
        return None
    return (
        f"partition: key {repr(bytes(key))[:_SHOWN_KEY]} belongs in partition {expected} of "
        f"{count} (Kafka's default partitioner, murmur2), not {partition}: a producer "
        "partitioning otherwise splits a user's events between workers; set its "
        "partitioner to murmur2 (librdkafka's clients: partitioner=murmur2_random)"
    )


def rating_event(
    settings: Settings, key: bytes | None, value: bytes | None, timestamp_s: float | None = None
) -> RatingEvent:
    """The rating a ratings-topic record holds (``EventError`` says why not), checked
    against the record's time (``timestamp_s``, epoch seconds; see :func:`_checked_at`).

    >>> raw = b'{"user_id": "u1", "item_id": "i", "rating": 4, "timestamp": 1}'
    >>> rating_event(Settings(), b"u1", raw).rating
    4.0
    >>> rating_event(Settings(), b"u2", raw)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: key: b'u2', but ratings are keyed by their user_id 'u1'
    """
    return _keyed(settings, key, value, RatingEvent, "user_id", "ratings", timestamp_s)


def item_event(
    settings: Settings, key: bytes | None, value: bytes | None, timestamp_s: float | None
) -> ItemEvent:
    """The catalog event an items-topic record holds; a tombstone is the delete of the
    item its key names, at the record's time (``timestamp_s``, epoch seconds).

    >>> item_event(Settings(), b"i7", None, 1_700_000_000.0)
    ItemEvent(op='delete', item_id='i7', title=None, tags={}, timestamp=1700000000.0)
    >>> item_event(Settings(), b"i8", b'{"op": "delete", "item_id": "i7", "timestamp": 1}', 1.0)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: key: b'i8', but item events are keyed by their item_id 'i7'
    """
    if value is None:
        return _from_tombstone(key, timestamp_s, ItemEvent, "item_id", "an item", op="delete")
    return _keyed(settings, key, value, ItemEvent, "item_id", "item events", timestamp_s)


def user_event(
    settings: Settings, key: bytes | None, value: bytes | None, timestamp_s: float | None
) -> UserEvent:
    """The declaration a users-topic record holds; a tombstone declares no tags for the
    user its key names (the earlier declaration is withdrawn).

    >>> user_event(Settings(), b"u1", None, 1_700_000_000.0).tags
    {}
    >>> user_event(Settings(), None, None, 1.0)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: no value and no key: a tombstone names a user by its key
    """
    if value is None:
        return _from_tombstone(key, timestamp_s, UserEvent, "user_id", "a user")
    return _keyed(settings, key, value, UserEvent, "user_id", "user events", timestamp_s)


def _checked_at(timestamp_s: float | None) -> float | None:
    """The clock an event's "not more than a day in the future" is checked by: its
    record's time (when it was produced, or appended), or the wall clock when that is
    later (a producer whose clock runs ahead) or unknown. So a record is judged alike
    live and when its partition is replayed days later: by the wall clock alone, an
    event refused live as a day ahead would be learned by the replay.

    >>> _checked_at(100.0), _checked_at(None) is None, _checked_at(1e12) < 1e12
    (100.0, True, True)
    """
    if timestamp_s is None or timestamp_s <= 0:
        return None
    return min(timestamp_s, time.time())


def _keyed(
    settings: Settings,
    key: bytes | None,
    value: bytes | None,
    kind,
    by: str,
    what: str,
    timestamp_s: float | None = None,
):
    """``value`` parsed as ``kind`` (checked at :func:`_checked_at` its record's time),
    its record ``key`` checked against its ``by`` field."""
    event = settings.parse(value, kind, now=_checked_at(timestamp_s))
    problem = key_problem(key, getattr(event, by), what, by)
    if problem is not None:
        raise EventError(problem, "key")
    return event


def _tombstone_key(key: bytes | None, names: str) -> str:
    if key is None:
        raise EventError(
            f"no value and no key: a tombstone names {names} by its key", code="malformed"
        )
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"tombstone: its key is not UTF-8 (byte {exc.start})", "key") from exc


def _from_tombstone(
    key: bytes | None, timestamp_s: float | None, kind: type, field: str, names: str, **fields
):
    """``kind`` from a tombstone's key (its ``field``, naming ``names``), time and the
    other ``fields``. The record's time is the producer's (or the broker's append time);
    a record without one, or stamped ahead of this clock (a skewed producer clock), takes
    the time it is read."""
    ident = _tombstone_key(key, names)
    now = time.time()
    when = now if timestamp_s is None or not 0 <= timestamp_s <= now else timestamp_s
    try:
        event = validate_event({**fields, field: ident, "timestamp": when}, kind)
    except EventError as exc:
        raise EventError(f"tombstone: its key is not a valid {field}: {exc}", "key") from exc
    if getattr(event, field) != ident:  # (ids are stripped: " i7 " would delete "i7")
        raise EventError(
            f"tombstone: its key is not a valid {field}: {ident[:_SHOWN_KEY]!r} is not "
            f"spelt as events spell ids (stripped), so no event is keyed by it",
            "key",
        )
    return event
