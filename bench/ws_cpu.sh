#!/bin/bash
# CPU per delivered message, modern-dialect TCP vs WebSocket, one node, runs
# alternating (on a shared machine rates swing; CPU per message holds better).
# Usage: bench/ws_cpu.sh [ROUNDS [WINDOW...]]   (default: 3 rounds, windows 1 16)
# Each line: deliveries/s, node CPU and its microseconds per delivery (bench
# --server-pid), the load generator's microseconds per delivery, p99.
# Needs `scripts/bootstrap dev`.
cd "$(dirname "$0")/.."
D=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000)); HP=$((PORT + 1))
CLUSTERCHAT_HOME=$D taskset -c 0 .venv/bin/clusterchat server --port $PORT --http-port $HP \
  --db sqlite+aiosqlite:///$D/t.db --message-rate 0 --registrations 0 --history-days 0 \
  --hash-cost 1,8,1 --log-level WARNING &
SP=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$HP) 2>/dev/null && break; sleep 0.2; done
ROUNDS=${1:-3}; shift
WINDOWS=${*:-1 16}
for round in $(seq "$ROUNDS"); do for w in $WINDOWS; do for tr in tcp ws; do
  port=$PORT; [ $tr = ws ] && port=$HP
  taskset -c 1 .venv/bin/clusterchat bench chat -p 50 -w "$w" -t 5 --transport $tr \
    --dialect modern --target 127.0.0.1:$port --server-pid $SP --json 2>/dev/null |
    .venv/bin/python -c "
import json, sys
r = json.load(sys.stdin); n = r['notes']; rate = r['ops_per_s']
print(f\"w=$w $tr {rate:8.0f}/s node CPU {n['server CPU %']:5.1f}% \"
      f\"node {n['server CPU %'] * 1e4 / rate:5.1f} us/msg \"
      f\"loadgen {n['client CPU %'] * 1e4 / rate:5.1f} us/msg p99 {r['p99_us']} us lost {r['lost']}\")"
done; done; done
kill $SP; wait $SP 2>/dev/null; rm -rf "$D"
