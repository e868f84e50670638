#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-afl, which builds its own AFL++) of every decoder that takes
# bytes from the network or a file: Spark frames and messages, SASL, index files, ids, and the
# init-container's archive extraction. Targets are in fuzz/src/lib.rs.
#
# 1. Replays the checked-in corpus (fuzz/corpus/<target>/, findings included) through every
#    target in a debug build, overflow checks on: the regression test of every finding (the
#    same test runs with the rest of the workspace's tests in scripts/test.sh).
# 2. Builds the targets with AFL instrumentation and fuzzes each for FUZZ_SECONDS (default 20),
#    starting from the corpus; prints executions, new inputs and crashes per target, and fails
#    when a crash is found (the inputs are kept under fuzz/out/<target>/default/crashes).
#
# The instrumented build goes to FUZZ_TARGET_DIR, by default a cache outside the checkout
# (~/.cache/spark-k8s-services/afl-target): every dependency is rebuilt with AFL's flags, which
# takes minutes, and a later run of any checkout on the same machine rebuilds only the
# project's own crates. The cache is emptied when it outgrows FUZZ_CACHE_MAX_MB (default 8192).
#
# Usage: scripts/fuzz.sh [TARGET...]     (FUZZ_SECONDS=300 scripts/fuzz.sh archive)
#        FUZZ_SKIP_REPLAY=1 skips step 1 (.ci/run: scripts/test.sh runs the replay).
#        FUZZ_BUILD_NICE=19 builds (cargo-afl and the targets) at that niceness (.ci/run: the
#        build takes only the CPU the rest of CI leaves; the fuzzing itself runs at the normal
#        priority, so that its time budget buys the same executions).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_AFL_VERSION="0.18.2"
seconds="${FUZZ_SECONDS:-20}"
cache="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-k8s-services/afl-target}"
cache_max_mb="${FUZZ_CACHE_MAX_MB:-8192}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spark_frames spark_messages spark_crypto sasl index_file archive ids grpc_requests v0_upload checksum_files)

if [ -z "${FUZZ_SKIP_REPLAY:-}" ]; then
  echo "== fuzz: corpus replay"
  cargo test --locked -p fuzz --test corpus 2>&1 | grep -E "^test |panicked|error" || true
  cargo test --locked -p fuzz --test corpus -q >/dev/null 2>&1 || { echo "fuzz: corpus replay FAILED"; exit 1; }
fi

if ! cargo afl --version 2>/dev/null | grep -q "$CARGO_AFL_VERSION"; then
  echo "== fuzz: installing cargo-afl $CARGO_AFL_VERSION (builds AFL++)"
  nice -n "${FUZZ_BUILD_NICE:-0}" \
    cargo install --locked cargo-afl --version "$CARGO_AFL_VERSION" >/tmp/fuzz-install.log 2>&1 \
    || { echo "fuzz: cargo install cargo-afl failed (see /tmp/fuzz-install.log)"; exit 1; }
fi
if [ -d "$cache" ] && [ "$(du -sm "$cache" | cut -f1)" -gt "$cache_max_mb" ]; then
  echo "== fuzz: emptying $cache (over ${cache_max_mb} MB)"
  rm -rf "$cache"
fi
mkdir -p "$cache"
echo "== fuzz: building the targets with AFL instrumentation (in $cache)"
start=$(date +%s)
nice -n "${FUZZ_BUILD_NICE:-0}" \
  cargo afl build --locked --release -p fuzz --features afl --bins --target-dir "$cache" >/tmp/fuzz-build.log 2>&1 \
  || { tail -20 /tmp/fuzz-build.log; exit 1; }
echo "fuzz: built in $(( $(date +%s) - start )) s"

rm -rf out && mkdir -p out
crashed=0
for t in "${targets[@]}"; do
  # AFL_NO_UI: plain log lines; the core-pattern and CPU-governor checks are for dedicated
  # fuzzing machines, not a bounded CI run.
  # On a loaded machine (the tests run beside it in CI) the fork server may start slowly and a
  # seed may exceed its time on the dry run: the start gets a minute, and a seed that times out
  # then is skipped (`-t 1000+`) instead of aborting the run; hangs found later still count.
  # A run that does not start is tried once more.
  for attempt in 1 2; do
    rm -rf "out/$t"
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
      AFL_NO_AFFINITY=1 AFL_FORKSRV_INIT_TMOUT=60000 \
      timeout $((seconds + 120)) cargo afl fuzz -t 1000+ -i "corpus/$t" -o "out/$t" -V "$seconds" \
      "$cache/release/$t" >"out/$t.log" 2>&1 || true
    [ -f "out/$t/default/fuzzer_stats" ] && break
  done
  stats="out/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "fuzz $t: did not run (fuzz/out/$t.log):"
    grep -a -E "PROGRAM ABORT|Location|ERROR|failed" "out/$t.log" | sed 's/\x1b\[[0-9;]*m//g' | head -10
    exit 1
  fi
  val() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
  echo "fuzz $t: $(val execs_done) executions in $(val run_time) s, corpus $(val corpus_count) inputs, $(val saved_crashes) crashes, $(val saved_hangs) hangs"
  if [ "$(val saved_crashes)" != "0" ]; then
    crashed=1
    ls "out/$t/default/crashes" | grep -v README || true
  fi
done
[ "$crashed" = 0 ] || { echo "fuzz: crashes found; inputs under fuzz/out/*/default/crashes"; exit 1; }
echo "fuzz: no crash in ${#targets[@]} targets"
