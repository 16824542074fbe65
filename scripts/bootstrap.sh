#!/usr/bin/env bash
# Installs whatever this machine lacks, and nothing it already has:
#   .venv/        the project (pip install -e .[dev])
#   .venv-model/  MLServer + scikit-learn (its own venv: xds-protos' bundled protos break MLServer)
#   redis-server  from Debian (apt-get, when root)
#   opa           pinned, `go install` into ./bin when `opa` is not on PATH
set -euo pipefail
cd "$(dirname "$0")/.."

OPA_VERSION="v1.22.0"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "bootstrap: Python 3.11 is required (set PYTHON=...)" >&2; exit 1; }

say() { printf 'bootstrap: %s\n' "$*"; }

# A stamp per venv remembers which requirement files it was built from.
venv_current() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

main_sum=$(cat pyproject.toml | sha256sum | cut -c1-16)
if ! venv_current .venv "$main_sum"; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$main_sum" > .venv/.stamp
fi

model_sum=$(cat modelserver/requirements.txt | sha256sum | cut -c1-16)
if ! venv_current .venv-model "$model_sum"; then
  say "creating .venv-model (MLServer)"
  "$PYTHON" -m venv .venv-model
  .venv-model/bin/pip install -q --upgrade pip
  .venv-model/bin/pip install -q -r modelserver/requirements.txt
  echo "$model_sum" > .venv-model/.stamp
fi

need_apt=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (Debian: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi
# Debian's package starts a system redis on 6379; ours runs on its own port, so that one is left alone.

if ! command -v opa >/dev/null 2>&1 && [ ! -x bin/opa ]; then
  command -v go >/dev/null 2>&1 || { echo "bootstrap: OPA needs Go to install (or put opa $OPA_VERSION on PATH)" >&2; exit 1; }
  say "go install opa@$OPA_VERSION into ./bin (a few minutes the first time)"
  GOBIN="$PWD/bin" GOFLAGS=-buildvcs=false go install "github.com/open-policy-agent/opa@$OPA_VERSION"
fi
opa_bin=$(command -v opa 2>/dev/null || echo bin/opa)
bash scripts/check_opa_version.sh "$opa_bin" "$OPA_VERSION" || true  # a warning, not a stop
say "ready"
