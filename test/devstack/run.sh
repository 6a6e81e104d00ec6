#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR/../..
# Runs glance-sidecar's devstack plugin for real against the test cloud (test/cloud/up.sh must
# have brought it up) and checks the deployment end to end:
#
#   1. sources devstack/settings and devstack/plugin.sh with devstack's functions from
#      functions.sh (Keystone users and roles really created, services run as processes of this
#      script), everything under a temporary directory, never /etc;
#   2. stack install, stack post-config; checks the edits of glance-api.conf and the service
#      user; restarts Glance (test/cloud/glance.sh: devstack starts Glance after post-config);
#      stack extra;
#   3. go test -tags devstack -run TestDevstackDeployment ./cmd/glance-sidecar: images uploaded
#      through Glance get their findings from the running sidecar;
#   4. unstack and clean; checks that the process is gone and the files are removed.
#
# Glance's notification options are removed from glance-api.conf before the plugin runs, so that
# only the plugin's iniset can bring them back; the file is restored at exit (and Glance restarted
# again when what it runs with differs from the original). The Keystone user, the RabbitMQ queues
# and the images are unique to the run and removed at exit. Needs root, like the cloud.
# GSC_DEVSTACK_KEEP=1 keeps the temporary directory (it is kept anyway on failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLOUD_DIR=${GSC_CLOUD_DIR:-/tmp/glance-sidecar-cloud}
T0=$SECONDS

log() { printf '[%(%H:%M:%S)T] devstack: %s\n' -1 "$*" >&2; }
fail() {
	log "FAILED: $*"
	exit 1
}

[[ $(id -u) == 0 ]] || fail "run as root (the test cloud's files and processes are root's)"
[[ -f $CLOUD_DIR/env ]] || fail "no test cloud in $CLOUD_DIR: bring it up with test/cloud/up.sh"
command -v go >/dev/null || fail "go is not on PATH"
# The cloud's settings, as GSC_* variables (KEY=VALUE lines, no quoting).
while IFS='=' read -r k v; do
	[[ $k =~ ^GSC_[A-Z0-9_]+$ ]] && printf -v "$k" '%s' "$v"
done <"$CLOUD_DIR/env"
[[ ${GSC_SERVICES:-all} == all ]] || fail "$CLOUD_DIR is a RabbitMQ-only cloud"

DEVSTACK_STATE=$(mktemp -d /tmp/gsc-devstack.XXXXXX)
export GSC_KEYSTONE_URL GSC_ADMIN_PASSWORD GSC_REGION # for keystone.py
# shellcheck source=test/devstack/functions.sh
. "$ROOT/test/devstack/functions.sh"
mkdir -p "$DEST" "$DATA_DIR" # stack.sh makes them

suffix=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The plugin's settings, as local.conf would set them: a throwaway tree, a unique user and queue.
SERVICE_PASSWORD=gsc-devstack-$suffix
GLANCE_SIDECAR_DIR=$ROOT
GLANCE_SIDECAR_BIN_DIR=$DEVSTACK_STATE/usr/local/bin
GLANCE_SIDECAR_CONF_DIR=$DEVSTACK_STATE/etc/glance-sidecar
GLANCE_SIDECAR_SERVICE_USER=glance-sidecar-devstack-$suffix
GLANCE_SIDECAR_AMQP_QUEUE=gsc-devstack-$suffix
GLANCE_SIDECAR_WEBHOOK_LISTEN=127.0.0.1:$port
GLANCE_SIDECAR_LOG_LEVEL=debug

GLANCE_CONF_ORIG=$DEVSTACK_STATE/glance-api.conf.orig
cp -p "$GLANCE_API_CONF" "$GLANCE_CONF_ORIG"
GLANCE_RESTARTED=
OK=

# ini_dump FILE: "[section] key = value" lines, sorted: what a service reads from FILE.
ini_dump() {
	awk '/^\[/ { s = $0; next } /^[ \t]*[^#; \t][^=]*=/ { print s " " $0 }' "$1" | sort
}

cleanup() {
	local rc=$?
	set +e
	stop_process glance-sidecar >/dev/null
	if ! cmp -s "$GLANCE_CONF_ORIG" "$GLANCE_API_CONF"; then
		cat "$GLANCE_CONF_ORIG" >"$GLANCE_API_CONF"
		log "restored $GLANCE_API_CONF"
	fi
	if [[ -n $GLANCE_RESTARTED && $GLANCE_RESTARTED != "$(ini_dump "$GLANCE_API_CONF")" ]]; then
		log "Glance runs with another configuration than the original: restarting it"
		"$ROOT/test/cloud/glance.sh" restart
	fi
	"${KEYSTONE_PY[@]}" delete-user "$GLANCE_SIDECAR_SERVICE_USER" "$SERVICE_DOMAIN_NAME"
	for q in "$GLANCE_SIDECAR_AMQP_QUEUE" "$GLANCE_SIDECAR_AMQP_QUEUE.retry" "$GLANCE_SIDECAR_AMQP_QUEUE.dead"; do
		"$GSC_RABBITMQCTL" delete_queue -q -p "$GSC_RABBIT_VHOST" "$q" >/dev/null 2>&1
	done
	if [[ -n $OK && ${GSC_DEVSTACK_KEEP:-0} != 1 ]]; then
		rm -rf "$DEVSTACK_STATE"
	else
		log "kept $DEVSTACK_STATE (logs in $DEVSTACK_LOGS)"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Only the plugin may turn Glance's notifications on.
inidelete "$GLANCE_API_CONF" oslo_messaging_notifications driver
inidelete "$GLANCE_API_CONF" oslo_messaging_notifications transport_url

# shellcheck source=devstack/settings
. "$ROOT/devstack/settings"
is_service_enabled glance-sidecar || fail "devstack/settings did not enable glance-sidecar"

t=$SECONDS
# shellcheck source=devstack/plugin.sh
. "$ROOT/devstack/plugin.sh" stack install
log "stack install: $((SECONDS - t)) s"
[[ -x $GLANCE_SIDECAR_BIN_DIR/glance-sidecar ]] || fail "no $GLANCE_SIDECAR_BIN_DIR/glance-sidecar"
"$GLANCE_SIDECAR_BIN_DIR/glance-sidecar" version >/dev/null || fail "the installed glance-sidecar does not run"

# The toolchain choice: the host's go when it is recent enough; otherwise (missing, or too old)
# $DEST/go-$GLANCE_SIDECAR_GO_VERSION, here a link to this machine's Go so nothing is downloaded.
[[ $GLANCE_SIDECAR_GO == "$(command -v go)" ]] || fail "the plugin built with $GLANCE_SIDECAR_GO, not the host's go"
(
	version=$(go env GOVERSION)
	version=${version#go}
	toolchain=$DEST/go-$version
	ln -s "$(go env GOROOT)" "$toolchain"
	mkdir -p "$DEVSTACK_STATE/old-go"
	printf '#!/bin/sh\necho go1.21.0\n' >"$DEVSTACK_STATE/old-go/go"
	chmod 755 "$DEVSTACK_STATE/old-go/go"
	for path in /usr/bin:/bin "$DEVSTACK_STATE/old-go:/usr/bin:/bin"; do
		GLANCE_SIDECAR_GO_VERSION=$version PATH=$path _glance_sidecar_find_go
		[[ $GLANCE_SIDECAR_GO == "$toolchain/bin/go" ]] ||
			fail "with PATH=$path the plugin chose $GLANCE_SIDECAR_GO, not $toolchain/bin/go"
	done
	rm "$toolchain"
)

t=$SECONDS
# shellcheck source=devstack/plugin.sh
. "$ROOT/devstack/plugin.sh" stack post-config
log "stack post-config: $((SECONDS - t)) s"
mkdir -p "$DEVSTACK_LOGS"
cp "$GLANCE_SIDECAR_CONF" "$DEVSTACK_LOGS/" # what the plugin wrote, kept with the logs on failure
[[ $(iniget "$GLANCE_API_CONF" oslo_messaging_notifications driver) == messagingv2 ]] ||
	fail "[oslo_messaging_notifications] driver is not messagingv2 in $GLANCE_API_CONF"
[[ $(iniget "$GLANCE_API_CONF" oslo_messaging_notifications transport_url) == "$GSC_TRANSPORT_URL" ]] ||
	fail "[oslo_messaging_notifications] transport_url is not $GSC_TRANSPORT_URL in $GLANCE_API_CONF"
"${KEYSTONE_PY[@]}" has-grant admin "$GLANCE_SIDECAR_SERVICE_USER" service Default Default ||
	fail "$GLANCE_SIDECAR_SERVICE_USER has no admin role in the service project"
token=$(printf '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"%s","domain":{"name":"Default"},"password":"%s"}}},"scope":{"project":{"name":"service","domain":{"name":"Default"}}}}}' \
	"$GLANCE_SIDECAR_SERVICE_USER" "$SERVICE_PASSWORD")
code=$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' -H 'Content-Type: application/json' -d "$token" "$GSC_KEYSTONE_URL/auth/tokens")
[[ $code == 201 ]] || fail "$GLANCE_SIDECAR_SERVICE_USER gets no token in the service project (HTTP $code)"

# devstack starts Glance after post-config.
"$ROOT/test/cloud/glance.sh" restart
GLANCE_RESTARTED=$(ini_dump "$GLANCE_API_CONF")

t=$SECONDS
# shellcheck source=devstack/plugin.sh
. "$ROOT/devstack/plugin.sh" stack extra
log "stack extra: $((SECONDS - t)) s"
pid=$(devstack_pid glance-sidecar) || fail "glance-sidecar is not running"

t=$SECONDS
GSC_DEVSTACK_SIDECAR_CONF=$GLANCE_SIDECAR_CONF GSC_DEVSTACK_GLANCE_API_CONF=$GLANCE_API_CONF \
	GSC_DEVSTACK_SERVICE_USER=$GLANCE_SIDECAR_SERVICE_USER GSC_DEVSTACK_QUEUE=$GLANCE_SIDECAR_AMQP_QUEUE \
	GSC_DEVSTACK_WEBHOOK=$GLANCE_SIDECAR_WEBHOOK_LISTEN GSC_CLOUD_DIR=$CLOUD_DIR \
	go test -C "$ROOT" -tags devstack -count=1 -v -run '^TestDevstackDeployment$' ./cmd/glance-sidecar
log "go test: $((SECONDS - t)) s"

# shellcheck source=devstack/plugin.sh
. "$ROOT/devstack/plugin.sh" unstack
[[ ! -e /proc/$pid ]] || [[ $(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) == Z ]] ||
	fail "glance-sidecar (pid $pid) still runs after unstack"
! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "127.0.0.1:$port still accepts connections after unstack"

# shellcheck source=devstack/plugin.sh
. "$ROOT/devstack/plugin.sh" clean
for f in "$GLANCE_SIDECAR_BIN_DIR/glance-sidecar" "$GLANCE_SIDECAR_CONF" "$GLANCE_SIDECAR_CONF_DIR" "$GLANCE_SIDECAR_WORKSPACE"; do
	[[ ! -e $f ]] || fail "$f is still there after clean"
done

OK=1
log "passed in $((SECONDS - T0)) s"
