#!/usr/bin/env bash
# Runs every Go fuzz target of the module, one at a time (go test fuzzes one
# target per invocation), each for SECONDS seconds, and prints one line per
# target; exits non-zero if any target fails.
#
#   ./scripts/fuzz.sh [SECONDS]     # default 60; `make test` runs 2, `make fuzz` FUZZTIME
#
# Environment:
#   FUZZ_TARGETS        only the targets matching one of these space-separated
#                       shell patterns on pkg.Name, e.g. 'api.* topics.FuzzParse'
#                       (pkg is the import path without the module's)
#   FUZZ_MINIMIZE_TIME  how long go test may minimize one input (default 1s).
#                       It minimizes every input that finds new coverage too,
#                       and go's default of a minute per input stalls a run
#                       for most of its time. To get a smaller failing input,
#                       run the failing target again with, say, 60s.
#
# A failing target leaves its input under testdata/fuzz/<Name>/ of its
# package (the failure says which file and how to re-run it). Once the bug
# is fixed, commit that file with the fix: every plain `go test` runs it as a
# regression seed from then on. The inputs that only widened coverage stay
# in the Go build cache ($(go env GOCACHE)/fuzz) and make later runs start
# where earlier ones stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
GO=${GO:-go}
minimize=${FUZZ_MINIMIZE_TIME:-1s}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

start=$(date +%s)
module=$($GO list -m)
# short names a target pkg.Name, pkg without the module path ("." for its root).
short() {
	local p=${1#"$module"}
	p=${p#/}
	echo "${p:-.}.$2"
}

# Only the packages with a fuzz target in their test files are listed with
# go test -list (which builds their tests, in parallel): a package elsewhere
# in the tree that does not build is not this script's business.
pkgs=()
while read -r pkg dir; do
	if grep -qs '^func Fuzz' "$dir"/*_test.go; then pkgs+=("$pkg"); fi
done < <($GO list -f '{{.ImportPath}} {{.Dir}}' ./...)
if [ ${#pkgs[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets in $module" >&2
	exit 1
fi
# go test prints each package's output in one piece: its target names, then
# "ok<TAB>path<TAB>time", or "FAIL<TAB>path [build failed]" and its errors.
listing=$($GO test -list '^Fuzz' "${pkgs[@]}" 2>&1) || true
read -ra patterns <<<"${FUZZ_TARGETS:-}" # split on blanks, no file globbing
targets=() # "import/path Name", in the order go test lists them
failed=()
names=()
while IFS= read -r line; do
	read -r word pkg _ <<<"$line" || true
	case $word in
	Fuzz*) names+=("$word") ;;
	ok)
		for name in "${names[@]}"; do
			if [ ${#patterns[@]} -eq 0 ]; then
				targets+=("$pkg $name")
				continue
			fi
			for p in "${patterns[@]}"; do
				# shellcheck disable=SC2053 # $p is a pattern
				if [[ $(short "$pkg" "$name") == $p ]]; then
					targets+=("$pkg $name")
					break
				fi
			done
		done
		names=()
		;;
	FAIL)
		if [ -n "$pkg" ]; then failed+=("$(short "$pkg" "(does not build)")"); fi
		names=()
		;;
	esac
done <<<"$listing"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: go test -list failed:"
	grep -v '^Fuzz' <<<"$listing" | sed 's/^/    /'
elif [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz target matches FUZZ_TARGETS='${FUZZ_TARGETS:-}'" >&2
	exit 1
fi

spurious=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
	pkg=${t% *}
	name=${t#* }
	t0=$(date +%s%N)
	status=ok
	$GO test -run '^$' -fuzz "^$name\$" -fuzztime "${secs}s" -fuzzminimizetime "$minimize" \
		-timeout "$((secs + 600))s" "$pkg" >"$log" 2>&1 || status=FAIL
	ms=$((($(date +%s%N) - t0) / 1000000))
	# Go before 1.27 may fail a target whose -fuzztime ends with a bare
	# "context deadline exceeded" and no input (golang/go#75804): a race in
	# its coordinator, not a finding.
	if [ $status = FAIL ] && grep -qx '    context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
		status=ok
		spurious+=("$(short "$pkg" "$name")")
	fi
	execs=$(grep -o 'execs: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
	printf '%-4s %-44s %5d.%ds %12s execs\n' "$status" "$(short "$pkg" "$name")" $((ms / 1000)) $((ms % 1000 / 100)) "${execs:--}"
	if [ $status = FAIL ]; then
		failed+=("$(short "$pkg" "$name")")
		# What the target reported, the file Go wrote the input to, how to re-run it.
		grep -v '^fuzz: elapsed' "$log" | head -n 25 | sed 's/^/    /'
		dir=${pkg#"$module"}
		dir=${dir#/}
		input=$(grep -o 'testdata/fuzz/[^ ]*' "$log" | tail -n1 || true)
		if [ -n "$input" ]; then
			echo "    input: ${dir:+$dir/}$input"
			echo "    re-run: $GO test -run '^$name\$/^${input##*/}\$' ./$dir"
		fi
	fi
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, $(($(date +%s) - start))s in all, ${#failed[@]} failed"
if [ ${#spurious[@]} -gt 0 ]; then
	echo "fuzz: ignored go's spurious \"context deadline exceeded\" at the end of the run (golang/go#75804): ${spurious[*]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz: FAIL %s\n' "${failed[@]}"
	exit 1
fi
