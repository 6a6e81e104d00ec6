#!/usr/bin/env bash
# Stops, starts and restarts the RabbitMQ node of a test cloud made by up.sh, keeping its epmd
# and its data (durable queues and persistent messages survive): for tests of reconnects.
#
#   rabbitmq.sh start        start the node (and epmd) unless running; return once it has booted
#   rabbitmq.sh stop         TERM the node's recorded pid, wait up to GSC_STOP_TIMEOUT s, then KILL
#   rabbitmq.sh restart      stop, then start (a new Erlang VM: several seconds)
#   rabbitmq.sh kill         KILL the node at once (a crash: clients get no connection.close)
#   rabbitmq.sh stop-app     stop only the broker application inside the running node
#   rabbitmq.sh start-app    start it again
#   rabbitmq.sh restart-app  stop-app, then start-app (about a second)
#   rabbitmq.sh status       print the state; exit 0 when the broker accepts AMQP connections,
#                            3 when it is stopped, 1 when its process runs but does not answer
#
# State directory: GSC_CLOUD_DIR, default /tmp/glance-sidecar-rabbitmq (what up.sh makes with
# GSC_SERVICES=rabbitmq); the node's name and ports come from its env file. Without that file,
# start and restart run up.sh with GSC_SERVICES=rabbitmq first. epmd keeps running; down.sh stops
# everything. See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GSC_CLOUD_DIR=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-rabbitmq}
caller_services=${GSC_SERVICES:-}
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

usage() { # usage EXIT-CODE: the comment at the top of this file
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit "$1"
}
(($# == 1)) || usage 2
cmd=$1
case $cmd in
start | stop | restart | kill | stop-app | start-app | restart-app | status) ;;
-h | --help) usage 0 ;;
*) usage 2 ;;
esac
[[ $STATE == /* && $STATE != *[[:space:]]* ]] || die "GSC_CLOUD_DIR must be an absolute path without spaces"

if [[ ! -f $STATE/env ]]; then
	case $cmd in
	start | restart | start-app | restart-app)
		log "$STATE/env does not exist: running up.sh"
		GSC_CLOUD_DIR=$STATE GSC_SERVICES=${caller_services:-rabbitmq} exec "$HERE/up.sh"
		;;
	status)
		echo "stopped (no $STATE/env)"
		exit 3
		;;
	*)
		log "nothing to do: $STATE/env does not exist"
		exit 0
		;;
	esac
fi

# The node's settings are the ones up.sh used (recorded in the env file), whatever the caller's
# environment says.
while IFS='=' read -r k v; do
	case $k in
	GSC_RABBIT_PORT | GSC_RABBIT_DIST_PORT | GSC_EPMD_PORT | GSC_RABBIT_NODE | GSC_RABBIT_VHOST)
		printf -v "$k" '%s' "$v"
		;;
	esac
done <"$STATE/env"

# seconds_since T0: seconds from EPOCHREALTIME T0 to now, one decimal.
seconds_since() {
	awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

if [[ $cmd == status ]]; then
	epmd_state=down
	if epmd_pid=$(recorded_pid epmd); then
		epmd_state="pid $epmd_pid, 127.0.0.1:$GSC_EPMD_PORT"
	fi
	if pid=$(recorded_pid rabbitmq); then
		if [[ -f $PIDS/rabbitmq.app-stopped ]]; then
			echo "app stopped: node $GSC_RABBIT_NODE (pid $pid) runs, its broker application is stopped (rabbitmq.sh start-app), epmd $epmd_state"
			exit 3
		fi
		if port_open "$GSC_RABBIT_PORT"; then
			echo "running: node $GSC_RABBIT_NODE (pid $pid), amqp 127.0.0.1:$GSC_RABBIT_PORT, epmd $epmd_state"
			exit 0
		fi
		echo "not answering: node $GSC_RABBIT_NODE (pid $pid) does not accept connections on 127.0.0.1:$GSC_RABBIT_PORT (booting or stopping?), epmd $epmd_state"
		exit 1
	fi
	echo "stopped: node $GSC_RABBIT_NODE, epmd $epmd_state"
	exit 3
fi

# One at a time, and not while up.sh or down.sh work on this directory.
exec 9>"$STATE/.lock"
flock -w 120 9 || die "another up.sh, down.sh or rabbitmq.sh holds $STATE/.lock"

do_stop() {
	local t0=$EPOCHREALTIME
	if recorded_pid rabbitmq >/dev/null; then
		stop_pid rabbitmq
		log "stopped RabbitMQ in $(seconds_since "$t0")s"
	else
		stop_pid rabbitmq # what a dead one left behind
		log "RabbitMQ is not running"
	fi
}

# KILL the node: the rabbitmq-server script (the recorded pid) and the Erlang VM it started (in
# the script's process group, its command line names the state directory).
do_kill() {
	local pid pgid left i
	if ! pid=$(recorded_pid rabbitmq); then
		stop_pid rabbitmq
		log "RabbitMQ is not running"
		return 0
	fi
	left=
	if [[ -f $PIDS/rabbitmq.pgid ]] && pgid=$(<"$PIDS/rabbitmq.pgid") && [[ $pgid =~ ^[0-9]+$ ]]; then
		left=$(group_leftovers "$pgid")
	fi
	log "killing RabbitMQ (pid $pid${left:+ and ${left//$'\n'/ }})"
	# shellcheck disable=SC2086
	kill -KILL $left "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		if ! recorded_pid rabbitmq >/dev/null && [[ -z ${pgid:-} || -z $(group_leftovers "$pgid") ]]; then
			break
		fi
		sleep 0.05
	done
	stop_pid rabbitmq # removes the pid files (and whatever is still left)
}

do_start() {
	local t0=$EPOCHREALTIME
	ensure_epmd
	if recorded_pid rabbitmq >/dev/null; then
		if [[ -f $PIDS/rabbitmq.app-stopped ]]; then
			do_start_app
			return 0
		fi
		wait_ready rabbitmq "RabbitMQ on 127.0.0.1:$GSC_RABBIT_PORT" port_open "$GSC_RABBIT_PORT"
		log "RabbitMQ is running"
		return 0
	fi
	mkdir -p "$LOGS/rabbitmq"
	start_rabbitmq
	log "started RabbitMQ in $(seconds_since "$t0")s: amqp 127.0.0.1:$GSC_RABBIT_PORT"
}

# The broker application inside the running node (the Erlang VM, its distribution port and epmd
# stay up).
do_stop_app() {
	local t0=$EPOCHREALTIME
	recorded_pid rabbitmq >/dev/null || die "RabbitMQ is not running (rabbitmq.sh start)"
	rabbit_app stop
	wait_ready rabbitmq "the AMQP listener on 127.0.0.1:$GSC_RABBIT_PORT to close" port_closed
	log "stopped the RabbitMQ application in $(seconds_since "$t0")s (node still running)"
}
port_closed() { ! port_open "$GSC_RABBIT_PORT"; }
do_start_app() {
	local t0=$EPOCHREALTIME mark
	recorded_pid rabbitmq >/dev/null || die "RabbitMQ is not running (rabbitmq.sh start)"
	if [[ ! -f $PIDS/rabbitmq.app-stopped ]] && port_open "$GSC_RABBIT_PORT"; then
		log "RabbitMQ is running"
		return 0
	fi
	mark=$(stat -c %s "$(rabbit_log)" 2>/dev/null || echo 0)
	rabbit_app start
	wait_ready rabbitmq "RabbitMQ on 127.0.0.1:$GSC_RABBIT_PORT" rabbit_booted "$mark"
	log "started the RabbitMQ application in $(seconds_since "$t0")s: amqp 127.0.0.1:$GSC_RABBIT_PORT"
}

t_all=$EPOCHREALTIME
case $cmd in
start) do_start ;;
stop) do_stop ;;
kill) do_kill ;;
restart)
	do_stop
	do_start
	log "restarted RabbitMQ in $(seconds_since "$t_all")s"
	;;
stop-app) do_stop_app ;;
start-app) do_start_app ;;
restart-app)
	do_stop_app
	do_start_app
	log "restarted the RabbitMQ application in $(seconds_since "$t_all")s"
	;;
esac
