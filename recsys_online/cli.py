"""The core's commands: ``replay`` a ratings file through a model, ``synth`` a stream."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from recsys_online import datasets, synth
from recsys_online.evaluate import Checkpoint, prequential
from recsys_online.factors import RATES, FactorParams
from recsys_online.json_safe import json_safe
from recsys_online.recommender import MODELS, Recommender, RecommenderConfig
from recsys_online.runtime import limit_blas_threads


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a clear usage error otherwise)."""
    return _int_at_least(text, 1)


def factor_count(text: str) -> int:
    """A number of latent factors: 1 to 1,024 (each costs every user and item a float32)."""
    n = positive_int(text)
    if n > 1024:
        raise argparse.ArgumentTypeError(f"at most 1024, got {n}")
    return n


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``replay`` and ``synth`` on a subcommand parser."""
    p = sub.add_parser(
        "replay",
        help="stream a ratings file in time order through a model, test-then-train",
        description="Prequential replay: each rating is predicted and ranked before it is "
        "learned. Prints rolling figures while it runs and a final table.",
    )
    p.add_argument("ratings", type=Path, help="ratings file (or a MovieLens folder)")
    p.add_argument("--items", type=Path, default=None, help="item catalog file")
    p.add_argument("--format", default="auto", choices=datasets.FORMATS)
    p.add_argument("--model", default="hybrid", choices=sorted(MODELS))
    p.add_argument("--k", type=positive_int, default=10, help="list length for NDCG@K/Recall@K")
    p.add_argument(
        "--relevant", type=finite_float, default=4.0, help="a rating >= this is relevant"
    )
    p.add_argument(
        "--scale",
        type=finite_float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="rating scale predictions are clipped to (default: the data's lowest and "
        "highest rating, e.g. 0.5 5 for MovieLens' half stars)",
    )
    p.add_argument("--factors", type=factor_count, default=32, help="latent factors (<= 1024)")
    defaults = FactorParams()
    for name, help_text in (
        ("lr_bias", "step size of the biases"),
        ("lr_factor", "step size of the factor vectors"),
        ("l2_bias", "L2 of the biases"),
        ("l2_factor", "L2 of the factor vectors"),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=non_negative_float,
            default=getattr(defaults, name),
            help=f"{help_text} (default {getattr(defaults, name):g}; RECSYS_{name.upper()} "
            "for the worker)",
        )
    p.add_argument(
        "--sgd",
        action="store_true",
        help="plain SGD instead of AdaGrad's per-row rates (RECSYS_ADAPTIVE=false)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="micro-batch (1 = sequential)"
    )
    p.add_argument("--limit", type=count, default=None, help="replay only the first N ratings")
    p.add_argument("--seed", type=count, default=42)
    p.add_argument("--json", type=Path, default=None, help="write the final figures here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(run=run_replay)

    s = sub.add_parser(
        "synth",
        help="write a synthetic ratings stream (ratings.csv, items.csv)",
        description="Synthetic stream with planted tastes, tag-correlated item factors, "
        "power-law popularity, sessions and items arriving over time (see "
        "recsys_online.synth). Deterministic by --seed.",
    )
    s.add_argument("out_dir", type=Path, help="folder for ratings.csv and items.csv")
    s.add_argument("--users", type=positive_int, default=1000, help="default 1,000")
    s.add_argument("--items", type=positive_int, default=2000, help="default 2,000")
    s.add_argument("--ratings", type=positive_int, default=100_000, help="default 100,000")
    s.add_argument("--tags", type=positive_int, default=50, help="distinct tags (default 50)")
    s.add_argument(
        "--cold-item-share",
        type=finite_float,
        default=0.3,
        help="share of items arriving mid-stream with tags and no ratings (0-1, default 0.3)",
    )
    s.add_argument(
        "--drift",
        type=finite_float,
        default=0.0,
        help="users' taste drift over the stream, in taste scales (0-1000, default 0: none)",
    )
    s.add_argument("--deletes", type=count, default=0, help="items deleted mid-stream (default 0)")
    s.add_argument("--seed", type=count, default=0, help="default 0 (same seed, same stream)")
    s.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        ds = synth.generate(
            n_users=args.users,
            n_items=args.items,
            n_ratings=args.ratings,
            n_tags=args.tags,
            cold_item_share=args.cold_item_share,
            drift=args.drift,
            n_deletes=args.deletes,
            seed=args.seed,
        )
        ratings_path, items_path = synth.write(ds, args.out_dir)
    except (ValueError, RuntimeError, OSError) as exc:  # a setting out of range, a bad path
        print(f"recsys-online synth: {exc}", file=sys.stderr)
        return 2
    except MemoryError:  # (the state grows with users and items, not ratings)
        print(
            f"recsys-online synth: not enough memory for {args.users:,} users, "
            f"{args.items:,} items and {args.tags:,} tags",
            file=sys.stderr,
        )
        return 1
    print(
        f"wrote {ds.n_ratings:,} ratings by {ds.n_users:,} users of {ds.n_items:,} items "
        f"to {ratings_path} and {items_path} in {time.perf_counter() - started:.1f} s"
    )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    limit_blas_threads()
    problem = _unwritable(args.json) if args.json else None
    if problem:  # found now, not after the whole replay
        print(f"recsys-online replay: --json {args.json}: {problem}", file=sys.stderr)
        return 2
    if args.scale and not args.scale[0] < args.scale[1]:
        low, high = args.scale
        print(
            f"recsys-online replay: --scale {low:g} {high:g}: LOW must be below HIGH",
            file=sys.stderr,
        )
        return 2
    try:
        ds = datasets.load(args.ratings, args.items, fmt=args.format)
    except (datasets.DatasetError, OSError) as exc:
        print(f"recsys-online replay: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        ds = ds.head(args.limit)
    if not ds.ratings:
        print(f"recsys-online replay: no ratings to replay in {args.ratings}", file=sys.stderr)
        return 2
    values = [r.rating for r in ds.ratings]
    scale = tuple(args.scale) if args.scale else (min(values), max(values))
    if not scale[0] < scale[1]:  # every rating the same: the usual 1-5 around it
        scale = (min(scale[0], 1.0), max(scale[1], 5.0))
    outside = sum(not scale[0] <= v <= scale[1] for v in values)
    if outside:
        print(
            f"recsys-online replay: {outside:,} rating{'s' * (outside != 1)} outside the scale "
            f"[{scale[0]:g}, {scale[1]:g}] (--scale)",
            file=sys.stderr,
        )
        return 2
    if ds.had_catalog and ds.unlisted:  # (their content signal is empty: say so)
        print(
            f"recsys-online replay: {len(ds.unlisted):,} rated item(s) are not in the item "
            f"file, e.g. {ds.unlisted[0]!r}: replayed without tags",
            file=sys.stderr,
        )
    if ds.untimed:  # (documented, but an unsorted file would be replayed out of order)
        print(
            f"recsys-online replay: no time column in {args.ratings.name} (one of "
            f"{', '.join(datasets.TIME_COLUMNS)}): replayed in file order",
            file=sys.stderr,
        )
    stamps = [r.timestamp for r in ds.ratings[:: max(1, len(ds.ratings) // 1000)]]
    if stamps and sorted(stamps)[len(stamps) // 2] > 1e11:  # (past the year 5138 in seconds)
        print(
            "recsys-online replay: the timestamps look like milliseconds, not seconds: "
            "popularity's 7-day half-life then passes 1,000x too fast; convert them to "
            "seconds",
            file=sys.stderr,
        )
    if not scale[0] <= args.relevant <= scale[1]:  # (no rating could count as relevant)
        print(
            f"recsys-online replay: --relevant {args.relevant:g} is outside the rating scale "
            f"[{scale[0]:g}, {scale[1]:g}]",
            file=sys.stderr,
        )
        return 2
    try:  # (a scale float32 cannot hold, say)
        config = RecommenderConfig(
            signals=MODELS[args.model], relevant=args.relevant, seed=args.seed, scale=scale
        )
    except ValueError as exc:
        where = "--scale" if args.scale else f"the ratings' scale [{scale[0]:g}, {scale[1]:g}]"
        print(f"recsys-online replay: {where}: {exc}", file=sys.stderr)
        return 2
    config.factors = replace(
        config.factors,
        n_factors=args.factors,
        seed=args.seed,
        adaptive=not args.sgd,
        **{name: getattr(args, name) for name in RATES},
    )
    model = Recommender(config)
    total = len(ds.ratings) + len(ds.items) + len(ds.deletes)
    every = max(1000, total // 200)
    last: Checkpoint | None = None
    try:
        for last in prequential(
            model,
            ds.events(),
            k=args.k,
            relevant=args.relevant,
            batch_size=args.batch_size,
            checkpoint_every=every,
        ):
            if not args.quiet:
                _progress(last, total)
    except (TypeError, ValueError) as exc:  # (an event the readers let through, refused)
        print(f"\nrecsys-online replay: the model refused an event: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(file=sys.stderr)
    assert last is not None
    if last.relevant == 0:  # (e.g. implicit data, every rating 1: the default is 4)
        print(
            f"recsys-online replay: no rating reached --relevant {args.relevant:g}: NDCG and "
            "recall had nothing to measure",
            file=sys.stderr,
        )
    summary = summarise(last, args.model, ds.name or str(args.ratings)) | {"scale": scale}
    print(format_table(summary))
    if args.json:
        text = json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False)
        try:  # (checked up front, but a disk fills and a folder goes away meanwhile)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
        except OSError as exc:
            print(f"recsys-online replay: --json {args.json}: {exc}", file=sys.stderr)
            return 2
    return 0


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot take the JSON figures (None when it can)."""
    if len(path.name.encode()) > 255:
        return "the file name is too long"
    try:
        if path.is_dir():
            return "is a directory"
        if path.is_symlink() and not path.exists():
            return "is a link to nothing"
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            return f"cannot write in {parent}"
    except OSError as exc:
        return str(exc)
    return None


def summarise(cp: Checkpoint, model: str, data: str) -> dict:
    """The replay's final figures as a flat, JSON-ready dict."""
    return {
        "data": data,
        "model": model,
        "events": cp.events,
        "ratings": cp.ratings,
        "k": cp.k,
        "rmse": cp.rmse,
        "mae": cp.mae,
        "relevant": cp.relevant,
        "refused": cp.refused,
        "ndcg_at_k": cp.ndcg_at_k,
        "recall_at_k": cp.recall_at_k,
        "coverage": cp.coverage,
        "cold_users": cp.cold_users,
        "cold_items": cp.cold_items,
        "elapsed_s": cp.elapsed_s,
        "events_per_s": cp.events_per_s,
    }


def format_table(s: dict) -> str:
    """A plain two-column table of the figures a person reads first."""
    k = s["k"]

    def cold(who: str, figure: str) -> str:
        return f"{s[f'cold_{who}'].get(figure, math.nan):.4f}"

    rows = [
        ("data", s["data"]),
        ("model", s["model"]),
        ("events", f"{s['events']:,}"),
        ("ratings", f"{s['ratings']:,}"),
        # (every model predicts ratings with its factor model: the same for every --model)
        ("RMSE (factor model)", f"{s['rmse']:.4f}"),
        ("MAE (factor model)", f"{s['mae']:.4f}"),
        ("RMSE cold users / items", f"{cold('users', 'rmse')} / {cold('items', 'rmse')}"),
        ("relevant ratings", f"{s['relevant']:,}"),
        ("refused (deleted items)", f"{s['refused']:,}"),
        (f"NDCG@{k}", f"{s['ndcg_at_k']:.4f}"),
        (f"Recall@{k}", f"{s['recall_at_k']:.4f}"),
        (f"NDCG@{k} cold users", f"{s['cold_users'].get('ndcg_at_k', 0.0):.4f}"),
        (f"Recall@{k} cold items", f"{s['cold_items'].get('recall_at_k', 0.0):.4f}"),
        ("catalog coverage", f"{s['coverage']:.3f}"),
        ("events/s", f"{s['events_per_s']:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _progress(cp: Checkpoint, total: int) -> None:
    share = min(cp.events / total, 1.0) if total else 1.0
    bar = "#" * int(30 * share)
    print(
        f"\r[{bar:<30}] {100 * share:5.1f}%  {cp.events:,} events  "
        f"rolling RMSE {cp.rolling_rmse:.3f}  NDCG@{cp.k} {cp.rolling_ndcg_at_k:.3f}  "
        f"{cp.events_per_s:,.0f} ev/s",
        end="",
        file=sys.stderr,
        flush=True,
    )
