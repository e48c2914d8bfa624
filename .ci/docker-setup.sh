#!/usr/bin/env bash
# Install (if missing) and start the Docker Engine for PruningBench.
#
# Idempotent: if `docker info` already answers, nothing happens.
# Otherwise: apt-get install docker.io + debootstrap (only if missing), start
# dockerd in the background with its own data root and log file, and wait
# until `docker info` answers (timeout PBENCH_DOCKER_TIMEOUT, default 60 s).
# Container logs default to json-file, at most 2 x 50 MB per container.
#
# Environment knobs:
#   PBENCH_DOCKER_ROOT     data root        (default /var/lib/pbench-docker)
#   PBENCH_DOCKER_LOG      dockerd log file (default /var/log/pbench-dockerd.log)
#   PBENCH_DOCKER_TIMEOUT  seconds to wait  (default 60)
#   PBENCH_DOCKER_NETWORK  "none" (default) starts dockerd with
#                          --iptables=false --bridge=none: method containers
#                          and image builds run with network "none", so no
#                          bridge/NAT is needed and startup does not depend on
#                          the host's netfilter. "bridge" keeps Docker's
#                          default bridge networking (needs working iptables).
set -euo pipefail

DATA_ROOT="${PBENCH_DOCKER_ROOT:-/var/lib/pbench-docker}"
LOG="${PBENCH_DOCKER_LOG:-/var/log/pbench-dockerd.log}"
TIMEOUT="${PBENCH_DOCKER_TIMEOUT:-60}"
NETWORK="${PBENCH_DOCKER_NETWORK:-none}"
PIDFILE="${DATA_ROOT}.pid"

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if command -v docker >/dev/null 2>&1 && engine_up; then
    echo "docker-setup: engine already reachable, nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "docker-setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${missing[@]}"
    echo "docker-setup: packages installed after $(elapsed) s"
fi

# Without a service manager nothing starts dockerd for us (the docker.io
# postinst cannot start it without systemd). A stale pid file from a crashed
# daemon would make the new one refuse to start: remove it if its process
# is gone.
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    $SUDO rm -f "$PIDFILE"
fi

if [ -f "$PIDFILE" ]; then
    echo "docker-setup: dockerd already running (pid $(cat "$PIDFILE")), waiting for it"
else
    # every container's log is capped even where the harness does not set one (image builds, say);
    # the docker runner sets its own, smaller cap on method containers
    flags=(--data-root "$DATA_ROOT" --pidfile "$PIDFILE" --log-driver json-file --log-opt max-size=50m
           --log-opt max-file=2)
    if [ "$NETWORK" = "none" ]; then
        flags+=(--iptables=false --ip-masq=false --bridge=none)
    fi
    $SUDO mkdir -p "$DATA_ROOT" "$(dirname "$LOG")"
    echo "docker-setup: starting dockerd ${flags[*]} (log: $LOG)"
    # setsid + nohup: the daemon survives the end of this script's session.
    # (sh -c so that the log redirection also happens as root under sudo.)
    $SUDO env PBENCH_DOCKER_LOG="$LOG" sh -c \
        'exec setsid nohup dockerd "$@" >"$PBENCH_DOCKER_LOG" 2>&1 </dev/null' \
        dockerd "${flags[@]}" &
fi

deadline=$(( $(date +%s) + TIMEOUT ))
until engine_up; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "docker-setup: engine did not answer within ${TIMEOUT} s; last log lines:" >&2
        tail -n 40 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.5
done

echo "docker-setup: engine ready after $(elapsed) s ($(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'))"
