"""Fetches holding a record whose header name is not UTF-8 (``streamer.kafka_records``)."""

from __future__ import annotations

import struct

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streamer import kafka_records, partitions  # noqa: F401  (the worker's import installs it)

BAD_NAME = b"\xff\xfe"


def batch(base: int, names: list[bytes], compression: int = 0, count: int | None = None) -> bytes:
    """One message-format-2 batch, a record per name (header ``name``: ``v``), offsets
    from ``base``; a name given as ``BAD_NAME`` is written as bytes that are not UTF-8;
    ``count``: the record count its header claims, where that is not the truth."""
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for n, name in enumerate(names):
        text = "ZZ" if name == BAD_NAME else name.decode()
        value = f'{{"n": {base + n}}}'.encode()
        builder.append(n, timestamp=None, key=b"k", value=value, headers=[(text, b"v")])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    if compression == 0:  # (a compressed batch's names are in its compressed bytes)
        while (at := data.find(b"ZZ")) >= 0:
            data[at : at + 2] = BAD_NAME
    if count is not None:
        struct.pack_into(">i", data, 57, count)
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def read(fetched: bytes, offset: int = 0) -> list:
    records = fetcher.PartitionRecords(
        TopicPartition("recsys.ratings", 0),
        fetcher.MemoryRecords(fetched),
        [],
        offset,
        None,
        None,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    return list(records)


def test_the_worker_reads_fetches_through_the_lenient_reader() -> None:
    assert fetcher.PartitionRecords is kafka_records._PartitionRecords
    assert fetcher.MemoryRecords is kafka_records._KeptRecords


def test_a_header_name_that_is_not_utf8_reads_as_the_java_clients_read_it() -> None:
    """aiokafka raised from inside the fetch (the worker stopped, at every start); every
    record of the fetch is read, in order, once, the bad name with U+FFFD for its bytes."""
    # (the last batch compressed: read again too, after the one that failed)
    fetched = batch(0, [b"a", b"b"]) + batch(2, [b"c", BAD_NAME, b"d"]) + batch(5, [b"e"], 1)
    aiokafkas = kafka_records._PartitionRecords.__bases__[0]
    records = kafka_records.memory_records.MemoryRecords(fetched)
    tp = TopicPartition("t", 0)
    with pytest.raises((UnicodeDecodeError, CorruptRecordException)):
        list(aiokafkas(tp, records, [], 0, None, None, True, fetcher.READ_UNCOMMITTED))
    got = read(fetched)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4, 5]
    assert [r.value for r in got] == [f'{{"n": {n}}}'.encode() for n in range(6)]
    assert [r.headers[0][0] for r in got] == ["a", "b", "c", "\ufffd\ufffd", "d", "e"]
    assert list(got[3].headers) == [("\ufffd\ufffd", b"v")] and got[3].key == b"k"
    assert type(got[3].headers) is type(got[0].headers)  # (read as aiokafka reads them)
    # A fetch from an offset inside a batch (the broker sends that batch whole): the
    # records below it are not handed out, on either reading.
    assert [r.offset for r in read(fetched[len(batch(0, [b"a", b"b"])) :], 3)] == [3, 4, 5]
    assert [r.offset for r in read(fetched[len(batch(0, [b"a", b"b"])) :], 4)] == [4, 5]


def test_a_batch_damaged_in_the_log_is_still_refused() -> None:
    """A checksum that does not match is damage to the log, not an event's content: the
    second reading refuses it too, once (no loop)."""
    data = bytearray(batch(0, [b"a", BAD_NAME]))
    data[-3] ^= 0xFF  # (after the checksum was computed)
    with pytest.raises(CorruptRecordException):
        read(bytes(data))
    # A count past the records held fails after the last one was handed out: read again,
    # the batch would count as done and its damage pass unseen.
    for fetched in (
        batch(0, [b"a", b"b"], count=3),
        batch(0, [b"a", b"b"], count=3) + batch(2, [BAD_NAME]),
    ):
        with pytest.raises(CorruptRecordException):
            read(fetched)
