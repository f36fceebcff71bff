"""Rating logs (MovieLens 100K / 1M / latest, plain CSV) replayed as time-ordered event streams.

A :class:`Dataset` holds ratings, an item catalog and item deletions; :meth:`Dataset.events`
merges them into the one stream the online learner consumes. :func:`load` reads the common
public formats, :func:`save_csv` writes the plain CSV format that :func:`load` reads back.

Item arrival
------------
An :class:`~recsys_online.events.ItemUpsert` whose ``timestamp`` is ``0.0`` (the record's
default, :data:`UNKNOWN_ARRIVAL`) has no known arrival time: MovieLens movies are like this.
Such an item is announced immediately before the first event that needs it (its first rating,
or its deletion), stamped with that event's time, so items "arrive" when first rated and cold
start can be measured. An item with a real arrival time is announced at that time. Items never
needed are still announced: at their arrival time, or at the end of the stream.

Plain CSV format
----------------
``ratings.csv``: a header naming ``user_id``, ``item_id``, ``rating`` and optionally
``timestamp`` (aliases ``user``/``userId``, ``item``/``movieId``; without a timestamp column,
file order is used). ``items.csv``: ``item_id`` plus optional ``title``, ``tags``
(``|``-separated, each optionally ``tag:weight``; ``genres`` is accepted too; at most 64
an item, as events carry: a row with more is a :class:`DatasetError` naming its file and
line), ``timestamp`` (arrival; empty means unknown) and ``deleted_at`` (empty means never).
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import math
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import TextIO

import numpy as np

from recsys_online.events import MAX_TAGS, Event, ItemDelete, ItemUpsert, Rating, weight_problem
from recsys_online.recommender import MAX_ABS_TIMESTAMP

__all__ = ["FORMATS", "UNKNOWN_ARRIVAL", "Dataset", "DatasetError", "load", "save_csv"]

FORMATS = ("auto", "csv", "movielens-100k", "movielens-1m", "movielens-latest")
UNKNOWN_ARRIVAL = 0.0

# Genre names of MovieLens 100K, used when ``u.genre`` is not beside ``u.item``.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# MovieLens genre values that mean "no genre" rather than a tag.
NO_GENRE_100K = "unknown"
NO_GENRE_LATEST = "(no genres listed)"
# User-applied MovieLens tags weigh 1 + ln(count), capped here; genres weigh 1.0.
USER_TAG_WEIGHT_CAP = 3.0

_USER_COLUMNS = ("user_id", "user", "userid")
_ITEM_COLUMNS = ("item_id", "item", "movieid", "movie_id", "itemid")
_RATING_COLUMNS = ("rating",)
TIME_COLUMNS = ("timestamp", "time", "ts")


class DatasetError(ValueError):
    """A data file could not be read; the message names the file, the 1-based line and why."""


@dataclass
class Dataset:
    """Ratings, an item catalog and deletions, replayable as one time-ordered event stream.

    Parameters
    ----------
    ratings
        Ratings in any order (file order breaks timestamp ties).
    items
        Catalog by item id; an upsert with timestamp ``0.0`` has no known arrival time.
    deletes
        Items leaving the catalog.
    name
        A label for reports.

    Examples
    --------
    >>> ds = Dataset(
    ...     ratings=[Rating("ann", "b", 4.0, 20.0), Rating("bob", "a", 3.0, 10.0),
    ...              Rating("cy", "a", 5.0, 20.0)],
    ...     items={"a": ItemUpsert("a", {"drama": 1.0}), "b": ItemUpsert("b"),
    ...            "c": ItemUpsert("c")},
    ... )
    >>> for event in ds.events():
    ...     print(type(event).__name__, event.item, event.timestamp)
    ItemUpsert a 10.0
    Rating a 10.0
    ItemUpsert b 20.0
    Rating b 20.0
    Rating a 20.0
    ItemUpsert c 20.0
    >>> len(ds), ds.n_users, ds.n_items
    (3, 3, 3)
    >>> [r.user for r in ds.head(2).ratings], list(ds.head(2).items)
    (['bob', 'ann'], ['a', 'b'])
    """

    ratings: list[Rating]
    items: dict[str, ItemUpsert]
    deletes: list[ItemDelete] = field(default_factory=list)
    name: str = ""
    #: Rated items the item file did not list (given a bare upsert by :func:`load`), and
    #: whether there was an item file: a reader may want to say so.
    unlisted: list[str] = field(default_factory=list)
    had_catalog: bool = False
    #: The ratings file named no time column: ratings are in file order, their
    #: timestamps the rows' numbers (a reader may want to say so).
    untimed: bool = False

    def __len__(self) -> int:
        return len(self.ratings)

    @property
    def n_ratings(self) -> int:
        """Number of ratings."""
        return len(self.ratings)

    @property
    def n_users(self) -> int:
        """Number of distinct users who rated something."""
        return len({r.user for r in self.ratings})

    @property
    def n_items(self) -> int:
        """Number of items in the catalog."""
        return len(self.items)

    def events(self) -> Iterator[Event]:
        """Yield item upserts, ratings and deletes in timestamp order.

        Ties keep a fixed order: arrivals, then ratings (in list order), then deletes. Each
        upsert comes just before the first event that needs it (see the module docstring);
        an upsert yielded early is stamped with the time it is yielded at.
        """
        ratings = self.ratings
        items = self.items
        # Scheduled events: (timestamp, rank at ties, sequence, event); ratings rank 1.
        scheduled: list[tuple[float, int, int, Event]] = [
            (up.timestamp, 0, seq, up)
            for seq, up in enumerate(items.values())
            if up.timestamp != UNKNOWN_ARRIVAL
        ]
        scheduled += [(d.timestamp, 2, seq, d) for seq, d in enumerate(self.deletes)]
        scheduled.sort(key=lambda entry: entry[:3])
        scheduled.append((math.inf, 3, 0, ItemDelete("")))  # sentinel, never released
        announced: set[str] = set()  # items whose upsert no longer needs yielding
        k = 0
        now = UNKNOWN_ARRIVAL
        for i in _time_order(ratings).tolist():
            rating = ratings[i]
            now = rating.timestamp
            while scheduled[k][0] < now or (scheduled[k][0] == now and scheduled[k][1] == 0):
                yield from _release(scheduled[k][3], items, announced)
                k += 1
            if rating.item not in announced:
                announced.add(rating.item)
                upsert = items.get(rating.item)
                if upsert is not None:
                    yield replace(upsert, timestamp=now)
            yield rating
        for entry in scheduled[k:-1]:
            now = entry[0]
            yield from _release(entry[3], items, announced)
        for item, upsert in items.items():
            if item not in announced:
                yield replace(upsert, timestamp=now)

    def head(self, n: int) -> Dataset:
        """The first ``n`` ratings in time order, the items they use and those items' deletes
        up to the last kept rating: a small sample that replays like the start of the full one.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ratings = [self.ratings[i] for i in _time_order(self.ratings)[:n].tolist()]
        used = {r.item for r in ratings}
        cut = ratings[-1].timestamp if ratings else -math.inf
        return Dataset(
            ratings=ratings,
            items={item: up for item, up in self.items.items() if item in used},
            deletes=[d for d in self.deletes if d.item in used and d.timestamp <= cut],
            name=f"{self.name}[:{n}]",
            unlisted=[item for item in dict.fromkeys(self.unlisted) if item in used],
            had_catalog=self.had_catalog,
            untimed=self.untimed,
        )

    def live_paced(self, rate: float, start: float) -> Dataset:
        """The ratings as live traffic at ``rate`` ratings/s of event time: the shape a
        worker meets when apps send events as they happen.

        A recorded stream replayed fast compresses months into seconds, so a micro-batch
        holds several ratings of each active user (a whole session, weeks of a heavy
        user) that live traffic spreads over minutes. Here each user's ratings keep their
        order but the j-th rating of every user comes in wave j (waves in time order),
        so a user's consecutive ratings are a wave apart, and rating n is stamped
        ``start + n / rate``. The whole catalog arrives at ``start``; deletes are dropped.
        ``start`` cannot be :data:`UNKNOWN_ARRIVAL` (0.0): items stamped with it would be
        announced one by one, just before their first rating, instead of all at the start.

        >>> ds = Dataset(
        ...     ratings=[Rating("a", "x", 4.0, 1.0), Rating("a", "y", 3.0, 2.0),
        ...              Rating("b", "y", 5.0, 3.0), Rating("c", "x", 2.0, 9.0)],
        ...     items={"x": ItemUpsert("x"), "y": ItemUpsert("y", timestamp=2.0)},
        ... )
        >>> [(r.user, r.item, r.timestamp) for r in ds.live_paced(rate=2.0, start=10).ratings]
        [('a', 'x', 10.0), ('b', 'y', 10.5), ('c', 'x', 11.0), ('a', 'y', 11.5)]
        >>> sorted((i.item, i.timestamp) for i in ds.live_paced(2.0, 10).items.values())
        [('x', 10.0), ('y', 10.0)]
        """
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        start = float(start)
        if start == UNKNOWN_ARRIVAL:
            raise ValueError(
                f"start cannot be {UNKNOWN_ARRIVAL} (it marks an unknown arrival): "
                "give the time the stream starts at"
            )
        seen: Counter[str] = Counter()
        waves = []
        for n in _time_order(self.ratings).tolist():
            r = self.ratings[n]
            waves.append((seen[r.user], len(waves), r))
            seen[r.user] += 1
        waves.sort(key=itemgetter(0, 1))
        return Dataset(
            ratings=[replace(r, timestamp=start + n / rate) for n, (*_, r) in enumerate(waves)],
            items={item: replace(up, timestamp=start) for item, up in self.items.items()},
            name=f"{self.name} live at {rate:g}/s",
        )


def _time_order(ratings: list[Rating]) -> np.ndarray:
    """Indices of ``ratings`` sorted by timestamp, stable for ties."""
    stamps = np.fromiter((r.timestamp for r in ratings), dtype=np.float64, count=len(ratings))
    return np.argsort(stamps, kind="stable")


def _release(event: Event, items: dict[str, ItemUpsert], announced: set[str]) -> Iterator[Event]:
    """Yield a scheduled arrival or delete, announcing a deleted item first if it must be."""
    if event.item in announced:
        if isinstance(event, ItemDelete):
            yield event
        return
    announced.add(event.item)
    if isinstance(event, ItemDelete):
        upsert = items.get(event.item)
        if upsert is not None:
            yield replace(upsert, timestamp=event.timestamp)
    yield event


# ---------------------------------------------------------------------------------------------
# Loading


def load(
    path: str | os.PathLike[str],
    items_path: str | os.PathLike[str] | None = None,
    fmt: str = "auto",
) -> Dataset:
    """Read a rating log and its item catalog.

    Parameters
    ----------
    path
        The ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``, ...) or a directory
        holding one of those.
    items_path
        The item file; by default the format's usual file beside ``path`` (``u.item``,
        ``movies.dat``, ``movies.csv``, ``items.csv``) if it exists (for the two CSV
        formats, either CSV catalog, the format's own first).
    fmt
        One of :data:`FORMATS`. ``"auto"`` decides by file name, then by the first line.

    Returns
    -------
    Dataset
        Every rated item is in ``items``: an item missing from the item file gets a bare upsert
        (no tags, unknown arrival). Tags are lower-cased and stripped; MovieLens genres weigh
        1.0; MovieLens 100K's ``unknown`` genre and ``(no genres listed)`` are not tags.
        MovieLens-latest ``tags.csv`` beside the items adds user-applied tags weighing
        ``min(1 + ln(count), 3)``, aggregated over the whole file (so known before the
        item's first rating: a mild look-ahead); an item keeps 64 tags at most, its
        genres, then the tags given most.

    Raises
    ------
    DatasetError
        A row cannot be read, e.g. ``u.data line 17: rating 'x' is not a number``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, "u.data").write_text("1\\t10\\t4\\t100\\n2\\t10\\t3\\t50\\n")
    ...     ds = load(Path(tmp, "u.data"))
    >>> [(r.user, r.item, r.rating) for r in ds.ratings], list(ds.items)
    ([('1', '10', 4.0), ('2', '10', 3.0)], ['10'])
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.is_dir():
        path = _find_ratings_file(path, fmt)
    items = Path(items_path) if items_path is not None else None
    with _regular(path) as read_from, _regular(items) as items_from:
        if fmt == "auto":
            fmt = _detect_format(read_from, items_from)
        if items_from is None and read_from != path:  # (a copy: its item file is beside
            items_from = _item_file_beside(path, fmt)  # the original, if anywhere)
        untimed = fmt in ("csv", "movielens-latest") and _names_no_time(read_from)
        with _gc_paused():  # millions of small objects: generational GC would dominate
            try:
                # (the files that go with the item file, beside the caller's item file, or
                # beside the ratings where that came through a pipe)
                home = items if items is not None and items.is_file() else None
                home = home or (path if path.is_file() else None)
                ratings, listed, deletes = _LOADERS[fmt](read_from, items_from, home)
            except UnicodeDecodeError as exc:  # CSV formats are read as UTF-8
                files = path.name if items is None else f"{path.name} or {items.name}"
                raise DatasetError(
                    f"{files}: not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} "
                    f"at offset {exc.start} of a read block); save the file as UTF-8"
                ) from None
    had_catalog = listed is not None  # (an item file was read, even an empty one)
    catalog = {} if listed is None else listed
    unlisted = []
    for rating in ratings:
        if rating.item not in catalog:
            catalog[rating.item] = ItemUpsert(rating.item)
            unlisted.append(rating.item)
    deletes.sort(key=lambda d: d.timestamp)
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return Dataset(
        ratings=ratings,
        items=catalog,
        deletes=deletes,
        name=name,
        unlisted=unlisted,
        had_catalog=had_catalog,
        untimed=untimed,
    )


@contextmanager
def _regular(path: Path | None) -> Iterator[Path | None]:
    """``path`` as a regular file of plain text the readers can open again and again
    (the format's guess reads its first line; a bad row sends them back to name its
    line): where it is a pipe (``<(zcat ratings.csv.gz)``, ``/dev/stdin``), which gives
    its bytes once, a copy in a temporary folder under the same name; where it is
    gzip-compressed, its text there; a zip archive is a :class:`DatasetError`."""
    if path is None or not path.exists():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recsys-online-") as folder:
        name = path.name or "input"
        source = path
        if not path.is_file():
            source = Path(folder, name + ".read")
            with open(path, "rb") as pipe, open(source, "wb") as copy:
                shutil.copyfileobj(pipe, copy, 1 << 20)
        with open(source, "rb") as f:
            magic = f.read(4)
        if magic.startswith(b"PK\x03\x04"):
            raise DatasetError(
                f"{path.name} is a zip archive: unzip it first and give the ratings file "
                f"or its folder"
            )
        if magic.startswith(b"\x1f\x8b"):  # gzip: its text, named without ".gz"
            name = name.removesuffix(".gz") or "input"
            try:
                with gzip.open(source) as packed, open(Path(folder, name), "wb") as text:
                    shutil.copyfileobj(packed, text, 1 << 20)
            except (OSError, EOFError) as exc:
                raise DatasetError(f"{path.name}: not a readable gzip file ({exc})") from None
        elif source is path:
            yield path
            return
        else:
            source.rename(Path(folder, name))
        yield Path(folder, name)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_RATINGS_FILES = {"movielens-100k": "u.data", "movielens-1m": "ratings.dat"}


def _find_ratings_file(directory: Path, fmt: str = "auto") -> Path:
    """The ratings file of a folder: the format's own (``ratings.csv`` for the CSV ones),
    else the first of ``u.data``, ``ratings.dat``, ``ratings.csv``."""
    names = ("u.data", "ratings.dat", "ratings.csv")
    if fmt != "auto":
        names = (_RATINGS_FILES.get(fmt, "ratings.csv"),)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no {' or '.join(names)} in {directory}")


def _detect_format(path: Path, items: Path | None) -> str:
    """Guess the format from file names, then from the ratings file's first line."""
    name = path.name.lower()
    items_name = items.name.lower() if items is not None else ""
    if name == "u.data" or items_name == "u.item":
        return "movielens-100k"
    if name == "ratings.dat" or items_name == "movies.dat":
        return "movielens-1m"
    first = _first_line(path)
    if "::" in first:
        return "movielens-1m"
    if "," in first:
        header = _header_names(first) or []  # (None: a field past the csv module's limit)
        if header[:2] == ["userid", "movieid"]:
            return "movielens-latest"
        if _find_column(header, _USER_COLUMNS) is not None:
            return "csv"
    elif len(fields := first.split()) == 4:
        if _find_column([f.lower() for f in fields], _USER_COLUMNS) is not None:
            raise DatasetError(
                f"{path.name} line 1: a header of tab- or space-separated columns; only "
                f"comma-separated CSV takes a header (MovieLens 100K's u.data has none): "
                f"save the file as CSV"
            )
        return "movielens-100k"
    raise DatasetError(
        f"{path.name} line 1: cannot tell the format from {first[:60]!r}; "
        f"give the format (--format or fmt=): one of {', '.join(FORMATS[1:])}"
    )


def _header_names(line: str) -> list[str] | None:
    """A CSV header line's column names as the readers match them: stripped and
    lower-cased, a space after a comma skipped, as the readers' ``skipinitialspace``
    does (None: a line the csv module cannot read).

    >>> _header_names('userId, "Timestamp"'), _header_names("a" * 200_000 + ",b")
    (['userid', 'timestamp'], None)
    """
    try:
        return [c.strip().lower() for c in next(csv.reader([line], skipinitialspace=True), [])]
    except csv.Error:
        return None


def _names_no_time(path: Path) -> bool:
    """A CSV ratings file's header names none of the time columns (:data:`TIME_COLUMNS`)."""
    header = _header_names(_first_line(path))
    if header is None:
        return False  # (the reader says what is wrong with it)
    return _find_column(header, TIME_COLUMNS) is None


def _first_line(path: Path) -> str:
    """The first non-blank line, without a UTF-8 byte-order mark (as Excel writes)."""
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.strip():
                return line.strip().removeprefix("\xef\xbb\xbf")
    return ""


#: Each format's item files, looked for beside the ratings in this order (either CSV
#: catalog for the CSV formats: the same reader reads both).
_ITEM_FILES = {
    "movielens-100k": ("u.item",),
    "movielens-1m": ("movies.dat",),
    "movielens-latest": ("movies.csv", "items.csv"),
    "csv": ("items.csv", "movies.csv"),
}


def _item_file_beside(path: Path, fmt: str) -> Path | None:
    """The format's item file in the ratings file's folder (None: none there)."""
    return next(filter(None, (_beside(path, name) for name in _ITEM_FILES[fmt])), None)


def _beside(path: Path, name: str) -> Path | None:
    candidate = path.parent / name
    return candidate if candidate.is_file() else None


# (The catalog is None where no item file was read.)
_Loaded = tuple[list[Rating], dict[str, ItemUpsert] | None, list[ItemDelete]]


# A loader reads the ratings at ``path`` and the item file ``items`` (None: the format's
# own beside the ratings); the files that go with the item file (u.genre, tags.csv) are
# looked for beside ``given`` (``items`` may be a pipe's or a gzip file's copy in a
# temporary folder).


def _load_ml100k(path: Path, items: Path | None, given: Path | None = None) -> _Loaded:
    ratings = _read_split_ratings(path, str.split, "whitespace-separated")
    items = items or _item_file_beside(path, "movielens-100k")
    if items is None:
        return ratings, None, []
    genre_file = _beside(given or items, "u.genre")
    genres = _read_ml100k_genres(genre_file) if genre_file else list(ML100K_GENRES)
    origin = "of u.genre" if genre_file else "of MovieLens 100K: no u.genre beside it"
    return ratings, _read_ml100k_items(items, genres, origin), []


def _load_ml1m(path: Path, items: Path | None, given: Path | None = None) -> _Loaded:
    ratings = _read_split_ratings(path, methodcaller("split", "::"), "'::'-separated")
    items = items or _item_file_beside(path, "movielens-1m")
    return ratings, _read_ml1m_items(items) if items else None, []


def _load_ml_latest(path: Path, items: Path | None, given: Path | None = None) -> _Loaded:
    ratings = _read_csv_ratings(path)
    items = items or _item_file_beside(path, "movielens-latest")
    if items is None:
        return ratings, None, []
    catalog, deletes = _read_csv_items(items)
    tags = _beside(given or items, "tags.csv")
    if tags is not None:
        _add_user_tags(catalog, tags)
    return ratings, catalog, deletes


def _load_csv(path: Path, items: Path | None, given: Path | None = None) -> _Loaded:
    ratings = _read_csv_ratings(path)
    items = items or _item_file_beside(path, "csv")
    if items is None:
        return ratings, None, []
    catalog, deletes = _read_csv_items(items)
    return ratings, catalog, deletes


_LOADERS: dict[str, Callable[[Path, Path | None, Path | None], _Loaded]] = {
    "movielens-100k": _load_ml100k,
    "movielens-1m": _load_ml1m,
    "movielens-latest": _load_ml_latest,
    "csv": _load_csv,
}


def _split_double_colon(line: str) -> list[str]:
    line = line.rstrip("\r\n")
    return line.split("::") if line.strip() else []


_CHUNK_BYTES = 1 << 22  # about this many bytes of lines per batch in the fast readers
_CHUNK_ROWS = 100_000


class _NeedsSlowPath(Exception):
    """The batch reader met something it does not explain; re-read row by row."""


def _read_split_ratings(path: Path, split: Callable[[str], list[str]], layout: str) -> list[Rating]:
    """Read ``user item rating timestamp`` lines split by ``split`` (blank lines skipped).

    Parses in batches (C-level ``map``); any problem re-reads row by row for the error.
    """
    try:
        with _open_latin1(path) as f:
            batches = (list(map(split, lines)) for lines in _line_batches(f))
            return _ratings_from_batches(batches, (0, 1, 2, 3), exact=True)
    except _NeedsSlowPath:
        return _read_split_ratings_slowly(path, split, layout)


def _read_csv_ratings(path: Path) -> list[Rating]:
    """Read a ratings CSV with a header (plain CSV or MovieLens-latest ``ratings.csv``)."""
    try:
        with _open_csv(path) as f:
            reader = csv.reader(f, skipinitialspace=True, strict=True)
            header = _header(reader, path.name)
            if header is None:
                return []
            columns = [c.strip().lower() for c in header]
            picked = (
                _require_column(columns, _USER_COLUMNS, path.name),
                _require_column(columns, _ITEM_COLUMNS, path.name),
                _require_column(columns, _RATING_COLUMNS, path.name),
                _find_column(columns, TIME_COLUMNS),
            )
            batches = iter(lambda: list(islice(reader, _CHUNK_ROWS)), [])
            return _ratings_from_batches(batches, picked, exact=False, n_columns=len(columns))
    except (_NeedsSlowPath, csv.Error):
        return _read_csv_ratings_slowly(path)


def _line_batches(f: TextIO) -> Iterator[list[str]]:
    while lines := f.readlines(_CHUNK_BYTES):
        yield lines


def _ratings_from_batches(
    batches: Iterable[list[list[str]]],
    columns: tuple[int, int, int, int | None],
    *,
    exact: bool,
    n_columns: int | None = None,
) -> list[Rating]:
    """Build ratings from batches of split rows, column by column.

    Raises :class:`_NeedsSlowPath` on a short row, a bad number, a non-finite value or an
    empty id; ``exact`` also rejects rows with more fields than the four columns, and
    ``n_columns`` (a header's) rows with more than it but for empty ones. Blank rows
    (empty cells only) are skipped.
    """
    iu, ii, ir, it = columns
    width = max(iu, ii, ir, -1 if it is None else it) + 1
    longest = n_columns or width
    ratings: list[Rating] = []
    for batch in batches:
        rows = batch
        if any(len(row) != width for row in batch):
            if exact and any(len(row) > width for row in batch):
                raise _NeedsSlowPath
            if any(len(row) > longest and "".join(row[longest:]).strip() for row in batch):
                raise _NeedsSlowPath
            if any(len(row) < width and "".join(row).strip() for row in batch):
                raise _NeedsSlowPath
            rows = [row for row in batch if len(row) >= width]
        if not exact and any(not "".join(row).strip() for row in rows):
            rows = [row for row in rows if "".join(row).strip()]  # (bare commas)
        if not rows:
            continue
        # Ids are stripped, as the item readers strip theirs ("10 " is item "10").
        users = list(map(sys.intern, map(str.strip, map(itemgetter(iu), rows))))
        items = list(map(sys.intern, map(str.strip, map(itemgetter(ii), rows))))
        try:
            texts = list(map(itemgetter(ir), rows))
            values = list(map(float, texts))
            if it is None:
                stamps = list(map(float, range(len(ratings), len(ratings) + len(rows))))
            else:
                times = list(map(itemgetter(it), rows))
                stamps = list(map(float, times))
                texts += times
        except ValueError:
            raise _NeedsSlowPath from None
        if not _plain("".join(texts)):  # (float() takes "4_5" and other digits)
            raise _NeedsSlowPath
        if "" in users or "" in items:
            raise _NeedsSlowPath
        in_range = (np.abs(values) <= _FLOAT32_MAX).all()  # (NaN compares false: out)
        if not (in_range and (np.abs(stamps) <= _LIMITS["timestamp"]).all()):
            raise _NeedsSlowPath
        ratings += map(Rating, users, items, values, stamps)
    return ratings


def _read_split_ratings_slowly(
    path: Path, split: Callable[[str], list[str]], layout: str
) -> list[Rating]:
    """Reference reader for :func:`_read_split_ratings`: row by row, naming the bad line."""
    name = path.name
    ratings: list[Rating] = []
    append = ratings.append
    with _open_latin1(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = split(line)
            if len(fields) != 4:
                if not "".join(fields).strip():
                    continue
                raise DatasetError(
                    f"{name} line {lineno}: expected 4 {layout} fields "
                    f"(user item rating timestamp), got {len(fields)}"
                )
            append(_rating(*fields, name, lineno))
    return ratings


def _rating(user: str, item: str, rating_text: str, time_text: str, name: str, lineno: int):
    """The rating of one row's fields (ids stripped), or the error naming what is wrong."""
    user, item = user.strip(), item.strip()
    try:
        if not _plain(rating_text + time_text):
            raise ValueError
        rating = float(rating_text)
        timestamp = float(time_text)
    except ValueError:
        rating = _number(rating_text, "rating", name, lineno)
        timestamp = _number(time_text, "timestamp", name, lineno)
    if not (user and item and _in_range(rating, timestamp)):
        _explain_row(name, lineno, user, item, rating_text, time_text)
    return Rating(sys.intern(user), sys.intern(item), rating, timestamp)


def _in_range(rating: float, timestamp: float) -> bool:
    """Both finite, the rating within float32, the timestamp within 2^53 s of 1970."""
    return abs(rating) <= _FLOAT32_MAX and abs(timestamp) <= _LIMITS["timestamp"]


def _read_csv_ratings_slowly(path: Path) -> list[Rating]:
    """Reference reader for :func:`_read_csv_ratings`: row by row, naming the bad line."""
    name = path.name
    ratings: list[Rating] = []
    append = ratings.append
    with _open_csv(path) as f:
        reader = csv.reader(f, skipinitialspace=True, strict=True)
        header = _header(reader, name)
        if header is None:
            return ratings
        columns = [c.strip().lower() for c in header]
        iu = _require_column(columns, _USER_COLUMNS, name)
        ii = _require_column(columns, _ITEM_COLUMNS, name)
        ir = _require_column(columns, _RATING_COLUMNS, name)
        it = _find_column(columns, TIME_COLUMNS)
        width = max(iu, ii, ir, -1 if it is None else it) + 1
        for lineno, row in _rows(reader, name):
            if not any(cell.strip() for cell in row):
                continue
            _check_width(row, width, len(columns), name, lineno)
            time_text = str(len(ratings)) if it is None else row[it]
            append(_rating(row[iu], row[ii], row[ir], time_text, name, lineno))
    return ratings


def _rows(reader, name: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of a CSV ``reader`` from where it stands, each with the line it starts on (a
    quoted field may hold line breaks); a row that is not CSV (a quote never closed: it
    took the rest of the file) is a :class:`DatasetError` naming its first line."""
    start = reader.line_num + 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(
            f"{name} line {start}: {exc} (a quote opened here is not closed?)"
        ) from None


def _check_width(row: list[str], width: int, n_columns: int, name: str, lineno: int) -> None:
    """A row holds the columns read (``width``), and no more than the header names but
    for empty cells (a trailing comma): "4,5" for a rating 4.5 would read as 4 at
    time 5."""
    if len(row) < width or (len(row) > n_columns and "".join(row[n_columns:]).strip()):
        raise DatasetError(
            f"{name} line {lineno}: expected {n_columns} comma-separated fields, got {len(row)}"
        )


def _read_ml100k_genres(path: Path) -> list[str]:
    """Read ``u.genre``: ``name|index`` lines, indices 0..n-1."""
    by_index: dict[int, str] = {}
    with _open_latin1(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            genre, sep, index = line.strip().rpartition("|")
            if not sep or not index.isdigit():
                raise DatasetError(f"{path.name} line {lineno}: expected 'name|index'")
            by_index[int(index)] = genre
    if not by_index:
        raise DatasetError(f"{path.name}: no genres (expected 'name|index' lines)")
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path.name}: genre indices are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _read_ml100k_items(
    path: Path, genres: list[str], origin: str = "of u.genre"
) -> dict[str, ItemUpsert]:
    """Read ``u.item``: ``id|title|...|flag*n`` with one 0/1 flag per genre."""
    tag_names = [_tag_name(g) if _tag_name(g) != NO_GENRE_100K else "" for g in genres]
    n = len(genres)
    catalog: dict[str, ItemUpsert] = {}
    first_lines: dict[str, int] = {}
    with _open_latin1(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) != n + 5:  # (else the flags would shift onto other genres)
                raise DatasetError(
                    f"{path.name} line {lineno}: expected {n + 5} '|'-separated fields (id, "
                    f"title, release date, video release date, URL, {n} genre flags for the "
                    f"{n} genres {origin}), got {len(fields)}"
                )
            item = _item_id(fields[0], path.name, lineno)
            tags: dict[str, float] = {}
            for tag, genre, flag in zip(tag_names, genres, fields[-n:], strict=True):
                if flag == "1":
                    if tag:
                        tags[tag] = 1.0
                elif flag != "0":
                    raise DatasetError(
                        f"{path.name} line {lineno}: genre flag {flag!r} for {genre} is not 0 or 1"
                    )
            _listed_once(first_lines, item, path.name, lineno)
            catalog[item] = ItemUpsert(item, tags, UNKNOWN_ARRIVAL, fields[1].strip())
    return catalog


def _read_ml1m_items(path: Path) -> dict[str, ItemUpsert]:
    """Read ``movies.dat``: ``id::title::Genre1|Genre2`` (latin-1)."""
    catalog: dict[str, ItemUpsert] = {}
    first_lines: dict[str, int] = {}
    with _open_latin1(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = _split_double_colon(line)
            if not fields:
                continue
            if len(fields) < 3:
                raise DatasetError(
                    f"{path.name} line {lineno}: expected 3 '::'-separated fields "
                    f"(id, title, genres), got {len(fields)}"
                )
            item = _item_id(fields[0], path.name, lineno)
            # The title is what lies between the first and the last "::": it may hold
            # "::" and end with ":" ("Cats:::Drama" is "Cats:" of Drama); genres never do.
            title, _, genres = line.rstrip("\r\n").partition("::")[2].rpartition("::")
            tags = _parse_tags(genres, path.name, lineno)
            _listed_once(first_lines, item, path.name, lineno)
            catalog[item] = ItemUpsert(item, tags, 0.0, title.strip())
    return catalog


def _read_csv_items(path: Path) -> tuple[dict[str, ItemUpsert], list[ItemDelete]]:
    """Read an items CSV: plain (``item_id,title,tags,timestamp[,deleted_at]``) or
    MovieLens-latest ``movies.csv`` (``movieId,title,genres``)."""
    name = path.name
    catalog: dict[str, ItemUpsert] = {}
    deletes: list[ItemDelete] = []
    first_lines: dict[str, int] = {}
    with _open_csv(path) as f:
        reader = csv.reader(f, skipinitialspace=True, strict=True)
        header = _header(reader, name)
        if header is None:
            return catalog, deletes
        columns = [c.strip().lower() for c in header]
        ii = _require_column(columns, _ITEM_COLUMNS, name)
        i_title = _find_column(columns, ("title", "name"))
        i_tags = _find_column(columns, ("tags", "genres"))
        i_time = _find_column(columns, TIME_COLUMNS)
        i_deleted = _find_column(columns, ("deleted_at",))
        for lineno, row in _rows(reader, name):
            if not any(cell.strip() for cell in row):
                continue
            _check_width(row, ii + 1, len(columns), name, lineno)
            cells = [c.strip() for c in row] + [""] * (len(columns) - len(row))
            item = _item_id(cells[ii], name, lineno)
            tags = _parse_tags(_cell(cells, i_tags), name, lineno)
            arrival = _cell(cells, i_time)
            timestamp = _number(arrival, "timestamp", name, lineno) if arrival else 0.0
            _listed_once(first_lines, item, name, lineno)
            catalog[item] = ItemUpsert(item, tags, timestamp, _cell(cells, i_title))
            deleted = _cell(cells, i_deleted)
            if deleted:
                deletes.append(ItemDelete(item, _number(deleted, "deleted_at", name, lineno)))
    return catalog, deletes


def _listed_once(first_lines: dict[str, int], item: str, name: str, lineno: int) -> None:
    """An item file holds one row per item: a second row of an item is a
    :class:`DatasetError` naming both lines (it replaced the first's tags, unseen)."""
    first = first_lines.setdefault(item, lineno)
    if first != lineno:
        raise DatasetError(
            f"{name} line {lineno}: item {item!r} is already listed on line {first} "
            f"(one row per item)"
        )


def _add_user_tags(catalog: dict[str, ItemUpsert], path: Path) -> None:
    """Fold MovieLens ``tags.csv`` (userId,movieId,tag,timestamp) into item tags: at most
    ``MAX_TAGS`` an item (its genres, then the tags its users gave most; a popular
    movie of MovieLens latest has hundreds)."""
    counts: Counter[tuple[str, str]] = Counter()
    with _open_csv(path) as f:
        reader = csv.reader(f, strict=True)
        columns = [c.strip().lower() for c in _header(reader, path.name) or []]
        if not columns:  # (an empty tags file: no tags)
            return
        ii = _require_column(columns, _ITEM_COLUMNS, path.name)
        it = _require_column(columns, ("tag",), path.name)
        for lineno, row in _rows(reader, path.name):
            if not any(cell.strip() for cell in row):
                continue
            _check_width(row, max(ii, it) + 1, len(columns), path.name, lineno)
            tag = row[it].strip().lower()
            if tag:
                counts[row[ii].strip(), tag] += 1
    extra: dict[str, dict[str, int]] = {}
    for (item, tag), count in counts.items():
        if item in catalog:
            extra.setdefault(item, {})[tag] = count
    for item, tags in extra.items():
        upsert = catalog[item]
        if len(upsert.tags) + len(tags) > MAX_TAGS:  # its own (genres), then the most used
            room = max(0, MAX_TAGS - len(upsert.tags))
            given = sorted((t for t in tags if t not in upsert.tags), key=lambda t: (-tags[t], t))
            tags = {t: tags[t] for t in given[:room]} | {
                t: tags[t] for t in tags if t in upsert.tags
            }
        merged = dict(upsert.tags)
        for tag, count in tags.items():
            weight = min(1.0 + math.log(count), USER_TAG_WEIGHT_CAP)
            merged[tag] = max(weight, merged.get(tag, 0.0))
        catalog[item] = replace(upsert, tags=merged)


@contextmanager
def _open_csv(path: Path) -> Iterator[TextIO]:
    """A CSV file as UTF-8 text (a byte-order mark skipped); bytes that are not UTF-8
    are a :class:`DatasetError` naming the file and the line."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise DatasetError(_not_utf8(path)) from None


def _not_utf8(path: Path) -> str:
    """Where ``path`` first breaks UTF-8, read again line by line (an error path)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1]
                where = f"{path.name} line {lineno}"
                return f"{where}: not UTF-8 text (byte {bad!r}); save the file as UTF-8"
    return f"{path.name}: not UTF-8 text; save the file as UTF-8"


@contextmanager
def _open_latin1(path: Path) -> Iterator[TextIO]:
    """A MovieLens 100K/1M file as latin-1 text, lines as they are; a UTF-8 byte-order
    mark (as an editor saving it again may add) is skipped, not read as part of the
    first id."""
    with open(path, "rb") as raw:
        if raw.read(3) != b"\xef\xbb\xbf":
            raw.seek(0)
        with io.TextIOWrapper(raw, encoding="latin-1", newline="") as f:
            yield f


def _header(reader, name: str) -> list[str] | None:
    """The first row that is not blank (None: none); one that is not CSV (a quote never
    closed) is a :class:`DatasetError` naming its line (:func:`_rows`)."""
    return next((row for _, row in _rows(reader, name) if any(c.strip() for c in row)), None)


def _cell(cells: list[str], index: int | None) -> str:
    return "" if index is None else cells[index]


def _find_column(columns: list[str], names: Iterable[str]) -> int | None:
    for candidate in names:
        if candidate in columns:
            return columns.index(candidate)
    return None


def _require_column(columns: list[str], names: tuple[str, ...], file_name: str) -> int:
    index = _find_column(columns, names)
    if index is None:
        raise DatasetError(
            f"{file_name} line 1: no {names[0]} column in header {columns!r} "
            f"(accepted names: {', '.join(names)})"
        )
    return index


#: The largest a value may be, by what it is: timestamps as the model takes them
#: (seconds within 2^53 of 1970: a nanosecond epoch is past it), the rest as float32
#: holds them.
_LIMITS = {"timestamp": MAX_ABS_TIMESTAMP, "deleted_at": MAX_ABS_TIMESTAMP}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _plain(text: str) -> bool:
    """Numbers as a file writes them: ASCII, no ``_`` (``float`` reads "4_5" as 45 and
    "４" as 4, which would widen the rating scale taken from the data, unseen).

    >>> _plain("4.5e3"), _plain("4_5"), _plain("\uff14")
    (True, False, False)
    """
    return text.isascii() and "_" not in text


def _number(text: str, what: str, file_name: str, lineno: int) -> float:
    """Parse a finite float or raise a :class:`DatasetError` saying which field is wrong.

    >>> _number("1e20", "timestamp", "r.csv", 3)
    Traceback (most recent call last):
    ...
    recsys_online.datasets.DatasetError: r.csv line 3: timestamp '1e20' is out of range \
(seconds within 2^53 of 1970: a millisecond or nanosecond epoch?)
    """
    try:
        if not _plain(text):
            raise ValueError
        value = float(text)
    except ValueError:
        raise DatasetError(
            f"{file_name} line {lineno}: {what} {text.strip()!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DatasetError(f"{file_name} line {lineno}: {what} {text.strip()!r} is not finite")
    if abs(value) > _LIMITS.get(what, _FLOAT32_MAX):
        if what in _LIMITS:
            rule = "seconds within 2^53 of 1970: a millisecond or nanosecond epoch?"
        else:
            rule = "beyond what a float32 holds"
        raise DatasetError(
            f"{file_name} line {lineno}: {what} {text.strip()!r} is out of range ({rule})"
        )
    return value


def _explain_row(
    file_name: str, lineno: int, user: str, item: str, rating: str, timestamp: str
) -> None:
    """Raise the error for a rating row that failed the fast checks."""
    if not user.strip():
        raise DatasetError(f"{file_name} line {lineno}: user id is empty")
    if not item.strip():
        raise DatasetError(f"{file_name} line {lineno}: item id is empty")
    _number(rating, "rating", file_name, lineno)
    _number(timestamp, "timestamp", file_name, lineno)


def _item_id(text: str, file_name: str, lineno: int) -> str:
    item = text.strip()
    if not item:
        raise DatasetError(f"{file_name} line {lineno}: item id is empty")
    return item


def _tag_name(text: str) -> str:
    """Normalise a tag; MovieLens' ``(no genres listed)`` becomes ``""`` (no tag)."""
    tag = text.strip().lower()
    return "" if tag == NO_GENRE_LATEST else tag


def _parse_tags(text: str, file_name: str, lineno: int) -> dict[str, float]:
    """Parse ``a|b:0.5|(no genres listed)`` into ``{"a": 1.0, "b": 0.5}``.

    A ``:suffix`` that is not a number is part of the tag name.
    """
    tags: dict[str, float] = {}
    for part in text.split("|"):
        tag, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                weight = 1.0
            else:
                tag = head
                if not head.strip():
                    raise DatasetError(f"{file_name} line {lineno}: tag {part!r} has no name")
                problem = weight_problem(weight)
                if problem is not None:
                    raise DatasetError(f"{file_name} line {lineno}: tag weight {tail!r} {problem}")
        tag = _tag_name(tag)
        if tag:
            tags[tag] = weight
    if len(tags) > MAX_TAGS:  # (as the model, and events, refuse)
        raise DatasetError(f"{file_name} line {lineno}: {len(tags)} tags, more than {MAX_TAGS}")
    return tags


# ---------------------------------------------------------------------------------------------
# Writing


def save_csv(
    dataset: Dataset,
    ratings_path: str | os.PathLike[str],
    items_path: str | os.PathLike[str],
) -> None:
    """Write ``dataset`` in the plain CSV format; :func:`load` reads it back unchanged.

    Numbers are written exactly (integers without a fraction, other floats in shortest
    round-trip form). Items get a ``deleted_at`` column when the dataset has deletes.

    Raises
    ------
    ValueError
        A tag contains ``|``, an item is deleted twice, or a delete names an unknown item.
    """
    deleted: dict[str, float] = {}
    for d in dataset.deletes:
        if d.item in deleted:
            raise ValueError(f"item {d.item!r} is deleted twice; the CSV format holds one delete")
        if d.item not in dataset.items:
            raise ValueError(f"delete of item {d.item!r}, which is not in the catalog")
        deleted[d.item] = d.timestamp
    with open(ratings_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        writer.writerows(
            (r.user, r.item, _format_number(r.rating), _format_number(r.timestamp))
            for r in dataset.ratings
        )
    with open(items_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        header = ["item_id", "title", "tags", "timestamp"]
        writer.writerow([*header, "deleted_at"] if deleted else header)
        for item, upsert in dataset.items.items():
            arrival = upsert.timestamp
            row = [
                item,
                upsert.title,
                "|".join(_format_tag(tag, weight) for tag, weight in upsert.tags.items()),
                "" if arrival == UNKNOWN_ARRIVAL else _format_number(arrival),
            ]
            if deleted:
                row.append(_format_number(deleted[item]) if item in deleted else "")
            writer.writerow(row)


def _format_number(value: float) -> str:
    """Shortest exact text for a float: ``4.0 -> '4'``, ``3.5 -> '3.5'``."""
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _format_tag(tag: str, weight: float) -> str:
    if "|" in tag:
        raise ValueError(f"tag {tag!r} contains '|', which the CSV format uses between tags")
    if weight == 1.0 and ":" not in tag:
        return tag
    return f"{tag}:{_format_number(weight)}"
