#!/usr/bin/env bash
# The serving-under-load protocol of BENCHMARKS.md ("Serving under load"): serve, measure
# the closed-loop capacity at fp32 (the best of 8, 16 and 32 clients), then 60 s of
# Poisson arrivals with 500 ms deadlines at 0.5x, 1.25x, 1.5x and 2x of it, precision
# auto and then fixed fp32 at each, and 60 s at 2x straight into 30 s at 0.5x. One JSON
# report per point in OUT; loopback only; the server is stopped at the end.
#
#   scripts/overload_points.sh OUT PORT "SERVE ARGS" ["AUTO ARGS"] ["LOADTEST ARGS"]
#   scripts/overload_points.sh /tmp/points 8781 "--models alexnet --random-weights --precisions fp32,fp16,int8"
#   scripts/overload_points.sh /tmp/moe 8782 "--models fashion-moe --precisions fp32,fp16,int8" "--k auto" "--images fashion-mnist"
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 port=$2 serve=$3 auto=${4:-} images=${5:-}
mkdir -p "$out"
# shellcheck disable=SC2086  # the argument strings are word lists
.venv/bin/moe-alexnet serve --host 127.0.0.1 --port "$port" $serve >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
until curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "the server exited: see $out/serve.log" >&2; exit 1; }
    sleep 1
done
# shellcheck disable=SC2086
lt() { .venv/bin/python scripts/loadtest.py --url "http://127.0.0.1:$port" --server-pid $pid --json $images "$@"; }
rate() { python3 -c "print(round($1 * $2, 1))"; }
for c in 8 16 32; do lt -n 600 -c $c --precision fp32 >"$out/capacity-c$c.json"; done
cap=$(python3 -c "import json; print(max(json.load(open('$out/capacity-c%d.json' % c))['throughput_rps'] for c in (8, 16, 32)))")
echo "fp32 capacity: $cap req/s"
for m in 0.5 1.25 1.5 2; do
    # shellcheck disable=SC2086
    lt --rate "$(rate "$cap" $m)" --duration 60 --deadline-ms 500 --precision auto $auto --seed 1 >"$out/auto-$m.json"
    lt --rate "$(rate "$cap" $m)" --duration 60 --deadline-ms 500 --precision fp32 --seed 1 >"$out/fp32-$m.json"
    echo "${m}x done"
done
# shellcheck disable=SC2086
lt --rate "$(rate "$cap" 2),$(rate "$cap" 0.5)" --duration 60,30 --deadline-ms 500 --precision auto $auto --seed 2 >"$out/drop.json"
echo "reports in $out"
