"""Tests for recsys_online.datasets: every format, error lines, event order, CSV round trip."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_online import datasets
from recsys_online.datasets import Dataset, DatasetError, load, save_csv
from recsys_online.events import MAX_TAGS, ItemDelete, ItemUpsert, Rating
from recsys_online.recommender import Recommender

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_ml100k(directory: Path, data: str | None = None, genre_file: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(
        data
        if data is not None
        else "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
        "22\t377\t1\t878887116\n196\t377\t4.5\t881250949\n"
    )
    kids = _flags("Children's", "Animation")
    items = [
        f"242|Kolya (1996)|24-Jan-1997||http://x|{_flags('Comedy')}",
        f"302|Café Crème (1997)|01-Jan-1997||http://y|{_flags('Crime', 'Film-Noir', 'Sci-Fi')}",
        f"377|Heavyweights (1994)|01-Jan-1994||http://z|{_flags('unknown')}",
        f"500|Never Rated (1995)|01-Jan-1995||http://w|{kids}",
    ]
    (directory / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    if genre_file:
        lines = [f"{g}|{k}" for k, g in enumerate(GENRES)]
        (directory / "u.genre").write_text("\n".join(lines) + "\n\n")
    return directory / "u.data"


# ---------------------------------------------------------------------------------------------
# Formats


def test_movielens_100k(tmp_path: Path) -> None:
    ds = load(write_ml100k(tmp_path / "ml-100k"))
    assert ds.ratings[0] == Rating("196", "242", 3.0, 881250949.0)
    assert ds.ratings[3].rating == 4.5
    assert len(ds) == ds.n_ratings == 4
    assert ds.items["242"] == ItemUpsert("242", {"comedy": 1.0}, 0.0, "Kolya (1996)")
    assert ds.items["302"].title == "Café Crème (1997)"  # latin-1 decoded
    assert ds.items["302"].tags == {"crime": 1.0, "film-noir": 1.0, "sci-fi": 1.0}
    assert ds.items["377"].tags == {}  # the "unknown" genre is not a tag
    assert ds.items["500"].tags == {"animation": 1.0, "children's": 1.0}
    assert ds.name == "ml-100k/u.data"


def test_movielens_100k_detection(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    (tmp_path / "u1.base").write_text("1\t242\t5\t874965758\n")
    assert load(tmp_path).n_ratings == 4  # a directory: u.data inside
    split = load(tmp_path / "u1.base")  # any name: sniffed, u.item found beside it
    assert split.ratings == [Rating("1", "242", 5.0, 874965758.0)]
    assert split.items["242"].tags == {"comedy": 1.0}


def test_movielens_100k_without_genre_file(tmp_path: Path) -> None:
    ds = load(write_ml100k(tmp_path, genre_file=False))
    assert ds.items["302"].tags == {"crime": 1.0, "film-noir": 1.0, "sci-fi": 1.0}


def test_movielens_1m(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n\n")
    movies = (
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Amélie (2001)::Comedy|Romance\n"
    )
    (tmp_path / "movies.dat").write_bytes(movies.encode("latin-1"))
    ds = load(tmp_path / "ratings.dat")
    assert ds.ratings == [
        Rating("1", "1193", 5.0, 978300760.0),
        Rating("1", "661", 3.0, 978302109.0),
    ]
    assert ds.items["661"] == ItemUpsert(
        "661", {"comedy": 1.0, "romance": 1.0}, 0.0, "Amélie (2001)"
    )
    assert load(tmp_path / "ratings.dat", fmt="movielens-1m").ratings == ds.ratings
    # A title with "::" in it, or ending with ":", keeps them; the genres are after the
    # last "::".
    odd = "1193::Cats:::Drama\n661::A::B (2001)::Comedy\n"
    (tmp_path / "movies.dat").write_bytes(odd.encode("latin-1"))
    items = load(tmp_path / "ratings.dat").items
    assert (items["1193"].title, items["1193"].tags) == ("Cats:", {"drama": 1.0})
    assert (items["661"].title, items["661"].tags) == ("A::B (2001)", {"comedy": 1.0})


def write_ml_latest(directory: Path, tags: bool = True) -> Path:
    (directory / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,2,0.5,964982224\n"
    )
    (directory / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Some Doc (2018),(no genres listed)\n"
        '4,"Title with ""quotes"", and comma (2000)",IMAX\n',
        encoding="utf-8",
    )
    if tags:
        (directory / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            "2,1,Pixar,1445714994\n3,1,pixar ,1445714995\n4,1,pixar,1445714996\n"
            '2,2,"politics, satire",1445714997\n2,3,Comedy,1445714998\n2,99,orphan,1445714999\n',
            encoding="utf-8",
        )
    return directory / "ratings.csv"


def test_movielens_latest(tmp_path: Path) -> None:
    ds = load(write_ml_latest(tmp_path))
    assert ds.ratings[2] == Rating("2", "2", 0.5, 964982224.0)
    president = ds.items["2"]
    assert president.title == "American President, The (1995)"
    assert president.tags == {"comedy": 1.0, "drama": 1.0, "romance": 1.0, "politics, satire": 1.0}
    assert ds.items["4"].title == 'Title with "quotes", and comma (2000)'
    # "(no genres listed)" is no tag; user tags are lower-cased and counted (1 + ln count).
    assert ds.items["3"].tags == {"comedy": 1.0}
    assert ds.items["1"].tags["pixar"] == pytest.approx(1.0 + math.log(3))
    assert ds.items["1"].tags["animation"] == 1.0
    assert "99" not in ds.items  # a tag on an unknown movie adds no item


def test_a_movie_with_hundreds_of_user_tags_keeps_its_genres_and_the_most_used(
    tmp_path: Path,
) -> None:
    """Popular movies of MovieLens latest carry hundreds of distinct user tags: an item
    keeps MAX_TAGS (the model's tag rows are as wide as the widest item's, and "more
    like this" compares tags pairwise: one such item cost gigabytes), its genres first,
    then the tags given most, by their counts (their weights stop at 3.0, from 8 uses:
    ranked by weight, the most used tag of all lost to names earlier in the alphabet);
    the replay learns it."""
    ratings = write_ml_latest(tmp_path)
    lines = ["userId,movieId,tag,timestamp"]
    for j in range(300):  # tag j given j % 12 + 1 times
        lines += [f"{u},1,tag{j:03d},1445714994" for u in range(j % 12 + 1)]
    lines += [f"{u},1,zzz,1445714994" for u in range(500)]
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tags = load(ratings).items["1"].tags
    assert len(tags) == MAX_TAGS and "zzz" in tags
    assert {"adventure", "animation", "children", "comedy", "fantasy"} <= set(tags)
    assert {f"tag{j:03d}" for j in range(300) if j % 12 >= 10} <= set(tags)  # (11, 12 uses)
    model = Recommender()
    model.upsert_items(["1"], [tags])
    assert model.similar_items("1") == []


def test_movielens_latest_without_tags(tmp_path: Path) -> None:
    ds = load(write_ml_latest(tmp_path, tags=False), fmt="movielens-latest")
    assert "pixar" not in ds.items["1"].tags
    assert ds.items["3"].tags == {}


def test_plain_csv_with_items(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text(
        "user,item,rating,timestamp\nann,x,4,10\nbob,y,2.5,5\nann,z,1,7\n"
    )
    (tmp_path / "catalog.csv").write_text(
        "item_id,title,tags,timestamp\n"
        'x,"X, the movie",Space|Robots:0.5| AI :2,3\n'
        "y,Y,,\n"
        "w,Unrated,drama,100\n"
        "q,Colon tag,sci-fi:classic,\n"
    )
    ds = load(tmp_path / "log.csv", tmp_path / "catalog.csv")
    assert ds.ratings[1] == Rating("bob", "y", 2.5, 5.0)
    assert ds.items["x"] == ItemUpsert(
        "x", {"space": 1.0, "robots": 0.5, "ai": 2.0}, 3.0, "X, the movie"
    )
    assert ds.items["y"] == ItemUpsert("y", {}, 0.0, "Y")  # empty arrival: unknown
    assert ds.items["q"].tags == {"sci-fi:classic": 1.0}  # a non-numeric suffix is the name
    assert ds.items["z"] == ItemUpsert("z")  # rated but not in the item file: bare item
    assert list(ds.items) == ["x", "y", "w", "q", "z"]


def test_csv_with_a_byte_order_mark_and_padded_ids(tmp_path: Path) -> None:
    """A UTF-8 CSV as Excel writes it (byte-order mark first) is detected as CSV; ids are
    stripped in ratings as in items, so ``"10 "`` is item ``10`` and keeps its tags."""
    (tmp_path / "r.csv").write_bytes(
        "\ufeffuser_id,item_id,rating,timestamp\n1 ,10 ,4,100\n2,10,5,101\n".encode()
    )
    (tmp_path / "i.csv").write_text("item_id,title,tags\n10 ,Ten,drama\n")
    ds = load(tmp_path / "r.csv", tmp_path / "i.csv")
    assert [(r.user, r.item) for r in ds.ratings] == [("1", "10"), ("2", "10")]
    assert list(ds.items) == ["10"] and ds.items["10"].tags == {"drama": 1.0}


def test_plain_csv_without_items_or_timestamps(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\nu1,i1,5\nu2,i1,3\n")
    ds = load(tmp_path / "r.csv")
    assert [r.timestamp for r in ds.ratings] == [0.0, 1.0]  # file order
    assert ds.items == {"i1": ItemUpsert("i1")}


def test_items_csv_found_beside_ratings(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("user_id,item_id,rating,timestamp\nu,i,3,1\n")
    (tmp_path / "items.csv").write_text("item_id,title,tags,timestamp,deleted_at\ni,I,a,,5\n")
    ds = load(tmp_path / "ratings.csv")
    assert ds.items["i"].tags == {"a": 1.0}
    assert ds.deletes == [ItemDelete("i", 5.0)]


def test_fast_and_row_by_row_readers_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(f"u{k % 7}", f"i{k % 11}", f"{k % 5 + 0.5}", f"{1000 - k}") for k in range(300)]
    blank = ["", "  "]  # blank lines are skipped by both readers
    csv_lines = ["user_id,item_id,rating,timestamp,extra"]
    tsv_lines = []
    for k, row in enumerate(rows):
        csv_lines += [",".join([*row, "x"]), *(blank if k % 50 == 0 else [])]
        tsv_lines += ["\t".join(row), *(blank if k % 50 == 0 else [])]
    (tmp_path / "r.csv").write_text("\n".join(csv_lines) + "\n")
    (tmp_path / "u.data").write_text("\n".join(tsv_lines) + "\n")
    slow = datasets._read_csv_ratings_slowly(tmp_path / "r.csv")
    assert slow == datasets._read_split_ratings_slowly(tmp_path / "u.data", str.split, "")

    def no_fallback(*args: object) -> None:
        raise AssertionError("valid data should not need the row-by-row reader")

    monkeypatch.setattr(datasets, "_read_csv_ratings_slowly", no_fallback)
    monkeypatch.setattr(datasets, "_read_split_ratings_slowly", no_fallback)
    assert datasets._read_csv_ratings(tmp_path / "r.csv") == slow
    assert load(tmp_path / "u.data").ratings == slow
    assert len(slow) == 300


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "u.data",
            "1\t2\t3\t4\n1\t2\t3\t4\n1\t2\tx\t4\n",
            "u.data line 3: rating 'x' is not a number",
        ),
        ("u.data", "1\t2\t3\t4\n\n1\t2\t3\n", "u.data line 3: expected 4 whitespace-separated"),
        ("u.data", "1\t2\tnan\t4\n", "u.data line 1: rating 'nan' is not finite"),
        (
            "u.data",
            "1\t2\t3\t4\n1\t2\t3\tsoon\n",
            "u.data line 2: timestamp 'soon' is not a number",
        ),
        (
            "ratings.dat",
            "1::2::3::4\n1::2::inf::4\n",
            "ratings.dat line 2: rating 'inf' is not finite",
        ),
        ("ratings.dat", "1::2::3::4\n::2::3::4\n", "ratings.dat line 2: user id is empty"),
        ("ratings.dat", "1::2::3\n", "ratings.dat line 1: expected 4 '::'-separated"),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,four,4\n",
            "ratings.csv line 3: rating 'four' is not a number",
        ),
        (
            "r.csv",
            "user_id,item_id,rating,timestamp\n1,2,3,4\n1,,3,4\n",
            "r.csv line 3: item id is empty",
        ),
        (
            "r.csv",
            "user_id,item_id,rating,timestamp\n1,2,3\n",
            "r.csv line 2: expected 4 comma-separated",
        ),
        ("r.csv", "user_id,thing,rating\n1,2,3\n", "r.csv line 1: no item_id column"),
        (  # a quote never closed took the rest of the file into one field, silently
            "r.csv",
            'user_id,item_id,rating,timestamp\nu1,i1,4,100\nu1,i2,3,101,"oops\nu2,i1,5,102\n',
            "r.csv line 3: unexpected end of data",
        ),
        (  # in the header: a traceback
            "r.csv",
            'user_id,"item_id,rating,timestamp\n1,2,3,4\n',
            "r.csv line 1: unexpected end of data",
        ),
        (  # not blank to the '::' readers: a row of empty fields, refused by both
            "ratings.dat",
            "1::1::5::1\n::::::\n2::2::4::1\n",
            "ratings.dat line 2: rating '' is not a number",
        ),
        (  # "4,5" for a rating of 4.5 read as rating 4 at time 5
            "r.csv",
            "user_id,item_id,rating,timestamp\nu1,i1,4,5,100\n",
            "r.csv line 2: expected 4 comma-separated fields, got 5",
        ),
    ],
)
def test_bad_rating_lines_name_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load(tmp_path / name)


def test_bad_item_lines_name_file_and_line(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    with (tmp_path / "u.item").open("a", encoding="latin-1") as f:
        f.write(f"9|Bad|x||y|{_flags('Drama')[:-1]}2\n")
    with pytest.raises(DatasetError, match=re.escape("u.item line 5: genre flag '2' for Western")):
        load(tmp_path / "u.data")

    (tmp_path / "r.csv").write_text("user_id,item_id,rating,timestamp\nu,i,3,1\n")
    (tmp_path / "i.csv").write_text(
        'item_id,title,tags,timestamp\ni,"multi\nline title",a,1\nj,J,b,soon\n'
    )
    with pytest.raises(
        DatasetError, match=re.escape("i.csv line 4: timestamp 'soon' is not a number")
    ):
        load(tmp_path / "r.csv", tmp_path / "i.csv")
    (tmp_path / "i.csv").write_text("item_id,tags\ni,a:nan\n")
    with pytest.raises(
        DatasetError, match=re.escape("i.csv line 2: tag weight 'nan' is not finite")
    ):
        load(tmp_path / "r.csv", tmp_path / "i.csv")
    # A weight of 0 (or below) would divide by a zero sum and spread NaN through learning.
    for weight, problem in (("0", "is not positive"), ("-1", "is not positive"), ("1e40", "1e+09")):
        (tmp_path / "i.csv").write_text(f"item_id,tags\ni,b|a:{weight}\n")
        with pytest.raises(DatasetError, match=re.escape(f"i.csv line 2: tag weight '{weight}'")):
            load(tmp_path / "r.csv", tmp_path / "i.csv")
        with pytest.raises(DatasetError, match=re.escape(problem)):
            load(tmp_path / "r.csv", tmp_path / "i.csv")


def test_csv_rows_a_spreadsheet_writes_and_rows_that_would_be_misread(tmp_path: Path) -> None:
    """A row of bare commas is skipped as a blank line is, and so is a trailing comma's
    empty cell; an items row longer than its header, or a quote never closed, is an
    error naming its first line (the quote used to swallow the rest of the file)."""
    (tmp_path / "r.csv").write_text(
        "user_id,item_id,rating,timestamp\nu2,i2,3,5\n,,,\nu1,i1,4,7,\n"
    )
    ds = load(tmp_path / "r.csv")
    assert [(r.user, r.item, r.rating, r.timestamp) for r in ds.ratings] == [
        ("u2", "i2", 3.0, 5.0),
        ("u1", "i1", 4.0, 7.0),
    ]
    for items, message in (
        ('item_id,title,tags\ni1,"Foo, the (1995)",a\ni2,"Bar (1995),x\ni3,Baz,b\n', "line 3"),
        ("item_id,title,tags\ni1,Foo,a,extra\n", "line 2: expected 3 comma-separated fields"),
    ):
        (tmp_path / "i.csv").write_text(items)
        with pytest.raises(DatasetError, match=re.escape(f"i.csv {message}")):
            load(tmp_path / "r.csv", tmp_path / "i.csv")


def test_movielens_100k_genres_not_matching_the_flags_are_an_error(tmp_path: Path) -> None:
    """A u.genre naming fewer genres than u.item has flags shifted every flag onto the
    genre before it: an action comedy came out as a children's film."""
    write_ml100k(tmp_path)
    genres = [g for g in (tmp_path / "u.genre").read_text(encoding="latin-1").splitlines() if g]
    (tmp_path / "u.genre").write_text("\n".join(genres[:-1]) + "\n", encoding="latin-1")
    with pytest.raises(DatasetError, match=re.escape("u.item line 1: expected 23 '|'-separated")):
        load(tmp_path / "u.data")
    # Without u.genre, the genres are MovieLens 100K's own: the error does not blame it.
    (tmp_path / "u.genre").unlink()
    item = (tmp_path / "u.item").read_text(encoding="latin-1").splitlines()
    (tmp_path / "u.item").write_text(item[0] + "|0\n", encoding="latin-1")
    with pytest.raises(DatasetError, match=re.escape("of MovieLens 100K: no u.genre beside it")):
        load(tmp_path / "u.data")


def test_format_errors(tmp_path: Path) -> None:
    assert issubclass(DatasetError, ValueError)
    (tmp_path / "mystery.txt").write_text("hello world\n")
    with pytest.raises(DatasetError, match=re.escape("mystery.txt line 1: cannot tell the format")):
        load(tmp_path / "mystery.txt")
    with pytest.raises(ValueError, match=re.escape("unknown format")):
        load(tmp_path / "mystery.txt", fmt="parquet")
    with pytest.raises(FileNotFoundError):
        load(tmp_path)


def test_a_byte_order_mark_is_no_part_of_a_movielens_id(tmp_path: Path) -> None:
    """An editor saving a MovieLens file again may add a UTF-8 byte-order mark: it is
    skipped (read as latin-1, it became part of the first user or item id)."""
    bom = b"\xef\xbb\xbf"
    path = write_ml100k(tmp_path / "ml-100k")
    for name in ("u.data", "u.item", "u.genre"):
        (path.parent / name).write_bytes(bom + (path.parent / name).read_bytes())
    ds = load(path)
    assert ds.ratings[0].user == "196" and "242" in ds.items
    assert ds.items["377"].tags == {}  # "unknown" on line 1 of u.genre: still no tag
    (tmp_path / "ratings.dat").write_bytes(bom + b"1::10::5::978300760\n")
    (tmp_path / "movies.dat").write_bytes(bom + b"10::T (1999)::Drama\n")
    ds = load(tmp_path / "ratings.dat")
    assert ds.ratings[0].user == "1" and list(ds.items) == ["10"]
    assert ds.items["10"].tags == {"drama": 1.0}


def test_file_problems_name_the_file_and_line(tmp_path: Path) -> None:
    """An empty genre list, and text that is not UTF-8 in a file found beside the
    ratings, are clear errors naming that file (and the line); an empty tags.csv is no
    tags, and blank lines before a CSV header are skipped."""
    path = write_ml100k(tmp_path / "ml-100k")
    (path.parent / "u.genre").write_text("\n")
    with pytest.raises(DatasetError, match=re.escape("u.genre: no genres")):
        load(path)
    (tmp_path / "latest").mkdir()
    latest = write_ml_latest(tmp_path / "latest")
    (latest.parent / "movies.csv").write_bytes(b"movieId,title,genres\n1,Caf\xe9,Drama\n")
    with pytest.raises(DatasetError, match=re.escape("movies.csv line 2: not UTF-8 text (byte")):
        load(latest)
    (tmp_path / "latest2").mkdir()
    latest = write_ml_latest(tmp_path / "latest2")
    (latest.parent / "tags.csv").write_text("")
    assert load(latest).items["1"].tags["animation"] == 1.0
    (tmp_path / "plain.csv").write_text("\r\nuser_id,item_id,rating,timestamp\r\nu,i,4,100\r\n")
    assert load(tmp_path / "plain.csv", fmt="csv").ratings == [Rating("u", "i", 4.0, 100.0)]


def test_a_pipe_is_read_whole_whatever_its_format(tmp_path: Path) -> None:
    """``replay <(zcat ratings.csv.gz)``: the format's guess read the pipe's first block,
    header included, which the reader then never saw; MovieLens files could not be read
    at all (the byte-order check seeks). A pipe is copied first, under its own name."""
    import os
    import threading

    def piped(name: str, data: bytes) -> Path:
        fifo = tmp_path / name
        os.mkfifo(fifo)

        def write() -> None:
            with open(fifo, "wb") as f:
                f.write(data)

        threading.Thread(target=write, daemon=True).start()
        return fifo

    rows = b"user_id,item_id,rating,timestamp\n" + b"".join(
        f"u{n},i{n % 7},4,{n}\n".encode() for n in range(3000)
    )
    ds = load(piped("ratings", rows))
    assert ds.n_ratings == 3000 and ds.ratings[0] == Rating("u0", "i0", 4.0, 0.0)
    assert ds.name.endswith("/ratings")  # (the pipe's name, not the copy's)
    # An item file through a pipe: the files that go with it are looked for beside the
    # ratings (beside the pipe, in /dev/fd, was nowhere: the user tags were dropped).
    (tmp_path / "latest").mkdir()
    ratings = write_ml_latest(tmp_path / "latest")
    movies = piped("movies", ratings.with_name("movies.csv").read_bytes())
    through_a_pipe = load(ratings, movies).items  # (a pipe is read once)
    assert through_a_pipe == load(ratings).items and "pixar" in through_a_pipe["1"].tags
    ds = load(piped("u.data", b"1\t10\t4\t100\n2\t10\t3\t50\n"), fmt="movielens-100k")
    assert [(r.user, r.rating) for r in ds.ratings] == [("1", 4.0), ("2", 3.0)]


def test_a_compressed_file_is_read_and_an_archive_is_a_clear_error(tmp_path: Path) -> None:
    """``replay ratings.csv.gz`` read gzip bytes as text ("cannot tell the format"); a
    gzip file is read as its text, with the item files beside it, and a zip archive, as
    MovieLens ships, says to unzip it (it said to give the format, then "not UTF-8")."""
    import gzip
    import zipfile

    path = write_ml100k(tmp_path / "ml-100k")
    packed = path.with_name("u.data.gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    ds = load(packed)
    assert ds.n_ratings == 4 and ds.items["242"].tags == {"comedy": 1.0}
    assert ds.name == "ml-100k/u.data.gz"
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,rating\nu,i,4\n"))
    assert load(tmp_path / "r.csv.gz").ratings == [Rating("u", "i", 4.0, 0.0)]
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"user_id,item_id,rating\n")[:-6])
    with pytest.raises(DatasetError, match=re.escape("cut.csv.gz: not a readable gzip file")):
        load(tmp_path / "cut.csv.gz")
    # An item file given compressed: the files that go with it are still beside it.
    (tmp_path / "latest").mkdir()
    ratings = write_ml_latest(tmp_path / "latest")
    movies = ratings.with_name("movies.csv")
    plain = load(ratings, movies).items
    movies.with_name("movies.csv.gz").write_bytes(gzip.compress(movies.read_bytes()))
    assert load(ratings, movies.with_name("movies.csv.gz")).items == plain
    assert "pixar" in plain["1"].tags
    genres = (tmp_path / "ml-100k" / "u.genre").read_text().replace("Comedy", "Funny")
    (tmp_path / "ml-100k" / "u.genre").write_text(genres)
    item = tmp_path / "ml-100k" / "u.item"
    item.with_name("u.item.gz").write_bytes(gzip.compress(item.read_bytes()))
    assert load(packed, item.with_name("u.item.gz")).items["242"].tags == {"funny": 1.0}
    with zipfile.ZipFile(tmp_path / "ml-100k.zip", "w") as archive:
        archive.write(packed, "ml-100k/u.data.gz")
    with pytest.raises(DatasetError, match=re.escape("ml-100k.zip is a zip archive: unzip it")):
        load(tmp_path / "ml-100k.zip")


def test_first_lines_that_are_no_header_are_clear_errors(tmp_path: Path) -> None:
    """A first field past the csv module's limit raised its own error (a traceback from
    the command); a header of tab-separated columns was read as MovieLens 100K, whose
    error then spoke of a rating 'rating'."""
    (tmp_path / "long.csv").write_text("a" * 200_000 + ",b\n")
    with pytest.raises(DatasetError, match=re.escape("long.csv line 1: cannot tell the format")):
        load(tmp_path / "long.csv")
    # A quoted column after a space is a column (the reader skips the space: so does the
    # guess, which could not tell the format).
    (tmp_path / "spaced.csv").write_text('item_id, "user_id", rating, timestamp\ni,u,4,1\n')
    assert load(tmp_path / "spaced.csv").ratings == [Rating("u", "i", 4.0, 1.0)]
    (tmp_path / "tabs.tsv").write_text("user_id\titem_id\trating\ttimestamp\nu1\ti1\t4\t1\n")
    with pytest.raises(
        DatasetError, match=re.escape("tabs.tsv line 1: a header of tab- or space-sep")
    ):
        load(tmp_path / "tabs.tsv")


def test_an_item_listed_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    """A second row of an item replaced the first's tags and title, unseen (and kept both
    rows' deletes, which ``save_csv`` refuses)."""
    (tmp_path / "ratings.csv").write_text("user_id,item_id,rating,timestamp\nu,i1,4,1\n")
    (tmp_path / "items.csv").write_text(
        "item_id,title,tags,timestamp,deleted_at\ni1,A,drama,,15\ni2,B,x,,\ni1,A2,comedy,,25\n"
    )
    expected = "items.csv line 4: item 'i1' is already listed on line 2"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load(tmp_path / "ratings.csv")
    path = write_ml100k(tmp_path / "ml-100k")
    item = (path.parent / "u.item").read_bytes()
    (path.parent / "u.item").write_bytes(item + item.splitlines(keepends=True)[0])
    with pytest.raises(DatasetError, match=re.escape("u.item line 5: item '242' is already")):
        load(path)
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::978300760\n")
    (tmp_path / "movies.dat").write_bytes(b"10::T (1999)::Drama\n10::T2 (1999)::War\n")
    with pytest.raises(DatasetError, match=re.escape("movies.dat line 2: item '10' is already")):
        load(tmp_path / "ratings.dat")


def test_an_empty_item_file_is_an_item_file_read(tmp_path: Path) -> None:
    """A header-only catalog counted as no catalog: the rated items missing from it
    were replayed without tags and without the warning one unrelated row brought."""
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,1\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    ds = load(tmp_path / "ratings.csv")
    assert ds.had_catalog and ds.unlisted == ["10"]
    (tmp_path / "movies.csv").unlink()
    assert not load(tmp_path / "ratings.csv").had_catalog


@pytest.mark.parametrize("text", ["4_5", "\uff14", "4\u0663"])
def test_a_number_python_reads_but_no_file_writes_is_refused(tmp_path: Path, text: str) -> None:
    """``float`` reads "4_5" as 45 and other scripts' digits as digits: the rating scale,
    taken from the data, widened unseen (to [3, 45])."""
    (tmp_path / "r.csv").write_text(
        f"user_id,item_id,rating,timestamp\nu1,i1,{text},1\nu2,i1,3,2\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match=re.escape(f"r.csv line 2: rating {text!r} is not a")):
        load(tmp_path / "r.csv")
    (tmp_path / "u.data").write_text(f"1\t10\t3\t{text}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=re.escape("u.data line 1: timestamp")):
        load(tmp_path / "u.data")


# ---------------------------------------------------------------------------------------------
# Event order


_KIND = {Rating: "R", ItemUpsert: "U", ItemDelete: "D"}


def _describe(ds: Dataset) -> list[tuple[str, str, float]]:
    return [(_KIND[type(e)], getattr(e, "user", e.item), e.timestamp) for e in ds.events()]


def test_events_order_ties_and_arrivals() -> None:
    ds = Dataset(
        ratings=[
            Rating("u3", "b", 1.0, 30.0),
            Rating("u1", "a", 4.0, 20.0),
            Rating("u2", "a", 2.0, 20.0),  # tie with the one above: file order kept
            Rating("u4", "c", 3.0, 20.0),  # tie, and c arrives at 20: c first
            Rating("u5", "d", 3.0, 40.0),  # d has no catalog entry: no upsert
        ],
        items={
            "a": ItemUpsert("a", {"x": 1.0}),  # unknown arrival: announced at first rating
            "b": ItemUpsert("b"),  # unknown arrival, deleted at its rating's time
            "c": ItemUpsert("c", timestamp=20.0),
            "e": ItemUpsert("e", timestamp=25.0),  # never rated, known arrival
            "f": ItemUpsert("f"),  # never rated, unknown arrival: at the end
        },
        deletes=[ItemDelete("b", 30.0), ItemDelete("a", 20.0)],
    )
    assert _describe(ds) == [
        ("U", "c", 20.0),
        ("U", "a", 20.0),
        ("R", "u1", 20.0),
        ("R", "u2", 20.0),
        ("R", "u4", 20.0),
        ("D", "a", 20.0),  # a delete comes after the ratings at its time
        ("U", "e", 25.0),
        ("U", "b", 30.0),
        ("R", "u3", 30.0),
        ("D", "b", 30.0),
        ("R", "u5", 40.0),
        ("U", "f", 40.0),
    ]


def test_events_announces_deleted_unrated_item_before_its_delete() -> None:
    ds = Dataset(ratings=[], items={"a": ItemUpsert("a")}, deletes=[ItemDelete("a", 5.0)])
    assert list(ds.events()) == [ItemUpsert("a", timestamp=5.0), ItemDelete("a", 5.0)]


def test_head() -> None:
    ds = Dataset(
        ratings=[
            Rating("u", "b", 1.0, 3.0),
            Rating("u", "a", 1.0, 1.0),
            Rating("v", "c", 1.0, 2.0),
        ],
        items={k: ItemUpsert(k) for k in "abc"},
        deletes=[ItemDelete("a", 2.0), ItemDelete("b", 9.0), ItemDelete("c", 3.0)],
        name="toy",
    )
    head = ds.head(2)
    assert [r.item for r in head.ratings] == ["a", "c"]
    assert list(head.items) == ["a", "c"]
    assert head.deletes == [ItemDelete("a", 2.0)]
    assert head.name == "toy[:2]"
    assert len(ds.head(0)) == 0
    with pytest.raises(ValueError):
        ds.head(-1)


def test_live_paced_announces_the_whole_catalog_before_the_first_rating() -> None:
    ds = Dataset(
        ratings=[Rating("u", "b", 4.0, 5.0), Rating("v", "a", 3.0, 9.0)],
        items={k: ItemUpsert(k, {"t": 1.0}, 7.0) for k in "abc"},
        deletes=[ItemDelete("c", 8.0)],
    )
    events = list(ds.live_paced(rate=10.0, start=100.0).events())
    assert [type(e).__name__ for e in events] == ["ItemUpsert"] * 3 + ["Rating"] * 2
    assert {e.timestamp for e in events[:3]} == {100.0}
    assert [e.timestamp for e in events[3:]] == [100.0, 100.1]
    # A start of 0.0 would mark the catalog's arrival as unknown: refused.
    with pytest.raises(ValueError, match="unknown arrival"):
        ds.live_paced(rate=10.0, start=datasets.UNKNOWN_ARRIVAL)


_ids = st.sampled_from(["a", "b", "c", "d"])
_times = st.integers(0, 6).map(float)


@settings(max_examples=150, deadline=None)
@given(
    ratings=st.lists(st.tuples(_ids, _times), max_size=15),
    arrivals=st.dictionaries(_ids, _times),
    deletes=st.lists(st.tuples(_ids, _times), max_size=3),
)
def test_events_invariants(
    ratings: list[tuple[str, float]],
    arrivals: dict[str, float],
    deletes: list[tuple[str, float]],
) -> None:
    """Time order, every record exactly once, stable ties, each upsert before its first use."""
    ds = Dataset(
        ratings=[Rating(f"u{k}", item, 3.0, t) for k, (item, t) in enumerate(ratings)],
        items={item: ItemUpsert(item, timestamp=t) for item, t in arrivals.items()},
        deletes=[ItemDelete(item, t) for item, t in deletes],
    )
    events = list(ds.events())
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    seen_ratings = [e for e in events if isinstance(e, Rating)]
    assert sorted(seen_ratings, key=lambda r: r.timestamp) == seen_ratings
    assert seen_ratings == sorted(ds.ratings, key=lambda r: r.timestamp)  # stable ties
    assert [e for e in events if isinstance(e, ItemDelete)] == sorted(
        ds.deletes, key=lambda d: d.timestamp
    )
    upserts = [e.item for e in events if isinstance(e, ItemUpsert)]
    assert sorted(upserts) == sorted(ds.items)
    for position, event in enumerate(events):
        if event.item in ds.items and not isinstance(event, ItemUpsert):
            announced = [e.item for e in events[:position] if isinstance(e, ItemUpsert)]
            assert event.item in announced
    for event in events:
        if isinstance(event, ItemUpsert) and ds.items[event.item].timestamp != 0.0:
            assert event.timestamp <= ds.items[event.item].timestamp


# ---------------------------------------------------------------------------------------------
# Writing


def test_save_csv_round_trip(tmp_path: Path) -> None:
    ds = Dataset(
        ratings=[
            Rating("u,1", "i1", 4.0, 1_700_000_000.0),
            Rating('u"2', "i2", 3.5, 0.25),
            Rating("u3", "i1", 0.1, 1e-7),
        ],
        items={
            "i1": ItemUpsert("i1", {"space": 1.0, "ratio:3": 1.0, "w": 0.1}, 5.0, 'A, "b"\nc'),
            "i2": ItemUpsert("i2", {}, 0.0, "Café"),
            "i3": ItemUpsert("i3", {"x": 2.5}, 1_700_000_123.0, ""),
        },
        deletes=[ItemDelete("i3", 7.5), ItemDelete("i1", 9.0)],
        name="rt",
    )
    save_csv(ds, tmp_path / "ratings.csv", tmp_path / "items.csv")
    back = load(tmp_path / "ratings.csv")
    assert back.ratings == ds.ratings
    assert back.items == ds.items
    assert back.deletes == sorted(ds.deletes, key=lambda d: d.timestamp)
    assert (tmp_path / "ratings.csv").read_text().splitlines()[1] == '"u,1",i1,4,1700000000'


def test_save_csv_rejects_what_it_cannot_write(tmp_path: Path) -> None:
    bad_tag = Dataset(ratings=[], items={"i": ItemUpsert("i", {"a|b": 1.0})})
    with pytest.raises(ValueError, match=re.escape("contains '|'")):
        save_csv(bad_tag, tmp_path / "r.csv", tmp_path / "i.csv")
    twice = Dataset(ratings=[], items={"i": ItemUpsert("i")}, deletes=[ItemDelete("i")] * 2)
    with pytest.raises(ValueError, match=re.escape("deleted twice")):
        save_csv(twice, tmp_path / "r.csv", tmp_path / "i.csv")


def test_either_csv_catalog_beside_the_ratings_is_read_whichever_csv_format(
    tmp_path: Path,
) -> None:
    """(--format csv on a MovieLens-latest folder dropped movies.csv, and
    --format movielens-latest on a plain one dropped items.csv, silently.)"""
    write_ml_latest(tmp_path)
    assert load(tmp_path / "ratings.csv", fmt="csv").items["1"].tags
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ratings.csv").write_text("user,item,rating,timestamp\na,x,4,1\n")
    (plain / "items.csv").write_text("item,title,tags\nx,X,jazz\n")
    assert load(plain / "ratings.csv", fmt="movielens-latest").items["x"].tags == {"jazz": 1.0}
