#!/usr/bin/env bash
# A cluster on one machine: three NATS servers with JetStream (mqttinfer
# nats), two edges (mqttinfer serve --cluster) and three workers (mqttinfer
# worker --cluster), all on 127.0.0.1. Prints one line per process,
#   <role> <name> pid=<pid> <url>
# then "ready" once every edge and worker answers /readyz; Ctrl-C stops
# them all. Ports count from CLUSTER_PORT_BASE (default 4222):
#   NATS clients base..base+2, routes base+10..base+12,
#   edges' MQTT base+20..base+21, their HTTP base+30..base+31,
#   workers' HTTP base+40..base+42.
# Usage: scripts/cluster.sh [path/to/mqttinfer]
set -euo pipefail

BIN=${1:-bin/mqttinfer}
BASE=${CLUSTER_PORT_BASE:-4222}
HOST=127.0.0.1
DIR=$(mktemp -d "${TMPDIR:-/tmp}/mqttinfer-cluster-$BASE.XXXXXX")
LOGS="$DIR/logs"
mkdir -p "$LOGS"
pids=()

stop() {
	trap - INT TERM EXIT
	# Workers and edges first (they finish what they took), NATS last.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	rm -rf "$DIR"
	echo "stopped"
}
trap stop EXIT
trap 'exit 130' INT TERM

# run <role> <name> <url> <args...>: starts one process, logging to $LOGS.
run() {
	local role=$1 name=$2 url=$3
	shift 3
	"$BIN" "$@" >"$LOGS/$name.log" 2>&1 &
	pids+=($!)
	echo "$role $name pid=$! $url"
}

nats_urls=()
for i in 0 1 2; do
	nats_urls+=("nats://$HOST:$((BASE + i))")
done
NATS=$(IFS=,; echo "${nats_urls[*]}")
for i in 0 1 2; do
	routes=()
	for j in 0 1 2; do
		[[ $j == "$i" ]] || routes+=("$HOST:$((BASE + 10 + j))")
	done
	run nats "n$((i + 1))" "nats://$HOST:$((BASE + i))" nats --name "n$((i + 1))" \
		--listen "$HOST:$((BASE + i))" --cluster-listen "$HOST:$((BASE + 10 + i))" \
		--routes "$(IFS=,; echo "${routes[*]}")" --store-dir "$DIR/n$((i + 1))"
done

ready=()
for i in 0 1; do
	run edge "e$((i + 1))" "mqtt://$HOST:$((BASE + 20 + i))" serve --cluster "$NATS" --node "e$((i + 1))" \
		--mqtt-addr "$HOST:$((BASE + 20 + i))" --ws-addr "" --http-addr "$HOST:$((BASE + 30 + i))"
	ready+=("http://$HOST:$((BASE + 30 + i))/readyz")
done
for i in 0 1 2; do
	run worker "w$((i + 1))" "http://$HOST:$((BASE + 40 + i))" worker --cluster "$NATS" --node "w$((i + 1))" \
		--http-addr "$HOST:$((BASE + 40 + i))"
	ready+=("http://$HOST:$((BASE + 40 + i))/readyz")
done

deadline=$((SECONDS + 90))
for u in "${ready[@]}"; do
	until curl -fsS -o /dev/null "$u" 2>/dev/null; do
		for p in "${pids[@]}"; do
			if ! kill -0 "$p" 2>/dev/null; then
				echo "a process stopped before the cluster was ready; logs in $LOGS:" >&2
				tail -n 5 "$LOGS"/*.log >&2
				exit 1
			fi
		done
		if ((SECONDS > deadline)); then
			echo "$u not ready after 90s; logs in $LOGS" >&2
			exit 1
		fi
		sleep 0.2
	done
done
echo "ready"
echo "logs in $LOGS; try: $BIN sim --broker $HOST:$((BASE + 20)),$HOST:$((BASE + 21)) --devices 10 --duration 10s" >&2
wait -n "${pids[@]}" || true
echo "a process of the cluster stopped; logs in $LOGS" >&2
tail -n 5 "$LOGS"/*.log >&2
exit 1
