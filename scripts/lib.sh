# Shared helpers for ferrokube's scripts. Source it; do not run it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Packages the build and the tests need from Debian.
#   clang libclang-dev: bindgen for the RocksDB bindings
#   librocksdb-dev:     the RocksDB library the store links against
#   protobuf-compiler:  protoc for the gRPC definitions
#   etcd-client:        etcdctl, the reference client in the store's tests
#   etcd-server:        real etcd, the peer in `scripts/bench store`
#   ca-certificates:    a CA bundle that is not the cluster's, for the TLS tests
#   openssl:            certificates made by another tool, for the TLS and authn tests
#   python3-venv:       a virtualenv for the official Python kubernetes client
#   docker-registry:    the local registry test images are served from
#   busybox-static:     the busybox test image's content
#   runc:               the container runtime the kubelet drives
#   iproute2:           `ip`, for pod and test network namespaces
#   containernetworking-plugins: the CNI plugins of the pod network (bridge, host-local, portmap)
#   iptables:           what the portmap plugin programs (inside the node's namespace)
#   apache2-utils:      htpasswd, for a registry that requires a login (imagePullSecrets tests)
#   socat:              scripts/up's forwarder from the host's loopback into the node's namespace
#   tzdata:             the time zones CronJobs' timeZone names (read from /usr/share/zoneinfo)
FERROKUBE_APT_PACKAGES=(build-essential pkg-config ca-certificates clang libclang-dev librocksdb-dev protobuf-compiler etcd-client etcd-server openssl python3-venv docker-registry busybox-static runc iproute2 containernetworking-plugins iptables nftables conntrack socat apache2-utils curl tzdata)

# The official Python client, pinned to the Kubernetes version we serve (1.32).
FERROKUBE_PYTHON_CLIENT="kubernetes==32.0.1"

# etcdctl refuses to run when a flag and its ETCDCTL_* variable are both set, and the
# scripts always pass flags: ignore what the caller exported (e.g. from scripts/up).
unset ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY ETCDCTL_COMMAND_TIMEOUT ETCDCTL_DIAL_TIMEOUT

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the missing Debian packages among "$@" (quiet when all are there).
ensure_packages() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's etcd-server and docker-registry must not start daemons of their own.
    local policy=/usr/sbin/policy-rc.d created_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$created_policy" ] && rm -f "$policy"
    return 0
}

# Makes sure cargo is on PATH.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup)"
}

# Reuses a cargo target directory kept outside the clone when possible, so repeated
# builds on one machine are incremental; a fresh machine simply builds from scratch.
setup_target_dir() {
    if [ -z "${CARGO_TARGET_DIR:-}" ]; then
        local shared=/var/cache/ferrokube/target
        if mkdir -p "$shared" 2>/dev/null && [ -w "$shared" ]; then
            export CARGO_TARGET_DIR="$shared"
        else
            export CARGO_TARGET_DIR="$ROOT/target"
        fi
    fi
}

# Installs the Python kubernetes client into a virtualenv kept outside the clone (or in
# it when that is not writable) and exports FERROKUBE_PYTHON, its interpreter.
ensure_python_client() {
    local venv=/var/cache/ferrokube/venv
    mkdir -p "$(dirname "$venv")" 2>/dev/null && [ -w "$(dirname "$venv")" ] || venv="$ROOT/.venv"
    if ! "$venv/bin/python" -c 'import kubernetes, sys; sys.exit(kubernetes.__version__ != "32.0.1")' 2>/dev/null; then
        log "installing the Python client ($FERROKUBE_PYTHON_CLIENT) into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$FERROKUBE_PYTHON_CLIENT"
    fi
    export FERROKUBE_PYTHON="$venv/bin/python"
}

prepare() {
    ensure_packages "${FERROKUBE_APT_PACKAGES[@]}"
    # The reference client; every machine of this project has kubectl 1.32 installed.
    command -v kubectl >/dev/null 2>&1 || die "kubectl (1.32) not found: the API tests drive the stock kubectl"
    ensure_rust
    setup_target_dir
    cd "$ROOT"
}
