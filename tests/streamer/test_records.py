"""Kafka records read as events: keys checked against ids, tombstones on compacted topics."""

from __future__ import annotations

import re
import time

import pytest

from schemas import EventError
from streamer.records import item_event, rating_event, user_event
from streamer.settings import Settings

S = Settings()
UPSERT = b'{"op": "upsert", "item_id": "i1", "tags": ["jazz"], "timestamp": 5}'
DECLARED = b'{"user_id": "u1", "tags": ["jazz"], "timestamp": 5}'
RATING = b'{"user_id": "u1", "item_id": "i1", "rating": 4, "timestamp": 5}'


def test_events_keyed_by_their_id_are_read_as_sent() -> None:
    assert item_event(S, b"i1", UPSERT, 9.0).tags == {"jazz": 1.0}
    assert user_event(S, b"u1", DECLARED, 9.0).tags == {"jazz": 1.0}
    assert rating_event(S, b"u1", RATING).rating == 4.0


@pytest.mark.parametrize(
    ("read", "value", "expected"),
    [
        (item_event, UPSERT, "item events are keyed by their item_id 'i1'"),
        (user_event, DECLARED, "user events are keyed by their user_id 'u1'"),
        (lambda s, key, value, _: rating_event(s, key, value), RATING, "ratings are keyed"),
    ],
)
@pytest.mark.parametrize("key", [b"i2", b"u2", None, b"I1"])
def test_a_record_keyed_otherwise_is_refused_naming_both(read, value, expected, key) -> None:
    """A key other than the id (or none) could put an entity's events on two partitions:
    on a compacted topic, compaction would then keep an old record of it."""
    with pytest.raises(EventError, match=expected) as caught:
        read(S, key, value, 9.0)
    assert caught.value.field == "key"
    assert ("none" if key is None else repr(key)) in str(caught.value)


def test_an_items_tombstone_is_a_delete_at_the_records_time() -> None:
    event = item_event(S, "déjà-vu".encode(), None, 1_700_000_000.5)
    assert (event.op, event.item_id, event.timestamp) == ("delete", "déjà-vu", 1_700_000_000.5)
    assert event.title is None and event.tags == {}


@pytest.mark.parametrize("stamp", [None, -1.0, 4e12])  # none, Kafka's "no time", future
def test_a_tombstone_without_a_usable_time_takes_the_time_it_is_read(stamp) -> None:
    before = time.time()
    event = user_event(S, b"u1", None, stamp)
    assert before <= event.timestamp <= time.time() and event.tags == {}


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "no value and no key"),
        (b"\xff\xfe", "tombstone: its key is not UTF-8 (byte 0)"),
        (b"bad\x00id", "tombstone: its key is not a valid item_id: item_id"),
        (b"x" * 200, "tombstone: its key is not a valid item_id: item_id"),
        (b"   ", "tombstone: its key is not a valid item_id: item_id"),
        # An upsert under these keys is refused (keys must be the item_id as events spell
        # it, stripped): a tombstone under them must not delete "i7" either.
        (b" i7 ", "tombstone: its key is not a valid item_id: ' i7 ' is not spelt"),
        (b"i7\x1f", "tombstone: its key is not a valid item_id: 'i7\\x1f' is not spelt"),
        ("i7\u3000".encode(), "is not spelt as events spell ids"),
    ],
)
def test_a_tombstone_whose_key_names_no_item_is_refused(key, reason) -> None:
    with pytest.raises(EventError, match=re.escape(reason)):
        item_event(S, key, None, 1.0)


def test_a_ratings_tombstone_is_not_an_event() -> None:
    """Ratings are a plain log: a record with no value holds no rating."""
    with pytest.raises(EventError, match="tombstone") as caught:
        rating_event(S, b"u1", None)
    assert caught.value.code == "malformed"


def test_the_value_is_checked_before_the_key() -> None:
    """A record that is no event at all says so, whatever its key."""
    with pytest.raises(EventError, match="malformed JSON"):
        item_event(S, b"other", b"{not json", 1.0)


def test_a_future_event_is_judged_by_its_records_time_when_read_again(monkeypatch) -> None:
    """ "More than a day in the future" is judged against the record's time: a rating
    refused live is refused again when its partition is replayed days later (by the wall
    clock alone the replay learned it), and one within the day is learned both times."""
    sent = 1_700_000_000.0
    day = 86_400.0

    def raw(stamp: float) -> bytes:
        return f'{{"user_id": "u1", "item_id": "i", "rating": 4, "timestamp": {stamp}}}'.encode()

    for wall in (sent + 1.0, sent + 3 * day):  # live, then a replay three days on
        monkeypatch.setattr(time, "time", lambda wall=wall: wall)
        with pytest.raises(EventError, match="more than 1 day in the future"):
            rating_event(S, b"u1", raw(sent + 2 * day), sent)
        assert rating_event(S, b"u1", raw(sent + day / 2), sent).timestamp == sent + day / 2
        with pytest.raises(EventError, match="more than 1 day in the future"):
            upsert = f'{{"op": "upsert", "item_id": "i", "timestamp": {sent + 2 * day}}}'
            item_event(S, b"i", upsert.encode(), sent)
    # A producer whose clock runs ahead: its record's time is no excuse.
    monkeypatch.setattr(time, "time", lambda: sent)
    with pytest.raises(EventError, match="more than 1 day in the future"):
        rating_event(S, b"u1", raw(sent + 2 * day), sent + 5 * day)
