#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-afl, which builds its own AFL++) of every decoder that takes
# bytes from the network or a file: Spark frames and messages, SASL, index files, ids, and the
# init-container's archive extraction. Targets are in fuzz/src/lib.rs.
#
# 1. Replays the checked-in corpus (fuzz/corpus/<target>/, findings included) through every
#    target in a debug build, overflow checks on: the regression test of every finding.
# 2. Builds the targets with AFL instrumentation and fuzzes each for FUZZ_SECONDS (default 20),
#    starting from the corpus; prints executions, new inputs and crashes per target, and fails
#    when a crash is found (the inputs are kept under fuzz/out/<target>/default/crashes).
#
# Usage: scripts/fuzz.sh [TARGET...]     (FUZZ_SECONDS=300 scripts/fuzz.sh archive)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_AFL_VERSION="0.18.2"
seconds="${FUZZ_SECONDS:-20}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spark_frames spark_messages spark_crypto sasl index_file archive ids grpc_requests v0_upload checksum_files)

echo "== fuzz: corpus replay"
cargo test --locked --test corpus 2>&1 | grep -E "^test |panicked|error" || true
cargo test --locked --test corpus -q >/dev/null 2>&1 || { echo "fuzz: corpus replay FAILED"; exit 1; }

if ! cargo afl --version 2>/dev/null | grep -q "$CARGO_AFL_VERSION"; then
  echo "== fuzz: installing cargo-afl $CARGO_AFL_VERSION (builds AFL++)"
  cargo install --locked cargo-afl --version "$CARGO_AFL_VERSION" >/tmp/fuzz-install.log 2>&1 \
    || { echo "fuzz: cargo install cargo-afl failed (see /tmp/fuzz-install.log)"; exit 1; }
fi
echo "== fuzz: building the targets with AFL instrumentation"
cargo afl build --locked --release --features afl >/tmp/fuzz-build.log 2>&1 \
  || { tail -20 /tmp/fuzz-build.log; exit 1; }

rm -rf out && mkdir -p out
crashed=0
for t in "${targets[@]}"; do
  # AFL_NO_UI: plain log lines; the core-pattern and CPU-governor checks are for dedicated
  # fuzzing machines, not a bounded CI run.
  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 \
    timeout $((seconds + 60)) cargo afl fuzz -i "corpus/$t" -o "out/$t" -V "$seconds" \
    "target/release/$t" >"out/$t.log" 2>&1 || true
  stats="out/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "fuzz $t: did not run (see fuzz/out/$t.log)"; tail -5 "out/$t.log"; exit 1
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
