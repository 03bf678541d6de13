#!/bin/bash
# Receipts' cost: server CPU per delivered message and deliveries/s, receipts
# off vs on (`bench chat --receipts`), same server, alternating, window 1 and
# 16. Each line: the server's CPU ticks (1/100 s) over the whole `bench chat`
# run (logins included) and its JSON result, whose notes carry "server CPU us
# per delivery" over the measured seconds only (--server-pid).
# Usage: [SERVER_OPTS="--history-days 0"] bench/receipts_cpu.sh [ROUNDS] [SECONDS].
# Needs `scripts/bootstrap dev`.
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SECS=${2:-4}
D=$(mktemp -d)
PORT=${PORT:-16200}
CLUSTERCHAT_HOME=$D taskset -c 0 .venv/bin/clusterchat server --port $PORT --db sqlite+aiosqlite:///$D/t.db --message-rate 0 --registrations 0 --hash-cost 1,8,1 --log-level WARNING $SERVER_OPTS &
SP=$!
sleep 3
cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
for round in $(seq "$ROUNDS"); do
for w in 1 16; do
for rc in "" "--receipts"; do
  c0=$(cpu)
  r=$(taskset -c 1 .venv/bin/clusterchat bench chat -p 50 -w $w -t "$SECS" --warmup 0.5 $rc --server-pid $SP --target 127.0.0.1:$PORT --json)
  c1=$(cpu)
  echo "round=$round w=$w receipts=${rc:-off} cpu_ticks=$((c1-c0)) $r"
done; done; done
kill $SP; wait $SP
rm -rf "$D"
