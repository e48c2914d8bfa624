#!/usr/bin/env bash
# A private, single-node Slurm cluster (slurmctld + slurmd + slurmdbd + MariaDB), all of it
# under one directory, for tests and CI. Debian 12, run as root, no systemd needed.
#
#   bash .ci/slurm-cluster.sh start  DIR   # install if missing, configure, start, wait for idle;
#                                          # last stdout line: export SLURM_CONF=DIR/slurm.conf
#   bash .ci/slurm-cluster.sh stop   DIR   # scancel everything, wait, stop daemons by pid file
#   bash .ci/slurm-cluster.sh status DIR   # exit 0 iff the controller answers and the node is usable
#
# Partition: "debug" (the default one, MaxTime=INFINITE). Accounting goes to slurmdbd, so
# sacct works (submitit needs it to see cancelled / timed-out jobs end).
# Every start is a fresh cluster: state and accounting database are wiped, job ids restart at 1.
# Progress goes to stderr ("slurm-cluster: ..."); only the export line goes to stdout.
set -euo pipefail

PARTITION=debug
CLUSTER=pbench
START_TIMEOUT=${SLURM_CLUSTER_START_TIMEOUT:-60}   # seconds, per wait
STOP_TIMEOUT=${SLURM_CLUSTER_STOP_TIMEOUT:-30}     # seconds, per wait
PACKAGES=(slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "slurm-cluster: [${SECONDS}s] $*" >&2; }

usage() {
  echo "usage: $0 {start|stop|status} DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
ACTION=$1
if [ ! -d "$2" ]; then
  case $ACTION in
    start) mkdir -p "$2" ;;
    stop) echo "slurm-cluster: nothing to stop ($2 does not exist)" >&2; exit 0 ;;
    *) echo "slurm-cluster: not up ($2 does not exist)" >&2; exit 1 ;;
  esac
fi
DIR=$(cd "$2" && pwd -P)
CONF=$DIR/slurm.conf
DBDCONF=$DIR/slurmdbd.conf
MYCNF=$DIR/my.cnf
RUN=$DIR/run
LOGDIR=$DIR/log
export SLURM_CONF=$CONF

# Unix sockets (MariaDB's, slurmstepd's in the spool dir) are limited to 108 bytes.
if [ ${#DIR} -gt 70 ]; then
  log "DIR path too long (${#DIR} > 70 chars) for unix sockets: $DIR"
  exit 2
fi

# ---------------------------------------------------------------- helpers

pid_of() {  # pid from a pid file, empty if none
  local f=$RUN/$1.pid
  [ -s "$f" ] && tr -dc '0-9' <"$f" || true
}

alive() {  # alive NAME: the daemon of that pid file runs (and is what we think it is)
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  local comm state
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)   # Z: zombie, i.e. dead
  [ "$comm" = "$1" ] && [ -n "$state" ] && [ "$state" != Z ]
}

tail_logs() {
  local f
  for f in "$@"; do
    [ -f "$LOGDIR/$f" ] || continue
    echo "slurm-cluster: ----- last lines of $LOGDIR/$f -----" >&2
    tail -n 40 "$LOGDIR/$f" >&2 || true
  done
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  while ! "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

port_in_use() {  # any TCP socket (v4/v6, any state) bound to this local port?
  local hex
  hex=$(printf ':%04X ' "$1")
  grep -qi -- "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_ports() {  # four consecutive free ports below the ephemeral range
  local low tries=0 base p ok
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] || low=32768
  while [ $tries -lt 200 ]; do
    tries=$((tries + 1))
    base=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10010)))
    ok=1
    for p in $base $((base + 1)) $((base + 2)) $((base + 3)); do
      if port_in_use "$p"; then ok=0; break; fi
    done
    if [ $ok = 1 ]; then echo "$base"; return 0; fi
  done
  log "could not find four free ports"
  return 1
}

node_state() { timeout 15 sinfo -h -N -o %t 2>/dev/null | head -n 1; }

is_up() {
  [ -f "$CONF" ] || return 1
  alive slurmctld && alive slurmd || return 1
  timeout 15 scontrol ping >/dev/null 2>&1 || return 1
  case "$(node_state)" in
    idle | mix | alloc | comp) return 0 ;;
  esac
  return 1
}

# ---------------------------------------------------------------- stop

kill_tree() {  # SIGKILL a process and all its descendants
  local pid=$1 child
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null || true); do
    kill_tree "$child"
  done
  kill -KILL "$pid" 2>/dev/null || true
}

gone() {  # gone PID: exited (or a zombie)
  [ ! -d "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

stop_daemons() {  # stop_daemons NAME...: SIGTERM them all, wait (bounded), SIGKILL the rest
  local name pid pids=() deadline=$((SECONDS + STOP_TIMEOUT))
  for name in "$@"; do
    if alive "$name"; then
      pid=$(pid_of "$name")
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
  done
  for name in "${pids[@]}"; do
    pid=${name#*:}
    while ! gone "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if ! gone "$pid"; then
      log "${name%%:*} (pid $pid) did not exit in ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in "$@"; do rm -f "$RUN/$name.pid"; done
}

kill_stray_steps() {  # slurmstepd processes of this cluster (they hold files in our spool dir)
  local pid fd
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = slurmstepd ] || continue
    for fd in /proc/"$pid"/fd/*; do
      if [[ "$(readlink "$fd" 2>/dev/null)" == "$DIR/"* ]]; then
        log "killing stray slurmstepd $pid and its job processes"
        kill_tree "$pid"
        break
      fi
    done
  done
}

do_stop() {
  if [ -f "$CONF" ] && alive slurmctld; then
    local ids
    ids=$(timeout 15 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      log "cancelling jobs: $(echo $ids)"
      # shellcheck disable=SC2086
      timeout 15 scancel $ids 2>/dev/null || true
      if ! wait_for "$STOP_TIMEOUT" "an empty job queue" \
        bash -c '[ -z "$(timeout 15 squeue -h -o %A 2>/dev/null)" ] && timeout 15 scontrol ping >/dev/null'; then
        log "queue not empty; going on"
      fi
    fi
  fi
  # slurmd and slurmctld first, then the accounting pair (its data is wiped by the next start)
  stop_daemons slurmd slurmctld
  kill_stray_steps
  stop_daemons slurmdbd mariadbd
  log "stopped ($DIR)"
}

# ---------------------------------------------------------------- start

install_packages() {
  local need=0 b
  for b in slurmctld slurmd slurmdbd sinfo sacct sacctmgr mariadbd mariadb-install-db; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need=1
  done
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ] \
    || ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || need=1
  [ $need = 1 ] || return 0
  log "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}" >"$DIR/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update >>"$DIR/apt.log" 2>&1 || true
    apt-get install -y --no-install-recommends "${PACKAGES[@]}" >>"$DIR/apt.log" 2>&1 \
      || { log "apt-get install failed:"; tail -n 30 "$DIR/apt.log" >&2; exit 1; }
  fi
}

write_configs() {
  local base node_line node_name
  base=$(pick_ports)
  local ctld_port=$base slurmd_port=$((base + 1)) dbd_port=$((base + 2)) db_port=$((base + 3))
  node_line=$(slurmd -C | head -n 1)   # NodeName=host CPUs=... RealMemory=...
  node_name=${node_line#NodeName=}
  node_name=${node_name%% *}
  NODE_NAME=$node_name

  cat >"$MYCNF" <<EOF
[mysqld]
datadir=$DIR/mysql
socket=$RUN/mysqld.sock
pid-file=$RUN/mariadbd.pid
log-error=$LOGDIR/mariadb.log
port=$db_port
bind-address=127.0.0.1
skip-name-resolve
user=root
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
max_connections=50
performance_schema=OFF
[client]
socket=$RUN/mysqld.sock
port=$db_port
EOF

  cat >"$DBDCONF" <<EOF
# private slurmdbd for $DIR (written by .ci/slurm-cluster.sh)
AuthType=auth/none
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBDCONF"

  cat >"$CONF" <<EOF
# private single-node cluster for $DIR (written by .ci/slurm-cluster.sh)
ClusterName=$CLUSTER
SlurmctldHost=$node_name(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=30
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$DIR/plugstack.conf"
}

start_failed() {
  log "start failed for $DIR"
  tail_logs mariadb.log slurmdbd.log slurmctld.log slurmd.log
  log "tearing down what was started"
  do_stop || true
  exit 1
}

do_start() {
  if is_up; then
    log "already running ($DIR): node $(node_state)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  # leftovers of an earlier, half-dead cluster in this DIR
  if alive slurmd || alive slurmctld || alive slurmdbd || alive mariadbd; then
    log "cleaning up a partial cluster in $DIR"
    do_stop
  fi
  install_packages

  rm -rf "$DIR/state" "$DIR/spool" "$DIR/mysql" "$RUN" "$LOGDIR"
  mkdir -p "$DIR/state" "$DIR/spool" "$RUN" "$LOGDIR"
  write_configs

  log "initialising MariaDB datadir"
  mariadb-install-db --defaults-file="$MYCNF" --user=root --skip-test-db \
    --auth-root-authentication-method=socket >"$LOGDIR/mariadb-install.log" 2>&1 \
    || { tail_logs mariadb-install.log; start_failed; }

  log "starting mariadbd"
  setsid mariadbd --defaults-file="$MYCNF" </dev/null >>"$LOGDIR/mariadb.log" 2>&1 &
  wait_for "$START_TIMEOUT" "mariadbd" \
    mariadb-admin --defaults-file="$MYCNF" -uroot ping || start_failed
  mariadb --defaults-file="$MYCNF" -uroot -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
     CREATE DATABASE slurm_acct_db;" || start_failed

  log "starting slurmdbd"
  slurmdbd </dev/null >>"$LOGDIR/slurmdbd.stdout" 2>&1 || start_failed
  wait_for "$START_TIMEOUT" "slurmdbd" timeout 15 sacctmgr -n list cluster || start_failed
  # the cluster, an account and root's association (not enforced, but makes sacct tidy)
  timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || start_failed
  timeout 30 sacctmgr -i add account pbench Cluster="$CLUSTER" Description=pbench Organization=pbench >/dev/null || start_failed
  timeout 30 sacctmgr -i add user root Account=pbench Cluster="$CLUSTER" >/dev/null || start_failed

  log "starting slurmctld"
  slurmctld -i -f "$CONF" </dev/null >>"$LOGDIR/slurmctld.stdout" 2>&1 || start_failed
  wait_for "$START_TIMEOUT" "slurmctld" timeout 15 scontrol ping || start_failed

  log "starting slurmd"
  slurmd -f "$CONF" -N "$NODE_NAME" </dev/null >>"$LOGDIR/slurmd.stdout" 2>&1 || start_failed
  wait_for "$START_TIMEOUT" "node $NODE_NAME to be idle" is_up || start_failed

  log "up: cluster $CLUSTER, partition $PARTITION, node $NODE_NAME $(node_state) (${SECONDS}s)"
  echo "export SLURM_CONF=$CONF"
}

case $ACTION in
  start) do_start ;;
  stop) do_stop ;;
  status)
    if is_up; then
      log "up ($DIR): node $(node_state)"
    else
      log "not up ($DIR)"
      exit 1
    fi
    ;;
  *) usage ;;
esac
