#!/usr/bin/env bash
# Real Firecracker clients from PyPI against squib: firecracker-python (any Python >= 3.8) and
# pyrecracker (Python >= 3.12). Builds squib and the test guest, creates/updates one venv per
# interpreter under the cargo target dir (target/python-venv-<ver>/), installs the pins from
# tests/python/requirements-*.txt and runs pytest with each interpreter.
#
#   bash tests/python/run.sh [pytest args...]
#
# Env: PYTHON (default python3) is the base interpreter; SQUIB_PY312 forces the >= 3.12 one.
# Under CI=true a missing Python >= 3.12 is a failure; elsewhere the pyrecracker run is skipped
# with a loud warning. Exits non-zero if anything failed (pytest's "no tests ran", exit 5, too).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/python"
cd "$ROOT"

export SQUIB_ACCEL="${SQUIB_ACCEL:-tcg}"
export PYTHONDONTWRITEBYTECODE=1
failures=()

say() { printf '== tests/python: %s\n' "$*" >&2; }

cargo build -p squib || { say "cargo build -p squib failed"; exit 1; }
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')" \
  || { say "cargo metadata failed"; exit 1; }
export SQUIB_BIN="$TARGET_DIR/debug/squib"
[[ -x "$SQUIB_BIN" ]] || { say "no squib binary at $SQUIB_BIN"; exit 1; }
bash guest/build.sh --print-paths || { say "guest/build.sh failed"; exit 1; }

# version_of PYTHON -> "3.12" (empty when the interpreter does not run, e.g. an inactive pyenv shim)
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

at_least_312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_py312() {
  local candidates=()
  [[ -n "${SQUIB_PY312:-}" ]] && candidates+=("$SQUIB_PY312")
  candidates+=(python3.12 python3.13 python3.14)
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root)"
    candidates+=("$root"/versions/3.12*/bin/python3 "$root"/versions/3.13*/bin/python3 "$root"/versions/3.1[4-9]*/bin/python3)
  fi
  local c
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && at_least_312 "$c"; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

# venv PYTHON REQUIREMENTS -> prints the venv's python; (re)creates the venv when its interpreter
# version changed and reinstalls when the requirements changed.
venv() {
  local base="$1" req="$2" ver dir stamp want
  ver="$(version_of "$base")" || return 1
  dir="$TARGET_DIR/python-venv-$ver"
  if [[ ! -x "$dir/bin/python" || "$(version_of "$dir/bin/python")" != "$ver" ]]; then
    rm -rf "$dir"
    "$base" -m venv "$dir" >&2 || return 1
  fi
  stamp="$dir/.requirements-stamp"
  want="$(basename "$req") $(cat "$HERE"/requirements-*.txt | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    rm -f "$stamp"
    "$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2 || return 1
    echo "$want" >"$stamp"
  fi
  echo "$dir/bin/python"
}

# run_pytest NAME PYTHON TEST_FILES...
run_pytest() {
  local name="$1" py="$2"; shift 2
  say "pytest ($name, $("$py" --version 2>&1)): $*"
  local status=0
  (cd "$HERE" && "$py" -m pytest -p no:cacheprovider -v -rs "$@" "${PYTEST_ARGS[@]}") || status=$?
  if [[ $status -eq 5 ]]; then
    say "$name: pytest collected no tests (exit 5): counted as a failure"
  fi
  if [[ $status -ne 0 ]]; then
    failures+=("$name (pytest exit $status)")
  fi
}

PYTEST_ARGS=("$@")

# 1. The default interpreter: firecracker-python.
BASE="${PYTHON:-python3}"
if py="$(venv "$BASE" "$HERE/requirements-firecracker-python.txt")"; then
  run_pytest "firecracker-python on $(version_of "$BASE")" "$py" test_firecracker_python.py
else
  failures+=("venv for $BASE")
fi

# 2. Python >= 3.12: pyrecracker, and firecracker-python once more on the newer interpreter.
if PY312="$(find_py312)"; then
  files=(test_pyrecracker.py test_firecracker_python.py)
  if [[ "$(version_of "$PY312")" == "$(version_of "$BASE")" ]]; then
    say "the default interpreter is already $(version_of "$BASE"): firecracker-python ran on it above"
    files=(test_pyrecracker.py)
  fi
  if py="$(venv "$PY312" "$HERE/requirements-pyrecracker.txt")"; then
    run_pytest "${files[*]} on $(version_of "$PY312")" "$py" "${files[@]}"
  else
    failures+=("venv for $PY312")
  fi
else
  msg="no Python >= 3.12 found (python3.12/3.13 on PATH, pyenv versions, \$SQUIB_PY312): the pyrecracker tests did NOT run"
  if [[ "${CI:-}" == "true" ]]; then
    failures+=("$msg")
  else
    printf '\n%s\n!!! %s\n%s\n\n' "$(printf '!%.0s' {1..78})" "$msg" "$(printf '!%.0s' {1..78})" >&2
  fi
fi

if [[ ${#failures[@]} -gt 0 ]]; then
  say "FAILED:"
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
say "all passed"
