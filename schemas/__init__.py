"""Wire formats: strict pydantic models for the JSON events that apps produce into Kafka."""

from __future__ import annotations

from schemas.events import (
    DEFAULT_RATING_SCALE,
    EVENT_TYPES,
    MAX_CLOCK_SKEW_SECONDS,
    MAX_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    MAX_TAG_LENGTH,
    MAX_TAG_WEIGHT,
    MAX_TAGS,
    MAX_TITLE_LENGTH,
    MIN_TAG_WEIGHT,
    MIN_TIMESTAMP,
    EventError,
    EventErrorCode,
    ItemEvent,
    RatingEvent,
    RatingScale,
    UserEvent,
    WireEvent,
    parse_event,
    validate_event,
)

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
    "parse_event",
    "validate_event",
]
