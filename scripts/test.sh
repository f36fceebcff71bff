#!/usr/bin/env bash
# The README's test command: installs the project, starts the real Kafka and Redis
# (scripts/services.sh), runs the whole test suite against them, and stops the services
# it started. Extra arguments go to pytest, e.g. `bash scripts/test.sh -x -k schemas`.
# Exits with pytest's status, and non-zero when pytest collects no tests.
set -euo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# shellcheck source=python.sh
source scripts/python.sh # PYTHON: python3, or a .venv where the system's refuses pip

T0=$SECONDS
step() { printf '\n== %s == (+%ds)\n' "$*" $((SECONDS - T0)) >&2; }

STARTED=() # the services this run started, and stops at its end
cleanup() {
  local rc=$?
  if ((${#STARTED[@]})); then
    step "stop services: ${STARTED[*]}"
    scripts/services.sh down "${STARTED[@]}" </dev/null ||
      echo "warning: scripts/services.sh down failed" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "install: $PYTHON -m pip install -e '.[dev]'"
"$PYTHON" -m pip install -q -e '.[dev]' </dev/null

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && -n "${REDIS_URL:-}" ]]; then
  step "services: using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS REDIS_URL=$REDIS_URL"
  # Tests that start a broker or a Redis of their own run them from these (fetched now,
  # not during the tests).
  scripts/services.sh install </dev/null
else
  step "start services: scripts/services.sh up"
  # Only what is down now is this run's to stop (set first: a half-started `up` is
  # stopped too); a service already up (another terminal, a demo) is left running.
  before=$(scripts/services.sh status 2>/dev/null || true)
  grep -q '^kafka: up' <<<"$before" || STARTED+=(kafka)
  grep -q '^redis: up' <<<"$before" || STARTED+=(redis)
  # `eval "$(scripts/services.sh up)"` would hide a failing `up` (eval of nothing succeeds).
  services_env=$(scripts/services.sh up </dev/null)
  eval "$services_env"
fi

step "browser for the dashboard test: scripts/services.sh browser"
browser_env=$(scripts/services.sh browser </dev/null)
eval "$browser_env"

step "test: $PYTHON -m pytest $*"
rc=0
"$PYTHON" -m pytest "$@" </dev/null || rc=$?
if ((rc == 5)); then
  echo "ERROR: pytest collected no tests (exit code 5)" >&2
  exit 1
fi
exit "$rc"
