# shellcheck shell=bash
# shellcheck disable=SC2034 # settings used by the scripts that source this file
# Settings and helpers shared by up.sh and down.sh (sourced, not run).
#
# Every setting can be overridden from the environment; up.sh writes the values it used into
# $GSC_CLOUD_DIR/env, and down.sh only needs GSC_CLOUD_DIR to find what to stop.

# What runs: "all" (RabbitMQ, Keystone, Glance) or "rabbitmq" (only RabbitMQ, e.g. for the
# consumer's tests, which restart it with rabbitmq.sh). Each mode has its own default state
# directory and ports, so one of each can run at the same time. Without GSC_SERVICES, the mode is
# the one recorded in an existing state directory's env file (else "all").
case ${GSC_SERVICES:-} in
rabbitmq) GSC_CLOUD_DIR=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-rabbitmq} ;;
*) GSC_CLOUD_DIR=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud} ;;
esac
# The mode recorded in $GSC_CLOUD_DIR/env (empty when there is none).
GSC_SERVICES_RECORDED=$(sed -n 's/^GSC_SERVICES=//p' "$GSC_CLOUD_DIR/env" 2>/dev/null || true)
if [[ -z ${GSC_SERVICES:-} && -f $GSC_CLOUD_DIR/env ]]; then
	GSC_SERVICES=${GSC_SERVICES_RECORDED:-all}
fi
GSC_SERVICES=${GSC_SERVICES:-all}
GSC_KEYSTONE_PORT=${GSC_KEYSTONE_PORT:-25000}
GSC_GLANCE_PORT=${GSC_GLANCE_PORT:-29292}
# Not 25672: that is RabbitMQ's default Erlang distribution port (AMQP 5672 + 20000), which a
# distro rabbitmq-server binds on every interface.
if [[ $GSC_SERVICES == rabbitmq ]]; then
	GSC_RABBIT_PORT=${GSC_RABBIT_PORT:-26682}
	GSC_RABBIT_DIST_PORT=${GSC_RABBIT_DIST_PORT:-26683}
	GSC_EPMD_PORT=${GSC_EPMD_PORT:-26369}
	GSC_RABBIT_NODE=${GSC_RABBIT_NODE:-gscmq@localhost}
else
	GSC_RABBIT_PORT=${GSC_RABBIT_PORT:-25682}
	GSC_RABBIT_DIST_PORT=${GSC_RABBIT_DIST_PORT:-25683}
	GSC_EPMD_PORT=${GSC_EPMD_PORT:-24369}
	GSC_RABBIT_NODE=${GSC_RABBIT_NODE:-gsc@localhost}
fi
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
# group and get the same treatment. Removes the pid files (and NAME.mode, NAME.app-stopped).
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
	rm -f "$PIDS/$name.pid" "$PIDS/$name.start" "$PIDS/$name.pgid" "$PIDS/$name.mode" \
		"$PIDS/$name.app-stopped"
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

# wait_ready NAME DESCRIPTION CMD...: polls CMD every 0.2 s for GSC_READY_TIMEOUT s; gives up at
# once if the recorded process NAME died.
wait_ready() {
	local name=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + GSC_READY_TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		if ! recorded_pid "$name" >/dev/null; then
			log "$name died while waiting for $what; last lines of its logs:"
			tail -n 30 "$LOGS/$name".* >&2 || true
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "timed out after ${GSC_READY_TIMEOUT}s waiting for $what"
			tail -n 30 "$LOGS/$name".* >&2 || true
			return 1
		fi
		sleep 0.2
	done
}

port_must_be_free() {
	if port_open "$1"; then
		die "127.0.0.1:$1 is in use by a process this cloud did not start ($2); set another port (see README.md)"
	fi
}

# The node's own log file (RabbitMQ names it after the node).
rabbit_log() {
	printf '%s\n' "$LOGS/rabbitmq/$GSC_RABBIT_NODE.log"
}

# rabbit_booted MARK: the node's AMQP port accepts connections and its log, from byte MARK on
# (its size before this start), says the boot is complete. No CLI involved: rabbitmqctl takes
# half a second or more just to start its own Erlang VM.
rabbit_booted() {
	local f=$LOGS/rabbitmq/$GSC_RABBIT_NODE.log mark=$1 size
	port_open "$GSC_RABBIT_PORT" || return 1
	size=$(stat -c %s "$f" 2>/dev/null) || return 1
	((size >= mark)) || mark=0
	[[ $(tail -c "+$((mark + 1))" "$f") == *"Server startup complete"* ]]
}

# ensure_epmd: starts our epmd unless it is running. A node whose epmd went away cannot be
# reached any more: it is stopped first.
ensure_epmd() {
	recorded_pid epmd >/dev/null && return 0
	stop_pid rabbitmq
	stop_pid epmd
	port_must_be_free "$GSC_EPMD_PORT" epmd
	start_bg epmd "$LOGS/epmd.log" env ERL_EPMD_PORT="$GSC_EPMD_PORT" \
		"$EPMD" -port "$GSC_EPMD_PORT" -address 127.0.0.1
	wait_ready epmd "epmd on 127.0.0.1:$GSC_EPMD_PORT" port_open "$GSC_EPMD_PORT"
}

# start_rabbitmq: starts the node (our epmd must be running) with the state directory's
# configuration and data (mnesia: vhosts, users, durable queues, persistent messages), and waits
# until it has booted.
start_rabbitmq() {
	local mark
	stop_pid rabbitmq # what a dead one left behind
	port_must_be_free "$GSC_RABBIT_PORT" "RabbitMQ AMQP"
	port_must_be_free "$GSC_RABBIT_DIST_PORT" "RabbitMQ distribution"
	mark=$(stat -c %s "$(rabbit_log)" 2>/dev/null || echo 0)
	(
		rabbit_env
		start_bg rabbitmq "$LOGS/rabbitmq.out" "$RABBIT_SBIN/rabbitmq-server"
	)
	wait_ready rabbitmq "RabbitMQ on 127.0.0.1:$GSC_RABBIT_PORT" rabbit_booted "$mark"
}

# rabbit_app start|stop: starts or stops the broker application inside the running node
# (rabbitmqctl start_app / stop_app, without the CLI's own Erlang VM): erl_call talks to the
# node's distribution port directly, in milliseconds. The node keeps running; "stop" closes every
# client connection and the AMQP listener, "start" recovers vhosts and durable queues from disk.
# Marks a stopped application with $PIDS/rabbitmq.app-stopped.
rabbit_app() {
	local action=$1 erl_call='' f out timeout=$GSC_READY_TIMEOUT
	for f in /usr/lib/erlang/erts-*/bin/erl_call /usr/lib/erlang/lib/erl_interface-*/bin/erl_call; do
		if [[ -x $f ]]; then
			erl_call=$f
			break
		fi
	done
	[[ -n $erl_call ]] || die "erl_call not found (package erlang-base)"
	[[ $action == stop ]] && timeout=$GSC_STOP_TIMEOUT
	[[ $action == stop ]] && touch "$PIDS/rabbitmq.app-stopped"
	out=$("$erl_call" -c "$ERLANG_COOKIE" -address "127.0.0.1:$GSC_RABBIT_DIST_PORT" \
		-timeout "$timeout" -a "rabbit $action" 2>&1) || die "erl_call rabbit $action: $out"
	[[ $out == ok ]] || die "rabbit:$action() returned $out"
	[[ $action == start ]] && rm -f "$PIDS/rabbitmq.app-stopped"
	return 0
}

# glance_ok: Glance answers GET /versions.
glance_ok() {
	[[ $(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "http://127.0.0.1:$GSC_GLANCE_PORT/versions" || true) == 200 ]]
}

# start_glance: starts glance-api as GSC_GLANCE_SERVER says (the glance-api program, or
# glance-wsgi-api under uwsgi) with the state directory's configuration, records its pid and
# mode, and waits until it answers. PYTHONPATH brings in the SQLite hook up.sh writes
# (BEGIN IMMEDIATE; see there).
start_glance() {
	port_must_be_free "$GSC_GLANCE_PORT" Glance
	if [[ $GSC_GLANCE_SERVER == uwsgi ]]; then
		start_bg glance-api "$LOGS/glance-api.out" env PYTHONPATH="$STATE/glance/pyhooks" \
			"$UWSGI" --ini "$STATE/glance/uwsgi.ini"
	else
		start_bg glance-api "$LOGS/glance-api.out" env PYTHONPATH="$STATE/glance/pyhooks" \
			/usr/bin/glance-api --config-file "$STATE/glance/glance-api.conf"
	fi
	echo "$GSC_GLANCE_SERVER" >"$PIDS/glance-api.mode"
	wait_ready glance-api "Glance on 127.0.0.1:$GSC_GLANCE_PORT" glance_ok
}
