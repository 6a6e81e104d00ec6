#!/usr/bin/env bash
# Benchmark of conversion in the test cloud (not part of CI): a qcow2 holding DATA of random data
# (default 1G) converted to raw and uploaded by the sidecar's job (download, qemu-img and upload
# overlapped), against download + qemu-img convert + upload one after the other, in the same run,
# RUNS times (default 3). Target: the job takes at most 1.2 x the upload alone.
# Needs the test cloud up (test/cloud/up.sh) and about 4 x DATA of free disk.
# CPUPROFILE=FILE writes a Go CPU profile of the first job (go tool pprof FILE).
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
data=${DATA:-1G}
runs=${RUNS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "making a qcow2 holding $data of random data" >&2
head -c "$data" /dev/urandom >"$work/data.raw"
qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$work/image.qcow2"
rm "$work/data.raw"
go build -o "$work/convertbench" ./test/bench/convertbench
"$work/convertbench" ${CPUPROFILE:+-cpuprofile "$CPUPROFILE"} -clouds-file "$state/clouds.yaml" -runs "$runs" "$work/image.qcow2"
