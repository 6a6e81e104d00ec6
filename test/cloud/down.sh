#!/usr/bin/env bash
# Stops glance-sidecar's test cloud: exactly the processes up.sh recorded in
# $GSC_CLOUD_DIR/pids (TERM, wait up to GSC_STOP_TIMEOUT s, then KILL), Glance first, epmd last.
# --purge also removes the state directory (databases, images, logs, configs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

purge=0
for arg in "$@"; do
	case $arg in
	--purge) purge=1 ;;
	-h | --help)
		sed -n '2,4p' "$0"
		exit 0
		;;
	*) die "unknown argument: $arg (usage: down.sh [--purge])" ;;
	esac
done

if [[ ! -d $STATE ]]; then
	log "nothing to do: $STATE does not exist"
	exit 0
fi
[[ $STATE == /* && $STATE != / ]] || die "refusing GSC_CLOUD_DIR=$STATE"

exec 9>"$STATE/.lock"
flock -w 60 9 || die "another up.sh or down.sh holds $STATE/.lock"

t0=$SECONDS
order=(glance-api keystone rabbitmq epmd)
for name in "${order[@]}"; do
	stop_pid "$name"
done
# Anything else up.sh may have recorded.
shopt -s nullglob
for f in "$PIDS"/*.pid; do
	stop_pid "$(basename "$f" .pid)"
done
left=("$PIDS"/*.pid)
((${#left[@]} == 0)) || die "pid files left: ${left[*]}"
log "stopped in $((SECONDS - t0))s"

if ((purge)); then
	# Only a directory that looks like ours.
	[[ -f $STATE/env || -d $STATE/pids || -f $STATE/.lock ]] || die "$STATE does not look like a test cloud state dir"
	exec 9>&-
	rm -rf -- "$STATE"
	log "removed $STATE"
fi
