"""The core's commands, ``replay`` and ``synth``: their output, and a one-line error with
exit status 2 (never a traceback) for every input they cannot use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamer.cli import main

JSON_KEYS = {"events", "rmse", "mae", "k", "ndcg_at_k", "recall_at_k", "events_per_s"}


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(out), "--users", "40", "--items", "60", "--ratings", "400"]) == 0
    return out


def test_synth_then_replay_writes_the_documented_figures(stream: Path, tmp_path, capsys) -> None:
    assert {p.name for p in stream.iterdir()} == {"ratings.csv", "items.csv"}
    out = tmp_path / "deep" / "figures.json"
    code = main(["replay", str(stream / "ratings.csv"), "--quiet", "--k", "5", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures.keys() >= JSON_KEYS and figures["k"] == 5 and figures["events"] > 400
    assert 0 < figures["rmse"] < 4 and "NDCG@5" in capsys.readouterr().out


def test_replay_with_no_relevant_rating_writes_null_ndcg_not_zero(tmp_path, capsys) -> None:
    # Every rating below the relevance threshold: nothing to rank, so no NDCG or recall.
    # 0 would read as a model that never lists a liked item; JSON has no NaN: null.
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "user_id,item_id,rating,timestamp\n" + "".join(f"u{n},i{n % 3},2,{n}\n" for n in range(9))
    )
    out = tmp_path / "figures.json"
    assert main(["replay", str(ratings), "--quiet", "--json", str(out)]) == 0
    text = out.read_text()
    figures = json.loads(text)  # (strict JSON: a bare NaN would not parse in browsers)
    assert "NaN" not in text and figures["relevant"] == 0 and figures["ratings"] == 9
    assert figures["ndcg_at_k"] is None and figures["recall_at_k"] is None
    assert 0 < figures["rmse"] < 4
    assert "nan" in capsys.readouterr().out  # the table says so too


def _error(capsys, code: int, command: str, expected: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # (argparse's own errors came after its usage block)
    assert err[0].startswith(f"recsys-online {command}") and expected in err[0], err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--users", "0"], "--users: must be >= 1, got 0"),
        (["--ratings", "-5"], "--ratings: must be >= 1, got -5"),
        (["--cold-item-share", "1.5"], "cold_item_share must be in [0, 1]"),
        (["--users", "5", "--items", "5", "--ratings", "100"], "more than half of all"),
        (
            ["--deletes", "90", "--items", "50", "--ratings", "500"],
            "n_deletes must be in 0..n_items",
        ),
        (["--drift", "nan"], "--drift: must be a finite number"),
        (["--drift", "1e39"], "drift must be <= 1000, got 1e+39"),
        (["--seed", "-1"], "--seed: must be >= 0, got -1"),
    ],
)
def test_synth_refuses_settings_it_cannot_use(tmp_path, capsys, args, expected) -> None:
    try:
        code = main(["synth", str(tmp_path / "out"), *args])
    except SystemExit as exc:  # argparse's own usage error
        code = exc.code
    _error(capsys, code, "synth", expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--relevant", "99"], "--relevant 99 is outside the rating scale [1, 5]"),
        (["--seed", "-1"], "--seed: must be >= 0, got -1"),
        (["--k", "0"], "--k: must be >= 1, got 0"),
        (["--factors", "100000000"], "--factors: at most 1024, got 100000000"),
    ],
)
def test_replay_refuses_settings_it_cannot_use(stream: Path, capsys, args, expected) -> None:
    """A relevance bar no rating reaches gave NDCG 0 without a word; a negative seed a
    traceback from numpy."""
    try:
        code = main(["replay", str(stream / "ratings.csv"), "--quiet", *args])
    except SystemExit as exc:
        code = exc.code
    _error(capsys, code, "replay", expected)


def test_synth_into_a_file_is_a_clear_error(tmp_path, capsys) -> None:
    (tmp_path / "a-file").write_text("x")
    code = main(
        ["synth", str(tmp_path / "a-file"), "--users", "20", "--items", "30", "--ratings", "50"]
    )
    _error(capsys, code, "synth", "a-file")


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (b"", [], "ratings.csv"),
        (b"user_id,item_id,rating,timestamp\n", [], "no ratings to replay"),
        (b"user_id,item_id,rating,timestamp\nu\xe91,i1,4,1\n", [], "not UTF-8 text"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,x,1\n", [], "rating 'x' is not a number"),
        (b"1 10 4\n", [], "--format"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,4,1\n", ["--limit", "0"], "no ratings"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,4,1\n", ["--k", "0"], "--k: must be >= 1"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,4,1\n", ["--factors", "-2"], "--factors"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,4,1\n", ["--batch-size", "0"], "--batch-size"),
        (b"user_id,item_id,rating,timestamp\nu1,i1,4,1\n", ["--format", "xml"], "--format"),
    ],
)
def test_replay_refuses_input_it_cannot_use(tmp_path, capsys, content, args, expected) -> None:
    path = tmp_path / "ratings.csv"
    path.write_bytes(content)
    try:
        code = main(["replay", str(path), "--quiet", *args])
    except SystemExit as exc:
        code = exc.code
    _error(capsys, code, "replay", expected)


def test_replay_checks_its_json_path_before_the_replay(stream: Path, tmp_path, capsys) -> None:
    code = main(["replay", str(stream / "ratings.csv"), "--quiet", "--json", str(tmp_path)])
    _error(capsys, code, "replay", "is a directory")
    assert "RMSE" not in capsys.readouterr().out  # nothing was replayed first


def test_a_json_path_that_fails_now_or_at_the_end_is_one_line(
    stream: Path, tmp_path, capsys, monkeypatch
) -> None:
    """A link to nothing and a name too long were tracebacks (one from the check, one
    after the whole replay); so was a write that fails at the end (a disk filled)."""
    ratings = str(stream / "ratings.csv")
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone" / "x.json")
    _error(
        capsys,
        main(["replay", ratings, "--quiet", "--json", str(dangling)]),
        "replay",
        "is a link to nothing",
    )
    long = tmp_path / ("a" * 300 + ".json")
    _error(
        capsys,
        main(["replay", ratings, "--quiet", "--json", str(long)]),
        "replay",
        "the file name is too long",
    )

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    code = main(["replay", ratings, "--quiet", "--json", str(tmp_path / "f.json")])
    _error(capsys, code, "replay", "No space left on device")


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RECSYS_K", "abc")
    _error(capsys, main(["snapshots"]), "snapshots", "RECSYS_K: 'abc' is not a valid int")


def test_replay_takes_the_scale_from_the_data_or_from_scale(tmp_path, capsys) -> None:
    """Half stars (MovieLens 10M and later) replay on their own scale by default;
    ratings outside a scale given with --scale are refused, not silently mis-scored."""
    path = tmp_path / "half.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,i1,0.5,1\nu2,i1,5,2\nu1,i2,3,3\n")
    out = tmp_path / "f.json"
    assert main(["replay", str(path), "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["scale"] == [0.5, 5.0]
    code = main(["replay", str(path), "--quiet", "--scale", "1", "5"])
    _error(capsys, code, "replay", "1 rating outside the scale [1, 5]")


def test_replay_refuses_ratings_past_the_models_scale_without_naming_a_flag_not_given(
    tmp_path, capsys
) -> None:
    path = tmp_path / "big.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,i1,1,1\nu2,i1,2e7,2\n")
    code = main(["replay", str(path), "--quiet"])
    _error(capsys, code, "replay", "the ratings' scale [1, 2e+07]: scale must be")


def test_replay_refuses_a_catalog_item_of_more_than_64_tags_by_file_and_line(
    tmp_path, capsys
) -> None:
    """(The model refused it mid-replay, with a traceback.)"""
    ratings = tmp_path / "r.csv"
    ratings.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1\n")
    items = tmp_path / "items.csv"
    tags = "|".join(f"t{j}" for j in range(70))
    items.write_text(f"item_id,title,tags,timestamp\ni1,One,{tags},0\n")
    code = main(["replay", str(ratings), "--items", str(items), "--quiet"])
    _error(capsys, code, "replay", "items.csv line 2: 70 tags, more than 64")


@pytest.mark.parametrize("scale", [("5", "1"), ("3", "3")])
def test_replay_refuses_a_reversed_or_empty_scale(tmp_path, capsys, scale) -> None:
    """``--scale 5 1`` is a typo, not a request for 1-5: it is refused before loading."""
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1\n")
    code = main(["replay", str(path), "--quiet", "--scale", *scale])
    _error(capsys, code, "replay", f"--scale {scale[0]} {scale[1]}: LOW must be below HIGH")


def test_replay_counts_ratings_of_deleted_items_and_says_when_nothing_is_relevant(
    tmp_path, capsys
) -> None:
    """A rating of an item deleted before it is refused, neither scored nor learned: the
    table and the JSON count it (a 3-row file showed 2 ratings and no word why). Data
    where no rating reaches the relevance bar (implicit ratings, all 1) says so."""
    (tmp_path / "r.csv").write_text(
        "user_id,item_id,rating,timestamp\nu1,i1,1,10\nu2,i2,1,1\nu3,i2,1,2\n"
    )
    (tmp_path / "i.csv").write_text("item_id,title,tags,timestamp,deleted_at\ni1,,,,5\ni2,,,,\n")
    out = tmp_path / "f.json"
    args = ["replay", str(tmp_path / "r.csv"), "--items", str(tmp_path / "i.csv"), "--quiet"]
    assert main([*args, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert (figures["ratings"], figures["refused"]) == (2, 1)
    captured = capsys.readouterr()
    assert re.search(r"^refused \(deleted items\) +1$", captured.out, re.M), captured.out
    assert "no rating reached --relevant 4" in captured.err


def test_a_folder_with_a_format_reads_that_formats_file(tmp_path, capsys) -> None:
    """A folder holding u.data and a MovieLens-latest ratings.csv, read with
    --format movielens-latest, read u.data and failed."""
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.5,7\n2,2,3,8\n")
    out = tmp_path / "f.json"
    args = ["replay", str(tmp_path), "--format", "movielens-latest", "--quiet", "--json", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["ratings"] == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a,x,4,1700000000000000000", "timestamp '1700000000000000000' is out of range"),
        ("a,x,4,1e300", "timestamp '1e300' is out of range"),
        ("a,x,1e300,17", "rating '1e300' is out of range (beyond what a float32 holds)"),
    ],
)
def test_values_the_model_cannot_take_are_a_line_of_the_file_not_a_traceback(
    tmp_path, capsys, row: str, message: str
) -> None:
    """(A nanosecond epoch loaded, then stopped the replay with a traceback.)"""
    path = tmp_path / "r.csv"
    path.write_text(f"user,item,rating,timestamp\nb,x,4,1\n{row}\n")
    assert main(["replay", str(path), "--quiet"]) == 2
    assert f"r.csv line 3: {message}" in capsys.readouterr().err


def test_replay_warns_of_millisecond_times_and_items_missing_from_the_item_file(
    tmp_path, capsys
) -> None:
    ratings, items = tmp_path / "r.csv", tmp_path / "items.csv"
    ratings.write_text("user,item,rating,timestamp\na,x,4,1700000000000\nb,y,2,1700000001000\n")
    items.write_text("item,title,tags\nx,X,jazz\n")
    assert main(["replay", str(ratings), "--items", str(items), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "1 rated item(s) are not in the item file, e.g. 'y'" in err
    assert "the timestamps look like milliseconds" in err
    ratings.write_text("user,item,rating,timestamp\na,x,4,1700000000\nb,x,2,1700000001\n")
    assert main(["replay", str(ratings), "--items", str(items), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    # A time column under a name the reader does not take: replayed in file order, said.
    ratings.write_text("user,item,rating,date\na,x,4,1700000001\nb,x,2,1700000000\n")
    assert main(["replay", str(ratings), "--items", str(items), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no time column in r.csv (one of timestamp, time, ts): replayed in file order" in err
    # A quoted time column after a space is one (the reader skips the space: so does this).
    ratings.write_text('user, item, rating, "timestamp"\na,x,4,1700000001\nb,x,2,1700000000\n')
    assert main(["replay", str(ratings), "--items", str(items), "--quiet"]) == 0
    assert "no time column" not in capsys.readouterr().err


def test_output_piped_into_head_or_a_ctrl_c_end_without_a_traceback(stream: Path) -> None:
    """`recsys-online replay ... | head -2` stopped with a BrokenPipeError traceback
    when head closed the pipe first."""
    import subprocess
    import sys

    command = f"{sys.executable} -m streamer.cli replay {stream / 'ratings.csv'} --quiet | head -1"
    for _ in range(3):  # (whether the pipe is closed before the last write varies)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stdout.startswith("data")


def test_ctrl_c_ends_a_replay_with_a_line_and_by_the_signal(tmp_path) -> None:
    """Ctrl-C: one line instead of a traceback, and the process ends by SIGINT, as a
    shell loop running the command needs to stop too."""
    import signal
    import subprocess
    import sys
    import time

    assert main(["synth", str(tmp_path), "--ratings", "200000", "--users", "2000"]) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "replay", str(tmp_path / "ratings.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)  # (loading, then replaying)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGINT, err[-2000:]
    assert "recsys-online replay: interrupted" in err and "Traceback" not in err
