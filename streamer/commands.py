"""The users' commands: ``produce``, ``stream``, ``recs``, ``similar``, ``metrics``,
``deadletters``, ``snapshots`` and ``dashboard``.

Each reads the same ``RECSYS_*`` settings as the worker (``KAFKA_BOOTSTRAP_SERVERS`` and
``REDIS_URL`` too), so whatever the worker is pointed at, these are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from recsys_online import datasets
from recsys_online.cli import count, finite_float, positive_int
from schemas import EventError, ItemEvent, RatingEvent, UserEvent
from streamer.client import (
    REDIS_ERRORS,
    RecommendationClient,
    RecommendationsUnavailable,
    redacted_url,
)
from streamer.metrics import DEADLETTER_KIND_NAMES
from streamer.producer import DeliveryError, core_record, event_producer, route, stream_events
from streamer.settings import Settings

KINDS = {"rating": RatingEvent, "item": ItemEvent, "user": UserEvent}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the users' commands on the ``recsys-online`` parser."""
    produce = sub.add_parser(
        "produce",
        help="validate and send one event (or JSON lines) to Kafka",
        description="Validate events with the schemas and send them to their topic, keyed "
        "as the worker expects. Exit status 2 when an event is invalid (nothing is sent "
        "from a file with an invalid line), 1 when Kafka does not acknowledge.",
    )
    kinds = produce.add_subparsers(dest="kind", required=True, metavar="KIND")
    r = kinds.add_parser("rating", help="a user rated an item")
    r.add_argument("user_id")
    r.add_argument("item_id")
    r.add_argument("rating", type=float)
    r.add_argument(
        "--timestamp",
        type=timestamp_arg,
        default=None,
        help="epoch seconds or ISO-8601 with an offset (default now)",
    )
    r.add_argument("--event-id", default=None, help="the producer's id for this event")
    i = kinds.add_parser("item", help="add or change a catalog item, or delete it")
    i.add_argument("item_id")
    i.add_argument("--tag", action="append", default=[], metavar="NAME[=WEIGHT]")
    i.add_argument("--title", default=None)
    i.add_argument("--delete", action="store_true", help="remove the item everywhere")
    i.add_argument("--timestamp", type=timestamp_arg, default=None)
    u = kinds.add_parser("user", help="declare a user's tags (seeds their profile)")
    u.add_argument("user_id")
    u.add_argument("--tag", action="append", default=[], metavar="NAME[=WEIGHT]")
    u.add_argument("--timestamp", type=timestamp_arg, default=None)
    j = kinds.add_parser("jsonl", help="JSON lines of one kind, from a file or stdin (-)")
    j.add_argument("event_kind", choices=sorted(KINDS))
    j.add_argument("file", help="path, or - for stdin")
    produce.set_defaults(run=run_produce)

    stream = sub.add_parser(
        "stream",
        help="replay a ratings file and its catalog into Kafka at a steady rate",
        description="Reads the same files and formats as `replay` and sends them in time "
        "order, each item's catalog event before its first rating.",
    )
    stream.add_argument("ratings", type=Path, help="ratings file (or a MovieLens folder)")
    stream.add_argument("--items", type=Path, default=None, help="item catalog file")
    stream.add_argument("--format", default="auto", choices=datasets.FORMATS)
    stream.add_argument("--rate", type=finite_float, default=1_000.0, help="ratings per second")
    stream.add_argument("--limit", type=count, default=None, help="only the first N ratings")
    stream.add_argument(
        "--stamp-now",
        action="store_true",
        help="send each event with the time it is sent, as a live app would",
    )
    stream.add_argument("--quiet", action="store_true", help="no progress bar")
    stream.set_defaults(run=run_stream)

    recs = sub.add_parser("recs", help="print a user's current list from Redis")
    recs.add_argument("user_id")
    recs.add_argument("--k", type=positive_int, default=10)
    recs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recs.set_defaults(run=run_recs)

    similar = sub.add_parser("similar", help='print an item\'s "more like this" list from Redis')
    similar.add_argument("item_id")
    similar.add_argument("--k", type=positive_int, default=10)
    similar.add_argument("--json", action="store_true", help="print JSON instead of a table")
    similar.set_defaults(run=run_similar)

    metrics = sub.add_parser("metrics", help="print the live metrics from Redis")
    metrics.add_argument(
        "--watch",
        type=watch_seconds,
        default=0.0,
        metavar="SECONDS",
        help="print again every SECONDS until Ctrl-C",
    )
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(run=run_metrics)

    dash = sub.add_parser("dashboard", help="serve the live dashboard (reads Redis)")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="default RECSYS_DASHBOARD_PORT (8080); 0 = any free port",
    )
    dash.set_defaults(run=run_dashboard)

    dead = sub.add_parser(
        "deadletters",
        help="list the dead letters, or send them back to their topic",
        description="List the records of RECSYS_DEADLETTER_TOPIC (the last --last of each "
        "partition, oldest first; with a filter, the last matching ones) with their reason "
        "and source; with --redrive, send every dead letter that matches --reason, --kind "
        "and --topic back to the topic it came from, "
        "each at most once over all runs (e.g. ratings of an item listed since). Exit "
        "status 1 when a dead letter could not be sent back (or its sending was not "
        "confirmed).",
    )
    dead.add_argument("--last", type=positive_int, default=20, help="how many to list")
    dead.add_argument("--reason", default=None, metavar="TEXT", help="reason contains TEXT")
    dead.add_argument(
        "--kind",
        choices=DEADLETTER_KIND_NAMES,
        default=None,
        help="the kind of reason, as the metrics count them (recsys_deadletters_by_reason_total)",
    )
    dead.add_argument(
        "--topic", choices=("ratings", "items", "users"), default=None, help="source topic"
    )
    dead.add_argument("--redrive", action="store_true", help="send the matching ones back")
    dead.add_argument(
        "--all", action="store_true", help="with --redrive and no filter: every dead letter"
    )
    dead.add_argument("--dry-run", action="store_true", help="with --redrive: send nothing")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(run=run_deadletters)

    snaps = sub.add_parser(
        "snapshots",
        help="list the model snapshots a restarting worker may load",
        description="Snapshots in RECSYS_DATA_DIR/RECSYS_APP_ID/snapshots (or "
        "RECSYS_SNAPSHOT_DIR/RECSYS_APP_ID when set), newest first: "
        "the ratings partitions each covers, up to which offsets, and whether it was made "
        "under the current model settings (a worker ignores those that were not).",
    )
    snaps.add_argument("--json", action="store_true")
    snaps.set_defaults(run=run_snapshots)


def watch_seconds(text: str) -> float:
    """An argparse type: seconds between two prints, 0 (once) up to a day."""
    value = finite_float(text)
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be 0 to 86400 seconds, got {text!r}")
    return value


def fail(message: str, status: int = 1) -> int:
    print(f"recsys-online: {message}", file=sys.stderr)
    return status


# ------------------------------------------------------------------ produce
def timestamp_arg(text: str) -> float | str:
    """An argparse type: epoch seconds as a number, else the text as given, for the
    event's schema to read as ISO-8601 (or refuse, naming the field), as events in JSON.

    >>> timestamp_arg("1700000000.5"), timestamp_arg("2026-11-26T18:00:00Z")
    (1700000000.5, '2026-11-26T18:00:00Z')
    """
    try:
        return float(text)
    except ValueError:
        return text


def parse_tags(specs: list[str]) -> dict[str, float]:
    """``["scifi", "drama=0.5"]`` -> ``{"scifi": 1.0, "drama": 0.5}``.

    >>> parse_tags(["scifi", "drama=0.5"])
    {'scifi': 1.0, 'drama': 0.5}
    >>> parse_tags(["scifi=2", "scifi"])  # (named twice: the largest, as the schema merges)
    {'scifi': 2.0}
    >>> parse_tags(["x=much"])
    Traceback (most recent call last):
    ...
    ValueError: --tag x=much: the weight must be a number
    """
    tags: dict[str, float] = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--tag {spec}: the weight must be a number") from None
        name = name.strip()
        tags[name] = max(value, tags.get(name, value))
    return tags


def event_from_args(
    args: argparse.Namespace, settings: Settings
) -> RatingEvent | ItemEvent | UserEvent:
    """The event the flags describe, validated as the worker will (EventError names the
    field)."""
    now = time.time() if args.timestamp is None else args.timestamp
    if args.kind == "rating":
        fields = {
            "user_id": args.user_id,
            "item_id": args.item_id,
            "rating": args.rating,
            "timestamp": now,
        }
        if args.event_id is not None:  # ("": refused by the schema, not dropped)
            fields["event_id"] = args.event_id
        return settings.parse(json.dumps(fields).encode(), RatingEvent)
    if args.kind == "item":
        if args.delete:
            if args.title is not None or args.tag:
                raise ValueError("--delete takes no --title or --tag: a delete carries none")
            fields = {"op": "delete", "item_id": args.item_id, "timestamp": now}
        else:
            fields = {
                "op": "upsert",
                "item_id": args.item_id,
                "tags": parse_tags(args.tag),
                "timestamp": now,
            }
            if args.title is not None:
                fields["title"] = args.title
        return settings.parse(json.dumps(fields).encode(), ItemEvent)
    fields = {"user_id": args.user_id, "tags": parse_tags(args.tag), "timestamp": now}
    return settings.parse(json.dumps(fields).encode(), UserEvent)


def read_jsonl(kind: type, stream: TextIO, name: str, settings: Settings) -> list:
    """Every line validated first: a bad line stops everything, naming its number."""
    events = []
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            events.append(settings.parse(line.encode(), kind))
        except EventError as exc:
            raise EventError(f"{name}, line {lineno}: {exc}") from None
    return events


async def send_all(settings: Settings, events: list) -> int:
    async with event_producer(settings) as producer:
        for event in events:
            await producer.send(event)
    return len(events)


def run_produce(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        if args.kind == "jsonl":
            kind = KINDS[args.event_kind]
            if args.file == "-":
                events = read_jsonl(kind, sys.stdin, "stdin", settings)
            else:
                with open(args.file, encoding="utf-8") as f:
                    events = read_jsonl(kind, f, args.file, settings)
        else:
            events = [event_from_args(args, settings)]
    except (EventError, ValueError, OSError) as exc:
        return fail(f"invalid event, nothing sent: {exc}", 2)
    if not events:  # (as stream says: nothing sent, not a success)
        return fail(f"no events in {'stdin' if args.file == '-' else args.file}", 2)
    try:
        sent = asyncio.run(send_all(settings, events))
    except DeliveryError as exc:
        return fail(str(exc))
    topic = route(settings, events[0])[0]
    print(f"sent {sent:,} event{'s' * (sent != 1)} to {topic} at {settings.bootstrap_servers}")
    return 0


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0: any free one), for argparse.

    >>> port_number("8080"), port_number("0")
    (8080, 0)
    >>> port_number("70000")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 70000 is not a port (0-65535)
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


# ------------------------------------------------------------------ stream
def run_stream(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        return fail("--rate must be > 0", 2)
    settings = Settings.from_env()
    try:
        ds = datasets.load(args.ratings, args.items, fmt=args.format)
    except (datasets.DatasetError, OSError) as exc:
        return fail(str(exc), 2)
    if args.limit is not None:
        ds = ds.head(args.limit)
    if not ds.ratings:  # (as replay says: nothing sent, not a success)
        return fail(f"no ratings to stream in {args.ratings}", 2)
    # Checked before anything is sent: a half-star data set (MovieLens latest) on the
    # default 1-5 scale stopped at its first 0.5, part of it sent.
    values = [r.rating for r in ds.ratings]
    low, high = min(values), max(values)
    if not settings.rating_low <= low <= high <= settings.rating_high:
        return fail(
            f"the ratings run from {low:g} to {high:g}, outside this deployment's scale "
            f"[{settings.rating_low:g}, {settings.rating_high:g}]: set RECSYS_RATING_LOW "
            "and RECSYS_RATING_HIGH to cover them (for the workers too); nothing sent",
            2,
        )
    # Every record checked before the first is sent (a tag too long, an id, a title, a
    # timestamp ahead): one found mid-stream left part of the file in Kafka, and
    # streaming it again after the fix would send that part twice.
    if not args.quiet:  # (about 15 us a record: a 25M-rating file takes minutes)
        n = ds.n_ratings + ds.n_items + len(ds.deletes)
        print(f"checking {n:,} records before sending", file=sys.stderr)
    now = time.time()
    try:
        for event in ds.events():
            core_record(settings, replace(event, timestamp=now) if args.stamp_now else event)
    except EventError as exc:
        return fail(f"invalid record, nothing sent: {exc}", 2)
    except KeyboardInterrupt:
        print("interrupted, nothing sent", file=sys.stderr)
        return 130
    if ds.untimed and not args.stamp_now:  # (as replay says; the workers read event time)
        print(
            f"recsys-online stream: no time column in {Path(args.ratings).name} (one of "
            f"{', '.join(datasets.TIME_COLUMNS)}): sent in file order with timestamps 0, "
            "1, 2, ... (1970 to the workers' popularity and learning windows); "
            "--stamp-now sends each rating with the time it is sent",
            file=sys.stderr,
        )
    total = ds.n_ratings
    print(
        f"streaming {total:,} ratings ({ds.n_items:,} items, {ds.n_users:,} users) to "
        f"{settings.ratings_topic} / {settings.items_topic} at {args.rate:,.0f}/s",
        file=sys.stderr,
    )
    started = time.monotonic()
    last = 0.0

    async def progress(sent: int) -> None:
        nonlocal last
        now = time.monotonic()
        if args.quiet or now - last < 0.5:
            return
        last = now
        share = sent / total if total else 1.0
        print(
            f"\r[{'#' * int(30 * share):<30}] {100 * share:5.1f}%  {sent:,}/{total:,}  "
            f"{sent / max(now - started, 1e-9):,.0f}/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    async def go() -> int:
        async with event_producer(settings) as producer:
            return await stream_events(
                producer, ds.events(), args.rate, progress, stamp_now=args.stamp_now
            )

    try:
        sent = asyncio.run(go())
    except DeliveryError as exc:
        print(file=sys.stderr)
        return fail(str(exc))
    except EventError as exc:  # (checked above: only a payload the check let by, if any)
        print(file=sys.stderr)
        return fail(f"invalid record, stopped before it: {exc}", 2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    if not args.quiet:
        print(file=sys.stderr)
    print(f"sent {sent:,} ratings in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f}/s)")
    return 0


# ------------------------------------------------------------------ read
def run_recs(args: argparse.Namespace) -> int:
    return _print_list(args, "user_id", args.user_id)


def run_similar(args: argparse.Namespace) -> int:
    return _print_list(args, "item_id", args.item_id)


def _print_list(args: argparse.Namespace, subject: str, name: str) -> int:
    """A user's list (``recs``) or an item's "more like this" list (``similar``)."""
    settings = Settings.from_env()
    try:
        with RecommendationClient(
            settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
        ) as client:
            read = client.recommend if subject == "user_id" else client.similar
            recs = read(name, k=args.k, titles=True)
    except RecommendationsUnavailable as exc:
        return fail(str(exc))
    except ValueError as exc:
        return fail(str(exc), 2)
    name = getattr(recs, subject)  # (as the lists are keyed: " u1 " is u1)
    if args.json:
        print(
            json.dumps(
                {
                    subject: name,
                    "served_from": recs.served_from,
                    "model_version": recs.model_version,
                    "updated_at": recs.updated_at,
                    "items": [r.__dict__ for r in recs.items],
                },
                indent=2,
            )
        )
        return 1 if recs.served_from == "none" else 0  # (as the table says: no lists yet)
    if recs.served_from == "none":
        print(
            f"no lists under {settings.key_prefix!r} in {redacted_url(settings.redis_url)} yet: "
            "is a worker "
            "running with the same RECSYS_KEY_PREFIX?"
        )
        return 1
    if not recs.fallback:
        head = f"{name}: model version {recs.model_version}, updated {clock(recs.updated_at)}"
    elif subject == "user_id":
        head = f"{name}: no list of their own yet; the popular list"
    else:
        head = f"{name}: no list of its own (not listed yet, or deleted); the popular list"
    print(head)
    print(format_recs(recs.items))
    return 0


def format_recs(items) -> str:
    """A plain-text table of a list (rank, item, title, score, reason)."""
    rows = [("#", "item", "title", "score", "reason")]
    rows += [
        (str(n), r.item_id, (r.title or "")[:32], f"{r.score:.3f}", r.reason)
        for n, r in enumerate(items, 1)
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join(
        "  ".join(
            [
                row[0].rjust(widths[0]),
                row[1].ljust(widths[1]),
                row[2].ljust(widths[2]),
                row[3].rjust(widths[3]),
                row[4],
            ]
        ).rstrip()
        for row in rows
    )


METRIC_ROWS = (
    ("events", "ratings learned", "{:,.0f}"),
    ("events_per_s", "events/s", "{:,.0f}"),
    ("rmse", "RMSE (rolling)", "{:.4f}"),
    ("mae", "MAE (rolling)", "{:.4f}"),
    ("ndcg_at_k", "NDCG@K (rolling)", "{:.4f}"),
    ("recall_at_k", "Recall@K (rolling)", "{:.4f}"),
    ("ndcg_at_k_fresh", "NDCG@K ranked at rating", "{:.4f}"),
    ("rmse_total", "RMSE (since start)", "{:.4f}"),
    ("ndcg_at_k_total", "NDCG@K (since start)", "{:.4f}"),
    ("lag", "consumer lag", "{:,.0f}"),
    ("freshness_ms_p50", "freshness p50 ms", "{:,.1f}"),
    ("freshness_ms_p99", "freshness p99 ms", "{:,.1f}"),
    ("deadletters", "dead letters", "{:,.0f}"),
    ("items", "live items", "{:,.0f}"),
    ("users", "users", "{:,.0f}"),
    ("model_version", "model version", "{:,.0f}"),
    ("partitions", "ratings partitions", "{:.0f}"),
    ("metrics_url", "metrics at", None),  # (as written: where Prometheus scrapes it)
)


def clock(t: float | None) -> str:
    """A list's ``updated_at`` as local ``HH:MM:SS``; ``-`` for none, or for a time no
    clock shows (a damaged document's 1e300 stopped the command with a traceback).

    >>> clock(None), clock(1e300), clock(float("nan"))
    ('-', '-', '-')
    """
    try:
        return time.strftime("%H:%M:%S", time.localtime(t)) if t is not None else "-"
    except (OverflowError, OSError, ValueError):
        return "-"


def format_metrics(shared: dict[str, str], workers: dict[str, dict[str, str]]) -> str:
    """One column per live worker, after the fleet's figures (the shared hash) when
    there are several.

    >>> print(format_metrics({"events": "12", "k": "10"}, {"h:1": {"events": "12"}}))
    figure           h:1
    ratings learned   12
    >>> print(format_metrics({"events": "30"}, {"h:1": {"events": "12"}, "h:2": {"events": "18"}}))
    figure           all workers  h:1  h:2
    ratings learned           30   12   18
    >>> print(format_metrics({}, {"h:1": {"deadletters": "3", "deadletters_malformed": "2"}}))
    figure               h:1
    dead letters           3
      of them malformed    2
    >>> print(format_metrics({"metrics_url": "http://b:9"}, {
    ...     "a": {"metrics_url": "http://a:8"}, "b": {"metrics_url": "http://b:9"}}))
    figure      all workers           a           b
    metrics at            -  http://a:8  http://b:9
    """
    names = sorted(workers) or ["(shared)"]
    columns = [workers[n] for n in sorted(workers)] or [shared]
    if len(workers) > 1 and shared:
        names, columns = ["all workers", *names], [shared, *columns]
    rows = [("figure", *names)]
    kinds = sorted({k for c in columns for k in c if k.startswith("deadletters_")})
    specs: list[tuple[str, str, str | None]] = []
    for spec in METRIC_ROWS:  # (the dead letters' kinds under their count)
        specs.append(spec)
        if spec[0] == "deadletters":
            specs += [(k, f"  of them {k.removeprefix('deadletters_')}", "{:,.0f}") for k in kinds]
    for key, label, form in specs:
        if not any(key in c for c in columns):
            continue
        cells = []
        for c in columns:
            if form is None:  # (text, each worker's own: the fleet's column has none)
                cells.append(c.get(key, "-") if c is not shared or len(columns) == 1 else "-")
                continue
            try:
                cells.append(form.format(float(c[key])) if key in c else "-")
            except ValueError:
                cells.append(c[key])
        rows.append((label.replace("K", shared.get("k", "K")), *cells))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            [r[0].ljust(width[0]), *(c.rjust(w) for c, w in zip(r[1:], width[1:], strict=True))]
        )
        for r in rows
    )


def run_metrics(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        with RecommendationClient(
            settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
        ) as client:
            while True:
                shared, workers = client.metrics(), client.worker_metrics()
                if args.json:
                    print(json.dumps({"metrics": shared, "workers": workers}, indent=2))
                elif not shared and not workers:
                    print(f"no metrics under {settings.key('metrics')} yet: is a worker running?")
                else:  # (the shared hash gone, live workers' own still there: theirs)
                    print(time.strftime("%H:%M:%S"), f"{len(workers)} live worker(s)")
                    print(format_metrics(shared, workers))
                if args.watch <= 0:
                    return 0 if shared or workers else 1
                time.sleep(args.watch)
                print()
    except RecommendationsUnavailable as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 0


def run_deadletters(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from streamer.deadletters import TopicNotReadToEnd, matching, read_dead_letters, redrive

    settings = Settings.from_env()
    topics = {
        "ratings": settings.ratings_topic,
        "items": settings.items_topic,
        "users": settings.users_topic,
    }
    select = matching(args.reason, topics.get(args.topic), args.kind)
    if not args.redrive and (args.all or args.dry_run):  # (ignored, they said nothing)
        flag = "--all" if args.all else "--dry-run"
        return fail(f"{flag} goes with --redrive (listing takes --last N)", status=2)
    if args.redrive and not (args.reason or args.topic or args.kind or args.all):
        return fail(
            "--redrive sends events back to the worker: say which, with --reason TEXT, "
            "--kind and/or --topic, or --all for every dead letter",
            status=2,
        )
    try:
        if args.redrive:
            report = asyncio.run(redrive(settings, select, dry_run=args.dry_run))
        else:  # (filtered: the last matching ones, so the whole topic is read)
            filtered = bool(args.reason or args.topic or args.kind)
            letters = asyncio.run(read_dead_letters(settings, None if filtered else args.last))
    except TopicNotReadToEnd as exc:
        return fail(str(exc))
    except (KafkaError, OSError) as exc:
        return fail(
            f"cannot read {settings.deadletter_topic} at {settings.bootstrap_servers}: {exc}"
        )
    except REDIS_ERRORS as exc:
        return fail(f"cannot reach Redis at {redacted_url(settings.redis_url)}: {exc}")
    if args.redrive:
        return print_redrive(report, settings, args)
    by_partition: dict[int, list] = {}
    for d in letters:
        if select(d):
            by_partition.setdefault(d.partition, []).append(d)
    rows = [d.row() for _, kept in sorted(by_partition.items()) for d in kept[-args.last :]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{len(rows)} dead letter(s) in {settings.deadletter_topic} (the last {args.last} "
        f"{'matching ' if filtered else ''}of each partition)"
    )
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["dead_lettered_at"]))
        print(f"  {row['id']}  {when}Z  from {row['source']}  key {row['key']!r}")
        print(f"      {row['reason']}")
        if row["value"] is not None:
            print(f"      {row['value'][:100]!r}")
    return 0


def print_redrive(report, settings: Settings, args: argparse.Namespace) -> int:
    """The redrive's report, as text or JSON; exit status 1 if a send failed, was not
    confirmed, or is another run's still in flight (nothing is known sent of those)."""
    if args.json:
        print(json.dumps(vars(report), indent=2))
    else:
        verb = "would send back" if args.dry_run else "sent back"
        print(
            f"{verb} {len(report.sent)} dead letter(s) of {report.matched} matching "
            f"({report.read} in {settings.deadletter_topic}); {len(report.already)} sent back "
            "before"
        )
        if report.in_progress:
            print(
                f"  {len(report.in_progress)} being sent back by another run (claimed "
                f"under a minute ago): {', '.join(report.in_progress)}"
            )
        for ident, size in report.without_headers.items():
            print(f"  {ident} sent back without its own headers ({size} bytes: not kept)")
        unconfirmed = "not confirmed (a later run sends it only if it is not in its topic)"
        for what, found in (
            ("cannot be sent back", report.unsendable),
            ("failed (to try again later)", report.failed),
            (unconfirmed, report.unconfirmed),
        ):
            for ident, why in found.items():
                print(f"  {ident} {what}: {why}")
    return 1 if report.failed or report.unconfirmed or report.in_progress else 0


def run_snapshots(args: argparse.Namespace) -> int:
    from streamer.snapshot import SnapshotStore

    settings = Settings.from_env()
    store = SnapshotStore(settings.snapshot_path)
    fingerprint = settings.model_fingerprint()
    rows = []
    for snap in store.list():
        try:
            size = snap.path.stat().st_size
        except OSError:  # (a worker pruned it meanwhile)
            continue
        rows.append(
            {
                "file": str(snap.path),
                "created": snap.created,
                "age_s": round(time.time() - snap.created, 1),
                "bytes": size,
                "partitions": sorted(snap.offsets),
                "offsets": {str(p): o for p, o in sorted(snap.offsets.items())},
                "same_settings": snap.fingerprint == fingerprint,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no snapshots in {store.directory}")
        return 0
    print(f"{len(rows)} snapshot(s) in {store.directory}, newest first:")
    for row in rows:
        settings_note = "" if row["same_settings"] else "  (other model settings: not used)"
        print(
            f"  {Path(row['file']).name}  {row['age_s']:,.0f} s old  "
            f"{row['bytes'] / 1e6:,.1f} MB  partitions {row['partitions']}  "
            f"{sum(row['offsets'].values()):,} offsets{settings_note}"
        )
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from streamer.dashboard import serve

    settings = Settings.from_env()
    port = settings.dashboard_port if args.port is None else args.port

    async def main() -> None:
        runner, url = await serve(settings, args.host, port)
        print(
            f"dashboard at {url} (reads {redacted_url(settings.redis_url)}, prefix "
            f"{settings.key_prefix!r}); Ctrl-C stops it",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        return fail(f"cannot serve the dashboard on {args.host}:{port}: {exc}")
    return 0
