#!/usr/bin/env bash
# The project's test command (README "Test"; .ci/run runs it too).
#
# 1. Installs the external test components (scripts/test-deps.sh).
# 2. Runs every unit and integration test of the workspace.
# 3. Runs the tests that need an external component, one group per component, only where the
#    component is present; a missing component is announced loudly and its tests stay counted
#    as ignored (skipped), never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh
export PATH="$PWD/.venv/bin:$PATH"

cargo test --workspace

skipped=()
external() { # external <tool> <test-name filter>
  if command -v "$1" >/dev/null 2>&1; then
    echo "== external tests '$2' (with $(command -v "$1"))"
    cargo test --workspace -- --ignored "$2"
  else
    echo "!! SKIPPED external tests '$2': $1 is not installed" >&2
    skipped+=("$2")
  fi
}
external moto_server external::s3_
external promtool external::promtool_
external prometheus external::a_real_prometheus

if [ ${#skipped[@]} -gt 0 ]; then
  echo "!! ${#skipped[@]} external test group(s) SKIPPED for missing components: ${skipped[*]}" >&2
fi
