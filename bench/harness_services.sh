#!/usr/bin/env bash
# The benchmark harness (init, works import, scan --no-embedder, score) with
# nothing shared through DATA_DIR: PostgreSQL + an S3 server (moto_server on
# 127.0.0.1) + [shared] kind = "services".
#
#   bench/harness_services.sh BENCH_DIR OUT_DIR
#
# BENCH_DIR is a split built by ../shared/bench/make.sh (works.jsonl,
# uploads.jsonl); OUT_DIR receives pred.jsonl, the scores and the logs. Needs
# the test install (moto_server) and a PostgreSQL at 127.0.0.1:5432 (user
# postgres; PGURL overrides the server URL). The database "artbench" is
# dropped and created again.
set -euo pipefail
BENCH=$1
OUT=$2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${VIRTUAL_ENV:-$HERE/.venv}/bin"
PGURL=${PGURL:-postgresql+psycopg://postgres@127.0.0.1:5432}
PORT=${S3_PORT:-9733}
mkdir -p "$OUT"
rm -rf "$OUT/data"
"$BIN/moto_server" -H 127.0.0.1 -p "$PORT" > "$OUT/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO' EXIT
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
"$BIN/python" - "$PORT" "$PGURL" <<'PY'
import sys

import boto3
from sqlalchemy import create_engine, text

boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}").create_bucket(Bucket="bench")
with create_engine(f"{sys.argv[2]}/postgres", isolation_level="AUTOCOMMIT").connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS artbench"))
    c.execute(text("CREATE DATABASE artbench"))
PY
export ARTWATCH_DATA_DIR="$OUT/data"
export ARTWATCH_DATABASE_URL="$PGURL/artbench"
export ARTWATCH_BLOBS__KIND=s3 ARTWATCH_BLOBS__URL=s3://bench/artwatch ARTWATCH_BLOBS__ENDPOINT_URL=http://127.0.0.1:$PORT
export ARTWATCH_SHARED__KIND=services
# No Qdrant server in this harness: the descriptor's vectors would need one in "services" mode.
export ARTWATCH_MATCHING__DESCRIPTOR=""
"$BIN/artwatch" init
time "$BIN/artwatch" works import "$BENCH/works.jsonl"
time "$BIN/artwatch" scan --no-embedder --manifest "$BENCH/uploads.jsonl" --out "$OUT/pred.jsonl"
python3 "$HERE/../shared/bench/score.py" "$BENCH" "$OUT/pred.jsonl" | tee "$OUT/score.txt" \
  || echo "score.py not found beside the checkout: score $OUT/pred.jsonl yourself"
echo "files left in DATA_DIR:"
find "$OUT/data" -type f | sed "s|$OUT/data/||" | sort
