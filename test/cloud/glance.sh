#!/usr/bin/env bash
# Stops, starts and restarts the glance-api of a test cloud made by up.sh: the pid up.sh recorded,
# never a process found by name. For tests that change glance-api.conf (test/devstack/run.sh).
#
#   glance.sh start    start glance-api unless it runs and answers; return once it answers
#   glance.sh stop     TERM the recorded pid (and its workers), wait up to GSC_STOP_TIMEOUT s, KILL
#   glance.sh restart  stop, then start: Glance reads glance-api.conf again
#
# State directory: GSC_CLOUD_DIR, default /tmp/glance-sidecar-cloud; the port and the server mode
# (eventlet or uwsgi) are the ones up.sh recorded in its env file. See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

usage() { # usage EXIT-CODE: the comment at the top of this file
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit "$1"
}
(($# == 1)) || usage 2
cmd=$1
case $cmd in
start | stop | restart) ;;
-h | --help) usage 0 ;;
*) usage 2 ;;
esac
[[ -f $STATE/env ]] || die "no test cloud in $STATE (test/cloud/up.sh makes one)"
[[ $GSC_SERVICES == all ]] || die "the test cloud in $STATE has no Glance (GSC_SERVICES=$GSC_SERVICES)"

# Glance's settings are the ones up.sh used, whatever the caller's environment says.
while IFS='=' read -r k v; do
	case $k in
	GSC_GLANCE_PORT | GSC_GLANCE_SERVER) printf -v "$k" '%s' "$v" ;;
	esac
done <"$STATE/env"

# One at a time, and not while up.sh, down.sh or rabbitmq.sh work on this directory.
exec 9>"$STATE/.lock"
flock -w 120 9 || die "another up.sh, down.sh, rabbitmq.sh or glance.sh holds $STATE/.lock"

t0=$EPOCHREALTIME
if [[ $cmd == stop || $cmd == restart ]]; then
	stop_pid glance-api
fi
if [[ $cmd == start || $cmd == restart ]]; then
	if recorded_pid glance-api >/dev/null && glance_ok; then
		log "glance-api is running"
	else
		stop_pid glance-api # what a dead one left behind
		start_glance
	fi
fi
log "glance-api: $cmd done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
