#!/usr/bin/env bash
# .venv-redteam: IBM ART + numpy/scipy/scikit-learn/matplotlib for bench/redteam (make redteam,
# and the short run in make test). Its own venv, like .venv-model: the attacks need scientific
# Python that the service does not. Rebuilt only when bench/redteam/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
sum=$(sha256sum < bench/redteam/requirements.txt | cut -c1-16)
if [ -f .venv-redteam/.stamp ] && [ "$(cat .venv-redteam/.stamp)" = "$sum" ]; then
  exit 0
fi
echo "redteam_venv: creating .venv-redteam (IBM ART)"
"$PYTHON" -m venv .venv-redteam
.venv-redteam/bin/pip install -q --upgrade pip
.venv-redteam/bin/pip install -q -r bench/redteam/requirements.txt
echo "$sum" > .venv-redteam/.stamp
