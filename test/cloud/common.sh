# shellcheck shell=bash
# shellcheck disable=SC2034 # settings used by the scripts that source this file
# Settings and helpers shared by up.sh and down.sh (sourced, not run).
#
# Every setting can be overridden from the environment; up.sh writes the values it used into
# $GSC_CLOUD_DIR/env, and down.sh only needs GSC_CLOUD_DIR to find what to stop.

GSC_CLOUD_DIR=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
GSC_KEYSTONE_PORT=${GSC_KEYSTONE_PORT:-25000}
GSC_GLANCE_PORT=${GSC_GLANCE_PORT:-29292}
# Not 25672: that is RabbitMQ's default Erlang distribution port (AMQP 5672 + 20000), which a
# distro rabbitmq-server binds on every interface.
GSC_RABBIT_PORT=${GSC_RABBIT_PORT:-25682}
GSC_RABBIT_DIST_PORT=${GSC_RABBIT_DIST_PORT:-25683}
GSC_EPMD_PORT=${GSC_EPMD_PORT:-24369}
GSC_RABBIT_NODE=${GSC_RABBIT_NODE:-gsc@localhost}
GSC_RABBIT_VHOST=${GSC_RABBIT_VHOST:-gsc}
GSC_REGION=${GSC_REGION:-RegionOne}
GSC_KEYSTONE_PROCESSES=${GSC_KEYSTONE_PROCESSES:-4}
GSC_GLANCE_WORKERS=${GSC_GLANCE_WORKERS:-2}
# How glance-api runs: "eventlet" (the glance-api program, as Debian's init script runs it) or
# "uwsgi" (glance-wsgi-api under uwsgi with http-chunked-input, as devstack runs it).
GSC_GLANCE_SERVER=${GSC_GLANCE_SERVER:-eventlet}
# [oslo_messaging_notifications] retry: -1 (oslo's default) blocks Glance API calls that notify
# while RabbitMQ is down until it is back; N gives up after N retries (the call succeeds).
GSC_NOTIFY_RETRY=${GSC_NOTIFY_RETRY:--1}
# Seconds each service gets to become ready, and down.sh gives each pid after TERM.
GSC_READY_TIMEOUT=${GSC_READY_TIMEOUT:-180}
GSC_STOP_TIMEOUT=${GSC_STOP_TIMEOUT:-30}

# Fixed credentials: this cloud only ever listens on 127.0.0.1.
ADMIN_PASSWORD=gsc-admin-secret
GLANCE_PASSWORD=gsc-glance-secret
SIDECAR_PASSWORD=gsc-sidecar-secret
DEMO_PASSWORD=gsc-demo-secret
RABBIT_USER=gsc
RABBIT_PASSWORD=gsc-rabbit-secret
ERLANG_COOKIE=GSCTESTCLOUDCOOKIE

STATE=$GSC_CLOUD_DIR
PIDS=$STATE/pids
LOGS=$STATE/log

# Debian's tools, whatever python3 is first on PATH.
PY=/usr/bin/python3
KEYSTONE_MANAGE=/usr/bin/keystone-manage
GLANCE_MANAGE=/usr/bin/glance-manage
OPENSTACK=/usr/bin/openstack
UWSGI=/usr/bin/uwsgi
EPMD=/usr/bin/epmd
RABBIT_SBIN=/usr/lib/rabbitmq/bin

# A caller's OpenStack or Python settings must not leak into Debian's tools.
unset PYTHONHOME PYTHONPATH
while read -r v; do unset "$v"; done < <(compgen -e | grep '^OS_' || true)
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# The start time of a process (field 22 of /proc/PID/stat), so a recycled pid is never taken
# for ours.
proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	printf '%s\n' "${20}"
}

# record NAME PID: writes $PIDS/NAME.pid (and NAME.start, the process start time).
record_pid() {
	mkdir -p "$PIDS"
	printf '%s\n' "$2" >"$PIDS/$1.pid"
	proc_start "$2" >"$PIDS/$1.start" || true
}

# recorded_pid NAME: prints the recorded pid when that very process is still alive.
recorded_pid() {
	local pid start now
	[[ -f $PIDS/$1.pid ]] || return 1
	pid=$(<"$PIDS/$1.pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	now=$(proc_start "$pid") || return 1
	if [[ -f $PIDS/$1.start ]]; then
		start=$(<"$PIDS/$1.start")
		[[ -z $start || $start == "$now" ]] || return 1
	fi
	# A zombie is not alive.
	[[ $(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) != Z ]] || return 1
	printf '%s\n' "$pid"
}

# group_members PGID: the pids in process group PGID.
group_members() {
	ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'
}

# group_leftovers PGID: the processes still in the process group PGID whose command line names
# our state directory (uwsgi and glance-api workers, the Erlang VM): ours, not a stranger that
# happens to get a recycled group id.
group_leftovers() {
	local p cmd
	for p in $(group_members "$1"); do
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
		if [[ $cmd == *"$STATE/"* ]]; then
			printf '%s\n' "$p"
		fi
	done
}

# stop_pid NAME: TERM the recorded process, wait up to GSC_STOP_TIMEOUT s, then KILL it. Each
# service is started as the leader of its own process group (setsid), so children it left behind
# (uwsgi and glance-api workers, the Erlang VM under the rabbitmq-server script) are found in that
# group and get the same treatment. Removes the pid files.
stop_pid() {
	local name=$1 pid pgid i left
	if pid=$(recorded_pid "$name"); then
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < GSC_STOP_TIMEOUT * 10; i++)); do
			recorded_pid "$name" >/dev/null || break
			sleep 0.1
		done
		if recorded_pid "$name" >/dev/null; then
			log "$name (pid $pid) still alive after ${GSC_STOP_TIMEOUT}s: KILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	if [[ -f $PIDS/$name.pgid ]] && pgid=$(<"$PIDS/$name.pgid") && [[ $pgid =~ ^[0-9]+$ ]]; then
		left=$(group_leftovers "$pgid")
		if [[ -n $left ]]; then
			log "stopping what $name left in its process group: $(echo "$left" | tr '\n' ' ')"
			# shellcheck disable=SC2086
			kill -TERM $left 2>/dev/null || true
			for ((i = 0; i < GSC_STOP_TIMEOUT * 10; i++)); do
				[[ -n $(group_leftovers "$pgid") ]] || break
				sleep 0.1
			done
			left=$(group_leftovers "$pgid")
			# shellcheck disable=SC2086
			[[ -z $left ]] || kill -KILL $left 2>/dev/null || true
		fi
	fi
	rm -f "$PIDS/$name.pid" "$PIDS/$name.start" "$PIDS/$name.pgid" "$PIDS/$name.mode"
}

# start_bg NAME LOGFILE CMD...: starts CMD in its own session and process group (setsid without
# fork keeps the pid), stdin from /dev/null, stdout and stderr to LOGFILE; records the pid.
start_bg() {
	local name=$1 logfile=$2 pid pgid
	shift 2
	mkdir -p "$(dirname "$logfile")"
	setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
	pid=$!
	record_pid "$name" "$pid"
	pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || true
	if [[ $pgid == "$pid" ]]; then
		printf '%s\n' "$pgid" >"$PIDS/$name.pgid"
	fi
	log "started $name (pid $pid), log $logfile"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The environment RabbitMQ's scripts (server and CLI) need to find our node and only ours.
rabbit_env() {
	export HOME=$STATE/rabbitmq/home
	export RABBITMQ_CONF_ENV_FILE=$STATE/rabbitmq/rabbitmq-env.conf
	export RABBITMQ_NODENAME=$GSC_RABBIT_NODE
	export RABBITMQ_USE_LONGNAME=false
	export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
	export RABBITMQ_NODE_PORT=$GSC_RABBIT_PORT
	export RABBITMQ_DIST_PORT=$GSC_RABBIT_DIST_PORT
	export RABBITMQ_CONFIG_FILE=$STATE/rabbitmq/rabbitmq.conf
	export RABBITMQ_ADVANCED_CONFIG_FILE=$STATE/rabbitmq/advanced.config
	export RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/rabbitmq/enabled_plugins
	export RABBITMQ_MNESIA_BASE=$STATE/rabbitmq/mnesia
	export RABBITMQ_LOG_BASE=$LOGS/rabbitmq
	export RABBITMQ_PID_FILE=$STATE/rabbitmq/rabbitmq.pid
	export RABBITMQ_CTL_DIST_PORT_MIN=$((GSC_RABBIT_DIST_PORT + 1))
	export RABBITMQ_CTL_DIST_PORT_MAX=$((GSC_RABBIT_DIST_PORT + 10))
	# Erlang distribution (the node's and the CLI's) on loopback only; never start an epmd of
	# its own: ours runs on ERL_EPMD_PORT.
	export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
	export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
	export ERL_EPMD_PORT=$GSC_EPMD_PORT
	export ERL_EPMD_ADDRESS=127.0.0.1
}

# rmqctl ARGS...: rabbitmqctl bound to our node. Never run while our epmd is down (the CLI would
# try to start an epmd of its own).
rmqctl() {
	recorded_pid epmd >/dev/null || {
		log "rabbitmqctl: our epmd is not running"
		return 1
	}
	(
		rabbit_env
		"$RABBIT_SBIN/rabbitmqctl" -n "$GSC_RABBIT_NODE" "$@"
	)
}
