"""Worker logging: the Kafka client's repeated complaints summarised, and JSON lines."""

from __future__ import annotations

import logging
import sys

from streamer.logs import KAFKA_CLIENT_LOGGERS, RepeatFilter, quiet_kafka_client


def _record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, "", 0, msg, (), None)


def test_each_kind_of_message_passes_once_per_window_and_then_says_how_many_it_held() -> None:
    now = [0.0]
    f = RepeatFilter(window=10.0, clock=lambda: now[0])
    kinds = [("aiokafka", "Unable connect"), ("aiokafka.consumer.fetcher", "Failed fetch")]
    passed = []
    for step in range(200):  # 20 s of a complaint of each kind every 100 ms
        now[0] = step * 0.1
        for name, msg in kinds:
            record = _record(name, msg)
            if f.filter(record):
                passed.append((now[0], name, record.getMessage()))
    assert [t for t, name, _ in passed if name == "aiokafka"] == [0.0, 10.0]
    assert len(passed) == 4
    assert passed[2][2] == "Unable connect (and 99 more like it in 10 s)"
    # Another level of the same text is another kind: a warning never hides an error.
    assert f.filter(_record("aiokafka", "Unable connect", logging.WARNING))
    # So are other types of arguments: a failed login does not hide behind a refusal.
    refused = logging.LogRecord("aiokafka", logging.ERROR, "", 0, "failed: %s", (OSError(),), None)
    denied = logging.LogRecord("aiokafka", logging.ERROR, "", 0, "failed: %s", (KeyError(),), None)
    assert f.filter(refused) and f.filter(denied) and not f.filter(refused)


def test_the_worker_quiets_every_kafka_client_logger() -> None:
    repeat = quiet_kafka_client()
    try:
        for name in KAFKA_CLIENT_LOGGERS:
            assert repeat in logging.getLogger(name).filters
    finally:
        for name in KAFKA_CLIENT_LOGGERS:
            logging.getLogger(name).removeFilter(repeat)


def test_a_json_line_carries_the_traceback_of_an_exception() -> None:
    import json

    from streamer.logs import JsonFormatter

    try:
        raise ValueError("bad \u00e9vent")
    except ValueError:
        record = logging.LogRecord(
            "streamer.app", logging.ERROR, "", 0, "failed: %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["message"] == "failed: x"
    assert doc["exception"].startswith("Traceback")
    assert "ValueError: bad \u00e9vent" in doc["exception"]
