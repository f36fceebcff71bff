"""Tests of the wire events: one valid and one invalid case per rule, decoding, export."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    DEFAULT_RATING_SCALE,
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    EventError,
    ItemEvent,
    RatingEvent,
    RatingScale,
    UserEvent,
    WireEvent,
    parse_event,
    validate_event,
)
from schemas.export import SCHEMA_DIR, main, render_schemas, schema_filename, stale_schemas

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z, the pinned clock of these tests
DAY = 86_400.0
property_settings = settings(database=None, deadline=None, max_examples=200)


def rating(**fields: Any) -> dict[str, Any]:
    """A valid rating's fields, overridden by ``fields``."""
    return {"user_id": "196", "item_id": "242", "rating": 3, "timestamp": 881250949, **fields}


def item(**fields: Any) -> dict[str, Any]:
    """A valid item upsert's fields, overridden by ``fields``."""
    return {"op": "upsert", "item_id": "1", "tags": ["comedy"], "timestamp": 816998400, **fields}


def user(**fields: Any) -> dict[str, Any]:
    """A valid user event's fields, overridden by ``fields``."""
    return {"user_id": "196", "tags": ["drama"], "timestamp": 881250949, **fields}


def decode(kind: type[WireEvent], fields: dict[str, Any], **options: Any) -> WireEvent:
    """``fields`` through JSON bytes and ``parse_event``, with the pinned clock."""
    return parse_event(json.dumps(fields).encode(), kind, now=NOW, **options)


def rejection(kind: type[WireEvent], fields: dict[str, Any] | bytes, **options: Any) -> EventError:
    """The ``EventError`` that decoding ``fields`` (or raw bytes) raises."""
    raw = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
    with pytest.raises(EventError) as caught:
        parse_event(raw, kind, now=NOW, **options)
    return caught.value


def assert_rejected(
    kind: type[WireEvent], fields: dict[str, Any] | bytes, field: str, shown: str, **options: Any
) -> EventError:
    """Decoding fails, naming ``field`` first and showing ``shown`` in the reason."""
    error = rejection(kind, fields, **options)
    assert error.field == field
    assert error.code == "invalid"
    assert error.reason.startswith(f"{field}: "), error.reason
    assert shown in error.reason, error.reason
    return error


# --- ratings -----------------------------------------------------------------------------------


def test_valid_rating_is_normalised() -> None:
    event = decode(RatingEvent, rating(user_id=" 196 ", rating=4))
    assert event == RatingEvent(user_id="196", item_id="242", rating=4.0, timestamp=881250949.0)
    assert isinstance(event.rating, float)
    assert event.event_id is None


@pytest.mark.parametrize("value", [1, 1.0, 2.5, 5, 5.0])
def test_rating_within_default_scale_bounds_included(value: float) -> None:
    assert decode(RatingEvent, rating(rating=value)).rating == float(value)


@pytest.mark.parametrize(
    ("value", "shown", "why"),
    [
        (7, "7.0", "is outside the rating scale [1.0, 5.0]"),
        (0.99, "0.99", "is outside the rating scale [1.0, 5.0]"),
        (-3, "-3.0", "is outside the rating scale [1.0, 5.0]"),
        ("5", "'5'", "is not a number"),
        (True, "True", "is not a number"),
        (None, "None", "is not a number"),
        ([4], "[4]", "is not a number"),
        ({"stars": 4}, "{'stars': 4}", "is not a number"),
    ],
)
def test_rating_rejected(value: Any, shown: str, why: str) -> None:
    error = assert_rejected(RatingEvent, rating(rating=value), "rating", shown)
    assert error.reason == f"rating: {shown} {why}"


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e400", "inf")],
)
def test_rating_not_finite_rejected(literal: str, shown: str) -> None:
    raw = json.dumps(rating()).replace('"rating": 3', f'"rating": {literal}').encode()
    error = assert_rejected(RatingEvent, raw, "rating", shown)
    assert error.reason == f"rating: {shown} is not finite"


def test_rating_scale_from_context() -> None:
    """The scale is the deployment's: an event built in code (no context) is only checked
    to be finite, and a context, or parse_event's and validate_event's default, checks
    it."""
    half_star = rating(rating=0.5)
    with pytest.raises(ValidationError, match=r"0\.5 is outside the rating scale \[1\.0, 5\.0\]"):
        RatingEvent.model_validate(half_star, context={"rating_scale": DEFAULT_RATING_SCALE})
    with pytest.raises(EventError, match=r"0\.5 is outside the rating scale \[1\.0, 5\.0\]"):
        validate_event(half_star, RatingEvent)
    assert RatingEvent(**half_star).rating == 0.5  # (an app on a half-star deployment)
    assert RatingEvent(**rating(rating=8)).rating == 8.0
    with pytest.raises(ValidationError, match="not finite"):
        RatingEvent(**rating(rating=math.inf))
    for scale in [(0.5, 5.0), RatingScale(0.5, 5.0)]:
        assert RatingEvent.model_validate(half_star, context={"rating_scale": scale}).rating == 0.5


def test_rating_scale_in_parse_event() -> None:
    assert decode(RatingEvent, rating(rating=10), rating_scale=(0, 10)).rating == 10.0
    error = rejection(RatingEvent, rating(rating=10.5), rating_scale=RatingScale(0, 10))
    assert error.reason == "rating: 10.5 is outside the rating scale [0.0, 10.0]"
    assert decode(RatingEvent, rating(rating=5)).rating == 5.0  # the default is left alone
    assert RatingScale(1.0, 5.0) == DEFAULT_RATING_SCALE


@pytest.mark.parametrize("bounds", [(5, 1), (1, 1), (0, math.inf), (math.nan, 5)])
def test_rating_scale_needs_finite_ordered_bounds(bounds: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="finite low < high"):
        RatingScale(*bounds)


@pytest.mark.parametrize("scale", [(5, 1), ("low", "high"), 5, (1, 2, 3)])
def test_bad_rating_scale_in_context_is_a_configuration_error(scale: Any) -> None:
    with pytest.raises(TypeError, match="rating_scale"):
        RatingEvent.model_validate(rating(), context={"rating_scale": scale})


@property_settings
@given(
    low=st.floats(-1e6, 1e6, allow_nan=False),
    span=st.floats(1e-3, 1e6, allow_nan=False),
    fraction=st.floats(0, 1),
)
def test_property_ratings_in_scale_round_trip(low: float, span: float, fraction: float) -> None:
    scale = RatingScale(low, low + span)
    value = min(max(scale.low + fraction * (scale.high - scale.low), scale.low), scale.high)
    event = decode(RatingEvent, rating(rating=value), rating_scale=scale)
    assert event.rating == value
    assert parse_event(event.to_bytes(), RatingEvent, rating_scale=scale, now=NOW) == event


@property_settings
@given(value=st.floats() | st.integers(-(10**30), 10**30))
def test_property_ratings_outside_default_scale_rejected(value: float) -> None:
    fields = rating(rating=value)
    if isinstance(value, float) and math.isfinite(value) and 1.0 <= value <= 5.0:
        assert validate_event(fields, RatingEvent).rating == value
        return
    if isinstance(value, int) and 1 <= value <= 5:
        assert validate_event(fields, RatingEvent).rating == float(value)
        return
    with pytest.raises(EventError, match="rating"):
        validate_event(fields, RatingEvent)


# --- ids ---------------------------------------------------------------------------------------

ID_FIELDS = [
    (RatingEvent, rating, "user_id"),
    (RatingEvent, rating, "item_id"),
    (RatingEvent, rating, "event_id"),
    (ItemEvent, item, "item_id"),
    (UserEvent, user, "user_id"),
]


@pytest.mark.parametrize(("kind", "make", "field"), ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [("u1", "u1"), ("  u1\t", "u1"), ("Ünïcode id", "Ünïcode id"), ("x" * 128, "x" * 128)],
)
def test_valid_id_is_stripped(kind: Any, make: Any, field: str, value: str, expected: str) -> None:
    assert getattr(decode(kind, make(**{field: value})), field) == expected


@pytest.mark.parametrize(("kind", "make", "field"), ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "shown", "why"),
    [
        ("", "''", "is empty"),
        ("   ", "'   '", "is empty"),
        (196, "196", "is not a string"),
        (1.5, "1.5", "is not a string"),
        (["u1"], "['u1']", "is not a string"),
        ("a\x00b", "'a\\x00b'", "contains a control character"),
        ("a\nb", "'a\\nb'", "contains a control character"),
        ("a\x85b", "'a\\x85b'", "contains a control character"),
        ("a\u2028b", "'a\\u2028b'", "contains a control character"),  # a line separator
        ("\u200b\ufeff", "'\\u200b\\ufeff'", "is invisible (format characters and spaces only)"),
        # (spaces between format characters hide them just as well)
        ("\u200b \u200b", "'\\u200b \\u200b'", "is invisible (format characters and spaces only)"),
        (
            "\u2060\u3000\u2060",
            "'\\u2060\\u3000\\u2060'",
            "is invisible (format characters and spaces only)",
        ),
        ("\ud800x", "'\\ud800x'", "is not valid Unicode (a lone surrogate)"),
        ("x" * 129, "'xxxxxxxxx", "has 129 characters, more than 128"),
    ],
)
def test_bad_id_rejected(
    kind: Any, make: Any, field: str, value: Any, shown: str, why: str
) -> None:
    error = assert_rejected(kind, make(**{field: value}), field, shown)
    assert error.reason.endswith(why), error.reason


@pytest.mark.parametrize(
    ("kind", "make", "field"),
    [
        (RatingEvent, rating, "user_id"),
        (RatingEvent, rating, "item_id"),
        (RatingEvent, rating, "rating"),
        (RatingEvent, rating, "timestamp"),
        (ItemEvent, item, "op"),
        (ItemEvent, item, "item_id"),
        (ItemEvent, item, "timestamp"),
        (UserEvent, user, "user_id"),
        (UserEvent, user, "timestamp"),
    ],
)
def test_required_field_missing(kind: Any, make: Any, field: str) -> None:
    fields = make()
    del fields[field]
    assert rejection(kind, fields).reason == f"{field}: required field is missing"


@pytest.mark.parametrize("field", ["user_id", "item_id", "rating", "timestamp"])
def test_null_required_field_rejected(field: str) -> None:
    assert_rejected(RatingEvent, rating(**{field: None}), field, "None")


def test_event_id_is_optional_and_kept() -> None:
    event = decode(RatingEvent, rating(event_id="app-1:42"))
    assert event.event_id == "app-1:42"
    assert decode(RatingEvent, rating(event_id=None)).event_id is None


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (881250949, 881250949.0),
        (881250949.5, 881250949.5),
        ("1997-12-04T15:55:49Z", 881250949.0),
        ("1997-12-04T16:55:49+01:00", 881250949.0),
        ("1997-12-04 15:55:49.250+00:00", 881250949.25),
        (0, 0.0),
        ("1970-01-01T00:00:00Z", 0.0),
        (NOW + DAY - 1, NOW + DAY - 1),
    ],
)
def test_valid_timestamp_becomes_epoch_seconds(value: Any, expected: float) -> None:
    event = decode(RatingEvent, rating(timestamp=value))
    assert event.timestamp == expected
    assert isinstance(event.timestamp, float)


def test_aware_datetime_accepted_from_python_producers() -> None:
    moment = datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC)
    assert RatingEvent.model_validate(rating(timestamp=moment)).timestamp == 881250949.0
    with pytest.raises(ValidationError, match="has no UTC offset"):
        RatingEvent.model_validate(rating(timestamp=moment.replace(tzinfo=None)))


@pytest.mark.parametrize(
    ("value", "shown", "why"),
    [
        (-1, "-1", "is before 1970-01-01T00:00:00Z"),
        ("1969-12-31T23:59:59Z", "'1969-12-31T23:59:59Z'", "is before 1970-01-01T00:00:00Z"),
        (NOW + DAY + 1, repr(NOW + DAY + 1), "is more than 1 day in the future"),
        (int(NOW * 1000), str(int(NOW * 1000)), "is more than 1 day in the future"),
        ("2999-01-01T00:00:00Z", "'2999-01-01T00:00:00Z'", "is more than 1 day in the future"),
        ("1997-12-04T15:55:49", "'1997-12-04T15:55:49'", "has no UTC offset (add 'Z' or '+hh:mm')"),
        ("1997-12-04", "'1997-12-04'", "has no UTC offset (add 'Z' or '+hh:mm')"),
        ("yesterday", "'yesterday'", "is not an ISO-8601 date-time"),
        ("881250949", "'881250949'", "is not an ISO-8601 date-time"),
        ("", "''", "is not an ISO-8601 date-time"),
        (True, "True", "is neither epoch seconds nor an ISO-8601 string"),
        ([881250949], "[881250949]", "is neither epoch seconds nor an ISO-8601 string"),
    ],
)
def test_bad_timestamp_rejected(value: Any, shown: str, why: str) -> None:
    for kind, make in [(RatingEvent, rating), (ItemEvent, item), (UserEvent, user)]:
        error = assert_rejected(kind, make(timestamp=value), "timestamp", shown)
        assert error.reason == f"timestamp: {shown} {why}"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_timestamp_not_finite_rejected(literal: str) -> None:
    raw = json.dumps(rating()).replace('"timestamp": 881250949', f'"timestamp": {literal}')
    error = assert_rejected(RatingEvent, raw.encode(), "timestamp", "is not finite")
    assert error.reason.endswith("is not finite")


def test_future_bound_follows_the_wall_clock_by_default() -> None:
    assert parse_event(json.dumps(rating(timestamp=time.time())).encode(), RatingEvent)
    with pytest.raises(EventError, match="more than 1 day in the future"):
        parse_event(json.dumps(rating(timestamp=time.time() + 2 * DAY)).encode(), RatingEvent)
    pinned = RatingEvent.model_validate(rating(timestamp=NOW + 2 * DAY), context={"now": NOW + DAY})
    assert pinned.timestamp == NOW + 2 * DAY


# --- items and users ---------------------------------------------------------------------------


def test_valid_item_upsert_and_delete() -> None:
    upsert = decode(ItemEvent, item(title="  Toy Story (1995) ", tags={"Comedy": 0.5}))
    assert upsert == ItemEvent(
        op="upsert",
        item_id="1",
        title="Toy Story (1995)",
        tags={"comedy": 0.5},
        timestamp=816998400,
    )
    assert decode(ItemEvent, item(tags=[], title=None)).tags == {}
    delete = decode(ItemEvent, {"op": "delete", "item_id": "1", "timestamp": 816998400})
    assert (delete.op, delete.title, delete.tags) == ("delete", None, {})
    assert (
        decode(ItemEvent, {"op": "delete", "item_id": "1", "tags": [], "timestamp": 0}).tags == {}
    )


@pytest.mark.parametrize("op", ["remove", "UPSERT", "", 1, None])
def test_bad_op_rejected(op: Any) -> None:
    error = assert_rejected(ItemEvent, item(op=op), "op", repr(op))
    assert error.reason == f"op: input should be 'upsert' or 'delete', got {op!r}"


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("tags", ["comedy"], "{'comedy': 1.0}"), ("title", "Toy Story", "'Toy Story'")],
)
def test_delete_carries_no_tags_or_title(field: str, value: Any, shown: str) -> None:
    fields = {"op": "delete", "item_id": "1", "timestamp": 816998400, field: value}
    error = assert_rejected(ItemEvent, fields, field, shown)
    assert error.reason == f"{field}: a delete carries no {field}, got {shown}"


def test_title_bounds() -> None:
    assert decode(ItemEvent, item(title="t" * 512)).title == "t" * 512
    assert decode(ItemEvent, item(title="Amélie (2001)")).title == "Amélie (2001)"
    assert_rejected(ItemEvent, item(title="t" * 513), "title", "has 513 characters, more than 512")
    assert_rejected(ItemEvent, item(title="a\tb"), "title", "'a\\tb' contains a control character")
    assert_rejected(ItemEvent, item(title="  "), "title", "'  ' is empty")
    assert_rejected(ItemEvent, item(title=1995), "title", "1995 is not a string")


TAGGED = [(ItemEvent, item), (UserEvent, user)]


@pytest.mark.parametrize(("kind", "make"), TAGGED)
@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["Comedy", "Drama"], {"comedy": 1.0, "drama": 1.0}),
        ({"Comedy": 2, "drama": 0.25}, {"comedy": 2.0, "drama": 0.25}),
        (["Sci-Fi", " sci-fi ", "SCI-FI"], {"sci-fi": 1.0}),
        ({"Comedy": 0.5, "comedy ": 2.0, "COMEDY": 1.0}, {"comedy": 2.0}),
        (["  Film \t Noir\n"], {"film noir": 1.0}),
        (["Drama", "drama"], {"drama": 1.0}),
        ([], {}),
        ({}, {}),
        (None, {}),
        (["t" * 64], {"t" * 64: 1.0}),
        ([f"tag{i}" for i in range(64)], {f"tag{i}": 1.0 for i in range(64)}),
        ({"tiny": 1e-9, "huge": 1e9}, {"tiny": 1e-9, "huge": 1e9}),
    ],
)
def test_tags_normalised(kind: Any, make: Any, tags: Any, expected: dict[str, float]) -> None:
    normalised = decode(kind, make(tags=tags)).tags
    assert normalised == expected
    assert all(isinstance(weight, float) for weight in normalised.values())


def test_tags_default_to_none() -> None:
    assert decode(UserEvent, {"user_id": "196", "timestamp": 0}).tags == {}
    assert decode(ItemEvent, {"op": "upsert", "item_id": "1", "timestamp": 0}).tags == {}


@pytest.mark.parametrize(("kind", "make"), TAGGED)
@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ("comedy", "'comedy' is neither a list of tags nor a tag -> weight mapping"),
        (5, "5 is neither a list of tags nor a tag -> weight mapping"),
        ([5], "tag 5 is not a string"),
        ([["comedy"]], "tag ['comedy'] is not a string"),
        ([""], "tag '' is empty"),
        (["  "], "tag '  ' is empty"),
        (["t" * 65], "tag '" + "t" * 44 + "... has 65 characters, more than 64"),
        (["a\x00b"], "tag 'a\\x00b' contains a control character"),
        (["\u200d"], "tag '\\u200d' is invisible (format characters and spaces only)"),
        (
            ["\u200b \u200b"],
            "tag '\\u200b \\u200b' is invisible (format characters and spaces only)",
        ),
        ([f"tag{i}" for i in range(65)], "65 tags, more than 64"),
        ({"comedy": 0}, "weight 0 of tag 'comedy' is not positive"),
        ({"comedy": -1.5}, "weight -1.5 of tag 'comedy' is not positive"),
        ({"comedy": "1"}, "weight '1' of tag 'comedy' is not a number"),
        ({"comedy": True}, "weight True of tag 'comedy' is not a number"),
        ({"comedy": None}, "weight None of tag 'comedy' is not a number"),
        ({"comedy": 1e39}, "weight 1e+39 of tag 'comedy' is more than 1e+09"),
        ({"comedy": 1e-300}, "weight 1e-300 of tag 'comedy' is less than 1e-09"),
        (["\udfff"], "tag '\\udfff' is not valid Unicode (a lone surrogate)"),
    ],
)
def test_bad_tags_rejected(kind: Any, make: Any, tags: Any, reason: str) -> None:
    error = assert_rejected(kind, make(tags=tags), "tags", reason)
    assert error.reason == f"tags: {reason}"


def test_tags_spelled_two_ways_in_unicode_are_one_tag() -> None:
    # "café" composed (U+00E9) and decomposed (e + U+0301): one tag, its larger weight.
    event = ItemEvent.model_validate(item(tags={"Caf\u00e9": 1.0, "cafe\u0301": 2.0}))
    assert event.tags == {"caf\u00e9": 2.0}
    assert ItemEvent.model_validate(item(tags=["a\u200bb"])).tags == {"a\u200bb": 1.0}
    # Lower-casing may decompose: composed again, upper and lower case are one tag.
    upper, lower = "\u03aa\u0301", "\u0390"
    assert ItemEvent.model_validate(item(tags=[upper, lower])).tags == {lower: 1.0}


def test_tag_weight_not_finite_rejected() -> None:
    raw = b'{"user_id": "196", "tags": {"drama": NaN}, "timestamp": 0}'
    assert rejection(UserEvent, raw).reason == "tags: weight nan of tag 'drama' is not finite"


@property_settings
@given(tags=st.dictionaries(st.text(min_size=1, max_size=20), st.floats(1e-6, 1e9), max_size=64))
def test_property_tag_normalisation_is_idempotent(tags: dict[str, float]) -> None:
    try:
        once = UserEvent(user_id="196", tags=tags, timestamp=0).tags
    except ValidationError:
        return  # blank or control-character tags: covered above
    assert UserEvent(user_id="196", tags=once, timestamp=0).tags == once
    assert all(tag == tag.strip().lower() and tag for tag in once)


# --- unknown fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "make"), [(RatingEvent, rating), *TAGGED])
def test_unknown_field_rejected(kind: Any, make: Any) -> None:
    error = rejection(kind, make(source="ios-app"))
    assert (error.field, error.reason) == ("source", "'source': unknown field, got 'ios-app'")


@pytest.mark.parametrize("key", ["a\nb", "k" * 60_000])
def test_unknown_field_reason_stays_one_short_line(key: str) -> None:
    error = rejection(RatingEvent, rating(**{key: 1}))
    assert error.field == key
    assert "\n" not in error.reason and len(error.reason) < 100, error.reason
    assert error.reason.endswith(": unknown field, got 1")


@pytest.mark.parametrize(
    "key",
    [
        "item_id: unknown item x",
        "event_id: duplicate 'e', already learned",
        "malformed JSON: x",
        "tombstone: its key is not x",
        "key",  # (with a value that reads as the rest of a wrong key's reason)
    ],
)
def test_an_unknown_field_named_like_a_reason_is_quoted(key: str) -> None:
    # The producer names the field: unquoted, it would begin the reason and read as
    # another reason (counted as an unknown item, a duplicate the redrive refuses...).
    error = rejection(RatingEvent, rating(**{key: 1}))
    assert error.reason == f"{key!r}: unknown field, got 1"


def test_typo_reports_the_unknown_field_first() -> None:
    fields = rating(ratng=4)
    del fields["rating"]
    error = rejection(RatingEvent, fields)
    assert (error.field, error.reason) == ("ratng", "'ratng': unknown field, got 4 (+1 more)")


def test_validation_error_names_field_and_value() -> None:
    with pytest.raises(ValidationError) as caught:
        RatingEvent.model_validate(
            rating(rating=7, ratng=4), context={"rating_scale": DEFAULT_RATING_SCALE}
        )
    message = str(caught.value)
    assert "rating\n  7.0 is outside the rating scale [1.0, 5.0]" in message
    assert "ratng" in message and "input_value=4" in message
    error = EventError.from_validation_error(caught.value)
    assert error.reason == "'ratng': unknown field, got 4 (+1 more)"


# --- decoding and encoding ---------------------------------------------------------------------

EXAMPLES = [
    RatingEvent(user_id="196", item_id="242", rating=3, timestamp=881250949),
    RatingEvent(user_id="u", item_id="i", rating=4.5, timestamp=1.25, event_id="e-1"),
    ItemEvent(op="upsert", item_id="1", title="Toy Story", tags=["Comedy"], timestamp=0),
    ItemEvent(op="upsert", item_id="2", tags={"drama": 0.1, "war": 3.5}, timestamp=NOW),
    ItemEvent(op="delete", item_id="1", timestamp="2000-01-01T00:00:00Z"),
    UserEvent(user_id="196", tags=["Drama", "Film-Noir"], timestamp=881250949),
    UserEvent(user_id="é 😀", timestamp=881250949),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=repr)
def test_round_trip_through_bytes(event: WireEvent) -> None:
    raw = event.to_bytes()
    assert isinstance(raw, bytes)
    assert parse_event(raw, type(event), now=NOW) == event
    assert type(event).from_bytes(raw, now=NOW) == event
    assert parse_event(raw.decode(), type(event), now=NOW) == event


def test_encoding_is_compact_and_leaves_out_defaults() -> None:
    assert ItemEvent(op="delete", item_id="1", timestamp="1970-01-01T00:00:10Z").to_bytes() == (
        b'{"op":"delete","item_id":"1","timestamp":10.0}'
    )
    assert b"event_id" not in EXAMPLES[0].to_bytes()
    assert b'"event_id":"e-1"' in EXAMPLES[1].to_bytes()
    assert "😀".encode() in EXAMPLES[-1].to_bytes()


def test_events_are_immutable() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        EXAMPLES[0].rating = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed JSON: Expecting value at line 1 column 1"),
        (
            b"{",
            "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (b'{"user_id": "196",}', "malformed JSON: "),  # wording varies across Pythons
        (b"\xff\xfe{}", "malformed JSON: invalid UTF-8 at byte 0"),
        (b'{"rating": 3, "rating": 5}', "malformed JSON: duplicate key 'rating'"),
        (b'{"tags": {"a": 1, "a": 2}}', "malformed JSON: duplicate key 'a'"),
        (
            b'{"\\ud800": 1}',
            "malformed JSON: key '\\ud800' is not valid Unicode (a lone surrogate)",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
        (b'{"rating": 1' + b"0" * 5000 + b"}", "malformed JSON: number with too many digits"),
    ],
)
def test_malformed_json(raw: bytes, reason: str) -> None:
    error = rejection(RatingEvent, raw, max_bytes=len(raw))
    assert error.reason.startswith(reason), error.reason
    assert (error.code, error.field) == ("malformed", None)


@pytest.mark.parametrize("kind", [RatingEvent, ItemEvent, UserEvent])
def test_a_tombstone_is_no_event(kind: type[WireEvent]) -> None:
    """A record with no value (a Kafka tombstone on a compacted topic) gets a clear reason,
    which the worker dead-letters, instead of a TypeError that would stop it."""
    with pytest.raises(EventError) as caught:
        parse_event(None, kind)
    assert caught.value.reason == "no value: a tombstone (null record) is not an event"
    assert caught.value.code == "malformed"


@pytest.mark.parametrize(
    ("raw", "json_type"),
    [
        (b"[]", "array"),
        (b'"rating"', "string"),
        (b"3", "number"),
        (b"3.5", "number"),
        (b"true", "boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_not_an_object(raw: bytes, json_type: str) -> None:
    error = rejection(RatingEvent, raw)
    assert error.reason == f"not a JSON object: got {json_type}"
    assert (error.code, error.field) == ("not_object", None)


def test_oversized_payload() -> None:
    padding = " " * (MAX_PAYLOAD_BYTES - len(json.dumps(rating())))
    at_limit = (json.dumps(rating()) + padding).encode()
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert parse_event(at_limit, RatingEvent, now=NOW).user_id == "196"
    error = rejection(RatingEvent, at_limit + b" ")
    assert error.reason == f"payload too large: {MAX_PAYLOAD_BYTES + 1} bytes, more than 65536"
    assert (error.code, error.field) == ("oversized", None)
    small = rejection(RatingEvent, json.dumps(rating()).encode(), max_bytes=16)
    assert small.reason.startswith("payload too large:") and small.reason.endswith("more than 16")


def test_parse_event_accepts_bytes_like_values() -> None:
    raw = EXAMPLES[0].to_bytes()
    for value in (bytearray(raw), memoryview(raw), raw.decode()):
        assert parse_event(value, RatingEvent) == EXAMPLES[0]


def test_event_error_is_a_value_error_with_a_stable_reason() -> None:
    error = rejection(RatingEvent, rating(rating=7.0))
    assert isinstance(error, ValueError)
    assert str(error) == error.reason == "rating: 7.0 is outside the rating scale [1.0, 5.0]"
    assert isinstance(error.__cause__, ValidationError)


def test_event_types_have_distinct_kinds() -> None:
    assert [event_type.kind for event_type in EVENT_TYPES] == ["rating", "item", "user"]


# --- JSON Schema export ------------------------------------------------------------------------


def test_exported_schemas_are_fresh() -> None:
    assert stale_schemas() == [], "stale JSON Schemas: run python -m schemas.export"
    for event_type in EVENT_TYPES:
        text = (SCHEMA_DIR / schema_filename(event_type)).read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert json.loads(text)["title"] == event_type.__name__


def test_export_check_flags_stale_files(tmp_path: Path) -> None:
    assert main(["--check", "--directory", str(tmp_path)]) == 1
    assert main(["--directory", str(tmp_path)]) == 0
    assert main(["--check", "--directory", str(tmp_path)]) == 0
    (tmp_path / "user_event.schema.json").write_text("{}\n", encoding="utf-8")
    assert stale_schemas(tmp_path) == ["user_event.schema.json"]
    assert main(["--check", "--directory", str(tmp_path)]) == 1


@pytest.mark.parametrize("event", EXAMPLES, ids=repr)
def test_exported_schema_accepts_what_the_models_accept(event: WireEvent) -> None:
    import jsonschema

    schema = json.loads(render_schemas()[schema_filename(type(event))])
    jsonschema.Draft202012Validator(schema).validate(json.loads(event.to_bytes()))


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (RatingEvent, rating(source="ios")),
        (RatingEvent, rating(rating="5")),
        (RatingEvent, rating(user_id="")),
        (ItemEvent, item(op="remove")),
        (ItemEvent, item(tags={"comedy": 0})),
        (ItemEvent, {"op": "delete", "item_id": "1", "tags": ["comedy"], "timestamp": 0}),
        (UserEvent, user(tags=[f"tag{i}" for i in range(65)])),
    ],
)
def test_exported_schema_rejects_what_the_models_reject(
    kind: type[WireEvent], fields: dict[str, Any]
) -> None:
    import jsonschema

    schema = json.loads(render_schemas()[schema_filename(kind)])
    assert not jsonschema.Draft202012Validator(schema).is_valid(fields)
    rejection(kind, fields)


def test_the_schemas_character_classes_are_unicodes() -> None:
    """The patterns' whitespace and format-character ranges are what ``str.strip`` and
    ``unicodedata`` say, over the Basic Multilingual Plane."""
    import re
    import unicodedata

    from schemas.events import _CONTROL, _FORMAT, _SPACE

    def members(ranges: str) -> set[int]:
        found = re.compile(f"[{ranges}]")
        return {c for c in range(0x10000) if found.match(chr(c))}

    control = members(_CONTROL)
    assert members(_SPACE) == {c for c in range(0x10000) if chr(c).isspace()} - control
    assert members(_FORMAT) == {c for c in range(0x10000) if unicodedata.category(chr(c)) == "Cf"}


def _schema_accepts(kind: type[WireEvent], fields: dict[str, Any]) -> bool:
    import jsonschema

    schema = json.loads(render_schemas()[schema_filename(kind)])
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker).is_valid(fields)


# Texts a producer in another language might send: whitespace of every kind around or
# alone, invisible characters, controls, lengths at the bounds, casing that lengthens.
ODD_TEXTS = [
    "u42",
    " u42",
    "u42 ",
    "u42\n",
    "u1\t",
    "\tu1",
    "   ",
    "\u00a0",
    "\u200b",
    "\ufeff",
    "\u200bu1",
    "u\u200b",
    "a\u00a0b",
    "a\x00b",
    "a\u2028b",
    "\u3000x\u3000",
    "é 😀",
    "a" * 128,
    "a" * 129,
    " " + "a" * 127,
    "İ" * 64,
    "İ" * 65,
    "a" + " " * 70 + "b",
    "Sci  Fi",
    "x\u0085",
    "\u1680",
]


@pytest.mark.parametrize("text", ODD_TEXTS, ids=ascii)
def test_what_the_schema_accepts_as_an_id_title_or_tag_validation_accepts(text: str) -> None:
    """The schemas are the strict form: an event they accept is never dead-lettered
    (the reverse may be: validation strips and collapses), and an id they accept is
    read as sent, so a producer keying by it keys as the worker checks."""
    cases = [
        (RatingEvent, rating(user_id=text), lambda e: e.user_id == text),
        (RatingEvent, rating(event_id=text), lambda e: e.event_id == text),
        (ItemEvent, item(item_id=text), lambda e: e.item_id == text),
        (ItemEvent, item(title=text), lambda e: e.title == text),
        (ItemEvent, item(tags=[text]), lambda e: len(e.tags) == 1),
        (UserEvent, user(tags={text: 2.0}), lambda e: list(e.tags.values()) == [2.0]),
    ]
    for kind, fields, as_sent in cases:
        if _schema_accepts(kind, fields):
            assert as_sent(decode(kind, fields)), (kind.__name__, fields)
    accepted = _schema_accepts(RatingEvent, rating(user_id=text))
    assert accepted == (text == text.strip() and decodes(RatingEvent, rating(user_id=text)))


def decodes(kind: type[WireEvent], fields: dict[str, Any]) -> bool:
    try:
        decode(kind, fields)
    except EventError:
        return False
    return True


@pytest.mark.parametrize(
    "moment",
    [
        "2023-11-14T22:13:20Z",
        "2023-11-14t22:13:20z",
        "2023-11-14T22:13:20.123456789+05:30",
        "1970-01-02T00:00:00Z",
        "1970-01-01T00:30:00+01:00",
        "1969-12-31T23:59:59Z",
        "2023-02-30T00:00:00Z",
        "2023-11-14",
        "yesterday",
        "1700000000",
        "2023-11-14T22:13:60Z",
        "2023-11-14T24:00:00Z",
        "20231114T221320Z",
        "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:20+0000",
        "2023-11-14T22:13Z",
        "2023-11-14T22:13:20Z\n",
        "2023-11-14T22:13:20",
    ],
)
def test_what_the_schema_accepts_as_a_date_time_validation_accepts(moment: str) -> None:
    """RFC 3339 from 1970-01-02 on: each moment the schema accepts with its format
    checker is a timestamp validation reads (a lower-case "t" and "z" too); without the
    checker, so is each but a day that does not exist (a 30 February)."""
    import jsonschema

    fields = rating(timestamp=moment)
    schema = json.loads(render_schemas()[schema_filename(RatingEvent)])
    if jsonschema.Draft202012Validator(schema).is_valid(fields) and "02-30" not in moment:
        assert decodes(RatingEvent, fields), moment
    assert _schema_accepts(RatingEvent, fields) == (
        moment.startswith(
            ("2023-11-14T22:13:20Z", "2023-11-14t", "2023-11-14T22:13:20.", "1970-01-02")
        )
        and not moment.endswith("\n")
    )
