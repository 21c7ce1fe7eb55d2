#!/bin/bash
# Instructions ssegate executes under callgrind behind h2load (adapted from
# /tmp/irmeasure.sh): one target, one serving thread, N requests of
# /static on 8 connections (h1: --h1; h2: -m 10). Extra ssegate flags
# (e.g. --admin 127.0.0.1:0) follow N.
# usage: metrics-irmeasure.sh TREE PROTO(h1|h2) N [SSEGATE FLAGS...]
set -e
TREE=$1; PROTO=$2; N=$3; shift 3
cd "$TREE"
BENCH=$(ls -t target/release/deps/compare-* | grep -v '\.d$' | head -1)
WORK=$(mktemp -d /tmp/metrics-ir.XXXX)
mkfifo "$WORK/stdin"
"$BENCH" --role upstream --listen 127.0.0.1:0 < "$WORK/stdin" > "$WORK/upstream.log" 2>&1 &
UPPID=$!
exec 9> "$WORK/stdin"   # the upstream serves until this closes
for i in $(seq 50); do grep -q "127.0.0.1:" "$WORK/upstream.log" && break; sleep 0.1; done
UP=$(grep -oE "127\.0\.0\.1:[0-9]+" "$WORK/upstream.log" | head -1)
OUT="$WORK/callgrind.out"
valgrind --tool=callgrind --callgrind-out-file="$OUT" target/release/ssegate --listen 127.0.0.1:0 \
  --cert certs/localhost.pem --key certs/localhost-key.pem --upstream "http://$UP" --threads 1 "$@" \
  2> "$WORK/ssegate.log" &
VPID=$!
for i in $(seq 300); do grep -q "listening on" "$WORK/ssegate.log" && break; sleep 0.2; done
PORT=$(grep -oE "listening on https://127\.0\.0\.1:[0-9]+" "$WORK/ssegate.log" | grep -oE "[0-9]+$")
if [ "$N" -gt 0 ]; then
  if [ "$PROTO" = h1 ]; then H2ARGS="--h1"; else H2ARGS="-m 10"; fi
  h2load $H2ARGS -n "$N" -c 8 "https://127.0.0.1:$PORT/static" 2>&1 | grep -E "^requests:|status codes"
fi
kill -TERM $VPID; wait $VPID 2>/dev/null || true
exec 9>&-
kill $UPPID 2>/dev/null || true; wait $UPPID 2>/dev/null || true
grep -E "^(summary|totals):" "$OUT" | head -1
grep -c "admin listening" "$WORK/ssegate.log" | sed 's/^/admin lines: /'
if [ -n "$KEEP" ]; then cp "$OUT" "$KEEP"; fi
rm -rf "$WORK"
