"""The ``recsys-online`` command: services, demo, worker, the core's replay and synth, and
the users' produce, stream, recs, metrics and dashboard (``streamer.commands``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from recsys_online import cli as core_cli
from streamer import commands as user_commands
from streamer.settings import SettingsError

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr and exit status 2, as every other bad input
    of the commands (argparse prints its whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (--help: the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        help="services, a worker, a synthetic stream into Kafka, live metrics and lists",
    )
    demo.add_argument("--ratings", type=core_cli.positive_int, default=20_000)
    demo.add_argument(
        "--rate", type=core_cli.positive_float, default=1_000.0, help="ratings per second"
    )
    demo.add_argument("--keep-services", action="store_true", help="leave Kafka/Redis running")
    demo.add_argument(
        "--then",
        choices=["wait", "exit"],
        default=None,
        help="after the stream: keep the worker and dashboard up until Ctrl-C (wait; the "
        "default in a terminal) or stop everything (exit; the default otherwise)",
    )
    demo.set_defaults(run=run_demo)
    worker = sub.add_parser("worker", help="run a streaming worker (settings: RECSYS_* env)")
    worker.add_argument(
        "--loglevel",
        default="info",
        type=lambda level: {"warn": "warning", "fatal": "critical"}.get(
            level.lower(), level.lower()
        ),
        choices=["critical", "error", "warning", "info", "debug"],
        help="default info",
    )
    worker.set_defaults(run=run_worker)
    core_cli.add_commands(sub)
    user_commands.add_commands(sub)
    return parser


def run_worker(args: argparse.Namespace) -> int:
    from recsys_online.runtime import limit_blas_threads, tune_gc
    from streamer.app import run_worker as run
    from streamer.settings import Settings

    limit_blas_threads()
    settings = Settings.from_env()
    tune_gc(settings.gc_young)
    run(settings, loglevel=args.loglevel)
    return 0


def run_services(args: argparse.Namespace) -> int:
    if not _have_scripts("services"):
        return 2
    return subprocess.call(["bash", str(SERVICES), args.action, *args.extra])


def _have_scripts(command: str) -> bool:
    """The project's scripts ship with a source checkout, not with the package."""
    if SERVICES.is_file():
        return True
    print(
        f"recsys-online {command}: needs a source checkout ({SERVICES} not found): clone "
        "the project and install it with `pip install -e .` there",
        file=sys.stderr,
    )
    return False


def run_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo as demo

    if not _have_scripts("demo"):
        return 2

    wait = args.then == "wait" if args.then else sys.stdin.isatty()
    return demo(args.ratings, args.rate, args.keep_services, wait)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SettingsError as exc:  # a RECSYS_* variable the command cannot run with
        print(f"recsys-online {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; then ended by SIGINT
        print(f"\nrecsys-online {args.command}: interrupted", file=sys.stderr)
        # (as a shell loop running the command needs to see it, to stop too)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BrokenPipeError:  # output piped into `head`, which stopped reading: no traceback
        with contextlib.suppress(AttributeError, OSError, ValueError):  # (nor at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # (as a shell reports a process a SIGPIPE stopped)


if __name__ == "__main__":
    sys.exit(main())
