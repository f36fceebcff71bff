"""Wire events: strict pydantic models for the JSON that apps produce into Kafka.

Three events travel on the wire, one JSON object per Kafka message:

- :class:`RatingEvent` -- a user rated an item (the learning signal).
- :class:`ItemEvent` -- an item joins, changes in (``op="upsert"``) or leaves
  (``op="delete"``) the catalog, with weighted tags for cold start.
- :class:`UserEvent` -- a user's tags, for user cold start.

:func:`parse_event` turns the raw bytes of a message into one of these models, or raises a
single :class:`EventError` whose ``reason`` is short and stable enough to be sent as is to a
dead-letter topic. ``event.to_bytes()`` is the producer side.

Decisions
---------
Unknown fields
    Rejected (``extra="forbid"``): a typo such as ``"ratng"`` fails loudly with
    ``"'ratng': unknown field, got 4"`` instead of silently dropping the rating.
Strictness
    No coercion: ids, tags and titles must be JSON strings, ratings and weights JSON numbers
    (``"5"`` and ``true`` are rejected), and NaN or infinities never get through.
Ids
    Stripped of surrounding whitespace, then 1 to :data:`MAX_ID_LENGTH` characters with no
    control character (nor a line or paragraph separator), not all invisible (format
    characters such as a zero-width space). Otherwise kept as sent, byte for byte: an id
    is the app's key, looked up as the app spells it. Integers are not ids: producers
    send ``"196"``, not ``196``.
Rating scale
    Inclusive, :data:`DEFAULT_RATING_SCALE` (``[1.0, 5.0]``) in :func:`parse_event` and
    :func:`validate_event` unless told otherwise, and as a validation context says:
    ``RatingEvent.model_validate(data, context={"rating_scale": (0.5, 5.0)})`` or
    ``parse_event(raw, RatingEvent, rating_scale=(0.5, 5.0))``. The scale is never a mutable
    module global: the streamer passes the one from its settings. An event built directly
    (``RatingEvent(...)``, no context) is only checked to be finite: the scale is the
    deployment's, and the producers check it against theirs before sending.
Timestamps
    Required, never defaulted to "now": the event time drives prequential evaluation and
    time decay, and a consumer-side default would turn a replayed backlog into fresh events.
    Accepted as epoch seconds (int or float) or as an ISO-8601 string *with* a UTC offset
    (``"1997-12-04T15:55:49Z"``); naive strings are ambiguous and rejected. Normalised to
    float epoch seconds. Valid from the epoch (``0``, MovieLens 100k dates from 1997) to the
    validation time plus :data:`MAX_CLOCK_SKEW_SECONDS` (one day), which also catches
    milliseconds sent as seconds. The validation context may pin the clock:
    ``context={"now": 1_700_000_000.0}``.
Tags
    A list of strings (weight ``1.0`` each) or a mapping ``tag -> weight`` with weights
    from :data:`MIN_TAG_WEIGHT` to :data:`MAX_TAG_WEIGHT` (the model keeps float32: a
    weight near its limits would underflow to 0 or overflow); ``null`` means no tags. At
    most :data:`MAX_TAGS` tags, each of 1 to :data:`MAX_TAG_LENGTH` characters once its
    whitespace is collapsed, then normalised (Unicode NFC, lower-cased), with the ids'
    rules.
    Tags that normalise to the same string merge, keeping the largest weight, so listing a
    tag twice never doubles it. Stored as ``dict[str, float]``.
Deletes
    ``ItemEvent(op="delete")`` needs only ``item_id`` and ``timestamp``; a delete carrying a
    title or tags is rejected as a producer bug.
JSON Schemas
    ``python -m schemas.export`` writes them: the strict form of these rules, so that an
    event they accept, validation accepts too, but for what a pattern cannot say: a day
    that does not exist (a 30 February: the "date-time" format refuses it, where a
    validator checks formats), an id or tag of nothing but format characters from beyond
    the Basic Multilingual Plane, a lone surrogate (a ``"\\ud800"`` escape: a pattern
    excluding it would refuse every emoji where a validator reads patterns without
    ECMA-262's ``u`` flag, one UTF-16 half at a time), and the consumer's rating scale
    and clock. Their date-times start on 1970-01-02 (the first day, with an offset, can
    fall before 1970).
    Validation is more lenient where it normalises: it strips ids and titles, collapses
    and lower-cases tags, and reads any ISO-8601 date-time with an offset.
Payloads
    At most :data:`MAX_PAYLOAD_BYTES` (64 KiB) of UTF-8 JSON, configurable per call; duplicate
    keys are malformed JSON, and so is a record with no value (a Kafka tombstone). Text
    (ids, titles, tags, keys) must be valid Unicode: a JSON escape of a lone surrogate
    (``"\\ud800"``) is rejected, since no UTF-8 store or client could hold it.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from numbers import Real
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from recsys_online.events import MAX_TAGS, MAX_WEIGHT, MIN_WEIGHT, weight_problem

MAX_ID_LENGTH = 128
MAX_TITLE_LENGTH = 512
MAX_TAG_LENGTH = 64
MAX_TAG_WEIGHT = MAX_WEIGHT  # the model's own bounds (float32 vectors)
MIN_TAG_WEIGHT = MIN_WEIGHT
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_CLOCK_SKEW_SECONDS = 86_400.0
MIN_TIMESTAMP = 0.0

EventErrorCode = Literal["oversized", "malformed", "not_object", "invalid"]

# Control characters (C0, DEL, C1) and the line and paragraph separators: each would
# break a reason, a log or a CSV line.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# The JSON Schemas' patterns (ECMA-262 and Python ``re`` alike) say what validation says,
# as the strict form: what they accept, validation accepts. Character classes as ranges
# of code points: the control characters above; the other whitespace ``str.strip`` strips;
# the Basic Multilingual Plane's format characters (Unicode category Cf, invisible).
# ``tests/schemas`` checks the last two against ``unicodedata``.
_CONTROL = r"\u0000-\u001f\u007f-\u009f\u2028\u2029"
_SPACE = r"\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_FORMAT = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
# ``$(?!\n)``: the end of the string in both (Python's ``$`` also matches before a last
# newline). Ids and titles: no control character, nothing to strip at either end, a
# visible character somewhere. Tags: no control character and a visible one (their
# surrounding whitespace is collapsed away).
_VISIBLE_SOMEWHERE = rf"(?=[^{_CONTROL}]*[^{_CONTROL}{_SPACE}{_FORMAT}])"
_STRIPPED_PATTERN = (
    rf"^{_VISIBLE_SOMEWHERE}[^{_CONTROL}{_SPACE}](?:[^{_CONTROL}]*[^{_CONTROL}{_SPACE}])?$(?!\n)"
)
_TAG_PATTERN = rf"^{_VISIBLE_SOMEWHERE}[^{_CONTROL}]*$(?!\n)"
# RFC 3339 date-time (what JSON Schema's "date-time" format names), from 1970-01-02 on
# (the first day, with an offset ahead of UTC, can fall before 1970). Days up to 31 in
# every month: a 30 February is refused by the "date-time" format, when checked.
_DATE_TIME_PATTERN = (
    r"^(?:1970-(?:01-(?:0[2-9]|[12][0-9]|3[01])|(?:0[2-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    r"|(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])"
    r"-(?:0[1-9]|[12][0-9]|3[01]))"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$(?!\n)"
)
_SHOWN_CHARACTERS = 48


@dataclass(frozen=True, slots=True)
class RatingScale:
    """The closed interval ``[low, high]`` that every rating must fall in.

    Parameters
    ----------
    low
        Smallest valid rating, finite.
    high
        Largest valid rating, finite and greater than ``low``.

    Examples
    --------
    >>> scale = RatingScale(0.5, 5)
    >>> scale
    RatingScale(low=0.5, high=5.0)
    >>> scale.contains(0.5), scale.contains(5.5)
    (True, False)
    >>> str(scale)
    '[0.5, 5.0]'
    """

    low: float = 1.0
    high: float = 5.0

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"a rating scale needs finite low < high, got [{low}, {high}]")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def contains(self, rating: float) -> bool:
        """Whether ``rating`` lies in the scale, bounds included."""
        return self.low <= rating <= self.high

    def __str__(self) -> str:
        return f"[{self.low}, {self.high}]"


DEFAULT_RATING_SCALE = RatingScale(1.0, 5.0)


class EventError(ValueError):
    """A Kafka message that is not a valid event, with a short reason for the dead-letter topic.

    Parameters
    ----------
    reason
        Concise, stable, human-readable cause, e.g.
        ``"rating: 7.0 is outside the rating scale [1.0, 5.0]"``. Also ``str(error)``.
    field
        Dotted path of the offending field, or ``None`` when the payload as a whole is bad.
    code
        Family of the failure, for metrics: ``"oversized"``, ``"malformed"`` (not UTF-8 JSON),
        ``"not_object"`` or ``"invalid"`` (schema violation).

    Examples
    --------
    >>> error = EventError("rating: 7.0 is outside the rating scale [1.0, 5.0]", field="rating")
    >>> str(error), error.field, error.code
    ('rating: 7.0 is outside the rating scale [1.0, 5.0]', 'rating', 'invalid')
    """

    def __init__(
        self, reason: str, field: str | None = None, *, code: EventErrorCode = "invalid"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.code = code

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> EventError:
        """Summarise a pydantic error by one violation, an unknown field first if any.

        Parameters
        ----------
        error
            Raised by ``model_validate`` on one of the event models.

        Returns
        -------
        EventError
            Reason ``"<field>: <what is wrong>"``, ended by ``" (+N more)"`` when there are
            other violations; ``field`` is that violation's dotted location.
        """
        violations = error.errors(include_url=False)
        # An unknown field first: a typo also reports the intended field as missing.
        violations.sort(key=lambda violation: violation["type"] != "extra_forbidden")
        first = violations[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        # A field named by the producer (an unknown key) is always shown quoted and cut
        # short: unquoted, it could break the reason's one line or length, or begin a
        # reason that reads as another ("item_id: unknown item x" would count as one).
        shown = field or "event"
        if first["type"] == "extra_forbidden" or len(shown) > _SHOWN_CHARACTERS:
            shown = _show(shown)
        return cls(f"{shown}: {_describe(first)}{more}", field=field)


def _show(value: Any) -> str:
    """Short ``repr`` of an offending value for an error message."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<deeply nested {type(value).__name__}>"
    if len(text) <= _SHOWN_CHARACTERS:
        return text
    return text[: _SHOWN_CHARACTERS - 3] + "..."


def _describe(violation: Mapping[str, Any]) -> str:
    """One pydantic violation as ``"<what is wrong>, got <value>"``."""
    kind, message = violation["type"], violation["msg"]
    if kind == "invalid_event_value":
        return message
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field, got {_show(violation['input'])}"
    return f"{message[:1].lower()}{message[1:]}, got {_show(violation['input'])}"


def _invalid(reason: str) -> PydanticCustomError:
    """A violation whose message is ``reason`` verbatim (braces included)."""
    return PydanticCustomError("invalid_event_value", "{reason}", {"reason": reason})


def _context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context if isinstance(info.context, Mapping) else {}


def _rating_scale(info: ValidationInfo) -> RatingScale:
    """The scale from the validation context, else the default one."""
    scale = _context(info).get("rating_scale") or DEFAULT_RATING_SCALE
    if isinstance(scale, RatingScale):
        return scale
    try:
        low, high = scale
        return RatingScale(low, high)
    except (TypeError, ValueError) as exc:  # a configuration bug, not a bad event
        raise TypeError(
            f"context['rating_scale'] must be a RatingScale or a (low, high) pair, got {scale!r}"
        ) from exc


def _now(info: ValidationInfo) -> float:
    """The clock of the validation context, else the wall clock."""
    now = _context(info).get("now")
    return time.time() if now is None else float(now)


def _finite(value: object, subject: str | None = None) -> float:
    """``value`` as a finite float; bools, strings and non-numbers are rejected."""
    subject = _show(value) if subject is None else subject
    if isinstance(value, bool) or not isinstance(value, Real):
        raise _invalid(f"{subject} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _invalid(f"{subject} is not finite")
    return number


def _clean_text(value: object, max_length: int) -> str:
    """``value`` stripped, non-empty, at most ``max_length`` characters, no control character."""
    if not isinstance(value, str):
        raise _invalid(f"{_show(value)} is not a string")
    return _bounded(value, str(value.strip()), max_length)


def _bounded(
    raw: str, text: str, max_length: int, label: str = "", measured: str | None = None
) -> str:
    """``text`` (normalised from ``raw``) if non-empty, short enough (``measured``, when
    given, is what the length bounds) and free of control characters; ``label`` starts
    each reason (e.g. ``"tag "``)."""
    if not text:
        raise _invalid(f"{label}{_show(raw)} is empty")
    measured = text if measured is None else measured
    if len(measured) > max_length:
        raise _invalid(
            f"{label}{_show(measured)} has {len(measured)} characters, more than {max_length}"
        )
    if _CONTROL_CHARACTER.search(text):
        raise _invalid(f"{label}{_show(text)} contains a control character")
    if not text.isascii() and all(c.isspace() or unicodedata.category(c) == "Cf" for c in text):
        raise _invalid(f"{label}{_show(text)} is invisible (format characters and spaces only)")
    if not _is_unicode(text):
        raise _invalid(f"{label}{_show(text)} is not valid Unicode (a lone surrogate)")
    return text


def _is_unicode(text: str) -> bool:
    """``text`` encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates,
    which do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_id(value: object) -> str:
    return _clean_text(value, MAX_ID_LENGTH)


def clean_id(value: object, field: str = "id") -> str:
    """An id as events spell it (stripped; non-empty, at most ``MAX_ID_LENGTH``
    characters, no control character): what a reader looks a user or item up by.

    >>> clean_id(" u7 ")
    'u7'
    >>> clean_id("", "user_id")
    Traceback (most recent call last):
    ...
    ValueError: user_id: '' is empty
    """
    try:
        return _check_id(value)
    except PydanticCustomError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _check_optional_id(value: object) -> str | None:
    return None if value is None else _check_id(value)


def _check_title(value: object) -> str | None:
    return None if value is None else _clean_text(value, MAX_TITLE_LENGTH)


def _check_rating(value: object, info: ValidationInfo) -> float:
    rating = _finite(value)
    if info.context is None:  # built by an app: the scale is its deployment's, checked
        return rating  # where it is known (validate_event and parse_event, and a send)
    scale = _rating_scale(info)
    if not scale.contains(rating):
        raise _invalid(f"{_show(rating)} is outside the rating scale {scale}")
    return rating


def _epoch_seconds(value: object) -> float:
    """Epoch seconds of a number, an aware ``datetime`` or an ISO-8601 string with offset."""
    if isinstance(value, str):
        try:  # (RFC 3339 allows a lower-case "t" and "z": ISO-8601's letters upper-cased)
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise _invalid(f"{_show(value)} is not an ISO-8601 date-time") from None
    elif isinstance(value, datetime):
        moment = value
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise _invalid(f"{_show(value)} is neither epoch seconds nor an ISO-8601 string")
    else:
        return _finite(value)
    if moment.utcoffset() is None:
        raise _invalid(f"{_show(value)} has no UTC offset (add 'Z' or '+hh:mm')")
    return moment.timestamp()


def _check_timestamp(value: object, info: ValidationInfo) -> float:
    seconds = _epoch_seconds(value)
    if seconds < MIN_TIMESTAMP:
        raise _invalid(f"{_show(value)} is before 1970-01-01T00:00:00Z")
    if seconds > _now(info) + MAX_CLOCK_SKEW_SECONDS:
        raise _invalid(f"{_show(value)} is more than 1 day in the future")
    return seconds


def _normalise_tag(raw: object) -> str:
    """A tag lower-cased with its whitespace collapsed: ``" Sci  Fi"`` -> ``"sci fi"``;
    composed (NFC), so that one spelling of ``"café"`` typed two ways is one tag."""
    if not isinstance(raw, str):
        raise _invalid(f"tag {_show(raw)} is not a string")
    collapsed = " ".join(raw.split())
    if collapsed.isascii():
        text = collapsed.lower()
    else:  # (composed again after lower-casing, which may decompose)
        nfc = unicodedata.normalize
        text = nfc("NFC", nfc("NFC", collapsed).lower())
    # The length as sent, but for whitespace: lower-casing may lengthen a tag ("İ" is
    # "i̇", two characters), and a tag within the schema's bound must pass.
    return _bounded(raw, text, MAX_TAG_LENGTH, "tag ", measured=collapsed)


def _check_tags(value: object) -> dict[str, float]:
    """Tags as ``{tag: weight}``: a list weighs 1.0 per tag, duplicates keep the largest."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        pairs = [(tag, 1.0) for tag in value]
    else:
        raise _invalid(f"{_show(value)} is neither a list of tags nor a tag -> weight mapping")
    if len(pairs) > MAX_TAGS:
        raise _invalid(f"{len(pairs)} tags, more than {MAX_TAGS}")
    tags: dict[str, float] = {}
    for raw, raw_weight in pairs:
        tag = _normalise_tag(raw)
        weight = _finite(raw_weight, f"weight {_show(raw_weight)} of tag {tag!r}")
        problem = weight_problem(weight)  # (the rule the core applies too)
        if problem is not None:
            raise _invalid(f"weight {_show(raw_weight)} of tag {tag!r} {problem}")
        tags[tag] = max(weight, tags.get(tag, 0.0))
    return tags


_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": _STRIPPED_PATTERN,
}
_TAG_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TAG_LENGTH,
    "pattern": _TAG_PATTERN,
}

EntityId = Annotated[str, BeforeValidator(_check_id), WithJsonSchema(_ID_SCHEMA, mode="validation")]
EventId = Annotated[
    str | None,
    BeforeValidator(_check_optional_id),
    WithJsonSchema({"anyOf": [_ID_SCHEMA, {"type": "null"}]}, mode="validation"),
]
Title = Annotated[
    str | None,
    BeforeValidator(_check_title),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_TITLE_LENGTH,
                    "pattern": _STRIPPED_PATTERN,
                },
                {"type": "null"},
            ]
        },
        mode="validation",
    ),
]
Rating = Annotated[
    float, BeforeValidator(_check_rating), WithJsonSchema({"type": "number"}, mode="validation")
]
Timestamp = Annotated[
    float,
    BeforeValidator(_check_timestamp),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": MIN_TIMESTAMP},
                {"type": "string", "format": "date-time", "pattern": _DATE_TIME_PATTERN},
            ]
        },
        mode="validation",
    ),
]
Tags = Annotated[
    dict[str, float],
    BeforeValidator(_check_tags),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": _TAG_SCHEMA, "maxItems": MAX_TAGS},
                {
                    "type": "object",
                    "propertyNames": _TAG_SCHEMA,
                    "additionalProperties": {
                        "type": "number",
                        "minimum": MIN_TAG_WEIGHT,
                        "maximum": MAX_TAG_WEIGHT,
                    },
                    "maxProperties": MAX_TAGS,
                },
                {"type": "null"},
            ]
        },
        mode="validation",
    ),
]

_ID_DOC = f"stripped, 1 to {MAX_ID_LENGTH} characters, no control character"
_TIMESTAMP_DOC = (
    "Event time: epoch seconds or an ISO-8601 date-time with UTC offset; "
    "from 1970-01-01 to one day past the validation time. Normalised to epoch seconds."
)
_TAGS_DOC = (
    f"At most {MAX_TAGS} tags: a list (weight 1.0 each) or a tag -> positive weight mapping. "
    f"Lower-cased, whitespace collapsed, 1 to {MAX_TAG_LENGTH} characters; duplicates merge "
    "keeping the largest weight."
)


class WireEvent(BaseModel):
    """Base of the wire events: strict, frozen, unknown fields forbidden, JSON bytes in and out.

    ``kind`` names the event (``"rating"``, ``"item"``, ``"user"``) for topics and files.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kind: ClassVar[str]

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON for a Kafka producer; fields at their default are left out."""
        return self.model_dump_json(exclude_defaults=True).encode()

    @classmethod
    def from_bytes(
        cls,
        raw: bytes | bytearray | memoryview | str,
        *,
        rating_scale: RatingScale | tuple[float, float] | None = None,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        now: float | None = None,
    ) -> Self:
        """Decode a Kafka message into this event: ``parse_event(raw, cls, ...)``."""
        return parse_event(raw, cls, rating_scale=rating_scale, max_bytes=max_bytes, now=now)


class RatingEvent(WireEvent):
    """A user rated an item.

    Parameters
    ----------
    user_id, item_id
        Ids, stripped, 1 to 128 characters, no control character.
    rating
        Finite number within the rating scale (context key ``"rating_scale"``, default
        ``[1.0, 5.0]``), stored as a float.
    timestamp
        Epoch seconds or ISO-8601 date-time with UTC offset, stored as epoch seconds.
    event_id
        Optional producer-chosen id, unique per rating: the worker dead-letters a rating
        whose id came with one of its last ``RECSYS_DEDUPE_WINDOW`` ratings, so a
        redelivered duplicate is not learned twice.

    Examples
    --------
    >>> event = RatingEvent(user_id="196", item_id="242", rating=3, timestamp=881250949)
    >>> event
    RatingEvent(user_id='196', item_id='242', rating=3.0, timestamp=881250949.0, event_id=None)
    >>> event.to_bytes()
    b'{"user_id":"196","item_id":"242","rating":3.0,"timestamp":881250949.0}'
    >>> RatingEvent.from_bytes(event.to_bytes()) == event
    True
    >>> half_stars = {"user_id": "196", "item_id": "242", "rating": 0.5, "timestamp": 881250949}
    >>> RatingEvent.model_validate(half_stars, context={"rating_scale": (0.5, 5.0)}).rating
    0.5
    """

    model_config = ConfigDict(json_schema_extra={"description": "A user rated an item."})

    kind: ClassVar[str] = "rating"

    user_id: EntityId = Field(description=f"Rating user: {_ID_DOC}.")
    item_id: EntityId = Field(description=f"Rated item: {_ID_DOC}.")
    rating: Rating = Field(
        description="Finite number within the consumer's rating scale, [1, 5] by default."
    )
    timestamp: Timestamp = Field(description=_TIMESTAMP_DOC)
    event_id: EventId = Field(
        default=None, description=f"Optional id unique per rating, for deduplication: {_ID_DOC}."
    )


class ItemEvent(WireEvent):
    """An item joins or changes in the catalog (``op="upsert"``), or leaves it (``"delete"``).

    Parameters
    ----------
    op
        ``"upsert"`` or ``"delete"``.
    item_id
        Id, stripped, 1 to 128 characters, no control character.
    title
        Optional display title, stripped, at most 512 characters; none on a delete.
    tags
        List of tags or ``{tag: weight}``, normalised to ``{tag: weight}``; none on a delete.
    timestamp
        Epoch seconds or ISO-8601 date-time with UTC offset, stored as epoch seconds.

    Examples
    --------
    >>> item = ItemEvent(
    ...     op="upsert",
    ...     item_id="1",
    ...     title="Toy Story (1995)",
    ...     tags=["Animation", " Children's ", "COMEDY", "comedy"],
    ...     timestamp="1995-11-22T00:00:00Z",
    ... )
    >>> item.tags
    {'animation': 1.0, "children's": 1.0, 'comedy': 1.0}
    >>> item.timestamp
    816998400.0
    >>> ItemEvent.from_bytes(b'{"op": "delete", "item_id": "1", "timestamp": 816998400}').op
    'delete'
    """

    model_config = ConfigDict(
        json_schema_extra={
            "description": "An item joins, changes in (upsert) or leaves (delete) the catalog.",
            "if": {"properties": {"op": {"const": "delete"}}},
            "then": {
                "properties": {
                    "title": {"type": "null"},
                    "tags": {"maxItems": 0, "maxProperties": 0},
                }
            },
        }
    )

    kind: ClassVar[str] = "item"

    op: Literal["upsert", "delete"] = Field(description="Add or change the item, or remove it.")
    item_id: EntityId = Field(description=f"Item: {_ID_DOC}.")
    title: Title = Field(
        default=None,
        description=f"Optional display title, at most {MAX_TITLE_LENGTH} characters; "
        "none on a delete.",
    )
    tags: Tags = Field(default_factory=dict, description=f"{_TAGS_DOC} None on a delete.")
    timestamp: Timestamp = Field(description=_TIMESTAMP_DOC)

    @field_validator("title", "tags")
    @classmethod
    def _nothing_on_delete(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("op") == "delete":
            raise _invalid(f"a delete carries no {info.field_name}, got {_show(value)}")
        return value


class UserEvent(WireEvent):
    """A user's tags (declared interests, attributes) for user cold start.

    Parameters
    ----------
    user_id
        Id, stripped, 1 to 128 characters, no control character.
    tags
        List of tags or ``{tag: weight}``, normalised to ``{tag: weight}``.
    timestamp
        Epoch seconds or ISO-8601 date-time with UTC offset, stored as epoch seconds.

    Examples
    --------
    >>> user = UserEvent(user_id="196", tags={"Drama": 2, "drama ": 0.5}, timestamp=881250949)
    >>> user.tags
    {'drama': 2.0}
    >>> user.to_bytes()
    b'{"user_id":"196","tags":{"drama":2.0},"timestamp":881250949.0}'
    """

    model_config = ConfigDict(
        json_schema_extra={"description": "A user's tags, for user cold start."}
    )

    kind: ClassVar[str] = "user"

    user_id: EntityId = Field(description=f"User: {_ID_DOC}.")
    tags: Tags = Field(default_factory=dict, description=_TAGS_DOC)
    timestamp: Timestamp = Field(description=_TIMESTAMP_DOC)


EVENT_TYPES: tuple[type[WireEvent], ...] = (RatingEvent, ItemEvent, UserEvent)

EventT = TypeVar("EventT", bound=WireEvent)


class _BadKeyError(ValueError):
    """A JSON object names the same key twice."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _BadKeyError(f"duplicate key {_show(key)}")
        if not _is_unicode(key):
            raise _BadKeyError(f"key {_show(key)} is not valid Unicode (a lone surrogate)")
        mapping[key] = value
    return mapping


_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def parse_event(
    raw: bytes | bytearray | memoryview | str | None,
    kind: type[EventT],
    *,
    rating_scale: RatingScale | tuple[float, float] | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    now: float | None = None,
) -> EventT:
    """Decode the raw bytes of a Kafka message into a validated event.

    Parameters
    ----------
    raw
        The message value: UTF-8 JSON holding one object.
    kind
        The event model expected on this topic: ``RatingEvent``, ``ItemEvent`` or ``UserEvent``.
    rating_scale
        Scale a rating must fall in, ``DEFAULT_RATING_SCALE`` (``[1.0, 5.0]``) if ``None``.
    max_bytes
        Largest accepted payload, in bytes.
    now
        Clock for the future-timestamp bound, ``time.time()`` if ``None``.

    Returns
    -------
    EventT
        An instance of ``kind``.

    Raises
    ------
    EventError
        For an oversized payload, bytes that are not UTF-8 JSON, JSON that is not an object,
        or an object that breaks a rule of ``kind``; ``reason`` says which, in one line.

    Examples
    --------
    >>> raw = b'{"user_id": "196", "item_id": "242", "rating": 3, "timestamp": 881250949}'
    >>> parse_event(raw, RatingEvent).rating
    3.0
    >>> parse_event(raw.replace(b"3", b"7", 1), RatingEvent)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: rating: 7.0 is outside the rating scale [1.0, 5.0]
    >>> parse_event(b'{"user_id": "196"', RatingEvent)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: malformed JSON: Expecting ',' delimiter at line 1 column 18
    """
    if raw is None:
        raise EventError("no value: a tombstone (null record) is not an event", code="malformed")
    payload = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(payload) > max_bytes:
        raise EventError(
            f"payload too large: {len(payload)} bytes, more than {max_bytes}", code="oversized"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(
            f"malformed JSON: invalid UTF-8 at byte {exc.start}", code="malformed"
        ) from exc
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise EventError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="malformed"
        ) from exc
    except _BadKeyError as exc:
        raise EventError(f"malformed JSON: {exc}", code="malformed") from exc
    except RecursionError as exc:
        raise EventError("malformed JSON: nested too deeply", code="malformed") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise EventError("malformed JSON: number with too many digits", code="malformed") from exc
    if not isinstance(data, dict):
        json_type = _JSON_TYPE_NAMES.get(type(data), "null")
        raise EventError(f"not a JSON object: got {json_type}", code="not_object")
    return validate_event(data, kind, rating_scale=rating_scale, now=now)


def validate_event(
    data: Mapping[str, Any],
    kind: type[EventT],
    *,
    rating_scale: RatingScale | tuple[float, float] | None = None,
    now: float | None = None,
) -> EventT:
    """The fields of one event, already decoded, validated as ``kind``: the rules of
    :func:`parse_event` after the JSON (``EventError`` names the field).

    >>> validate_event({"user_id": "u", "item_id": "i", "rating": 4, "timestamp": 1},
    ...                RatingEvent).rating
    4.0
    """
    context = {"rating_scale": rating_scale or DEFAULT_RATING_SCALE, "now": now}
    try:
        return kind.model_validate(data, context=context)
    except ValidationError as exc:
        raise EventError.from_validation_error(exc) from exc


__all__ = [
    "DEFAULT_RATING_SCALE",
    "EVENT_TYPES",
    "MAX_CLOCK_SKEW_SECONDS",
    "MAX_ID_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_TAG_WEIGHT",
    "MAX_TITLE_LENGTH",
    "MIN_TAG_WEIGHT",
    "MIN_TIMESTAMP",
    "EventError",
    "EventErrorCode",
    "ItemEvent",
    "RatingEvent",
    "RatingScale",
    "UserEvent",
    "WireEvent",
    "clean_id",
    "parse_event",
    "validate_event",
]
