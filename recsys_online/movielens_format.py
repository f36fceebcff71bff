"""Write a :class:`~recsys_online.datasets.Dataset` in the MovieLens 100K file layout.

:func:`write_movielens_100k` turns any dataset (a synthetic one from
:mod:`recsys_online.synth`, say) into ``u.data``, ``u.item`` and ``u.genre``, so tools that
expect MovieLens 100K can read it and :func:`recsys_online.datasets.load` reads it back with
the format detected as ``movielens-100k``.

What the layout cannot hold is lost on the way: ids become integers ``1..n``; tags become
19 binary genre flags (the 19 tags carried by most items, named after those tags), so other
tags and tag weights are dropped; arrival times survive only as the release date (read back,
an item appears when it is first rated); deletes are dropped.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from recsys_online.datasets import UNKNOWN_ARRIVAL, Dataset

__all__ = ["N_GENRES", "write_movielens_100k"]

#: Genre flags per ``u.item`` line, as in MovieLens 100K.
N_GENRES = 19
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def write_movielens_100k(
    dataset: Dataset, out_dir: str | os.PathLike[str]
) -> tuple[Path, Path, Path]:
    """Write ``dataset`` as MovieLens 100K files in ``out_dir`` (created if missing).

    Parameters
    ----------
    dataset
        Ratings and catalog to write.
    out_dir
        Directory for ``u.data``, ``u.item`` and ``u.genre``.

    Returns
    -------
    tuple of Path
        The paths of ``u.data``, ``u.item`` and ``u.genre``.

    Notes
    -----
    - ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp`` per rating, in the dataset's
      order. Users are numbered ``1..n`` in sorted order of their ids, items ``1..m`` in
      catalog order (then any rated item missing from the catalog). Whole numbers are
      written without a fraction; half stars stay ``3.5``.
    - ``u.item`` (latin-1): ``id|title|release date|video release date|IMDb URL|`` and 19
      ``0``/``1`` genre flags. The release date is the item's arrival day
      (``01-Jan-1995`` style, UTC), empty when unknown; ``|`` in titles becomes ``/`` and
      characters outside latin-1 become ``?``.
    - ``u.genre``: ``name|index`` for indices 0-18. Genres are the tags carried by most
      items (ties by name); an item's flag is 1 when it has the tag with a positive weight.
      With fewer than 19 distinct tags the spare genres are named ``unused<k>`` and never
      flagged. The reader lower-cases genre names and ignores one named ``unknown``.

    Raises
    ------
    ValueError
        A genre tag contains ``|`` or cannot be encoded in latin-1.

    Examples
    --------
    >>> import tempfile
    >>> from recsys_online.datasets import load
    >>> from recsys_online.events import ItemUpsert, Rating
    >>> ds = Dataset(
    ...     ratings=[Rating("bob", "x", 4.0, 10.0), Rating("ann", "y", 3.5, 20.0)],
    ...     items={"x": ItemUpsert("x", {"drama": 1.0}, 0.0, "X"), "y": ItemUpsert("y")},
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data, _, _ = write_movielens_100k(ds, tmp)
    ...     lines = [line.split("\\t") for line in data.read_text().splitlines()]
    ...     back = load(data)
    >>> lines
    [['2', '1', '4', '10'], ['1', '2', '3.5', '20']]
    >>> [(r.user, r.item, r.rating) for r in back.ratings], back.items["1"].tags
    ([('2', '1', 4.0), ('1', '2', 3.5)], {'drama': 1.0})
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    user_number = {user: k for k, user in enumerate(sorted({r.user for r in dataset.ratings}), 1)}
    item_number = {item: k for k, item in enumerate(dataset.items, 1)}
    for r in dataset.ratings:
        item_number.setdefault(r.item, len(item_number) + 1)
    genres = _genres(dataset)

    data_path, item_path, genre_path = out / "u.data", out / "u.item", out / "u.genre"
    with open(data_path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(
            f"{user_number[r.user]}\t{item_number[r.item]}\t{_number(r.rating)}"
            f"\t{_number(r.timestamp)}\n"
            for r in dataset.ratings
        )
    column = {genre: k for k, genre in enumerate(genres)}
    with open(item_path, "w", encoding="latin-1", errors="replace", newline="\n") as f:
        for item, number in item_number.items():
            upsert = dataset.items.get(item)
            flags = ["0"] * N_GENRES
            title, release = f"Item {item}", ""
            if upsert is not None:
                title = upsert.title or title
                release = _release_date(upsert.timestamp)
                for tag, weight in upsert.tags.items():
                    if tag in column and weight > 0:
                        flags[column[tag]] = "1"
            title = title.replace("|", "/").replace("\r", " ").replace("\n", " ")
            f.write("|".join([str(number), title, release, "", "", *flags]) + "\n")
    with open(genre_path, "w", encoding="latin-1", newline="\n") as f:
        f.writelines(f"{genre}|{k}\n" for k, genre in enumerate(genres))
    return data_path, item_path, genre_path


def _genres(dataset: Dataset) -> list[str]:
    """The 19 tags carried by most items (ties by name), padded with ``unused<k>``."""
    counts = Counter(
        tag for up in dataset.items.values() for tag, weight in up.tags.items() if weight > 0
    )
    genres = sorted(counts, key=lambda tag: (-counts[tag], tag))[:N_GENRES]
    for genre in genres:
        try:
            genre.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"tag {genre!r} is not latin-1, as u.genre must be") from None
        if "|" in genre or "\n" in genre:
            raise ValueError(f"tag {genre!r} cannot be a MovieLens genre name")
    taken = set(genres)
    k = 0
    while len(genres) < N_GENRES:
        k += 1
        if f"unused{k}" not in taken:
            genres.append(f"unused{k}")
    return genres


def _number(value: float) -> str:
    """``4.0 -> '4'``, ``3.5 -> '3.5'``."""
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _release_date(timestamp: float) -> str:
    """``01-Jan-1995`` for an epoch-second arrival, ``""`` when unknown."""
    if timestamp == UNKNOWN_ARRIVAL or not math.isfinite(timestamp):
        return ""
    day = datetime.fromtimestamp(timestamp, UTC)
    return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}"
