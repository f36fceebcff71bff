"""Export the wire events' JSON Schemas to ``schemas/json/`` for producers in any language.

Run ``python -m schemas.export`` after changing a model, and commit the files it writes;
``python -m schemas.export --check`` exits with status 1 when the files on disk are stale.
The schemas describe what a producer may send (pydantic's validation mode). Rules that depend on
the consumer are left to its validation: the rating scale and the future-timestamp bound.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from schemas.events import EVENT_TYPES, WireEvent

SCHEMA_DIR = Path(__file__).resolve().parent / "json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_filename(event_type: type[WireEvent]) -> str:
    """File name of an event's schema, e.g. ``rating_event.schema.json``.

    Examples
    --------
    >>> from schemas.events import RatingEvent
    >>> schema_filename(RatingEvent)
    'rating_event.schema.json'
    """
    return f"{event_type.kind}_event.schema.json"


def render_schema(event_type: type[WireEvent]) -> str:
    """An event's JSON Schema as pretty JSON with sorted keys and a trailing newline."""
    schema = {"$schema": JSON_SCHEMA_DIALECT, **event_type.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render_schemas() -> dict[str, str]:
    """Every event's schema text by file name.

    Examples
    --------
    >>> sorted(render_schemas())
    ['item_event.schema.json', 'rating_event.schema.json', 'user_event.schema.json']
    """
    return {schema_filename(event_type): render_schema(event_type) for event_type in EVENT_TYPES}


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files in ``directory`` that are missing or differ from the models."""
    stale = []
    for name, text in render_schemas().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every event's schema into ``directory`` (created if needed), returning the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_schemas().items():
        path = directory / name
        with path.open("w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the schemas, or with ``--check`` report stale ones (status 1)."""
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    parser.add_argument("--directory", type=Path, default=SCHEMA_DIR, help=f"default: {SCHEMA_DIR}")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_schemas(args.directory)
        for name in stale:
            print(f"stale: {args.directory / name} (run python -m schemas.export)")
        return 1 if stale else 0
    for path in write_schemas(args.directory):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
