#!/usr/bin/env bash
# Build a Debian bookworm + python3 base image without any container registry.
#
#   docker/build-offline-base.sh [IMAGE]      (default pbench/debian-python:bookworm)
#
# debootstrap fetches .deb packages from Debian's default mirror (reachable
# through the normal package client path), the root filesystem is tarred into
# `docker import`. Skips everything if the image already exists.
# Needs root (debootstrap chroots) and the debootstrap package.
set -euo pipefail

IMAGE="${1:-pbench/debian-python:bookworm}"
SUITE="${PBENCH_DEBIAN_SUITE:-bookworm}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build-offline-base: $IMAGE already exists, skipping"
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
    echo "build-offline-base: debootstrap is missing (run .ci/docker-setup.sh or apt-get install debootstrap)" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || { echo "build-offline-base: must run as root (debootstrap)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/pbench-rootfs.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside the chroot on failure.
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

t0=$(date +%s)
echo "build-offline-base: debootstrap --variant=minbase $SUITE -> $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$ROOTFS" \
    >"$WORK/debootstrap.log" 2>&1 || {
    echo "build-offline-base: debootstrap failed; last log lines:" >&2
    tail -n 30 "$WORK/debootstrap.log" >&2
    tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    exit 1
}
t1=$(date +%s)
size=$(du -sh --one-file-system "$ROOTFS" | cut -f1)
echo "build-offline-base: debootstrap took $((t1 - t0)) s (rootfs $size)"

# Slim the image a little: apt lists and caches are useless in a method image.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* 2>/dev/null || true

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    --message "debootstrap --variant=minbase --include=python3,python3-venv $SUITE" \
    - "$IMAGE" >/dev/null
t2=$(date +%s)
echo "build-offline-base: docker import took $((t2 - t1)) s"
docker image ls --format 'build-offline-base: {{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"
