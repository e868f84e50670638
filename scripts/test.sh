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
log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo test --workspace 2>&1 | tee "$log"
# Sums a count ("passed", "failed", "ignored") over the libtest summary lines of a log.
sum() { awk -v k="$2" '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" k) s += $(i - 1) } END { print s + 0 }' "$1"; }
main_ignored=$(sum "$log" ignored)
: > "$log.ext"

skipped=()
external() { # external <tool> <test-name filter>
  if command -v "$1" >/dev/null 2>&1; then
    echo "== external tests '$2' (with $(command -v "$1"))"
    cargo test --workspace -- --ignored "$2" 2>&1 | tee -a "$log.ext"
  else
    echo "!! SKIPPED external tests '$2': $1 is not installed" >&2
    skipped+=("$2")
  fi
}
external moto_server external::s3_
external moto_server outage::s3_
external promtool external::promtool_
external promtool manifests::promtool_
external kubernetes-validate manifests::kubernetes_validate_
external prometheus external::a_real_prometheus
if [ "$(id -u)" = 0 ]; then
  external mount full_disk::
else
  echo "!! SKIPPED external tests 'full_disk::': mounting a tmpfs needs root" >&2
  skipped+=("full_disk::")
fi
# The Kubernetes test bed: network namespaces need root; Spark on it needs Java and pyspark too.
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  external ip bed_pods::
  if command -v java >/dev/null 2>&1; then
    external spark-submit bed_spark::
    external spark-submit bed_submit::
  else
    echo "!! SKIPPED external tests 'bed_spark::' and 'bed_submit::': java is not installed" >&2
    skipped+=("bed_spark::" "bed_submit::")
  fi
else
  echo "!! SKIPPED external tests 'bed_pods::', 'bed_spark::' and 'bed_submit::': the test bed needs root and ip netns" >&2
  skipped+=("bed_pods::" "bed_spark::" "bed_submit::")
fi
if command -v java >/dev/null 2>&1; then
  external spark-submit spark_e2e::
else
  echo "!! SKIPPED external tests 'spark_e2e::': java is not installed" >&2
  skipped+=("spark_e2e::")
fi

if [ ${#skipped[@]} -gt 0 ]; then
  echo "!! ${#skipped[@]} external test group(s) SKIPPED for missing components: ${skipped[*]}" >&2
fi

# One closing line over every run: tests that ran, and ignored tests that never ran (skipped).
passed=$(( $(sum "$log" passed) + $(sum "$log.ext" passed) ))
failed=$(( $(sum "$log" failed) + $(sum "$log.ext" failed) ))
ran_ext=$(( $(sum "$log.ext" passed) + $(sum "$log.ext" failed) ))
rm -f "$log.ext"
echo "tests: $passed passed, $failed failed, $(( main_ignored - ran_ext )) skipped"
