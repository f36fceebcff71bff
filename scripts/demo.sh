#!/usr/bin/env bash
# The README's main command: installs the project, then runs `recsys-online demo`
# (starts Kafka and Redis, replays a synthetic stream test-then-train, stops them).
# Extra arguments go to `recsys-online demo`, e.g. `bash scripts/demo.sh --ratings 200000`.
set -euo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PYTHON=${PYTHON:-python3}

echo "== installing recsys-online ($PYTHON -m pip install -e .) ==" >&2
"$PYTHON" -m pip install -q -e . </dev/null
exec "$PYTHON" -m streamer.cli demo "$@"
