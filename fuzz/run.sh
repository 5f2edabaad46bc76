#!/usr/bin/env bash
# Builds the C fuzz targets with clang's libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer
# (Debian's clang + libclang-rt-14-dev) and runs each for SECONDS (default 60) from its corpus in
# fuzz/corpus/<target>. A crash, leak, sanitizer report or hang fails the run and leaves the input
# in build/fuzz/<target>/. CI runs `bash fuzz/run.sh 60`; longer runs: `bash fuzz/run.sh 1800`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
mkdir -p "$OUT"
SRC=$(ls engine/kernels/*.c engine/model/*.c)
FLAGS=(-g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
       -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -DKLE_NO_THREADS -I engine/include)
$CC "${FLAGS[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=address,undefined}" fuzz/make_seeds.c $SRC -lm -o "$OUT/make_seeds"
mkdir -p fuzz/corpus/session_blob fuzz/corpus/tensor_table
"$OUT/make_seeds" fuzz/corpus/session_blob
for t in session_blob tensor_table; do
  $CC "${FLAGS[@]}" fuzz/$t.c $SRC -lm -o "$OUT/$t.fuzz"
  mkdir -p "$OUT/$t/new"
  # new inputs go to build/; the committed corpus is only read (merge it by hand to keep finds)
  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$OUT/$t.fuzz" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      -artifact_prefix="$OUT/$t/" -print_final_stats=1 "$OUT/$t/new" fuzz/corpus/$t > "$OUT/$t.log" 2>&1 || true
  grep -q "Done [0-9]* runs" "$OUT/$t.log" || { tail -n 40 "$OUT/$t.log" >&2; echo "fuzz target $t did not finish cleanly" >&2; exit 1; }
  echo "$t: $(grep -E '^#[0-9]+' "$OUT/$t.log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+') $(grep -E '^(Done|stat::average_exec_per_sec)' "$OUT/$t.log" | tr '\n' ' ')"
done
echo "fuzz: every target ran $SECONDS_EACH s with no crash, leak, sanitizer report or hang"
