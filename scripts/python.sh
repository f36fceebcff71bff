# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run: sets PYTHON to an interpreter
# pip may install into. That is $PYTHON if set, else python3, unless python3 belongs to
# the system (PEP 668 "externally managed", as Debian's own Python is) or has no pip:
# then a virtual environment in .venv, made once (python3-venv comes from apt if missing).

python_can_install() { # the interpreter has pip and is not externally managed
  "$1" -m pip --version >/dev/null 2>&1 || return 1
  "$1" - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(1 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 0)
PY
}

if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  if [[ -x .venv/bin/python ]] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    echo "== .venv has no pip (a run stopped while making it): making it again ==" >&2
    rm -rf .venv
  fi
  if [[ -x .venv/bin/python ]]; then
    PYTHON=$PWD/.venv/bin/python
  elif ! python_can_install python3; then
    echo "== python3 is the system's (or has no pip): making a virtual environment in .venv ==" >&2
    if ! python3 -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      sudo=()
      [[ $(id -u) -ne 0 ]] && sudo=(sudo)
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends python3-venv python3-pip >&2
      python3 -m venv .venv
    fi
    PYTHON=$PWD/.venv/bin/python
  fi
fi
export PYTHON
