"""The ``recsys-online`` command: services, demo, and the core's replay and synth."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from recsys_online import cli as core_cli

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-online",
        description="Streaming recommender: Kafka events in, fresh top-K lists in Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    svc = sub.add_parser("services", help="start, stop or check the local Kafka and Redis")
    svc.add_argument("action", choices=["up", "down", "status", "logs"])
    svc.add_argument("extra", nargs="*", help="passed on to scripts/services.sh")
    svc.set_defaults(run=run_services)
    demo = sub.add_parser(
        "demo",
        help="bring the services up, then replay a synthetic stream through the hybrid model",
    )
    demo.add_argument("--ratings", type=int, default=50_000)
    demo.add_argument("--keep-services", action="store_true", help="leave Kafka/Redis running")
    demo.set_defaults(run=run_demo)
    worker = sub.add_parser("worker", help="run a streaming worker (settings: RECSYS_* env)")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(run=run_worker)
    core_cli.add_commands(sub)
    return parser


def run_worker(args: argparse.Namespace) -> int:
    from recsys_online.runtime import limit_blas_threads
    from streamer.app import run_worker as run
    from streamer.settings import Settings

    limit_blas_threads()
    run(Settings.from_env(), loglevel=args.loglevel)
    return 0


def run_services(args: argparse.Namespace) -> int:
    return subprocess.call(["bash", str(SERVICES), args.action, *args.extra])


def run_demo(args: argparse.Namespace) -> int:
    print("== 1/3 starting Kafka and Redis (first run fetches Kafka from Maven Central) ==")
    rc = subprocess.call(["bash", str(SERVICES), "up"], stdout=subprocess.DEVNULL)
    if rc != 0:
        print("recsys-online demo: services failed to start; see the lines above", file=sys.stderr)
        return rc
    try:
        subprocess.call(["bash", str(SERVICES), "status"])
        print(f"\n== 2/3 generating a synthetic stream of {args.ratings:,} ratings ==")
        with tempfile.TemporaryDirectory(prefix="recsys-demo-") as tmp:
            out = Path(tmp)
            parser = build_parser()
            core_args = parser.parse_args(
                ["synth", str(out), "--ratings", str(args.ratings), "--users", "2000"]
            )
            core_args.run(core_args)
            print("\n== 3/3 prequential replay through the hybrid model (test, then train) ==")
            core_args = parser.parse_args(
                ["replay", str(out / "ratings.csv"), "--items", str(out / "items.csv")]
            )
            return core_args.run(core_args)
    finally:
        if not args.keep_services:
            print("\n== stopping Kafka and Redis ==")
            subprocess.call(["bash", str(SERVICES), "down"])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
