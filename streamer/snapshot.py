"""Model snapshots on local disk, so a restarted worker replays only the log's tail.

A worker's model lives in memory and the ratings log is its durable state: without a
snapshot, a restart relearns every rating of its partitions. A snapshot is the pickled
:class:`~streamer.engine.StreamEngine` together with, for each ratings partition it
covers, the offset below which every rating is in it. A worker restarting with the same
partitions (or more) loads the newest usable one and replays each partition from that
offset instead of from the start.

A snapshot is usable when it was made with the same model settings, covers only
partitions the worker now owns, and none of its offsets is past the group's committed
offset (live processing resumes there: a snapshot ahead of it would learn the ratings in
between twice). The two newest snapshots of each set of partitions are kept, and when
neither is within the group's commits, also the newest older one that is, so a crash
between a snapshot and the next commit still finds a usable one. Snapshots of a set of
partitions nobody has written for ``STALE_S`` (a set this worker, or another on the same
machine, no longer owns) are deleted, and so are temporary files left by a failed write.

The files are written by the worker itself (temporary file, then an atomic rename),
readable by their owner only (workers sharing a directory run as one user), and read
only by workers of the same app: never point ``RECSYS_DATA_DIR`` at files from
elsewhere, as loading a pickle runs code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 2  # snapshots kept per set of partitions
STALE_S = 86_400.0  # a set of partitions with no snapshot this recent is deleted


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file's header: what it covers, without loading the model."""

    path: Path
    offsets: dict[int, int]  # ratings partition -> every rating below this offset is in
    fingerprint: dict[str, Any]
    created: float

    def usable(self, fingerprint: Mapping[str, Any], assigned: set[int], committed) -> bool:
        """Same model settings, only partitions we own, nothing past the committed offsets.

        >>> s = Snapshot(Path("x"), {0: 10, 1: 5}, {"n_factors": 32}, 0.0)
        >>> s.usable({"n_factors": 32}, {0, 1, 2}, {0: 12, 1: 5})
        True
        >>> s.usable({"n_factors": 32}, {0, 1}, {0: 9, 1: 5})  # ahead of a commit
        False
        >>> s.usable({"n_factors": 32}, {0}, {0: 12, 1: 5})  # partition 1 is not ours
        False
        >>> s.usable({"n_factors": 16}, {0, 1}, {0: 12, 1: 5})
        False
        """
        return (
            dict(fingerprint) == self.fingerprint
            and set(self.offsets) <= assigned
            and self.within(committed)
        )

    def within(self, committed: Mapping[int, int]) -> bool:
        """No offset past the group's committed offset of its partition."""
        return all(offset <= committed.get(p, 0) for p, offset in self.offsets.items())


class SnapshotStore:
    """Snapshot files of one app in one directory (``{data_dir}/{app_id}/snapshots``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def save(self, engine: object, offsets: Mapping[int, int], fingerprint: Mapping) -> Path:
        """Write a snapshot atomically (see :meth:`write` for what is kept)."""
        return self.write(self.dumps(engine, offsets, fingerprint), offsets)

    @staticmethod
    def dumps(engine: object, offsets: Mapping[int, int], fingerprint: Mapping) -> bytes:
        """The snapshot's bytes: taken at once, so the model and offsets agree (writing
        them can then happen elsewhere, e.g. in a thread)."""
        header = {
            "format": FORMAT,
            "offsets": dict(offsets),
            "fingerprint": dict(fingerprint),
            "created": time.time(),
        }
        # Two pickles, header first: listing snapshots reads headers only.
        protocol = pickle.HIGHEST_PROTOCOL
        return pickle.dumps(header, protocol) + pickle.dumps(engine, protocol)

    def write(
        self, data: bytes, offsets: Mapping[int, int], committed: Mapping[int, int] | None = None
    ) -> Path:
        """Write :meth:`dumps`'s bytes atomically; keep the ``KEEP`` newest snapshots of
        the partition set and, given the group's ``committed`` offsets, also the newest
        older one that is usable at those offsets: snapshots taken more often than the
        group commits would otherwise all be ahead of the commits when a worker dies.
        Other sets' snapshots go once stale (:data:`STALE_S`), as do leftover temporary
        files; a failed write removes its own."""
        self.directory.mkdir(parents=True, exist_ok=True)
        partitions = _set_key(offsets)
        path = self.directory / f"snapshot-{_set_name(offsets)}_{time.time_ns()}.pkl"
        tmp = path.with_suffix(".tmp")
        try:
            # (owner-only: a snapshot holds what the model learned of users)
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _sync_directory(self.directory)  # (the rename durable before older ones go)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        by_set = self._by_set()
        # Oldest first, by the writers' clocks (their names: workers sharing a directory
        # keep their clocks in step), the one just written last whatever they say (named
        # by a clock behind another's, it went at once). (Not by how far into the log:
        # a recreated topic's offsets start again, and its deleted log's snapshots
        # would stay ahead of every new one, to be restored once the commits pass them.)
        files = [file for _, file in sorted(by_set.pop(partitions, []))]
        files = [file for file in files if file != path] + [path]
        newest, older = files[-KEEP:], files[:-KEEP]
        if committed is not None:

            def within(p: Path) -> bool:
                snapshot = self._read(p)
                return snapshot is not None and snapshot.within(committed)

            if not any(map(within, newest)):
                usable = [p for p in older if within(p)]
                older = [p for p in older if p not in usable[-1:]]
        # (by the files' times: a worker with nothing new to save keeps its newest one
        # fresh, :meth:`keep`, and its set is not another's to delete)
        stale = time.time() - STALE_S
        for other in by_set.values():
            if max(map(_mtime, (file for _, file in other))) < stale:
                older += [file for _, file in other]
        for leftover in self.directory.glob("snapshot-*.tmp"):  # another writer's is fresh
            if _mtime(leftover) < time.time() - 3600:
                older.append(leftover)
        for old in older:  # (the snapshot is written: failing to delete one is no failure)
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("old snapshot %s not deleted: %s", old, exc)
        return path

    def keep(self, partitions: Mapping[int, int] | set[int]) -> None:
        """Mark the newest snapshot of this set of partitions as current, where nothing
        new was learned since it was written: another worker writing to the same
        directory would otherwise take a set a day without a new file for one nobody
        owns, and delete it."""
        files = sorted(self._by_set().get(_set_key(partitions), []))
        if files:
            try:
                os.utime(files[-1][1])
            except OSError as exc:  # (gone meanwhile, or not ours to touch)
                log.warning("snapshot %s not marked current: %s", files[-1][1], exc)

    def _by_set(self) -> dict[tuple[int, ...] | str, list[tuple[int, Path]]]:
        """The snapshot files here by their set of partitions (its key: :func:`_named`),
        each with its time (ns) in its name."""
        by_set: dict[tuple[int, ...] | str, list[tuple[int, Path]]] = {}
        for file in self.directory.glob("snapshot-*.pkl"):
            named = _named(file)
            if named is not None:
                by_set.setdefault(named[0], []).append((named[1], file))
        return by_set

    def list(self) -> list[Snapshot]:
        """Every readable snapshot, newest first (unreadable files are skipped)."""
        found = map(self._read, self.directory.glob("snapshot-*.pkl"))
        return sorted(filter(None, found), key=lambda s: s.created, reverse=True)

    def _read(self, path: Path) -> Snapshot | None:
        """The snapshot's header, or None when the file cannot be read as one (any
        damage: a truncated or altered file must never stop a worker)."""
        try:
            header = self._header(path)
            offsets = {int(p): int(o) for p, o in header["offsets"].items()}
            fingerprint = dict(header["fingerprint"])
            created = float(header["created"])
        except PermissionError as exc:  # (another user's: workers sharing run as one)
            log.warning("snapshot %s not readable by this worker's user: %s", path, exc)
            return None
        except Exception:  # unpickling damaged bytes can raise anything
            return None
        return Snapshot(path, offsets, fingerprint, created)

    def best(self, fingerprint: Mapping, assigned: set[int], committed) -> Snapshot | None:
        """The usable snapshot covering the most partitions (the newest among those)."""
        return next(iter(self.candidates(fingerprint, assigned, committed)), None)

    def candidates(self, fingerprint: Mapping, assigned: set[int], committed) -> list[Snapshot]:
        """Every usable snapshot, best first (:meth:`best`'s order): when one fails to
        load (its model part damaged), the next is tried."""
        usable = [s for s in self.list() if s.usable(fingerprint, assigned, committed)]
        return sorted(usable, key=lambda s: (len(s.offsets), s.created), reverse=True)

    def unlike(self, fingerprint: Mapping) -> tuple[int, list[str]]:
        """How many snapshots on disk were made under other model settings, and which
        settings differ (a setting a snapshot lacks, from an older version, counts)."""
        names: set[str] = set()
        count = 0
        for snapshot in self.list():
            if snapshot.fingerprint != dict(fingerprint):
                count += 1
                keys = set(fingerprint) | set(snapshot.fingerprint)
                names |= {k for k in keys if snapshot.fingerprint.get(k) != fingerprint.get(k)}
        return count, sorted(names)

    @staticmethod
    def load(snapshot: Snapshot, fresh: Callable[[Any], Any] | None = None) -> Any:
        """The engine a snapshot holds. With ``fresh`` (an empty object like the one
        loaded, made from it), a ``ValueError`` when the loaded one lacks an attribute
        the code reads (:func:`layout_gaps`): a snapshot from an older layout that its
        classes do not fill in would load, then stop the worker at its first batch, and
        again at every restart; refused, the next snapshot is tried, or the log."""
        with open(snapshot.path, "rb") as f:
            header = pickle.load(f)
            if header.get("format") != FORMAT:
                raise ValueError(f"{snapshot.path}: snapshot format {header.get('format')}")
            loaded = pickle.load(f)
        gaps = [] if fresh is None else layout_gaps(loaded, fresh(loaded))
        if gaps:
            raise ValueError(f"{snapshot.path}: an older layout, without {', '.join(gaps[:3])}")
        return loaded

    @staticmethod
    def _header(path: Path) -> dict:
        with open(path, "rb") as f:
            header = pickle.load(f)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("unknown format")
        return header


def layout_gaps(loaded: object, fresh: object, where: str = "", depth: int = 4) -> list[str]:
    """The attributes a ``fresh`` object of the project's classes has and ``loaded`` (of
    the same class) lacks, by path, following attributes that are project objects too
    (``depth`` levels): what an unpickled object from an older layout is missing.

    >>> class Box:
    ...     pass
    >>> old, new = Box(), Box()
    >>> new.size = 3
    >>> layout_gaps(old, new, "box"), layout_gaps(new, old)
    (['box.size'], [])
    """
    have, want = getattr(loaded, "__dict__", None), getattr(fresh, "__dict__", None)
    if have is None or want is None or type(loaded) is not type(fresh):
        return []
    gaps = []
    for name, value in want.items():
        path = f"{where}.{name}" if where else name
        if name not in have:
            if not hasattr(type(loaded), name):  # (a class default reads for it)
                gaps.append(path)
        elif depth > 0 and type(value).__module__.split(".")[0] in _OURS:
            gaps += layout_gaps(have[name], value, path, depth - 1)
    return gaps


_OURS = ("recsys_online", "streamer")


def _set_name(partitions: Mapping[int, int] | set[int]) -> str:
    """How a snapshot's file name spells its set of partitions: ``p`` and its runs
    (``0~3`` for 0 to 3), or, past :data:`_NAME_RUNS` characters, ``h`` and a hash of
    them (a file name holds 255 bytes: 128 partitions listed one by one are 400).

    >>> _set_name({0, 1, 2, 3, 7}), _set_name({5}), _set_name(set(range(0, 512, 2)))[:1]
    ('p0~3-7', 'p5', 'h')
    """
    runs: list[list[int]] = []
    for p in sorted(partitions):
        if runs and runs[-1][1] == p - 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    text = "-".join(str(a) if a == b else f"{a}~{b}" for a, b in runs)
    if len(text) <= _NAME_RUNS:
        return "p" + text
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:24]


_NAME_RUNS = 160


def _set_key(partitions: Mapping[int, int] | set[int]) -> tuple[int, ...] | str:
    """What :func:`_named` gives for the set's files: the partitions, or the hashed name."""
    name = _set_name(partitions)
    return tuple(sorted(partitions)) if name.startswith("p") else name


def _named(path: Path) -> tuple[tuple[int, ...] | str, int] | None:
    """The set of partitions (as :func:`_set_key`) and the time (ns) in a snapshot
    file's name, None if not one.

    >>> _named(Path("snapshot-p0~2-5_1795000000000000000.pkl"))
    ((0, 1, 2, 5), 1795000000000000000)
    >>> _named(Path("snapshot-p0-1_1795000000000000000.pkl"))  # as named before runs
    ((0, 1), 1795000000000000000)
    >>> _named(Path("snapshot-p0-1-1795000000000000000.pkl"))  # as named before that
    ((0, 1), 1795000000000000000)
    >>> _named(Path("snapshot-h9a1b_1795000000000000000.pkl"))
    ('h9a1b', 1795000000000000000)
    >>> _named(Path("notes.pkl")) is None
    True
    """
    stem = path.stem.removeprefix("snapshot-")
    if stem == path.stem or stem[:1] not in ("p", "h"):
        return None
    parts, sep, ns = stem.rpartition("_")
    if not sep:
        parts, _, ns = stem.rpartition("-")
    try:
        if parts.startswith("h"):
            return parts, int(ns)
        partitions: list[int] = []
        for run in parts[1:].split("-"):
            first, _, last = run.partition("~")
            partitions.extend(range(int(first), int(last or first) + 1))
        return tuple(partitions), int(ns)
    except ValueError:
        return None


def _mtime(path: Path) -> float:
    """When the file was last written (or marked current); +inf if it is gone (renamed
    or deleted meanwhile: not another's to delete)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename in it survives a power loss (where the file
    system allows: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
