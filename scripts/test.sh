#!/usr/bin/env bash
# Install everything, start the real services the tests need, run the whole suite, stop
# the services (also when tests fail). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'

export LEDGER_REQUIRE_SERVICES=1
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

if [ -x scripts/services.sh ]; then
    trap 'bash scripts/services.sh down || true' EXIT
    bash scripts/services.sh up
fi

python3 -m ruff check src tests examples benchmarks
status=0
python3 -m pytest -ra "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
fi
exit "$status"
