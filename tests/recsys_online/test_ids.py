"""IdIndex: the hash table of ids agrees with a dict, survives pickling and collisions; and
ForgottenRaters, the store by id that compaction keeps raters in."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from recsys_online import ids as ids_module
from recsys_online.ids import IdIndex
from recsys_online.recommender import ForgottenRaters


class Colliding(str):
    """An id whose hash is the same as every other Colliding id's."""

    def __hash__(self) -> int:
        return 12345


def _reference(batches: list[list[str]]) -> tuple[list[list[int]], dict[str, int]]:
    rows: dict[str, int] = {}
    out = []
    for batch in batches:
        out.append([rows.setdefault(k, len(rows)) for k in batch])
    return out, rows


@pytest.mark.parametrize("cache", [ids_module.CACHE, 64, 1])
@pytest.mark.parametrize("seed", range(3))
def test_rows_agree_with_a_dict_over_growth_and_repeats(seed: int, cache: int, monkeypatch) -> None:
    """Whether the dict of recent ids holds them all, some or none (emptied when full)."""
    monkeypatch.setattr(ids_module, "CACHE", cache)
    rng = np.random.default_rng(seed)
    universe = [f"id-{j}" for j in range(5000)]
    batches = []
    for _ in range(40):  # batches of 0-900 ids drawn from ever more of the universe
        picked = rng.integers(0, int(rng.integers(10, 5000)), int(rng.integers(0, 900)))
        batches.append([universe[j] for j in picked])
    expected, final = _reference(batches)
    index = IdIndex()
    for batch, want in zip(batches, expected, strict=True):
        assert index.rows(batch).tolist() == want
    assert index.ids == list(final)
    probe = [*universe[:50], "never-seen", ""]
    assert index.get_many(probe).tolist() == [final.get(k, -1) for k in probe]
    assert [index.get(k) for k in probe] == [final.get(k) for k in probe]
    assert all(k in index for k in final) and "never-seen" not in index


def test_single_and_batched_lookups_assign_the_same_rows() -> None:
    a, b = IdIndex(), IdIndex()
    keys = [f"k{j % 700}" for j in range(2000)]
    assert [a.row(k) for k in keys] == b.rows(keys).tolist()


def test_ids_with_equal_hashes_keep_their_own_rows() -> None:
    index = IdIndex()
    ids = [Colliding(f"c{j}") for j in range(30)]
    assert index.rows(ids[:20]).tolist() == list(range(20))
    assert index.rows(ids).tolist() == list(range(30))
    assert [index.row(k) for k in reversed(ids)] == list(range(29, -1, -1))
    assert index.get(Colliding("other")) is None
    assert index.get_many([Colliding("other"), ids[7]] * 5).tolist() == [-1, 7] * 5


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_pickled_index_is_rebuilt_in_another_process(n: int, tmp_path) -> None:
    """Hashes of str are salted per process: the table must be rebuilt on load."""
    index = IdIndex(f"user-{j}" for j in range(n))
    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps(index))
    code = (
        "import pickle, sys; index = pickle.load(open(sys.argv[1], 'rb'));"
        f"assert index.rows([f'user-{{j}}' for j in range({n})]).tolist() == list(range({n}));"
        f"assert index.row('new') == {n}; assert index.get('user-x') is None"
    )
    env = {"PYTHONHASHSEED": "random"}
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env)
    again = pickle.loads(pickle.dumps(index))
    assert again.ids == index.ids and again.row("new") == n


@pytest.mark.parametrize("cache", [ids_module.CACHE, 1])
def test_ids_of_names_rows_with_any_characters(cache: int, monkeypatch) -> None:
    monkeypatch.setattr(ids_module, "CACHE", cache)
    keys = ["plain", "", "café", "日本", "\ud800 lone surrogate", "tab\tand\nnewline"]
    index = IdIndex(keys)
    assert index.ids == keys
    assert index.ids_of([5, 0, 3, 3]) == [keys[5], keys[0], keys[3], keys[3]]
    assert [index.id_of(r) for r in range(len(keys))] == keys
    assert index.rows(keys).tolist() == list(range(len(keys)))
    assert index.get("cafe") is None and index.get("café") == 2
    with pytest.raises(IndexError):
        index.ids_of([len(keys)])


def test_index_pickled_as_a_list_of_ids_still_loads() -> None:
    """Snapshots written before the ids were stored as bytes hold ``(list of ids,)``."""
    old = IdIndex.__new__(IdIndex)
    old.__setstate__((["u1", "u2", "ü3"],))
    assert old.ids == ["u1", "u2", "ü3"] and old.get("ü3") == 2 and old.row("u4") == 3
    assert pickle.loads(pickle.dumps(old)).ids == ["u1", "u2", "ü3", "u4"]


def test_an_id_costs_its_bytes_not_a_python_object() -> None:
    """100,000 ids of 7 characters: about 35 bytes per id for the arrays, plus the
    bounded caches of the ids in use; a list of ``str`` alone would add ~64 per id."""
    import tracemalloc

    keys = [f"u{j:06d}" for j in range(100_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = IdIndex()
    for start in range(0, len(keys), 4096):
        index.rows(keys[start : start + 4096])
    index.ids_of(list(range(0, len(keys), 7)))
    per_id = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    tracemalloc.stop()
    assert len(index) == len(keys) and index.id_of(99_999) == "u099999"
    assert per_id < 64, per_id


def test_an_id_that_is_not_a_str_is_refused_with_a_clear_error() -> None:
    index = IdIndex(["a"])
    with pytest.raises(TypeError, match="ids are str, not int: 196"):
        index.row(196)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.rows(["b", 7])  # type: ignore[list-item]
    assert index.get(196) is None and index.get_many([196]).tolist() == [-1]  # type: ignore[list-item]
    assert index.ids_of([0]) == ["a"] and index.get("b") == 1  # "b" came before the 7


def test_pickled_offsets_are_little_endian() -> None:
    index = IdIndex(["ab", "c"])
    blob, ends = index.__getstate__()
    assert blob == b"abc" and np.frombuffer(ends, "<i8").tolist() == [2, 3]


def test_forgotten_raters_kept_in_one_pass_are_those_kept_one_item_at_a_time() -> None:
    """Compaction keeps thousands of items' raters at once (``add_many``): the same as
    adding each item's in turn, ids keeping some already included."""
    rng = np.random.default_rng(3)
    one, many = ForgottenRaters(), ForgottenRaters()
    for kept in (one, many):  # (ids keeping raters before: some of those added below)
        kept.add("i3", np.array([7, 1]))
        kept.add("old", np.array([2]))
    items = [f"i{j}" for j in range(40)]
    sizes = rng.integers(1, 6, len(items))
    raters = np.concatenate([rng.choice(50, n, replace=False) for n in sizes]).astype(np.int32)
    starts = np.cumsum(sizes) - sizes
    many.add_many(items, raters, starts)
    for item, lo, n in zip(items, starts.tolist(), sizes.tolist(), strict=True):
        one.add(item, raters[lo : lo + n])
    for item in [*items, "old", "never"]:
        assert sorted(many.get(item).tolist()) == sorted(one.get(item).tolist()), item
    assert many.live == one.live == 41
    assert many.pop("i5").size and not many.get("i5").size and many.live == 40
