#!/usr/bin/env bash
# The project's test command (README "Test"; .ci/run runs it too).
#
# 1. Installs the external test components (scripts/test-deps.sh).
# 2. Runs every test of the workspace in one cargo-nextest run (.config/nextest.toml): each test
#    in its own process, test binaries side by side, the real-Spark groups started first. The
#    tests that need an external component are `#[ignore]`d; each group runs only where its
#    component is present. A missing component is announced loudly and its tests are counted
#    as skipped, never as passed.
# 3. Runs the doc tests (compile_fail checks of the typed ids), which nextest does not run.
# 4. Prints one closing line over both runs: `tests: N passed, N failed, N skipped`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
log=$(mktemp)
trap 'rm -f "$log" "$log.doc"' EXIT

# The external groups: a nextest filterset each, and what it needs.
missing=()
skip() { # skip <filterset> <why>
  echo "!! SKIPPED external tests $1: $2" >&2
  missing+=("$1")
}
# moto runs through scripts/moto-server.py with the Python that kubebed::testing::moto picks.
moto_python="${MOTO_PYTHON:-.venv/bin/python}"
"$moto_python" -c 'import moto.server, moto.s3.responses' >/dev/null 2>&1 || { skip 'test(/^external::s3_/)' "moto is not installed for $moto_python"; skip 'test(/^outage::s3_/)' "moto is not installed for $moto_python"; skip 'test(/^replicated::s3_/)' "moto is not installed for $moto_python"; }
command -v promtool >/dev/null 2>&1 || { skip 'test(/^external::promtool_/)' "promtool is not installed"; skip 'test(/^manifests::promtool_/)' "promtool is not installed"; }
command -v kubernetes-validate >/dev/null 2>&1 || skip 'test(/^manifests::kubernetes_validate_/)' "kubernetes-validate is not installed"
command -v prometheus >/dev/null 2>&1 || skip 'test(/^external::a_real_prometheus/)' "prometheus is not installed"
if [ "$(id -u)" != 0 ]; then
  skip 'test(/^full_disk::/)' "mounting a tmpfs needs root"
fi
# The Kubernetes test bed: network namespaces need root; Spark on it needs Java and pyspark too.
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  if ! command -v java >/dev/null 2>&1 || ! command -v spark-submit >/dev/null 2>&1; then
    skip 'binary_id(e2e::integration)' "java or spark-submit is not installed"
  fi
else
  skip 'test(/^bed_pods::/) | binary_id(e2e::integration)' "the test bed needs root and ip netns"
fi
if ! command -v java >/dev/null 2>&1 || ! command -v spark-submit >/dev/null 2>&1; then
  skip 'test(/^spark_e2e::/)' "java or spark-submit is not installed"
fi

filter='all()'
if [ ${#missing[@]} -gt 0 ]; then
  filter="not ($(IFS='|'; echo "${missing[*]}" | sed 's/|/ | /g'))"
  echo "!! ${#missing[@]} external test group(s) SKIPPED for missing components: ${missing[*]}" >&2
fi

status=0
cargo nextest run --workspace --run-ignored all -E "$filter" 2>&1 | tee "$log" || status=$?
cargo test --workspace --doc 2>&1 | tee "$log.doc" || status=$?

# nextest's summary: "Summary [ 123.456s] 300 tests run: 298 passed, 2 failed, 29 skipped".
count() { # count <word> : that count in nextest's summary line plus the doc tests' result lines
  local n d
  n=$(grep -E '^ *Summary \[' "$log" | tail -1 | grep -oE "[0-9]+ $1" | awk '{ s += $1 } END { print s + 0 }')
  d=$(awk -v k="$1" '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" k) s += $(i - 1) } END { print s + 0 }' "$log.doc")
  echo $(( n + d ))
}
passed=$(count passed)
failed=$(( $(count failed) + $(count "timed out") ))
skipped=$(( $(count skipped) + $(count ignored) ))
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  echo "!! the test run failed before its summary (build error?)" >&2
  failed=1
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
