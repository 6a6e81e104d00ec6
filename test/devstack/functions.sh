# shellcheck shell=bash
# shellcheck disable=SC2034 # devstack's globals, read by devstack/settings and devstack/plugin.sh
# The part of devstack that glance-sidecar's plugin uses, implemented over the project's test cloud
# (test/cloud/up.sh) so that run.sh can source devstack/plugin.sh as stack.sh would. Sourced by
# run.sh after it has read the cloud's env file (GSC_*) and set DEVSTACK_STATE, a directory of its
# own; every function keeps devstack's name, arguments and output.
#
# What differs from a devstack host: services run as background processes of run.sh (logs and
# pids in $DEVSTACK_STATE), not as devstack@NAME systemd units; Keystone is the cloud's; and
# RabbitMQ listens on the cloud's port and vhost, which get_transport_url puts in the URL.

# -- globals (stackrc, lib/keystone, lib/glance, lib/rpc_backend) ------------------------------
DEST=$DEVSTACK_STATE/stack
DATA_DIR=$DEST/data
STACK_USER=$(id -un)
SERVICE_TIMEOUT=60
REGION_NAME=$GSC_REGION
# devstack's KEYSTONE_SERVICE_URI has no version (http://HOST/identity): clients discover v3.
KEYSTONE_SERVICE_URI=${GSC_KEYSTONE_URL%/v3}
SERVICE_DOMAIN_NAME=Default
SERVICE_PROJECT_NAME=service
GLANCE_API_CONF=$GSC_GLANCE_CONF
RABBIT_HOST=$GSC_RABBIT_HOST
RABBIT_USERID=$GSC_RABBIT_USER
RABBIT_PASSWORD=$GSC_RABBIT_PASSWORD
ENABLED_SERVICES=key,g-api,rabbit

DEVSTACK_LOGS=$DEVSTACK_STATE/logs
DEVSTACK_PIDS=$DEVSTACK_STATE/pids
KEYSTONE_PY=(env -u PYTHONPATH -u PYTHONHOME /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/keystone.py")

# -- functions-common ------------------------------------------------------------------------
# die LINENO MESSAGE...
die() {
	local line=$1
	shift
	echo "[ERROR] line $line: $*" >&2
	exit 1
}

echo_summary() {
	echo "== $*"
}

# trueorfalse DEFAULT VARNAME: True or False from the variable's value, DEFAULT when unset or
# not a boolean.
trueorfalse() {
	local value=${!2:-}
	case $value in
	1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
	0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
	*) echo "$1" ;;
	esac
}

enable_service() {
	local s
	for s in "$@"; do
		is_service_enabled "$s" || ENABLED_SERVICES+=,$s
	done
}

# is_service_enabled SERVICE...: any of them is enabled.
is_service_enabled() {
	local s
	for s in "$@"; do
		[[ ,$ENABLED_SERVICES, == *",$s,"* ]] && return 0
	done
	return 1
}

# git_clone REMOTE DEST REF: clones REMOTE into DEST (unless DEST is a checkout) at REF.
git_clone() {
	if [[ ! -d $2/.git && ! -f $2/.git ]]; then
		git clone -q "$1" "$2"
	fi
	git -C "$2" checkout -q "$3"
}

# -- inifile ---------------------------------------------------------------------------------
# iniset [-sudo] FILE SECTION OPTION VALUE: sets OPTION in [SECTION], adding the section (at the
# end) or the option (right after the section's header) when missing; creates FILE. The file keeps
# its owner and mode.
iniset() {
	local sudo=() file section option tmp
	if [[ $1 == -sudo ]]; then
		sudo=(sudo)
		shift
	fi
	file=$1 section=$2 option=$3
	[[ -n $section && -n $option ]] || return 0
	tmp=$(mktemp)
	"${sudo[@]}" touch "$file"
	INI_SECTION=$section INI_OPTION=$option INI_VALUE=$4 awk '
		function key(line) { sub(/=.*/, "", line); gsub(/^[ \t]+|[ \t]+$/, "", line); return line }
		BEGIN { s = "[" ENVIRON["INI_SECTION"] "]"; k = ENVIRON["INI_OPTION"]; v = ENVIRON["INI_VALUE"] }
		NR == FNR {
			if ($0 ~ /^\[/) { first = $0; sub(/[ \t]+$/, "", first); if (first == s) seen = 1 }
			else if (first == s && $0 ~ /=/ && key($0) == k) has = 1
			next
		}
		/^\[/ { cur = $0; sub(/[ \t]+$/, "", cur) }
		cur == s && $0 !~ /^\[/ && $0 ~ /=/ && !done && key($0) == k { print k " = " v; done = 1; next }
		{ print }
		cur == s && /^\[/ && !has && !done { print k " = " v; done = 1 }
		END { if (!seen) { if (NR > FNR) print ""; print s; print k " = " v } }
	' "$file" "$file" >"$tmp"
	"${sudo[@]}" tee "$file" <"$tmp" >/dev/null
	rm -f "$tmp"
}

# iniget FILE SECTION OPTION: prints the first value of OPTION in [SECTION].
iniget() {
	INI_SECTION=$2 INI_OPTION=$3 awk '
		BEGIN { s = "[" ENVIRON["INI_SECTION"] "]"; k = ENVIRON["INI_OPTION"] }
		/^\[/ { cur = $0; sub(/[ \t]+$/, "", cur); next }
		cur == s && /=/ {
			name = $0; sub(/=.*/, "", name); gsub(/^[ \t]+|[ \t]+$/, "", name)
			if (name == k) { val = $0; sub(/^[^=]*=/, "", val); gsub(/^[ \t]+|[ \t]+$/, "", val); print val; exit }
		}
	' "$1"
}

# inidelete FILE SECTION OPTION: removes OPTION from [SECTION].
inidelete() {
	local tmp
	tmp=$(mktemp)
	INI_SECTION=$2 INI_OPTION=$3 awk '
		BEGIN { s = "[" ENVIRON["INI_SECTION"] "]"; k = ENVIRON["INI_OPTION"] }
		/^\[/ { cur = $0; sub(/[ \t]+$/, "", cur) }
		cur == s && $0 !~ /^\[/ && /=/ {
			name = $0; sub(/=.*/, "", name); gsub(/^[ \t]+|[ \t]+$/, "", name)
			if (name == k) next
		}
		{ print }
	' "$1" >"$tmp"
	cat "$tmp" >"$1"
	rm -f "$tmp"
}

# -- lib/rpc_backend -------------------------------------------------------------------------
# get_transport_url [VHOST]: the oslo.messaging URL of the cloud's RabbitMQ (devstack's has port
# 5672 and the default vhost; the cloud's broker has its own port and the vhost gsc).
get_transport_url() {
	echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:$GSC_RABBIT_PORT/${1:-$GSC_RABBIT_VHOST}"
}

# -- lib/keystone (functions-common): the objects are really created in the cloud's Keystone ---
# get_or_create_user NAME PASSWORD DOMAIN [EMAIL]: prints the user's id.
get_or_create_user() {
	"${KEYSTONE_PY[@]}" user "$1" "$2" "$3"
}

# get_or_create_role NAME: prints the role's id.
get_or_create_role() {
	"${KEYSTONE_PY[@]}" role "$1"
}

# get_or_add_user_project_role ROLE USER PROJECT [USER_DOMAIN PROJECT_DOMAIN]: prints the role's
# id.
get_or_add_user_project_role() {
	"${KEYSTONE_PY[@]}" grant "$@"
}

# -- functions: processes (devstack runs them as devstack@NAME systemd units) ----------------
# _devstack_proc_start PID: the process's start time (field 22 of /proc/PID/stat), so that a
# recycled pid is never taken for ours.
_devstack_proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	read -ra stat <<<"$stat"
	printf '%s\n' "${stat[19]}"
}

# devstack_pid NAME: prints the pid run_process recorded for NAME while that process lives.
devstack_pid() {
	local pid
	[[ -f $DEVSTACK_PIDS/$1.pid ]] || return 1
	pid=$(<"$DEVSTACK_PIDS/$1.pid")
	[[ $(_devstack_proc_start "$pid") == "$(<"$DEVSTACK_PIDS/$1.start")" ]] || return 1
	[[ $(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) != Z ]] || return 1
	printf '%s\n' "$pid"
}

# run_process NAME COMMAND [GROUP] [USER]: starts COMMAND (split on blanks, as systemd splits
# ExecStart) in the background, in its own session, output to $DEVSTACK_LOGS/NAME.log, and
# records its pid.
run_process() {
	local name=$1 argv pid
	is_service_enabled "$name" || return 0
	read -ra argv <<<"$2"
	mkdir -p "$DEVSTACK_LOGS" "$DEVSTACK_PIDS"
	setsid "${argv[@]}" </dev/null >>"$DEVSTACK_LOGS/$name.log" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$DEVSTACK_PIDS/$name.pid"
	_devstack_proc_start "$pid" >"$DEVSTACK_PIDS/$name.start"
	echo "started $name (pid $pid), log $DEVSTACK_LOGS/$name.log"
}

# stop_process NAME: TERM to the recorded pid, up to 60 s to exit (more than the sidecar's
# shutdown_timeout), then KILL.
stop_process() {
	local name=$1 pid i
	if pid=$(devstack_pid "$name"); then
		kill -TERM "$pid"
		for ((i = 0; i < 600; i++)); do
			devstack_pid "$name" >/dev/null || break
			sleep 0.1
		done
		if devstack_pid "$name" >/dev/null; then
			echo "$name (pid $pid) still running after 60 s: KILL" >&2
			kill -KILL "$pid"
		fi
		echo "stopped $name (pid $pid)"
	fi
	rm -f "$DEVSTACK_PIDS/$name.pid" "$DEVSTACK_PIDS/$name.start"
}
