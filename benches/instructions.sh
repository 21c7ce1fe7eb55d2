#!/usr/bin/env bash
# CPU per request as a count of instructions, which does not depend on what
# else the machine is doing (wall-clock requests/s on a shared 2-core
# machine drift by 20 % between runs): runs the release ssegate under
# valgrind's callgrind behind h2load, once with REQUESTS keep-alive requests
# and once with none, and prints the difference divided by REQUESTS.
#
#   benches/instructions.sh [h1|h2] [TARGETS] [REQUESTS] [-- extra ssegate flags]
#
#   benches/instructions.sh h1 1 20000          # one upstream target
#   benches/instructions.sh h2 3 20000          # the same upstream three times
#   benches/instructions.sh h1 1 20000 -- --admin 127.0.0.1:0
#
# Needs: valgrind, h2load (Debian nghttp2-client), a release build
# (cargo build --release) and the benchmark harness's upstream
# (cargo bench --bench compare --no-run). 8 client connections; requests
# to the upstream's /static path.
set -euo pipefail
cd "$(dirname "$0")/.."

protocol=${1:-h1}
targets=${2:-1}
requests=${3:-20000}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
extra=("$@")

for tool in valgrind h2load; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install valgrind nghttp2-client)" >&2; exit 1; }
done
harness=$(ls -t target/release/deps/compare-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -x target/release/ssegate ] && [ -n "$harness" ] || {
    echo "build first: cargo build --release && cargo bench --bench compare --no-run" >&2
    exit 1
}

work=$(mktemp -d)
upstream_pid=
cleanup() {
    [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The harness's upstream runs until its stdin closes.
mkfifo "$work/upstream-stdin"
"$harness" --role upstream --listen 127.0.0.1:0 <"$work/upstream-stdin" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
exec 3>"$work/upstream-stdin"
for _ in $(seq 100); do grep -q "127.0.0.1:" "$work/upstream.log" && break; sleep 0.1; done
upstream=$(grep -oE "127\.0\.0\.1:[0-9]+" "$work/upstream.log" | head -1)
upstream_flags=()
for _ in $(seq "$targets"); do upstream_flags+=(--upstream "http://$upstream"); done

# Instructions of one ssegate run serving $1 requests, start and drain included.
instructions() {
    local count=$1 log="$work/ssegate.log" out="$work/callgrind.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" target/release/ssegate \
        --listen 127.0.0.1:0 --cert certs/localhost.pem --key certs/localhost-key.pem \
        --threads 1 "${upstream_flags[@]}" "${extra[@]}" 2>"$log" &
    local pid=$!
    for _ in $(seq 600); do grep -q "listening on" "$log" && break; sleep 0.1; done
    local port
    port=$(grep -oE "listening on https://127\.0\.0\.1:[0-9]+" "$log" | grep -oE "[0-9]+$")
    if [ "$count" -gt 0 ]; then
        local mode=(--h1)
        [ "$protocol" = h2 ] && mode=(-m 10)
        h2load "${mode[@]}" -n "$count" -c 8 "https://127.0.0.1:$port/static" >"$work/h2load.log" 2>&1
        grep -q "$count succeeded" "$work/h2load.log" || { cat "$work/h2load.log" >&2; exit 1; }
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    grep -E "^summary:" "$out" | grep -oE "[0-9]+"
}

with=$(instructions "$requests")
without=$(instructions 0)
per_request=$(( (with - without) / requests ))
echo "$protocol targets=$targets requests=$requests ${extra[*]}: $per_request instructions/request (run $with, start and stop $without)"
