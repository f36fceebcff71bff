"""Records whose header names are not UTF-8, read as Kafka's Java clients read them.

Kafka keeps a header's name as bytes. The Java clients decode it with replacement (a byte
that is not UTF-8 reads as U+FFFD); aiokafka's decoder raises instead, from inside the
consumer's fetch, so a single such record (librdkafka, for one, sends any bytes it is
given) stopped the worker, and stopped it again at every start: its partition blocked
for good. :func:`install` makes aiokafka read a batch it could not decode a second time,
that batch alone, with header names decoded as the Java clients do. The record then goes
on like any other: a rating is validated, and learned or sent to the dead-letter topic.

Anything else a batch cannot be read for (a checksum that does not match, a record count
past the records it holds) is raised as before: that is damage to the log, not an event's
content.
"""

from __future__ import annotations

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records, memory_records

_MAGIC_OFFSET = memory_records._MemoryRecordsPy.MAGIC_OFFSET


class _ReplacingText(bytearray):
    """Bytes whose ``decode`` replaces what is not UTF-8 (U+FFFD), whatever is asked."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "replace")


class _Buffer(bytearray):
    """A batch's records, sliced into :class:`_ReplacingText` (how the batch's reader
    takes a header name before decoding it)."""

    def __getitem__(self, index):
        got = bytearray.__getitem__(self, index)
        return _ReplacingText(got) if isinstance(index, slice) else got


class _LenientBatch(default_records._DefaultRecordBatchPy):
    """aiokafka's own (pure Python) batch reader, over a :class:`_Buffer`."""

    def __iter__(self):
        super().__iter__()  # (decompresses into a new buffer, where compressed)
        self._buffer = _Buffer(self._buffer)
        return self


class _LenientRecords(memory_records._MemoryRecordsPy):
    """A fetch's batches, each read by :class:`_LenientBatch` (message format 2; the
    older formats have no headers)."""

    def next_batch(self, *args):
        raw = self._next_slice
        batch = super().next_batch(*args)
        if raw is not None and raw[_MAGIC_OFFSET] >= 2:
            return _LenientBatch(raw)
        return batch


class _KeptRecords(memory_records.MemoryRecords):
    """aiokafka's reader of a fetch's batches, keeping the fetched bytes: what a batch
    that cannot be decoded is read again from."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.fetched = data


class _PartitionRecords(fetcher.PartitionRecords):
    """One partition's records of a fetch. Where one cannot be decoded, the batches from
    the one holding it on are read again by :class:`_LenientRecords`, from the record
    that failed on (those handed out already are skipped, as aiokafka skips the records
    of a batch below the position)."""

    def __next__(self):
        try:
            return super().__next__()
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            fetched = getattr(self._records, "fetched", None)
            if fetched is None or self._records_iterator is None or not _a_name(exc):
                raise
            records = _LenientRecords(fetched)
            done = _batches_below(fetched, self.next_fetch_offset)
            for _ in range(done):
                records.next_batch()
            self._records = records  # (no ``fetched``: a second failure is raised)
            self._records_iterator = self._unpack_records()
            return super().__next__()


def _a_name(exc: Exception) -> bool:
    """The failure is text that is not UTF-8 (a header name: a record's key and value
    are bytes), as aiokafka's C reader raises it, or its Python reader wraps it."""
    return isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, UnicodeDecodeError)


def _batches_below(fetched: bytes, offset: int) -> int:
    """How many batches at the start of ``fetched`` end below ``offset``."""
    records, n = memory_records._MemoryRecordsPy(fetched), 0
    while records.has_next():
        batch = records.next_batch()
        if batch is None or batch.next_offset > offset:
            break
        n += 1
    return n


def install() -> None:
    """Have aiokafka's consumers (the worker's, its replays' and its catalog reader's)
    read fetches through :class:`_PartitionRecords`. Idempotent."""
    fetcher.MemoryRecords = _KeptRecords
    fetcher.PartitionRecords = _PartitionRecords
