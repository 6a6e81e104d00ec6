#!/usr/bin/env bash
# Brings up glance-sidecar's test cloud: RabbitMQ, Keystone and Glance from Debian 12's packages,
# on 127.0.0.1 only, with all state in ${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}.
# With GSC_SERVICES=rabbitmq, only RabbitMQ (its own ports, state in
# ${GSC_CLOUD_DIR:-/tmp/glance-sidecar-rabbitmq}); rabbitmq.sh then stops, starts and restarts it.
#
# Idempotent: what is already up is only verified; what is down is started. Ends with a smoke
# check (upload, download, compare, delete; a notification reaches RabbitMQ; demo lists images).
# Set GSC_CLOUD_SMOKE=0 to skip it. See README.md beside this file.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

GSC_CLOUD_SMOKE=${GSC_CLOUD_SMOKE:-1}
KEYSTONE_URL=http://127.0.0.1:$GSC_KEYSTONE_PORT/v3
GLANCE_URL=http://127.0.0.1:$GSC_GLANCE_PORT
TRANSPORT_URL=rabbit://$RABBIT_USER:$RABBIT_PASSWORD@127.0.0.1:$GSC_RABBIT_PORT/$GSC_RABBIT_VHOST

case $GSC_GLANCE_SERVER in
eventlet | uwsgi) ;;
*) die "GSC_GLANCE_SERVER must be eventlet or uwsgi, not $GSC_GLANCE_SERVER" ;;
esac
case $GSC_SERVICES in
all) FULL=1 ;;
rabbitmq) FULL=0 ;;
*) die "GSC_SERVICES must be all or rabbitmq, not $GSC_SERVICES" ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (apt-get, and the services run as root)"
[[ $STATE == /* && $STATE != *[[:space:]]* ]] || die "GSC_CLOUD_DIR must be an absolute path without spaces"
case $STATE/ in
"$(cd "$HERE/../.." && pwd)"/*) die "GSC_CLOUD_DIR must be outside the repository" ;;
esac

TIMINGS=()
T_ALL=$EPOCHREALTIME
PHASE=
PHASE_T0=
phase() {
	PHASE=$1
	PHASE_T0=$EPOCHREALTIME
	log "== $PHASE"
}
phase_done() {
	local secs
	secs=$(awk -v a="$PHASE_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	TIMINGS+=("$PHASE ${secs}s${1:+ ($1)}")
	log "== $PHASE done in ${secs}s${1:+ ($1)}"
}
on_error() {
	local rc=$?
	log "FAILED in phase '${PHASE:-setup}' (exit $rc); logs are in $LOGS; ./down.sh stops what was started"
	exit "$rc"
}
trap on_error ERR

http_code() {
	curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$@" || true
}
keystone_ok() { [[ $(http_code "$KEYSTONE_URL") == 200 ]]; }
rabbit_ok() { port_open "$GSC_RABBIT_PORT" && rmqctl status; }

# token USER PASSWORD PROJECT: a Keystone token (project-scoped), printed.
token() {
	local body
	body=$(printf '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"%s","domain":{"id":"default"},"password":"%s"}}},"scope":{"project":{"name":"%s","domain":{"id":"default"}}}}}' "$1" "$2" "$3")
	curl -s --max-time 30 -D - -o /dev/null -H 'Content-Type: application/json' -d "$body" \
		"$KEYSTONE_URL/auth/tokens" | awk 'tolower($1) == "x-subject-token:" { sub(/\r$/, "", $2); print $2 }'
}

# ---------------------------------------------------------------------------------------------
# apt: install what is missing, services kept from starting by a temporary policy-rc.d.
if ((FULL)); then
	PACKAGES=(rabbitmq-server keystone glance-api python3-openstackclient qemu-utils
		uwsgi-plugin-python3 sqlite3 curl)
else
	PACKAGES=(rabbitmq-server)
fi
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0
remove_policy_rc() {
	if [[ $POLICY_RC_OURS == 1 ]]; then
		rm -f "$POLICY_RC"
		POLICY_RC_OURS=0
	fi
}
# Images the smoke check made and has not deleted yet (deleted at exit, also on failure).
SMOKE_IMAGES=()
on_exit() {
	remove_policy_rc
	local id
	for id in "${SMOKE_IMAGES[@]}"; do
		"$OPENSTACK" --os-cloud admin image delete "$id" >/dev/null 2>&1 || true
	done
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_distro_service SERVICE PIDFILE: stops a distro service the install started anyway. Under
# systemd, systemctl knows; without it, only the init script's own pid file counts (`service X
# status` matches processes by name, which would take ours for the distro's, and for rabbitmq it
# runs rabbitmqctl, which starts an epmd on every interface, port 4369).
stop_distro_service() {
	local svc=$1 pidfile=$2 pid
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		if systemctl is-active --quiet "$svc"; then
			log "stopping the distro's $svc (systemctl)"
			systemctl stop "$svc" || true
		fi
	elif [[ -f $pidfile ]] && pid=$(<"$pidfile") && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
		log "stopping the distro's $svc (service; pid $pid from $pidfile)"
		service "$svc" stop || true
	fi
}

phase apt
missing=()
for p in "${PACKAGES[@]}"; do
	if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	if [[ ! -e $POLICY_RC ]]; then
		printf '#!/bin/sh\n# Temporary, from glance-sidecar test/cloud/up.sh: no service starts.\nexit 101\n' >"$POLICY_RC"
		chmod 755 "$POLICY_RC"
		POLICY_RC_OURS=1
	fi
	debconf-set-selections <<-'EOF'
		keystone keystone/configure_db boolean false
		keystone keystone/create-admin-tenant boolean false
		keystone keystone/register-endpoint boolean false
		glance-common glance/configure_db boolean false
		glance-common glance/configure_rabbit boolean false
		glance-common glance/configure_ksat boolean false
		glance-api glance/configure_api-endpoint boolean false
	EOF
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	mkdir -p "$LOGS"
	apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
		{
			tail -n 30 "$LOGS/apt.log" >&2
			die "apt-get install failed (log: $LOGS/apt.log)"
		}
	remove_policy_rc
	for p in "${missing[@]}"; do
		case $p in
		rabbitmq-server) stop_distro_service rabbitmq-server /var/run/rabbitmq/pid ;;
		keystone) stop_distro_service keystone /var/run/keystone/keystone.pid ;;
		glance-api) stop_distro_service glance-api /var/run/glance/glance-api.pid ;;
		esac
	done
	phase_done "installed ${missing[*]}"
else
	phase_done "all installed"
fi

# ---------------------------------------------------------------------------------------------
# config: every file is rewritten on each run (same input, same output).
phase config
mkdir -p "$STATE" "$PIDS" "$LOGS" "$LOGS/rabbitmq" "$STATE/bin" \
	"$STATE/rabbitmq/home" "$STATE/rabbitmq/mnesia"

# One writer at a time (down.sh and rabbitmq.sh take the same lock).
exec 9>"$STATE/.lock"
flock -n 9 || die "another up.sh, down.sh or rabbitmq.sh is running on $STATE"

# A state directory keeps its mode while anything in it runs (the ports differ per mode).
if [[ -n $GSC_SERVICES_RECORDED && $GSC_SERVICES_RECORDED != "$GSC_SERVICES" ]]; then
	for f in "$PIDS"/*.pid; do
		if [[ -f $f ]] && recorded_pid "$(basename "$f" .pid)" >/dev/null; then
			die "$STATE runs GSC_SERVICES=$GSC_SERVICES_RECORDED; stop it with down.sh before switching to $GSC_SERVICES"
		fi
	done
fi
if ((FULL)); then
	mkdir -p "$STATE/keystone/fernet-keys" "$STATE/keystone/credential-keys" \
		"$STATE/glance/images" "$STATE/glance/staging" "$STATE/glance/cache" \
		"$STATE/glance/tasks" "$STATE/glance/lock"
	chmod 700 "$STATE/keystone/fernet-keys" "$STATE/keystone/credential-keys"
fi

# put FILE: writes stdin to FILE only when the content differs, and remembers that it changed (a
# running service whose configuration changed is restarted).
CHANGED=()
put() {
	local file=$1 tmp
	tmp=$(mktemp "$file.XXXXXX")
	cat >"$tmp"
	if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
		rm -f "$tmp"
	else
		mv -f "$tmp" "$file"
		CHANGED+=("$file")
	fi
}
# changed FILE...: one of these files was rewritten by this run.
changed() {
	local f c
	for f in "$@"; do
		for c in "${CHANGED[@]}"; do
			[[ $c == "$f" ]] && return 0
		done
	done
	return 1
}

# RabbitMQ
printf '%s' "$ERLANG_COOKIE" | put "$STATE/rabbitmq/home/.erlang.cookie"
chmod 400 "$STATE/rabbitmq/home/.erlang.cookie"
put "$STATE/rabbitmq/rabbitmq-env.conf" <<'EOF'
# Empty on purpose: keeps /etc/rabbitmq/rabbitmq-env.conf out; up.sh sets RABBITMQ_* itself.
EOF
put "$STATE/rabbitmq/enabled_plugins" <<'EOF'
[].
EOF
put "$STATE/rabbitmq/advanced.config" <<'EOF'
[].
EOF
put "$STATE/rabbitmq/rabbitmq.conf" <<EOF
# glance-sidecar test cloud. Listener address and port come from RABBITMQ_NODE_IP_ADDRESS and
# RABBITMQ_NODE_PORT; the vhost, user and permissions below are created on the first boot
# (no guest user), and up.sh checks them on every run.
default_vhost = $GSC_RABBIT_VHOST
default_user = $RABBIT_USER
default_pass = $RABBIT_PASSWORD
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = false
log.file.level = info
EOF

if ((FULL)); then
	# Keystone
	put "$STATE/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOGS/keystone.log
use_stderr = false

[database]
connection = sqlite:///$STATE/keystone/keystone.db?timeout=30

[token]
provider = fernet
# One day: long test runs keep their tokens.
expiration = 86400

[fernet_tokens]
key_repository = $STATE/keystone/fernet-keys

[fernet_receipts]
key_repository = $STATE/keystone/fernet-keys

[credential]
key_repository = $STATE/keystone/credential-keys

[identity]
# bcrypt's minimum cost: each password authentication is then milliseconds, not a fraction of a
# second (this cloud is for tests; applies to passwords set from now on).
password_hash_rounds = 4
EOF
	put "$STATE/keystone/uwsgi.ini" <<EOF
[uwsgi]
# Our own file: Debian's /etc/keystone/keystone-uwsgi.ini loads the apparmor plugin, switches to
# the keystone user and logs to /var/log.
plugins = python3
http-socket = 127.0.0.1:$GSC_KEYSTONE_PORT
wsgi-file = /usr/bin/keystone-wsgi-public
env = OS_KEYSTONE_CONFIG_FILES=$STATE/keystone/keystone.conf
chdir = $STATE/keystone
master = true
need-app = true
lazy-apps = false
die-on-term = true
no-orphans = true
vacuum = true
# One thread per process, several processes: Keystone on SQLite says "database is locked"
# otherwise.
processes = $GSC_KEYSTONE_PROCESSES
threads = 1
enable-threads = true
# Without it, keep-alive clients get connection resets.
add-header = Connection: close
buffer-size = 65535
listen = 100
# Python's teardown at exit segfaults in greenlet under uwsgi: skip it.
skip-atexit-teardown = true
EOF

	# Glance
	put "$STATE/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $GSC_GLANCE_PORT
public_endpoint = $GLANCE_URL
workers = $GSC_GLANCE_WORKERS
log_file = $LOGS/glance-api.log
use_stderr = false
image_cache_dir = $STATE/glance/cache
node_staging_uri = file://$STATE/glance/staging
transport_url = $TRANSPORT_URL

[database]
connection = sqlite:///$STATE/glance/glance.db?timeout=30

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $STATE/glance/images/

[paste_deploy]
config_file = /etc/glance/glance-api-paste.ini
flavor = keystone

[keystone_authtoken]
service_token_roles_required = true
www_authenticate_uri = $KEYSTONE_URL
auth_url = $KEYSTONE_URL
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = $GLANCE_PASSWORD
region_name = $GSC_REGION
interface = public

[oslo_messaging_notifications]
driver = messagingv2
transport_url = $TRANSPORT_URL
retry = $GSC_NOTIFY_RETRY

[oslo_concurrency]
lock_path = $STATE/glance/lock

[task]
work_dir = $STATE/glance/tasks
EOF

	# SQLite and concurrent uploads: oslo.db opens every transaction with a plain (deferred)
	# BEGIN, and Glance's image save reads, then writes. In WAL mode a transaction that read
	# a snapshot another writer has since committed past cannot take the write lock, and SQLite
	# fails it at once with "database is locked" (no busy timeout for that case): Glance
	# answers 500 and leaves the image in saving. Taking the write lock at BEGIN (IMMEDIATE)
	# makes every transaction wait its turn under the busy timeout instead. glance-api alone
	# loads this, through PYTHONPATH; a real cloud runs Glance on MySQL and needs none of it.
	mkdir -p "$STATE/glance/pyhooks"
	put "$STATE/glance/pyhooks/sitecustomize.py" <<'EOF'
"""glance-sidecar test cloud: SQLite transactions of oslo.db begin IMMEDIATE (see up.sh)."""
try:
    import sqlalchemy
    import sqlalchemy.engine
    import sqlalchemy.event

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "begin")
    def _gsc_begin_immediate(conn):
        if conn.engine.dialect.name == "sqlite" and "in_transaction" not in conn.info:
            conn.execute(sqlalchemy.text("BEGIN IMMEDIATE"))
            conn.info["in_transaction"] = True
except ImportError:
    pass
EOF

	# Under uwsgi, glance-wsgi-api reads glance-api.conf and glance-api-paste.ini from
	# OS_GLANCE_CONFIG_DIR (bind_host, bind_port and workers above then do not apply).
	ln -sfn /etc/glance/glance-api-paste.ini "$STATE/glance/glance-api-paste.ini"
	put "$STATE/glance/uwsgi.ini" <<EOF
[uwsgi]
# Only used with GSC_GLANCE_SERVER=uwsgi.
plugins = python3
http-socket = 127.0.0.1:$GSC_GLANCE_PORT
wsgi-file = /usr/bin/glance-wsgi-api
env = OS_GLANCE_CONFIG_DIR=$STATE/glance
chdir = $STATE/glance
master = true
need-app = true
lazy-apps = true
die-on-term = true
no-orphans = true
vacuum = true
processes = $GSC_GLANCE_WORKERS
threads = 4
enable-threads = true
# Glance needs these for uploads with chunked transfer encoding (what Go clients send).
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
wsgi-manage-chunked-input = true
socket-timeout = 120
add-header = Connection: close
buffer-size = 65535
listen = 100
skip-atexit-teardown = true
EOF

	# Clients: clouds.yaml, one openrc per user, passwords, the env file for Go tests.
	cloud_entry() { # NAME USER PASSWORD PROJECT
		cat <<EOF
  $1:
    auth:
      auth_url: $KEYSTONE_URL
      username: $2
      password: $3
      project_name: $4
      user_domain_name: Default
      project_domain_name: Default
    region_name: $GSC_REGION
    interface: public
    identity_api_version: 3
EOF
	}
	{
		echo "# glance-sidecar test cloud (written by test/cloud/up.sh)"
		echo "clouds:"
		cloud_entry admin admin "$ADMIN_PASSWORD" admin
		cloud_entry sidecar glance-sidecar "$SIDECAR_PASSWORD" service
		cloud_entry demo demo "$DEMO_PASSWORD" demo
	} | put "$STATE/clouds.yaml"
	openrc() { # NAME USER PASSWORD PROJECT
		put "$STATE/openrc-$1" <<EOF
# glance-sidecar test cloud, user $2 in project $4: source this file.
export OS_AUTH_URL=$KEYSTONE_URL
export OS_IDENTITY_API_VERSION=3
export OS_USERNAME=$2
export OS_PASSWORD=$3
export OS_PROJECT_NAME=$4
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_REGION_NAME=$GSC_REGION
export OS_INTERFACE=public
EOF
	}
	openrc admin admin "$ADMIN_PASSWORD" admin
	openrc sidecar glance-sidecar "$SIDECAR_PASSWORD" service
	openrc demo demo "$DEMO_PASSWORD" demo
fi
{
	if ((FULL)); then
		cat <<EOF
ADMIN_PASSWORD=$ADMIN_PASSWORD
GLANCE_PASSWORD=$GLANCE_PASSWORD
SIDECAR_PASSWORD=$SIDECAR_PASSWORD
DEMO_PASSWORD=$DEMO_PASSWORD
EOF
	fi
	cat <<EOF
RABBIT_USER=$RABBIT_USER
RABBIT_PASSWORD=$RABBIT_PASSWORD
ERLANG_COOKIE=$ERLANG_COOKIE
EOF
} | put "$STATE/passwords"
chmod 600 "$STATE/passwords"
# The env file for Go tests (and for rabbitmq.sh, which takes the node's settings from it).
{
	echo "GSC_CLOUD_DIR=$STATE"
	echo "GSC_SERVICES=$GSC_SERVICES"
	if ((FULL)); then
		cat <<EOF
GSC_KEYSTONE_URL=$KEYSTONE_URL
GSC_GLANCE_URL=$GLANCE_URL
GSC_KEYSTONE_PORT=$GSC_KEYSTONE_PORT
GSC_GLANCE_PORT=$GSC_GLANCE_PORT
GSC_REGION=$GSC_REGION
GSC_CLOUDS_YAML=$STATE/clouds.yaml
GSC_ADMIN_USER=admin
GSC_ADMIN_PASSWORD=$ADMIN_PASSWORD
GSC_ADMIN_PROJECT=admin
GSC_SIDECAR_USER=glance-sidecar
GSC_SIDECAR_PASSWORD=$SIDECAR_PASSWORD
GSC_SIDECAR_PROJECT=service
GSC_DEMO_USER=demo
GSC_DEMO_PASSWORD=$DEMO_PASSWORD
GSC_DEMO_PROJECT=demo
GSC_USER_DOMAIN=Default
GSC_PROJECT_DOMAIN=Default
EOF
	fi
	cat <<EOF
GSC_RABBIT_HOST=127.0.0.1
GSC_RABBIT_PORT=$GSC_RABBIT_PORT
GSC_RABBIT_DIST_PORT=$GSC_RABBIT_DIST_PORT
GSC_EPMD_PORT=$GSC_EPMD_PORT
GSC_RABBIT_NODE=$GSC_RABBIT_NODE
GSC_RABBIT_VHOST=$GSC_RABBIT_VHOST
GSC_RABBIT_USER=$RABBIT_USER
GSC_RABBIT_PASSWORD=$RABBIT_PASSWORD
GSC_TRANSPORT_URL=$TRANSPORT_URL
GSC_AMQP_URL=amqp://$RABBIT_USER:$RABBIT_PASSWORD@127.0.0.1:$GSC_RABBIT_PORT/$GSC_RABBIT_VHOST
EOF
	if ((FULL)); then
		cat <<EOF
GSC_NOTIFICATION_EXCHANGE=glance
GSC_NOTIFICATION_TOPIC=notifications
GSC_NOTIFY_RETRY=$GSC_NOTIFY_RETRY
EOF
	fi
	cat <<EOF
GSC_RABBITMQCTL=$STATE/bin/rabbitmqctl
GSC_RABBIT_LOG=$(rabbit_log)
GSC_LOG_DIR=$LOGS
EOF
	if ((FULL)); then
		cat <<EOF
GSC_GLANCE_CONF=$STATE/glance/glance-api.conf
GSC_GLANCE_SERVER=$GSC_GLANCE_SERVER
GSC_GLANCE_IMAGE_DIR=$STATE/glance/images
GSC_KEYSTONE_CONF=$STATE/keystone/keystone.conf
EOF
	fi
} | put "$STATE/env"
# A rabbitmqctl bound to our node, for people and tests (self-contained: no path into the repo).
{
	echo '#!/bin/bash'
	echo "# rabbitmqctl for the glance-sidecar test cloud's node $GSC_RABBIT_NODE (written by up.sh)."
	echo "# It refuses to run while the cloud's epmd is down: the CLI would start an epmd of its own."
	(
		rabbit_env
		for v in HOME RABBITMQ_CONF_ENV_FILE RABBITMQ_NODENAME RABBITMQ_USE_LONGNAME \
			RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT RABBITMQ_CONFIG_FILE \
			RABBITMQ_ADVANCED_CONFIG_FILE RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_MNESIA_BASE \
			RABBITMQ_LOG_BASE RABBITMQ_PID_FILE RABBITMQ_CTL_DIST_PORT_MIN RABBITMQ_CTL_DIST_PORT_MAX \
			RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS RABBITMQ_CTL_ERL_ARGS ERL_EPMD_PORT ERL_EPMD_ADDRESS; do
			printf "export %s='%s'\n" "$v" "${!v}"
		done
	)
	echo "if ! (exec 3<>/dev/tcp/127.0.0.1/$GSC_EPMD_PORT) 2>/dev/null; then"
	echo "  echo 'rabbitmqctl: the test cloud is not running (no epmd on 127.0.0.1:$GSC_EPMD_PORT)' >&2; exit 69"
	echo "fi"
	echo "exec $RABBIT_SBIN/rabbitmqctl -n $GSC_RABBIT_NODE \"\$@\""
} | put "$STATE/bin/rabbitmqctl"
chmod 755 "$STATE/bin/rabbitmqctl"
phase_done

# ---------------------------------------------------------------------------------------------
# Nothing of ours may listen anywhere but on loopback: 127.0.0.1, and [::1] for epmd, which always
# adds the loopback addresses to the one given with -address.
listen_check() {
	phase listen-check
	local f n pid p bad our_pids=()
	for f in "$PIDS"/*.pid; do
		n=$(basename "$f" .pid)
		pid=$(recorded_pid "$n") || continue
		if [[ -f $PIDS/$n.pgid ]]; then
			while read -r p; do our_pids+=("$p"); done < <(group_members "$pid")
		else
			our_pids+=("$pid")
		fi
	done
	bad=$(ss -ltnpH | awk -v pids=" ${our_pids[*]} " '
		{ addr = $4; sub(/:[0-9]+$/, "", addr)
		  n = split($0, parts, "pid=")
		  for (i = 2; i <= n; i++) { p = parts[i]; sub(/[^0-9].*/, "", p)
		    if (index(pids, " " p " ") && addr != "127.0.0.1" && addr != "[::1]") print $4 " (pid " p ")" } }')
	[[ -z $bad ]] || die "listening beyond loopback: $bad"
	phase_done "${#our_pids[@]} processes, all listeners on loopback"
}

# The closing summary: where everything is, how long each phase took.
summary() {
	local total t
	total=$(awk -v a="$T_ALL" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	{
		echo
		if ((FULL)); then
			echo "glance-sidecar test cloud is up (state in $STATE)"
		else
			echo "glance-sidecar test cloud is up, RabbitMQ only (state in $STATE)"
		fi
		if ((FULL)); then
			echo "  keystone  $KEYSTONE_URL"
			echo "  glance    $GLANCE_URL"
		fi
		echo "  rabbitmq  $TRANSPORT_URL (node $GSC_RABBIT_NODE, rabbitmqctl: $STATE/bin/rabbitmqctl)"
		if ((FULL)); then
			echo "  clients   OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml (clouds admin, sidecar, demo) or . $STATE/openrc-admin"
		else
			echo "  restart   GSC_CLOUD_DIR=$STATE $HERE/rabbitmq.sh restart"
		fi
		echo "  tests     $STATE/env (KEY=VALUE)"
		echo "timings:"
		for t in "${TIMINGS[@]}"; do echo "  $t"; done
		echo "  total ${total}s"
	} >&2
}

# ---------------------------------------------------------------------------------------------
phase rabbitmq
rabbit_note=
if recorded_pid rabbitmq >/dev/null && changed "$STATE/rabbitmq/rabbitmq.conf" "$STATE/rabbitmq/enabled_plugins"; then
	log "RabbitMQ's configuration changed: restarting it"
	stop_pid rabbitmq
fi
if recorded_pid epmd >/dev/null && recorded_pid rabbitmq >/dev/null && rabbit_ok >/dev/null 2>&1; then
	rabbit_note="already running, verified"
else
	ensure_epmd # (restarts the node too when epmd was gone)
	if recorded_pid rabbitmq >/dev/null; then
		if [[ -f $PIDS/rabbitmq.app-stopped ]]; then
			log "RabbitMQ's application was stopped (rabbitmq.sh stop-app): starting it"
			rabbit_app start
		fi
		# Running, but not answering (yet).
		wait_ready rabbitmq "RabbitMQ on 127.0.0.1:$GSC_RABBIT_PORT" rabbit_ok
		rabbit_note="was running, answers now"
	else
		start_rabbitmq
		rabbit_note=started
	fi
fi
# The vhost, user and permissions (created at first boot from rabbitmq.conf; checked here).
# (Output captured first: `rabbitmqctl | grep -q` fails under pipefail when grep exits early.)
perms=$(rmqctl list_permissions -q -p "$GSC_RABBIT_VHOST" 2>/dev/null || true)
if ! grep -qE "^${RABBIT_USER}[[:space:]]+\.\*[[:space:]]+\.\*[[:space:]]+\.\*\$" <<<"$perms"; then
	log "creating RabbitMQ vhost $GSC_RABBIT_VHOST and user $RABBIT_USER"
	rmqctl add_vhost "$GSC_RABBIT_VHOST" >/dev/null 2>&1 || true
	rmqctl add_user "$RABBIT_USER" "$RABBIT_PASSWORD" >/dev/null 2>&1 || true
	rmqctl set_permissions -p "$GSC_RABBIT_VHOST" "$RABBIT_USER" '.*' '.*' '.*' >/dev/null
fi
phase_done "$rabbit_note; vhost $GSC_RABBIT_VHOST, user $RABBIT_USER"

# GSC_SERVICES=rabbitmq: that was all.
if ((!FULL)); then
	listen_check
	summary
	exit 0
fi

# ---------------------------------------------------------------------------------------------
phase keystone
if recorded_pid keystone >/dev/null && changed "$STATE/keystone/keystone.conf" "$STATE/keystone/uwsgi.ini"; then
	log "Keystone's configuration changed: restarting it"
	stop_pid keystone
fi
# keystone-manage prints eventlet noise at exit: keep it in a log, show it only on failure.
km() {
	"$@" >>"$LOGS/keystone-manage.log" 2>&1 || {
		tail -n 30 "$LOGS/keystone-manage.log" >&2
		die "failed: $*"
	}
}
if recorded_pid keystone >/dev/null && keystone_ok; then
	phase_done "already running, verified"
else
	if recorded_pid keystone >/dev/null; then
		log "keystone is running but not answering: restarting it"
	fi
	stop_pid keystone # also what a dead one left behind
	if [[ ! -f $STATE/keystone/.ready ]]; then
		log "keystone-manage db_sync, fernet_setup, credential_setup, bootstrap (log: $LOGS/keystone-manage.log)"
		KM=(km "$KEYSTONE_MANAGE" --config-file "$STATE/keystone/keystone.conf")
		"${KM[@]}" db_sync
		sqlite3 "$STATE/keystone/keystone.db" 'PRAGMA journal_mode=WAL;' >/dev/null
		[[ -f $STATE/keystone/fernet-keys/0 ]] ||
			"${KM[@]}" fernet_setup --keystone-user root --keystone-group root
		[[ -f $STATE/keystone/credential-keys/0 ]] ||
			"${KM[@]}" credential_setup --keystone-user root --keystone-group root
		"${KM[@]}" bootstrap \
			--bootstrap-username admin --bootstrap-password "$ADMIN_PASSWORD" \
			--bootstrap-project-name admin --bootstrap-role-name admin \
			--bootstrap-service-name keystone --bootstrap-region-id "$GSC_REGION" \
			--bootstrap-public-url "$KEYSTONE_URL" \
			--bootstrap-internal-url "$KEYSTONE_URL" \
			--bootstrap-admin-url "$KEYSTONE_URL"
		touch "$STATE/keystone/.ready"
	fi
	port_must_be_free "$GSC_KEYSTONE_PORT" Keystone
	start_bg keystone "$LOGS/keystone.uwsgi.log" "$UWSGI" --ini "$STATE/keystone/uwsgi.ini"
	wait_ready keystone "Keystone at $KEYSTONE_URL" keystone_ok
	phase_done "started"
fi

# ---------------------------------------------------------------------------------------------
phase users
tokens_ok() {
	[[ -n $(token admin "$ADMIN_PASSWORD" admin) ]] &&
		[[ -n $(token glance "$GLANCE_PASSWORD" service) ]] &&
		[[ -n $(token glance-sidecar "$SIDECAR_PASSWORD" service) ]] &&
		[[ -n $(token demo "$DEMO_PASSWORD" demo) ]]
}
if [[ -f $STATE/keystone/.users ]] && tokens_ok; then
	phase_done "verified: admin, glance, glance-sidecar and demo get tokens"
else
	GSC_KEYSTONE_URL=$KEYSTONE_URL GSC_GLANCE_URL=$GLANCE_URL GSC_REGION=$GSC_REGION \
		GSC_ADMIN_PASSWORD=$ADMIN_PASSWORD GSC_GLANCE_PASSWORD=$GLANCE_PASSWORD \
		GSC_SIDECAR_PASSWORD=$SIDECAR_PASSWORD GSC_DEMO_PASSWORD=$DEMO_PASSWORD \
		"$PY" "$HERE/keystone_setup.py"
	tokens_ok || die "a user of the cloud cannot get a token"
	touch "$STATE/keystone/.users"
	phase_done "created"
fi

# ---------------------------------------------------------------------------------------------
phase glance
glance_mode=$(cat "$PIDS/glance-api.mode" 2>/dev/null || true)
if recorded_pid glance-api >/dev/null && changed "$STATE/glance/glance-api.conf" "$STATE/glance/uwsgi.ini" "$STATE/glance/pyhooks/sitecustomize.py"; then
	log "Glance's configuration changed: restarting it"
	stop_pid glance-api
fi
# A glance-api started some other way lacks the SQLite hook above: restart it.
if pid=$(recorded_pid glance-api) &&
	! tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "PYTHONPATH=$STATE/glance/pyhooks"; then
	log "glance-api (pid $pid) runs without $STATE/glance/pyhooks: restarting it"
	stop_pid glance-api
fi
if recorded_pid glance-api >/dev/null && [[ $glance_mode == "$GSC_GLANCE_SERVER" ]] && glance_ok; then
	phase_done "already running ($GSC_GLANCE_SERVER), verified"
else
	if recorded_pid glance-api >/dev/null; then
		log "glance-api ($glance_mode) is not answering or not run by $GSC_GLANCE_SERVER: restarting it"
	fi
	stop_pid glance-api # also what a dead one left behind
	if [[ ! -f $STATE/glance/.ready ]]; then
		log "glance-manage db_sync"
		"$GLANCE_MANAGE" --config-file "$STATE/glance/glance-api.conf" db_sync >"$LOGS/glance-manage.log" 2>&1 ||
			{
				tail -n 30 "$LOGS/glance-manage.log" >&2
				die "glance-manage db_sync failed"
			}
		sqlite3 "$STATE/glance/glance.db" 'PRAGMA journal_mode=WAL;' >/dev/null
		touch "$STATE/glance/.ready"
	fi
	start_glance
	phase_done "started ($GSC_GLANCE_SERVER)"
fi

listen_check

# ---------------------------------------------------------------------------------------------
if [[ $GSC_CLOUD_SMOKE != 0 ]]; then
	phase smoke
	export OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml
	smoke=$STATE/smoke
	rm -rf "$smoke"
	mkdir -p "$smoke"
	queue_messages() { # prints the number of messages in notifications.info (0 if no queue)
		rmqctl list_queues -q -p "$GSC_RABBIT_VHOST" name messages 2>/dev/null |
			awk '$1 == "notifications.info" { n = $2 } END { print n + 0 }'
	}
	before=$(queue_messages)
	qemu-img create -q -f qcow2 "$smoke/smoke.qcow2" 64M
	image_id=$("$OPENSTACK" --os-cloud admin image create --disk-format qcow2 --container-format bare \
		--file "$smoke/smoke.qcow2" -f value -c id smoke)
	[[ $image_id =~ ^[0-9a-f-]{36}$ ]] || die "image create printed no id: $image_id"
	SMOKE_IMAGES=("$image_id")
	status=
	for _ in $(seq 1 60); do
		status=$("$OPENSTACK" --os-cloud admin image show -f value -c status "$image_id")
		[[ $status == active ]] && break
		sleep 1
	done
	[[ $status == active ]] || die "smoke image $image_id is $status, not active"
	"$OPENSTACK" --os-cloud admin image save --file "$smoke/back.qcow2" "$image_id"
	cmp "$smoke/smoke.qcow2" "$smoke/back.qcow2" || die "downloaded image differs from the upload"
	# What the sidecar's user must be allowed on another project's image: read, download, PATCH,
	# deactivate (and still download), reactivate; and create an image owned by another project.
	st=$(token glance-sidecar "$SIDECAR_PASSWORD" service)
	check() { # EXPECTED WHAT CURL-ARGS...
		local want=$1 what=$2 got
		shift 2
		got=$(http_code -H "X-Auth-Token: $st" "$@")
		[[ $got == "$want" ]] || die "glance-sidecar: $what gave HTTP $got, want $want"
	}
	img=$GLANCE_URL/v2/images/$image_id
	check 200 "GET another project's image" "$img"
	check 200 "download" "$img/file"
	check 206 "ranged download" -H 'Range: bytes=0-511' "$img/file"
	check 200 "PATCH" -X PATCH -H 'Content-Type: application/openstack-images-v2.1-json-patch' \
		-d '[{"op":"add","path":"/gsc_smoke","value":"ok"}]' "$img"
	check 204 "deactivate" -X POST "$img/actions/deactivate"
	check 200 "download a deactivated image" "$img/file"
	check 204 "reactivate" -X POST "$img/actions/reactivate"
	at=$(token admin "$ADMIN_PASSWORD" admin)
	demo_project=$(curl -s --max-time 30 -H "X-Auth-Token: $at" "$KEYSTONE_URL/projects?name=demo" |
		"$PY" -c 'import json, sys; print(json.load(sys.stdin)["projects"][0]["id"])')
	other=$(curl -s --max-time 30 -H "X-Auth-Token: $st" -H 'Content-Type: application/json' \
		-d "{\"name\": \"smoke-owned-by-demo\", \"owner\": \"$demo_project\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}" \
		"$GLANCE_URL/v2/images" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d["id"], d["owner"])')
	[[ $other =~ ^[0-9a-f-]{36}\  ]] && SMOKE_IMAGES+=("${other%% *}")
	[[ ${other#* } == "$demo_project" ]] || die "glance-sidecar could not create an image owned by demo: $other"
	check 204 "delete the image it made for demo" -X DELETE "$GLANCE_URL/v2/images/${other%% *}"
	"$OPENSTACK" --os-cloud admin image delete "$image_id"
	SMOKE_IMAGES=()
	"$OPENSTACK" --os-cloud demo image list -f value >/dev/null
	# A notification reached RabbitMQ: exchange glance (topic), notifications.info grew.
	exchanges=$(rmqctl list_exchanges -q -p "$GSC_RABBIT_VHOST" name type)
	grep -qE '^glance[[:space:]]+topic$' <<<"$exchanges" ||
		die "no topic exchange 'glance' in vhost $GSC_RABBIT_VHOST"
	after=$before
	for _ in $(seq 1 20); do
		after=$(queue_messages)
		((after > before)) && break
		sleep 0.5
	done
	((after > before)) || die "no notification arrived in notifications.info (still $after messages)"
	rm -rf "$smoke"
	phase_done "qcow2 up/down/compare/delete, sidecar rights, demo list ok; notifications.info $before -> $after messages"
fi

summary
