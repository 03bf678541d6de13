#!/bin/bash
# Server CPU per delivered message, TCP vs WebSocket, same server, alternating.
# Each line: the server's CPU ticks (1/100 s) over one `bench chat` run and its
# JSON result; microseconds per message ~= ticks * 10000 / (ops_per_s * 6.5)
# (6 s measured plus 0.5 s warm-up). Needs `scripts/bootstrap dev`.
cd "$(dirname "$0")/.."
D=$(mktemp -d)
CLUSTERCHAT_HOME=$D taskset -c 0 .venv/bin/clusterchat server --port 16000 --http-port 16100 --db sqlite+aiosqlite:///$D/t.db --message-rate 0 --hash-cost 1,8,1 --log-level WARNING &
SP=$!
sleep 3
cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
for round in 1 2; do
for w in 1 16; do
for tr in tcp ws; do
  port=16000; [ $tr = ws ] && port=16100
  c0=$(cpu)
  r=$(taskset -c 1 .venv/bin/clusterchat bench chat -p 50 -w $w -t 6 --warmup 0.5 --transport $tr --target 127.0.0.1:$port --json)
  c1=$(cpu)
  echo "round=$round w=$w $tr cpu_ticks=$((c1-c0)) $r"
done; done; done
kill $SP; wait $SP
