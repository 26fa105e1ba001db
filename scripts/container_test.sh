#!/usr/bin/env bash
# make container-test: build the image with podman, then check it end to end
# (tests/deploy/test_container.py: ready, classify a photo, bad settings, SIGTERM), and remove
# the containers and images made here.
#
# No Docker engine or registry is needed: the base image is made locally with
# debootstrap and tagged debian:bookworm-slim, so the Dockerfile's FROM resolves without
# a pull. Where podman cannot start a container on this machine at all, this prints
# "SKIPPED: <reason>" and exits 0; a failed build or an image that does not come up
# ready fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
BASE=docker.io/library/debian:bookworm-slim
IMAGE=localhost/moe-alexnet:container-test-$$
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# debootstrap takes ~30 s; the trimmed rootfs (~120 MB) is kept for a week.
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/moe-alexnet
ROOTFS_TAR=$CACHE/debian-bookworm-minbase.tar

say() { printf 'container-test: %s\n' "$*"; }
skip() { printf 'SKIPPED: container-test: %s\n' "$*"; exit 0; }

work=$(mktemp -d)
imported_base=no
# `rmi --force` also removes any container left running from the image.
cleanup() {
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    if [ "$imported_base" = yes ]; then podman rmi -f "$BASE" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# -- podman -------------------------------------------------------------------------------
if ! command -v podman >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        skip "podman is not installed (apt-get install podman runc debootstrap, as root)"
    fi
    say "installing podman, runc and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

# -- the base image -----------------------------------------------------------------------
make_rootfs_tar() {
    local rootfs=$work/rootfs
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    say "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; return 1; }
    # What the official slim image has: updates and security suites, and no docs, man
    # pages or translations installed later (so the image size measured here is close
    # to a real `docker build`).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    mkdir -p "$CACHE"
    tar -C "$rootfs" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
}

if podman image exists "$BASE"; then
    say "base image $BASE is present: using it (and leaving it)"
else
    if [ -z "$(find "$ROOTFS_TAR" -mtime -7 2>/dev/null)" ]; then
        if [ "$(id -u)" != 0 ]; then
            skip "no $BASE image, and making one needs root (debootstrap); podman pull it"
        fi
        make_rootfs_tar
    fi
    say "importing $ROOTFS_TAR as $BASE"
    podman import --quiet "$ROOTFS_TAR" "$BASE" >/dev/null
    imported_base=yes
fi

# -- can podman start a container here? ---------------------------------------------------
# Some machines need runc instead of crun, cgroupfs, and rlimits within the hard limits
# (no CAP_SYS_RESOURCE): try the machine's own settings first, then ours (CONTAINERS_CONF
# only for this run; the machine's /etc/containers is left as it is).

# A hard limit of this shell; nproc also at most kernel.pid_max (runc was refused more).
hard() {
    local v cap=1048576
    v=$(ulimit -H"$1")
    [ "$1" = u ] && cap=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$cap")
    if [ "$v" = unlimited ] || [ "$v" -gt "$cap" ]; then v=$cap; fi
    echo "$v"
}
if ! podman run --rm --network none "$BASE" true >"$work/probe.log" 2>&1; then
    cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(hard n):$(hard n)", "nproc=$(hard u):$(hard u)"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    export CONTAINERS_CONF=$work/containers.conf
    if ! podman run --rm --network none "$BASE" true >"$work/probe.log" 2>&1; then
        skip "podman cannot start a container here: $(tail -1 "$work/probe.log")"
    fi
    say "podman runs with runc and cgroupfs here (CONTAINERS_CONF=$CONTAINERS_CONF)"
fi

# -- build --------------------------------------------------------------------------------
# Where the package registries sit behind a TLS-intercepting proxy, pip inside RUN needs
# this machine's CA bundle: mounted for the build only (not in the image), at a path of
# its own since installing ca-certificates in a RUN rewrites the usual one.
build_flags=(--pull=never --network host --format docker --layers=false)
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_ca" ]; then
    printf '[global]\ncert = /run/host-ca-certificates.crt\n' >"$work/pip.conf"
    build_flags+=(-v "$host_ca:/run/host-ca-certificates.crt:ro" -v "$work/pip.conf:/etc/pip.conf:ro")
fi
say "building $IMAGE"
started=$(date +%s)
podman build "${build_flags[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log"; say "FAILED: podman build"; exit 1; }
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built in $(($(date +%s) - started)) s; image size $((size / 1000000)) MB ($size bytes)"

# -- run and check ------------------------------------------------------------------------
MOE_CONTAINER_IMAGE=$IMAGE "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/deploy/test_container.py
