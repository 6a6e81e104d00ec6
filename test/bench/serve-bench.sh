#!/usr/bin/env bash
# Benchmark of serve in the test cloud (not part of CI):
#  1. latency: the time from an upload finished to the sidecar's properties visible on the image,
#     for qcow2 images holding 64 MiB, 1 GiB and 4 GiB of data (SIZES), RUNS times each, against
#     "download the whole image to disk, then qemu-img info" measured in the same run; and the
#     image bytes serve read per image (target: under 1 s and flat in size);
#  2. a burst of BURST uploads: the time until every image has an outcome, and the peak RSS of
#     serve (VmHWM of a serve started just for the burst).
# Needs the test cloud up (test/cloud/up.sh) and about 3 x the largest size of free disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
sizes=${SIZES:-64M 1G 4G}
runs=${RUNS:-5}
burst=${BURST:-100}
listen=127.0.0.1:29495
work=$(mktemp -d)
# shellcheck disable=SC1091
. "$state/env"
queue=glance-sidecar-bench-$$
# The bench's images belong to a project of their own, and serve looks only at those: the
# bytes it reads are the bench's, whatever else happens in the cloud.
owner=$(tr -d - </proc/sys/kernel/random/uuid)
pid=
stop_serve() {
	if [[ -n $pid ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		pid=
	fi
}
cleanup() {
	stop_serve
	"$GSC_RABBITMQCTL" -q delete_queue -p "$GSC_RABBIT_VHOST" "$queue" >/dev/null 2>&1 || true
	"$GSC_RABBITMQCTL" -q delete_queue -p "$GSC_RABBIT_VHOST" "$queue.retry" >/dev/null 2>&1 || true
	"$GSC_RABBITMQCTL" -q delete_queue -p "$GSC_RABBIT_VHOST" "$queue.dead" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/glance-sidecar" ./cmd/glance-sidecar
go build -o "$work/servebench" ./test/bench/servebench
start_serve() {
	mkdir -p "$work/ws"
	"$work/glance-sidecar" serve --glance-cloud sidecar --glance-clouds-file "$GSC_CLOUDS_YAML" \
		--amqp-transport-url "$GSC_TRANSPORT_URL" --amqp-queue "$queue" --webhook-listen "$listen" \
		--workspace-dir "$work/ws" --inspect-owners "$owner" --reconcile-interval 0 \
		--log-level warn 2>>"$work/serve.log" &
	pid=$!
	for _ in $(seq 100); do
		curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && return
		sleep 0.1
	done
	cat "$work/serve.log" >&2
	exit 1
}

files=()
for size in $sizes; do
	echo "making a qcow2 holding $size of random data" >&2
	head -c "$size" /dev/urandom >"$work/data.raw"
	qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$work/data-$size.qcow2"
	rm "$work/data.raw"
	files+=("$work/data-$size.qcow2")
done

start_serve
echo "== latency: upload finished -> properties visible, median of $runs" >&2
"$work/servebench" latency -clouds-file "$GSC_CLOUDS_YAML" -metrics "http://$listen/metrics" -runs "$runs" -owner "$owner" "${files[@]}"
stop_serve
rm -f "${files[@]:1}"

start_serve
echo "== burst of $burst uploads ($(basename "${files[0]}"))" >&2
"$work/servebench" burst -clouds-file "$GSC_CLOUDS_YAML" -n "$burst" -owner "$owner" "${files[0]}"
echo "serve peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
stop_serve
