#!/usr/bin/env bash
# Build the PruningBench method base image and method images.
#
#   docker/build-images.sh [--offline] [--base-only] [METHOD_DIR ...]
#
# 1. Wheelhouse: docker/wheels/ is filled on the host with `pip download` from
#    docker/method-base.requirements.txt (re-downloaded when that file changes).
# 2. Base of the base: python:3.11-slim from a registry, or - with --offline,
#    or when no registry answers - pbench/debian-python:bookworm built by
#    docker/build-offline-base.sh (debootstrap + docker import).
# 3. pbench/method-base:<SPEC_VERSION> and :<major> from
#    docker/method-base.Dockerfile (build network "none": nothing is fetched).
# 4. Each METHOD_DIR (default: every methods/*/ with a Dockerfile) becomes
#    pbench/method-<manifest id>:<manifest version>, built FROM
#    pbench/method-base:<major>.
#
# Environment:
#   PBENCH_BASE_IMAGE      force the base of the base (skips registry detection)
#   PBENCH_BUILD_NETWORK   network for `docker build` RUN steps (default none)
#   PBENCH_TORCH_INDEX_URL extra pip index for the +cpu torch wheel, e.g.
#                          https://download.pytorch.org/whl/cpu (normal world;
#                          here the wheel comes from PIP_FIND_LINKS=/opt/wheels)
#   PYTHON                 host python used for `pip download` (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OFFLINE=0
BASE_ONLY=0
METHOD_DIRS=()
for arg in "$@"; do
    case "$arg" in
        --offline) OFFLINE=1 ;;
        --base-only) BASE_ONLY=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        -*) echo "build-images: unknown option $arg" >&2; exit 2 ;;
        *) METHOD_DIRS+=("${arg%/}") ;;
    esac
done

PYTHON="${PYTHON:-python3}"
NETWORK="${PBENCH_BUILD_NETWORK:-none}"
OFFLINE_BASE="pbench/debian-python:bookworm"
PUBLIC_BASE="python:3.11-slim"
REQS="docker/method-base.requirements.txt"
WHEELS="docker/wheels"

SPEC_VERSION="$(sed -n 's/^SPEC_VERSION[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' specs/version.py 2>/dev/null | head -n1)"
SPEC_VERSION="${SPEC_VERSION:-1}"
SPEC_MAJOR="${SPEC_VERSION%%.*}"
METHOD_BASE="pbench/method-base:${SPEC_MAJOR}"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

docker info >/dev/null 2>&1 || {
    echo "build-images: no Docker engine answers (run .ci/docker-setup.sh)" >&2
    exit 1
}

# ---- 1. wheelhouse -----------------------------------------------------------
want_sha="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$WHEELS/.requirements.sha256" 2>/dev/null)" != "$want_sha" ]; then
    t=$(now)
    echo "build-images: downloading wheelhouse into $WHEELS"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    extra=()
    [ -n "${PBENCH_TORCH_INDEX_URL:-}" ] && extra+=(--extra-index-url "$PBENCH_TORCH_INDEX_URL")
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --only-binary=:all: --python-version 3.11 \
        -d "$WHEELS" -r "$REQS" "${extra[@]}"
    echo "$want_sha" >"$WHEELS/.requirements.sha256"
    echo "build-images: wheelhouse $(du -sh "$WHEELS" | cut -f1) in $(since "$t") s"
else
    echo "build-images: wheelhouse up to date ($(du -sh "$WHEELS" | cut -f1))"
fi

# ---- 2. base of the base -----------------------------------------------------
if [ -n "${PBENCH_BASE_IMAGE:-}" ]; then
    BASE="$PBENCH_BASE_IMAGE"
elif [ "$OFFLINE" -eq 1 ]; then
    BASE="$OFFLINE_BASE"
elif docker image inspect "$PUBLIC_BASE" >/dev/null 2>&1; then
    BASE="$PUBLIC_BASE"
elif timeout 60 docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
    BASE="$PUBLIC_BASE"
else
    echo "build-images: cannot pull $PUBLIC_BASE (no registry reachable); using the offline base"
    BASE="$OFFLINE_BASE"
fi
if [ "$BASE" = "$OFFLINE_BASE" ]; then
    "$ROOT/docker/build-offline-base.sh" "$OFFLINE_BASE"
fi

# ---- 3. method base ------------------------------------------------------------
t=$(now)
echo "build-images: building $METHOD_BASE (spec $SPEC_VERSION) FROM $BASE"
# Minimal context from the repository root: only what the Dockerfile copies.
# (The classic builder would otherwise send the whole repository.)
tar -C "$ROOT" -c --exclude='__pycache__' --exclude='*.pyc' \
        docker/method-base.Dockerfile "$REQS" "$WHEELS" specs \
    | docker build --quiet --network "$NETWORK" \
        -f docker/method-base.Dockerfile \
        --build-arg "BASE_IMAGE=$BASE" \
        --build-arg "SPEC_VERSION=$SPEC_VERSION" \
        --label "pbench.base_image=$BASE" \
        -t "pbench/method-base:${SPEC_VERSION}" -t "$METHOD_BASE" - >/dev/null
echo "build-images: $METHOD_BASE built in $(since "$t") s, size $(image_size "$METHOD_BASE")"

[ "$BASE_ONLY" -eq 1 ] && exit 0

# ---- 4. method images ----------------------------------------------------------
if [ "${#METHOD_DIRS[@]}" -eq 0 ]; then
    for d in methods/*/; do
        [ -f "${d}Dockerfile" ] && METHOD_DIRS+=("${d%/}")
    done
fi
[ "${#METHOD_DIRS[@]}" -eq 0 ] && { echo "build-images: no method folders with a Dockerfile"; exit 0; }

status=0
for dir in "${METHOD_DIRS[@]}"; do
    if [ ! -f "$dir/Dockerfile" ]; then
        echo "build-images: $dir has no Dockerfile, skipped" >&2; status=1; continue
    fi
    # image name from the manifest (id + version): the same name harness/runners/docker_runner.py uses
    read -r name version < <("$PYTHON" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(m["id"], m["version"])' "$dir/manifest.json" 2>/dev/null) || {
        echo "build-images: $dir/manifest.json missing or without \"id\"/\"version\", skipped" >&2; status=1; continue
    }
    # Docker: repository lowercase [a-z0-9._-]; tag [A-Za-z0-9_.-], max 128.
    repo="pbench/method-$(echo "$name" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9._\n-' '-')"
    tag="$(echo "$version" | tr -c 'A-Za-z0-9_.\n-' '_' | cut -c1-128)"
    image="$repo:$tag"
    t=$(now)
    if docker build --quiet --network "$NETWORK" \
            -f "$dir/Dockerfile" \
            --build-arg "BASE_IMAGE=$METHOD_BASE" \
            --label "pbench.method=$name" --label "pbench.method_version=$version" \
            --label "pbench.spec_version=$SPEC_VERSION" \
            -t "$image" "$dir" >/dev/null; then
        echo "build-images: $image built in $(since "$t") s, size $(image_size "$image")"
    else
        echo "build-images: $image FAILED" >&2; status=1
    fi
done
exit "$status"
