#!/usr/bin/env bash
# Benchmark of `glance-sidecar reprocess --all` in the test cloud (not part of CI). A catalog of
# IMAGES images (default 200, the integration tests' mix: half clean qcow2, a quarter with a
# backing file, a quarter qcow2 declared raw; about 200 KiB each) is seeded under a new owner,
# then reprocessed with --force RUNS times (default 3) at each concurrency in CONCURRENCY
# (default "1 4 16"). Reported per concurrency: the median images per second over the wall time
# of the whole command (authentication and listing included), and the bytes it downloaded
# (the JSON lines' bytes_read) in total and per image (target: under 4 MiB on average).
# Needs the test cloud up (test/cloud/up.sh); deletes the catalog at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
n=${IMAGES:-200}
runs=${RUNS:-3}
read -r -a concurrencies <<<"${CONCURRENCY:-1 4 16}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

go build -o "$work/glance-sidecar" ./cmd/glance-sidecar
go build -o "$work/reprocessbench" ./test/bench/reprocessbench
bench=("$work/reprocessbench" -clouds-file "$state/clouds.yaml")
owner=""
cleanup() {
	"${bench[@]}" delete -ids "$work/ids" ${owner:+-owner "$owner"} || true
	rm -rf "$work"
}
trap cleanup EXIT
echo "seeding $n images"
owner=$("${bench[@]}" seed -n "$n" -ids "$work/ids")
echo "seeded $n images owned by $owner"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
results=()
for c in "${concurrencies[@]}"; do
	rates=()
	for run in $(seq "$runs"); do
		start=$(date +%s.%N)
		status=0
		"$work/glance-sidecar" reprocess --all --owner "$owner" --force --output json --concurrency "$c" \
			--glance-cloud sidecar --glance-clouds-file "$state/clouds.yaml" --log-level warn >"$work/out.json" || status=$?
		end=$(date +%s.%N)
		# Exit status 1: the catalog holds unsafe images. Every image must have been inspected.
		done_n=$(jq -s '.[-1].summary.outcomes | (.inspected // 0) + (.unsafe // 0)' "$work/out.json")
		if [[ $status != 1 || $done_n != "$n" ]]; then
			echo "run $run at concurrency $c: exit status $status, $done_n of $n images inspected" >&2
			tail -n 1 "$work/out.json" >&2
			exit 1
		fi
		bytes=$(jq -s 'map(select(.image_id) | .bytes_read) | add' "$work/out.json")
		rate=$(echo "$n / ($end - $start)" | bc -l)
		rates+=("$rate")
		printf 'concurrency %2d run %d: %6.1f images/s, %d bytes read\n' "$c" "$run" "$rate" "$bytes"
	done
	med=$(printf '%s\n' "${rates[@]}" | median)
	results+=("$(printf 'concurrency %2d: median %6.1f images/s, %d bytes read (%d per image)' "$c" "$med" "$bytes" $((bytes / n)))")
done
echo
printf '%s\n' "${results[@]}"
per_image=$((bytes / n))
if ((per_image < 4 << 20)); then
	echo "bytes per image: $per_image, under the 4 MiB target"
else
	echo "bytes per image: $per_image, OVER the 4 MiB target"
	exit 1
fi
