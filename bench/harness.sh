#!/usr/bin/env bash
# The benchmark harness on the embedded default: init, works import, then scan
# in the default configuration (local features, PDQ and the SSCD descriptor)
# and with --no-embedder, and score both.
#
#   bench/harness.sh BENCH_DIR OUT_DIR
#
# BENCH_DIR is a split built by ../shared/bench/make.sh (the dev split, or
# bench/heldout/heldout.toml); OUT_DIR receives default.jsonl and none.jsonl,
# their scores, the logs and the wall times (times.txt). OUT_DIR/data is
# the registry (removed first).
set -euo pipefail
BENCH=$1
OUT=$2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${VIRTUAL_ENV:-$HERE/.venv}/bin"
SCORE="$HERE/../shared/bench/score.py"
mkdir -p "$OUT"
rm -rf "$OUT/data"
export ARTWATCH_DATA_DIR="$OUT/data"
step() {  # step NAME COMMAND...: run it, log it, record its wall time
    local name=$1 t0
    shift
    t0=$(date +%s)
    "$@" > "$OUT/$name.log" 2>&1
    echo "$name $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
}
date -u +"start %H:%M:%S UTC" > "$OUT/times.txt"
step init "$BIN/artwatch" init
step import "$BIN/artwatch" works import "$BENCH/works.jsonl"
step scan_default "$BIN/artwatch" scan --manifest "$BENCH/uploads.jsonl" --out "$OUT/default.jsonl"
step scan_none "$BIN/artwatch" scan --no-embedder --manifest "$BENCH/uploads.jsonl" --out "$OUT/none.jsonl"
date -u +"end %H:%M:%S UTC" >> "$OUT/times.txt"
if [ -f "$SCORE" ]; then
    for run in default none; do
        python3 "$SCORE" "$BENCH" "$OUT/$run.jsonl" > "$OUT/score_$run.txt"
        echo "== $run"; sed -n 3,16p "$OUT/score_$run.txt"
    done
else
    echo "score.py not found beside the checkout: score $OUT/default.jsonl and $OUT/none.jsonl yourself"
fi
