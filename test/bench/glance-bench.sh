#!/usr/bin/env bash
# Benchmark of glanceclient against the test cloud (not part of CI):
#  1. a qcow2 holding DATA_GIB GiB of data (default 4) is inspected through HTTP Range
#     requests: bytes transferred and wall time, against a full download in the same run;
#  2. the full download with sha512 verification against `curl` plus `sha512sum` of the same
#     image (target: at least 0.9 x the slower of download and hashing).
# Needs the test cloud up (test/cloud/up.sh) and about 3 x DATA_GIB GiB of free disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
gib=${DATA_GIB:-4}
runs=${RUNS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OS_CLIENT_CONFIG_FILE=$state/clouds.yaml OS_CLOUD=sidecar
os=(/usr/bin/openstack)

echo "making a qcow2 holding $gib GiB of random data"
head -c "${gib}G" /dev/urandom >"$work/data.raw"
qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$work/img.qcow2"
rm "$work/data.raw"
echo "uploading $(stat -c %s "$work/img.qcow2") bytes"
id=$("${os[@]}" image create --disk-format qcow2 --container-format bare --file "$work/img.qcow2" -f value -c id "gsc-bench-$$")
trap '"${os[@]}" image delete "$id" || true; rm -rf "$work"' EXIT
for _ in $(seq 60); do
	[[ $("${os[@]}" image show -f value -c status "$id") == active ]] && break
	sleep 1
done

go run ./test/bench/glancebench -cloud sidecar -clouds-file "$state/clouds.yaml" -image "$id" -runs "$runs" | tee "$work/go.out"

token=$("${os[@]}" token issue -f value -c id)
url=$("${os[@]}" catalog show image -f json | /usr/bin/python3 -c 'import json,sys; print([e["url"] for e in json.load(sys.stdin)["endpoints"] if e["interface"]=="public"][0])')
size=$(stat -c %s "$work/img.qcow2")
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_of() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
curl_t=() sum_t=() pipe_t=()
for _ in $(seq "$runs"); do
	curl_t+=("$(time_of curl -sf -H "X-Auth-Token: $token" "$url/v2/images/$id/file" -o /dev/null)")
	sum_t+=("$(time_of sha512sum "$work/img.qcow2")")
	pipe_t+=("$(time_of bash -c "curl -sf -H 'X-Auth-Token: $token' '$url/v2/images/$id/file' | sha512sum")")
done
c=$(printf '%s\n' "${curl_t[@]}" | median)
h=$(printf '%s\n' "${sum_t[@]}" | median)
p=$(printf '%s\n' "${pipe_t[@]}" | median)
mbps() { echo "$size / $1 / 1000000" | bc -l | xargs printf '%.0f'; }
go_mbps=$(sed -n 's/^DOWNLOAD_MBPS=//p' "$work/go.out")
slower=$(echo "if ($(mbps "$c") < $(mbps "$h")) $(mbps "$c") else $(mbps "$h")" | bc)
echo "curl download alone: median ${c}s, $(mbps "$c") MB/s"
echo "sha512sum alone:     median ${h}s, $(mbps "$h") MB/s"
echo "curl | sha512sum:    median ${p}s, $(mbps "$p") MB/s"
echo "glanceclient Download+verify: $go_mbps MB/s = $(echo "$go_mbps / $slower" | bc -l | xargs printf '%.2f') x the slower of download and hashing (target >= 0.90)"
