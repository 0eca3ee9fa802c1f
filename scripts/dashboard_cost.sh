#!/usr/bin/env bash
# Measures what the dashboard costs the service: CPU seconds per second of
# `mqttinfer serve` while `mqttinfer sim` runs DEVICES devices (anomaly,
# 1 req/s each), first with no page open, then with the dashboard open in a
# headless Chromium. Usage: scripts/dashboard_cost.sh [binary] (default:
# builds bin/mqttinfer). Env: DEVICES (100), SECONDS_PER_PHASE (30).
set -euo pipefail
bin=${1:-}
if [ -z "$bin" ]; then
	go build -o bin/mqttinfer ./cmd/mqttinfer
	bin=bin/mqttinfer
fi
devices=${DEVICES:-100}
secs=${SECONDS_PER_PHASE:-30}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt=127.0.0.1:$(port)
http=127.0.0.1:$(port)
tmp=$(mktemp -d)
"$bin" serve --mqtt-addr "$mqtt" --ws-addr "" --http-addr "$http" --models-dir "$tmp/none" --log-level warn &
svc=$!
browser=""
cleanup() {
	[ -n "$browser" ] && kill "$browser" 2>/dev/null || true
	kill "$svc" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://$http/readyz" >/dev/null && break; sleep 0.1; done
hz=$(getconf CLK_TCK)
cpu() { awk -v hz="$hz" '{print ($14+$15)/hz}' "/proc/$svc/stat"; }
phase() {
	"$bin" sim --broker "tcp://$mqtt" --devices "$devices" --rate 1 --duration "$((secs + 5))s" --json >"$tmp/sim-$1.json" 2>/dev/null &
	local sim=$!
	sleep 5 # let the devices connect and settle
	local c0 t0 c1 t1
	c0=$(cpu); t0=$(date +%s.%N)
	sleep "$secs"
	c1=$(cpu); t1=$(date +%s.%N)
	wait "$sim" || true
	awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v p="$1" -v n="$devices" \
		'BEGIN { printf "%-14s %d devices: service CPU %.4f s/s\n", p, n, (c1-c0)/(t1-t0) }'
}
phase "page closed"
chromium --headless --no-sandbox --disable-gpu --user-data-dir="$tmp/chromium" --remote-debugging-port=0 "http://$http/" >/dev/null 2>&1 &
browser=$!
sleep 3
phase "page open"
