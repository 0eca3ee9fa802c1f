#!/usr/bin/env bash
# End-to-end benchmarks: the device simulator against the embedded service,
# with baselines run in the same command (these machines are shared and
# noisy, so only ratios within one run mean much).
#
#   1. warm latency per model, the HTTP and SSE doors, the model repository
#   2. scale: embedded / our broker + a remote worker / Mosquitto + a remote
#      worker, at 100, 1,000 and 10,000 devices, each at an equal offered
#      load and at its closed-loop peak, with the service's and the
#      simulator's CPU per round trip; the embedded node's memory at start,
#      at peak and after the devices left
#   3. durability: storage on against off
#   4. the cluster (make cluster: 3 NATS servers, 2 edges, 3 workers)
#      against one embedded node on the same load, and the backbone's
#      durable path (JetStream) against core NATS request/reply
#   5. idle RSS per connected device with 2,000 idle devices, at several
#      max_client_writes_pending (ours: 256; mochi's default: 8192), and
#      for ours again 20 s later, once the idle readers have moved to small
#      stacks
#
# Everything listens on 127.0.0.1 on free ports and is stopped at the end.
# Usage: scripts/bench.sh [path/to/mqttinfer] [cluster]   (cluster: only section 4)
# BENCH_QUICK=1: section 2 alone, at 100 and 1,000 devices, 3 s a run (about
# a minute). BENCH_DURATION, BENCH_DEVICES, BENCH_LOAD (requests/s offered
# in all at the equal load, default 2000) override.
set -euo pipefail
BIN=${1:-bin/mqttinfer}
ONLY=${2:-}
QUICK=${BENCH_QUICK:-}
DUR=${BENCH_DURATION:-5s}
COUNTS=${BENCH_DEVICES:-100 1000 10000}
LOAD=${BENCH_LOAD:-2000}
if [ -n "$QUICK" ]; then DUR=${BENCH_DURATION:-3s}; COUNTS=${BENCH_DEVICES:-100 1000}; fi
IDLE=${BENCH_IDLE_DEVICES:-2000}
ulimit -n 65536 2>/dev/null || true
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
waitport() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/"$1"/status; }
# cpu_ms PID...: user+system CPU time of the processes so far, in ms.
cpu_ms() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat))); done; echo $((t * 1000 / $(getconf CLK_TCK))); }
# per_rt CPU_MS_BEFORE CPU_MS_AFTER REPORT.json: server CPU per answered request, in us.
per_rt() { python3 -c "import json,sys; r=json.load(open('$3')); n=r['ok']+r['throttled']+sum(r['errors'].values()); print(round(($2-$1)*1000/max(n,1),1))"; }

# serve PORT HTTPPORT [extra env...]: starts the service, echoes its pid.
serve() {
	local port=$1 hport=$2; shift 2
	env MQTTINFER_MQTT_TCP_ADDR=127.0.0.1:$port MQTTINFER_MQTT_WS_ADDR= MQTTINFER_HTTP_ADDR=127.0.0.1:$hport \
		MQTTINFER_THROTTLE_RATE=1000000 MQTTINFER_THROTTLE_BURST=1000000 MQTTINFER_THROTTLE_MAX_IN_FLIGHT=1000000 \
		MQTTINFER_LOG_LEVEL=warn "$@" "$BIN" serve >"$work/serve-$port.log" 2>&1 &
	echo $!
}

sim() { # sim PORT DEVICES RATE -> JSON report on stdout
	"$BIN" sim --broker "tcp://127.0.0.1:$1" --devices "$2" --rate "$3" --qos 1 --duration "$DUR" --drain 5s \
		--id-prefix "b$2-" --seed 1 --json
}

summary() { jq -r '"\(.devices) devices: \(.round_trips_per_sec|floor) round trips/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, max \(.latency.max_ms) ms, sent \(.sent), ok \(.ok), throttled \(.throttled), errors \(.errors|tostring), lost \(.lost), simulator CPU \(.sim_cpu_per_request_us|floor) us per rt"'; }

if [ -z "$ONLY" ]; then
if [ -z "$QUICK" ]; then
echo "== warm latency per model (one request at a time, no transport)"
go test -run '^$' -bench 'ModelLatency' -benchtime 100x ./tests/ | grep ^Benchmark

echo "== front doors and streaming (go test -bench, sequential, one client)"
go test -run '^$' -bench 'FrontDoors|TimeToFirstToken' -benchtime 2000x ./tests/ | tee "$work/doors.txt" | grep ^Benchmark
ns() { awk -v n="$1" '$1 ~ n"-[0-9]+$" {print $3}' "$work/doors.txt" | head -1; }
python3 - "$(ns FrontDoors/mqtt)" "$(ns FrontDoors/mqtt-lean)" "$(ns FrontDoors/http)" "$(ns TimeToFirstToken/direct)" \
	"$(ns TimeToFirstToken/mqtt)" "$(ns TimeToFirstToken/mqtt-lean)" "$(ns TimeToFirstToken/sse)" <<'PY'
import sys
mqtt, lean, http, direct, ttft_mqtt, ttft_lean, ttft_sse = map(float, sys.argv[1:])
print(f"ratio HTTP gateway / direct MQTT QoS 1 round trip: {http/mqtt:.2f}x (paho device), {http/lean:.2f}x (lean device)")
# The relay's cost is what it adds to the server's own first token, counted
# in QoS 1 round trips of the same device (goal: at most 1.2).
print(f"time to first token relayed over MQTT minus straight from the server: {(ttft_mqtt-direct)/1e3:.0f} us = {(ttft_mqtt-direct)/mqtt:.2f} round trips (paho device: {ttft_mqtt/1e3:.0f} us vs {direct/1e3:.0f} us, a round trip {mqtt/1e3:.0f} us)")
print(f"time to first token relayed over MQTT minus straight from the server: {(ttft_lean-direct)/1e3:.0f} us = {(ttft_lean-direct)/lean:.2f} round trips (lean device: {ttft_lean/1e3:.0f} us, a round trip {lean/1e3:.0f} us)")
print(f"time to first token relayed over SSE minus straight from the server: {(ttft_sse-direct)/1e3:.0f} us ({ttft_sse/1e3:.0f} us; ratio {ttft_sse/direct:.2f}x)")
PY

echo "== model repository: tensor path against a built-in model, and a reload"
{ go test -run '^$' -bench 'TensorPath' -benchtime 2000x ./tests/; go test -run '^$' -bench 'RepositoryReload' -benchtime 10x ./tests/; } | tee "$work/repo.txt" | grep ^Benchmark
rns() { awk -v n="$1" '$1 ~ n {print $3}' "$work/repo.txt" | head -1; }
python3 - "$(rns TensorPath/graph)" "$(rns TensorPath/builtin)" "$(rns TensorPath/repository)" <<'PY'
import sys
graph, builtin, repo = map(float, sys.argv[1:])
print(f"ratio repository tensor path / built-in vad, one 32 ms frame: {repo/builtin:.2f}x ({repo/1e3:.0f} us vs {builtin/1e3:.0f} us; the graph alone {graph/1e3:.0f} us)")
PY

fi

echo "== scale: embedded / our broker + a remote worker / Mosquitto + a remote worker (anomaly, QoS 1, lean simulator)"
# For each system and each fleet size: an equal offered load below every
# system's capacity ($LOAD requests/s in all: the latency at that load and
# the CPU each side spends per round trip), and the closed-loop peak (each
# device one request outstanding). The simulator's own CPU per round trip
# is printed beside the service's, to show which side was saturated.
p=$(freeport); h=$(freeport); epid=$(serve "$p" "$h" MQTTINFER_MODELS_DIR=/nonexistent); pids+=("$epid"); waitport "$p"; eport=$p
erss0=$(rss_kb "$epid")
p=$(freeport); h=$(freeport); bpid=$(serve "$p" "$h" MQTTINFER_MODELS_DIR=/nonexistent MQTTINFER_WORKER_IN_PROCESS=false); pids+=("$bpid"); waitport "$p"; bport=$p
MQTTINFER_LOG_LEVEL=warn MQTTINFER_MODELS_DIR=/nonexistent "$BIN" worker --broker "tcp://127.0.0.1:$bport" --throttle=false >"$work/bworker.log" 2>&1 & bwpid=$!; pids+=("$bwpid")
for _ in $(seq 1 200); do [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$h/readyz")" = 200 ] && break; sleep 0.05; done
have_mosquitto=
if [ -x /usr/sbin/mosquitto ]; then
	have_mosquitto=1
	mport=$(freeport)
	# Unbounded queues: Mosquitto's default (1000 queued per client) would drop
	# the worker's backlog and count it as lost rather than slow.
	printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$mport" >"$work/mosquitto.conf"
	/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 & mpid=$!; pids+=("$mpid"); waitport "$mport"
	MQTTINFER_LOG_LEVEL=warn MQTTINFER_MODELS_DIR=/nonexistent "$BIN" worker --broker "tcp://127.0.0.1:$mport" >"$work/mworker.log" 2>&1 & mwpid=$!; pids+=("$mwpid")
	"$BIN" models --broker "tcp://127.0.0.1:$mport" --timeout 10s >/dev/null # the worker is up once its catalog is there
fi
# run SYSTEM DEVICES MODE: one simulator run ("equal" or "peak") against a
# system; writes $work/SYSTEM-DEVICES-MODE.json and prints a line.
run() {
	local sys=$1 n=$2 mode=$3 port procs args
	case $sys in
	embedded) port=$eport; procs="$epid" ;;
	broker+worker) port=$bport; procs="$bpid $bwpid" ;;
	mosquitto+worker) port=$mport; procs="$mpid $mwpid" ;;
	esac
	args=(--rate "$(python3 -c "print($LOAD/$n)")")
	[ "$mode" = peak ] && args=(--closed-loop)
	if [ "$mode" = connect ]; then
		# Connecting alone: the devices connect, subscribe, idle a second
		# and leave. The equal-load runs include this cost, which at 10,000
		# devices is as large as that of their requests.
		local c0 c1
		# shellcheck disable=SC2086
		c0=$(cpu_ms $procs)
		"$BIN" sim --broker "tcp://127.0.0.1:$port" --devices "$n" --rate 0.0001 --lean --duration 1s --drain -1s \
			--id-prefix "${sys//+/_}-$n-connect-" --connect-concurrency 256 --json >/dev/null
		sleep 1 # the sessions end
		# shellcheck disable=SC2086
		c1=$(cpu_ms $procs)
		echo "${sys:0:16} $n devices connect, subscribe and leave: service CPU $(( (c1 - c0) * 1000 / n )) us per device"
		return
	fi
	local f="$work/$sys-$n-$mode.json" c0 c1 rss=0 sampler=
	# shellcheck disable=SC2086
	c0=$(cpu_ms $procs)
	# The embedded node's RSS is sampled through the run: its highest,
	# less its RSS at start, over the devices, is what an active device
	# costs (the VmHWM below also covers the peak runs' queues).
	if [ "$sys" = embedded ] && [ "$n" -ge 1000 ]; then
		(m=0; while kill -0 "$epid" 2>/dev/null; do r=$(rss_kb "$epid"); [ "$r" -gt "$m" ] && { m=$r; echo "$m" >"$work/rss-max"; }; sleep 0.25; done) & sampler=$!
	fi
	"$BIN" sim --broker "tcp://127.0.0.1:$port" --devices "$n" "${args[@]}" --lean --qos 1 --duration "$DUR" --drain 5s \
		--id-prefix "${sys//+/_}-$n-$mode-" --seed 1 --connect-concurrency 256 --json >"$f"
	# shellcheck disable=SC2086
	c1=$(cpu_ms $procs)
	if [ -n "$sampler" ]; then
		kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
		rss=$(cat "$work/rss-max"); rm -f "$work/rss-max"
	fi
	jq --arg cpu "$(per_rt "$c0" "$c1" "$f")" --arg rss "$rss" '. + {service_cpu_per_request_us: ($cpu | tonumber), service_rss_max_kb: ($rss | tonumber)}' "$f" >"$f.tmp" && mv "$f.tmp" "$f"
	jq -r --arg sys "$sys" --arg mode "$mode" '"\($sys|.[0:16]) \(.devices) devices \($mode): \(.round_trips_per_sec|floor) rt/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, ok \(.ok)/\(.sent), lost \(.lost), errors \(.errors|tostring); CPU per rt: service \(.service_cpu_per_request_us) us, simulator \(.sim_cpu_per_request_us|floor) us"' "$f"
	if [ -n "$sampler" ]; then
		echo "embedded RSS during the run: at most ${rss} KB, $(( (rss - erss0) * 1024 / n )) bytes per device over the ${erss0} KB at start"
	fi
}
systems="embedded broker+worker"
[ -n "$have_mosquitto" ] && systems="$systems mosquitto+worker"
for n in $COUNTS; do
	for sys in $systems; do
		run "$sys" "$n" equal
		run "$sys" "$n" peak
		if [ "$n" -ge 10000 ]; then run "$sys" "$n" connect; fi
	done
	python3 - "$work" "$n" $systems <<'PY'
import json, sys
work, n, systems = sys.argv[1], sys.argv[2], sys.argv[3:]
r = {(s, m): json.load(open(f"{work}/{s}-{n}-{m}.json")) for s in systems for m in ("equal", "peak")}
e = "embedded"
for s in systems[1:]:
    eq, eqe = r[(s, "equal")], r[(e, "equal")]
    pk, pke = r[(s, "peak")], r[(e, "peak")]
    def ratio(a, b): return f"{a / b:.2f}x" if b else "n/a"
    print(f"ratio embedded / {s}, {n} devices: peak round trips/s {ratio(pke['round_trips_per_sec'], pk['round_trips_per_sec'])}; "
          f"at equal load CPU per round trip {ratio(eq['service_cpu_per_request_us'], eqe['service_cpu_per_request_us'])} less, "
          f"p99 {ratio(eq['latency']['p99_ms'], eqe['latency']['p99_ms'])} lower")
PY
done
# Memory: the embedded node's RSS before the runs, its peak (VmHWM, during
# the largest fleet), and once the devices have left (the node returns
# memory when its clients fall to half their peak, within 5 s).
sleep 12
erss1=$(awk '/VmHWM/ {print $2}' /proc/"$epid"/status); erss2=$(rss_kb "$epid")
echo "embedded RSS: ${erss0} KB at start, ${erss1} KB at peak, ${erss2} KB 12 s after the devices left"
kill "$epid" "$bpid" "$bwpid" 2>/dev/null || true
[ -n "$have_mosquitto" ] && { kill "$mpid" "$mwpid" 2>/dev/null || true; }
wait 2>/dev/null || true

[ -n "$QUICK" ] && exit 0

echo "== durability: storage.dir (broker store + journal of accepted requests) against none, 100 devices x 120 req/s"
for mode in off on; do
	store=; [ "$mode" = on ] && store="$work/store"
	p=$(freeport); h=$(freeport); pid=$(serve "$p" "$h" MQTTINFER_STORAGE_DIR="$store"); pids+=("$pid"); waitport "$p"
	c0=$(cpu_ms "$pid"); sim "$p" 100 120 >"$work/s100-$mode.json"; c1=$(cpu_ms "$pid")
	echo -n "storage $mode  "; summary <"$work/s100-$mode.json"
	eval "cpu_$mode=$(per_rt "$c0" "$c1" "$work/s100-$mode.json")"
	kill "$pid"; wait "$pid" 2>/dev/null || true
done
jq -rn --slurpfile e "$work/s100-off.json" --slurpfile s "$work/s100-on.json" \
	'"ratio round trips/s, storage on / off (100 devices): \(($s[0].round_trips_per_sec / $e[0].round_trips_per_sec * 100 | floor) / 100)x"'
echo "ratio service CPU per round trip, storage on / off (100 devices): $(python3 -c "print(round($cpu_on/$cpu_off,2))")x ($cpu_on us vs $cpu_off us)"

fi

echo "== cluster: 3 NATS servers + 2 edges + 3 workers (scripts/cluster.sh) against one embedded node, same load"
go test -run '^$' -bench Backbone -benchtime 2000x ./cluster/ | tee "$work/backbone.txt" | grep ^Benchmark
python3 - "$(awk '$1 ~ /Backbone\/core/ {print $3}' "$work/backbone.txt")" "$(awk '$1 ~ /Backbone\/jetstream/ {print $3}' "$work/backbone.txt")" <<'PY'
import sys
core, js = map(float, sys.argv[1:])
print(f"ratio backbone round trip, durable (JetStream R3, request and result stored) / core NATS request-reply: {js/core:.1f}x ({js/1e3:.0f} us vs {core/1e3:.0f} us)")
PY
base=$(python3 -c '
import random, socket
for _ in range(100):
    b = random.randrange(20000, 60000)
    try:
        for i in range(43):
            s = socket.socket(); s.bind(("127.0.0.1", b + i)); s.close()
        print(b); break
    except OSError:
        continue')
MQTTINFER_THROTTLE_RATE=1000000 MQTTINFER_THROTTLE_BURST=1000000 MQTTINFER_THROTTLE_MAX_IN_FLIGHT=1000000 MQTTINFER_LOG_LEVEL=warn \
	CLUSTER_PORT_BASE=$base ./scripts/cluster.sh "$BIN" >"$work/cluster.out" 2>&1 & cpid=$!; pids+=("$cpid")
for _ in $(seq 1 600); do grep -qx ready "$work/cluster.out" && break; sleep 0.2; done
grep -qx ready "$work/cluster.out" || { echo "the cluster did not start:"; cat "$work/cluster.out"; exit 1; }
cpids=$(awk '/ pid=/ {sub("pid=", "", $3); print $3}' "$work/cluster.out")
edges="127.0.0.1:$((base + 20)),127.0.0.1:$((base + 21))"
csim() { # csim DEVICES RATE -> JSON report
	"$BIN" sim --broker "$edges" --devices "$1" --rate "$2" --qos 1 --duration "$DUR" --drain 20s --id-prefix "c$1-$2-" --seed 1 --json
}
p=$(freeport); h=$(freeport); pid=$(serve "$p" "$h"); pids+=("$pid"); waitport "$p"
# 500 requests/s, well within the cluster on these 2 cores (the latency of
# the durable path), then 4,000/s offered, past it (its ceiling here).
for load in "100 5" "100 40"; do
	set -- $load
	c0=$(cpu_ms "$pid"); sim "$p" "$1" "$2" >"$work/ce-$1-$2.json"; c1=$(cpu_ms "$pid")
	echo -n "embedded   "; summary <"$work/ce-$1-$2.json"; ecpu=$(per_rt "$c0" "$c1" "$work/ce-$1-$2.json")
	# shellcheck disable=SC2086
	c0=$(cpu_ms $cpids); csim "$1" "$2" >"$work/cc-$1-$2.json"; c1=$(cpu_ms $cpids)
	echo -n "cluster    "; summary <"$work/cc-$1-$2.json"; ccpu=$(per_rt "$c0" "$c1" "$work/cc-$1-$2.json")
	jq -rn --slurpfile e "$work/ce-$1-$2.json" --slurpfile c "$work/cc-$1-$2.json" \
		'"ratio cluster / embedded, \($e[0].devices) devices x \($e[0].rate) req/s offered: \(($c[0].round_trips_per_sec / $e[0].round_trips_per_sec * 100 | floor) / 100)x round trips/s, p50 \(($c[0].latency.p50_ms / $e[0].latency.p50_ms * 10 | floor) / 10)x, p99 \(($c[0].latency.p99_ms / $e[0].latency.p99_ms * 10 | floor) / 10)x"'
	echo "ratio CPU per round trip, cluster (all 8 processes) / embedded: $(python3 -c "print(round($ccpu/$ecpu,1))")x ($ccpu us vs $ecpu us)"
done
kill "$pid" "$cpid"; wait "$pid" "$cpid" 2>/dev/null || true

[ -n "$ONLY" ] && exit 0

echo "== idle RSS per connected device ($IDLE idle devices)"
for pending in 64 256 1024 8192; do
	p=$(freeport); h=$(freeport)
	# Without the ONNX models: their hundreds of MB of runtime memory would
	# blur the per-client difference.
	pid=$(serve "$p" "$h" MQTTINFER_MQTT_MAX_CLIENT_WRITES_PENDING=$pending MQTTINFER_MODELS_DIR=/nonexistent); pids+=("$pid"); waitport "$p"; sleep 1
	before=$(rss_kb "$pid")
	# rate 0.0001/s: each device's first send is scheduled hours away, so they stay idle.
	"$BIN" sim --broker "tcp://127.0.0.1:$p" --devices "$IDLE" --rate 0.0001 --duration 30s --drain -1s --id-prefix idle- --lean --json >/dev/null 2>&1 & spid=$!
	for _ in $(seq 1 600); do
		n=$(curl -s "127.0.0.1:$h/metrics" | awk '/^mqttinfer_connected_clients /{print $2}')
		[ "${n:-0}" -ge "$IDLE" ] && break; sleep 0.1
	done
	sleep 2
	after=$(rss_kb "$pid")
	per=$(( (after - before) * 1024 / IDLE ))
	echo "max_client_writes_pending=$pending: RSS ${before} KB -> ${after} KB with ${n:-?} clients: $per bytes per idle device"
	eval "per_$pending=$per"
	if [ "$pending" = 256 ]; then
		# Settled: after 10 s without a packet each reader moves to a small
		# stack, and the node returns the memory freed (checked every 5 s).
		sleep 18
		settled=$(rss_kb "$pid")
		echo "max_client_writes_pending=$pending, 20 s later: RSS ${settled} KB: $(( (settled - before) * 1024 / IDLE )) bytes per idle device"
	fi
	kill "$spid" "$pid" 2>/dev/null || true; wait "$spid" "$pid" 2>/dev/null || true
done
echo "ratio idle memory per device, mochi default (8192) / ours (256): $(python3 -c "print(round($per_8192/$per_256, 2))")x; 64 / 256: $(python3 -c "print(round($per_64/$per_256, 2))")x"
