#!/usr/bin/env bash
# The README's main command: installs the project, then runs `recsys-online demo`
# (starts Kafka and Redis, replays a synthetic stream test-then-train, stops them).
# Extra arguments go to `recsys-online demo`, e.g. `bash scripts/demo.sh --ratings 200000`.
set -euo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# shellcheck source=python.sh
source scripts/python.sh # PYTHON: python3, or a .venv where the system's refuses pip

echo "== installing recsys-online ($PYTHON -m pip install -e .) ==" >&2
# pip's own lines are the progress of this step (a fresh machine downloads the wheels).
# With pipefail, a failing pip still stops the script; grep only filters its lines.
"$PYTHON" -m pip install -e . </dev/null \
  | { grep -E '^(Collecting|Installing|Successfully)' >&2 || true; }
exec "$PYTHON" -m streamer.cli demo "$@"
