# shellcheck shell=bash
# glance-sidecar's devstack plugin. devstack sources it as `plugin.sh MODE [PHASE]`:
#
#   stack install      build glance-sidecar with Go (fetching the toolchain if the host's is too
#                      old) and install it into GLANCE_SIDECAR_BIN_DIR
#   stack post-config  turn on Glance's notifications, create the service user, write
#                      GLANCE_SIDECAR_CONF (Glance is started after this phase)
#   stack extra        start devstack@glance-sidecar and wait until it is ready
#   unstack            stop it
#   clean              remove its configuration, workspace and binary
#
# The settings (GLANCE_SIDECAR_*) are in the settings file beside this one; see README.md.
# devstack defines the globals used here (DEST, STACK_USER, GLANCE_API_CONF, SERVICE_*,
# KEYSTONE_SERVICE_URI, REGION_NAME, SERVICE_TIMEOUT) and the functions (iniset, run_process,
# get_or_create_user, ...) before it sources a plugin.

# _glance_sidecar_version_ge A B: version A is B or later (1.26.8 >= 1.26.0).
function _glance_sidecar_version_ge {
    [[ $(printf '%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]
}

# _glance_sidecar_go_at_least GO VERSION: the go command GO runs and is VERSION or later.
function _glance_sidecar_go_at_least {
    local have
    have=$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null) || return 1
    have=${have#go}
    have=${have%%[!0-9.]*}
    [[ -n $have ]] && _glance_sidecar_version_ge "$have" "$2"
}

# _glance_sidecar_download_go DIR: the official Go tarball of GLANCE_SIDECAR_GO_VERSION, checked
# against its published SHA-256, unpacked into DIR.
function _glance_sidecar_download_go {
    local dir=$1 arch url tmp sum
    case $(uname -m) in
        x86_64) arch=amd64 ;;
        aarch64) arch=arm64 ;;
        ppc64le | s390x) arch=$(uname -m) ;;
        *) die $LINENO "glance-sidecar: no Go tarball for $(uname -m)" ;;
    esac
    url=$GLANCE_SIDECAR_GO_DOWNLOAD_URL/go$GLANCE_SIDECAR_GO_VERSION.linux-$arch.tar.gz
    tmp=$(mktemp -d)
    echo "glance-sidecar: downloading $url"
    curl -fsSL --retry 3 -o "$tmp/go.tar.gz" "$url" || die $LINENO "glance-sidecar: cannot download $url"
    sum=$(curl -fsSL --retry 3 "$url.sha256") || die $LINENO "glance-sidecar: cannot download $url.sha256"
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || die $LINENO "glance-sidecar: $url.sha256 holds no SHA-256"
    echo "$sum  $tmp/go.tar.gz" | sha256sum --check --status ||
        die $LINENO "glance-sidecar: $url does not match its SHA-256"
    rm -rf "$dir.new"
    mkdir -p "$dir.new"
    tar -C "$dir.new" --strip-components=1 -xzf "$tmp/go.tar.gz"
    rm -rf "$dir" "$tmp"
    mv "$dir.new" "$dir"
}

# _glance_sidecar_find_go: sets GLANCE_SIDECAR_GO to a go command recent enough for go.mod: the
# host's, else $DEST/go-$GLANCE_SIDECAR_GO_VERSION (downloaded when it is not there yet).
function _glance_sidecar_find_go {
    local want dir
    want=$(awk '$1 == "go" { print $2; exit }' "$GLANCE_SIDECAR_DIR/go.mod")
    [[ -n $want ]] || die $LINENO "glance-sidecar: no go directive in $GLANCE_SIDECAR_DIR/go.mod"
    GLANCE_SIDECAR_GO=$(command -v go || true)
    if [[ -n $GLANCE_SIDECAR_GO ]] && _glance_sidecar_go_at_least "$GLANCE_SIDECAR_GO" "$want"; then
        return 0
    fi
    _glance_sidecar_version_ge "$GLANCE_SIDECAR_GO_VERSION" "$want" ||
        die $LINENO "glance-sidecar: GLANCE_SIDECAR_GO_VERSION=$GLANCE_SIDECAR_GO_VERSION is older than go.mod's go $want"
    dir=$DEST/go-$GLANCE_SIDECAR_GO_VERSION
    if ! _glance_sidecar_go_at_least "$dir/bin/go" "$GLANCE_SIDECAR_GO_VERSION"; then
        _glance_sidecar_download_go "$dir"
    fi
    GLANCE_SIDECAR_GO=$dir/bin/go
}

# _glance_sidecar_has_option SECTION KEY: the installed glance-sidecar knows [SECTION] KEY (it is
# in `glance-sidecar config sample`). Options added in later versions are written only then.
function _glance_sidecar_has_option {
    local sample section
    sample=$("$GLANCE_SIDECAR_BIN_DIR/glance-sidecar" config sample) ||
        die $LINENO "glance-sidecar: config sample failed"
    section=$(sed -n "/^\[$1\]\$/,/^\[/p" <<<"$sample")
    grep -q "^#$2 = " <<<"$section"
}

# _glance_sidecar_ready_url: /readyz on the webhook's address (a wildcard host is asked on
# loopback).
function _glance_sidecar_ready_url {
    local host=${GLANCE_SIDECAR_WEBHOOK_LISTEN%:*} port=${GLANCE_SIDECAR_WEBHOOK_LISTEN##*:}
    case $host in
        '' | 0.0.0.0 | '[::]') host=127.0.0.1 ;;
    esac
    echo "http://$host:$port/readyz"
}

function install_glance_sidecar {
    local build version
    if [[ ! -f $GLANCE_SIDECAR_DIR/go.mod ]]; then
        git_clone "$GLANCE_SIDECAR_REPO" "$GLANCE_SIDECAR_DIR" "$GLANCE_SIDECAR_BRANCH"
    fi
    _glance_sidecar_find_go
    echo "glance-sidecar: building with $GLANCE_SIDECAR_GO ($(GOTOOLCHAIN=local "$GLANCE_SIDECAR_GO" env GOVERSION))"
    version=$(git -C "$GLANCE_SIDECAR_DIR" describe --tags --always --dirty 2>/dev/null || echo devstack)
    build=$(mktemp -d)
    (cd "$GLANCE_SIDECAR_DIR" && GOTOOLCHAIN=local "$GLANCE_SIDECAR_GO" build \
        -ldflags "-X main.version=$version" -o "$build/glance-sidecar" ./cmd/glance-sidecar) ||
        die $LINENO "glance-sidecar: go build failed"
    sudo install -d -m 0755 "$GLANCE_SIDECAR_BIN_DIR"
    sudo install -m 0755 "$build/glance-sidecar" "$GLANCE_SIDECAR_BIN_DIR/glance-sidecar"
    rm -rf "$build"
}

function configure_glance_sidecar {
    local transport_url role user conf=$GLANCE_SIDECAR_CONF

    transport_url=$(get_transport_url)
    [[ -n $transport_url ]] ||
        die $LINENO "glance-sidecar needs Glance's notifications on RabbitMQ: enable_service rabbit (or set RABBIT_HOST and RABBIT_PASSWORD)"

    # Glance publishes its image notifications on the bus (it is started after this phase).
    if is_service_enabled g-api; then
        iniset "$GLANCE_API_CONF" oslo_messaging_notifications driver messagingv2
        iniset "$GLANCE_API_CONF" oslo_messaging_notifications transport_url "$transport_url"
    fi

    # The service user: with Glance's default policies, the admin role in the service project is
    # what lets it read, download, update and deactivate every project's images.
    role=$(get_or_create_role admin)
    user=$(get_or_create_user "$GLANCE_SIDECAR_SERVICE_USER" "$SERVICE_PASSWORD" "$SERVICE_DOMAIN_NAME")
    get_or_add_user_project_role "$role" "$user" "$SERVICE_PROJECT_NAME" "$SERVICE_DOMAIN_NAME" "$SERVICE_DOMAIN_NAME" >/dev/null

    sudo install -d -o "$STACK_USER" -m 0750 "$GLANCE_SIDECAR_CONF_DIR"
    sudo install -d -o "$STACK_USER" -m 0750 "$GLANCE_SIDECAR_WORKSPACE"
    rm -f "$conf"
    install -m 0600 /dev/null "$conf"

    iniset "$conf" DEFAULT max_workers "$GLANCE_SIDECAR_MAX_WORKERS"
    iniset "$conf" DEFAULT log_level "$GLANCE_SIDECAR_LOG_LEVEL"
    iniset "$conf" DEFAULT deactivate_unsafe "${GLANCE_SIDECAR_DEACTIVATE_UNSAFE,,}"

    iniset "$conf" glance auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$conf" glance username "$GLANCE_SIDECAR_SERVICE_USER"
    iniset "$conf" glance password "$SERVICE_PASSWORD"
    iniset "$conf" glance user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$conf" glance project_name "$SERVICE_PROJECT_NAME"
    iniset "$conf" glance project_domain_name "$SERVICE_DOMAIN_NAME"
    if [[ -n ${REGION_NAME:-} ]]; then
        iniset "$conf" glance region "$REGION_NAME"
    fi

    iniset "$conf" amqp transport_url "$transport_url"
    iniset "$conf" amqp queue "$GLANCE_SIDECAR_AMQP_QUEUE"

    iniset "$conf" webhook listen "$GLANCE_SIDECAR_WEBHOOK_LISTEN"

    # Options of newer versions: written only when this glance-sidecar has them.
    if _glance_sidecar_has_option workspace dir; then
        iniset "$conf" workspace dir "$GLANCE_SIDECAR_WORKSPACE"
    fi
    if [[ -n $GLANCE_SIDECAR_TARGET_FORMAT ]]; then
        _glance_sidecar_has_option convert target_format ||
            die $LINENO "GLANCE_SIDECAR_TARGET_FORMAT is set, but this glance-sidecar has no [convert] target_format"
        iniset "$conf" convert target_format "$GLANCE_SIDECAR_TARGET_FORMAT"
    fi
}

function start_glance_sidecar {
    local url i
    run_process glance-sidecar "$GLANCE_SIDECAR_BIN_DIR/glance-sidecar serve --config-file $GLANCE_SIDECAR_CONF"
    if [[ -z $GLANCE_SIDECAR_WEBHOOK_LISTEN ]]; then
        return 0
    fi
    # Ready: authenticated to Keystone (at start) and consuming from RabbitMQ.
    url=$(_glance_sidecar_ready_url)
    echo "glance-sidecar: waiting for $url"
    for ((i = 0; i < ${SERVICE_TIMEOUT:-60}; i++)); do
        if [[ $(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$url") == 200 ]]; then
            return 0
        fi
        sleep 1
    done
    die $LINENO "glance-sidecar is not ready at $url after ${SERVICE_TIMEOUT:-60}s (see its log: journalctl -u devstack@glance-sidecar)"
}

function stop_glance_sidecar {
    stop_process glance-sidecar
}

function cleanup_glance_sidecar {
    sudo rm -f "$GLANCE_SIDECAR_BIN_DIR/glance-sidecar" "$GLANCE_SIDECAR_CONF"
    # The directory only when nothing else is in it (it may be /etc/glance-sidecar or yours).
    sudo rmdir "$GLANCE_SIDECAR_CONF_DIR" 2>/dev/null || true
    sudo rm -rf "${GLANCE_SIDECAR_WORKSPACE:?}"
}

if is_service_enabled glance-sidecar; then
    if [[ $1 == stack && ${2:-} == install ]]; then
        echo_summary "Installing glance-sidecar"
        install_glance_sidecar
    elif [[ $1 == stack && ${2:-} == post-config ]]; then
        echo_summary "Configuring glance-sidecar"
        configure_glance_sidecar
    elif [[ $1 == stack && ${2:-} == extra ]]; then
        echo_summary "Starting glance-sidecar"
        start_glance_sidecar
    fi
    if [[ $1 == unstack ]]; then
        stop_glance_sidecar
    fi
    if [[ $1 == clean ]]; then
        cleanup_glance_sidecar
    fi
fi
