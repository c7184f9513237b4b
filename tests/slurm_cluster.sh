#!/usr/bin/env bash
# A real single-node SLURM cluster in one folder, for the `slurm` test tier
# (tests/test_slurm_cluster.py) and for trying the SLURM launcher by hand.
#
#   tests/slurm_cluster.sh install         as root: Debian's slurm-wlm, munge,
#                                          slurmdbd and mariadb-server
#   tests/slurm_cluster.sh start DIR       munged, mariadbd, slurmdbd, slurmctld
#                                          and slurmd, all configured, logging
#                                          and keeping their PIDs in DIR
#   export SLURM_CONF=DIR/slurm.conf       then sbatch, squeue, sacct ... use it
#   tests/slurm_cluster.sh stop DIR        stops each daemon by its PID
#
# Partitions: `cpu` (default; MaxTime 30 min), and `low`/`high` on the same
# node for preemption as SLURM does it by default: a `high` job preempts a
# `low` one with PreemptMode=REQUEUE and GraceTime=20, so the preempted task
# gets SIGTERM, 20 s, then SIGKILL and a requeue. Accounting goes through
# slurmdbd to MariaDB, so sacct answers as on a real cluster.
set -euo pipefail
MUNGE_SOCKET=/run/munge/munge.socket.2

die() { echo "error: $*" >&2; exit 2; }

install() {
  [[ $(id -u) -eq 0 ]] || die "installing the cluster's packages needs root"
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null \
      && command -v munged >/dev/null && command -v mariadbd >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d: packages must not start their own daemons; this script does.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

# Waits until "$@" succeeds (a daemon answers), at most $TRIES half-seconds.
wait_for() {
  local what=$1; shift
  for _ in $(seq "${TRIES:-60}"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "$what did not come up; its log is in $DIR"
}

start() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  [[ ! -e $DIR/slurmctld.pid ]] || die "$DIR already has a cluster; stop it first"
  local host cpus mem
  DB_PORT=${SLURM_DB_PORT:-16820}
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p "$DIR"/{munge,mysql,spool/ctld,spool/d,state}
  chmod 700 "$DIR/munge"

  # munge: its own key, on the standard socket (some of SLURM's connections
  # ignore AuthInfo=socket=...).
  [[ ! -S $MUNGE_SOCKET ]] || ! munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
    || die "a munged already answers on $MUNGE_SOCKET; stop it first"
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
  chmod 400 "$DIR/munge/munge.key"
  munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" \
    --seed-file="$DIR/munge/seed"

  # MariaDB for slurmdbd, on loopback only.
  mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root \
    --auth-root-authentication-method=normal >"$DIR/mysql-install.log" 2>&1
  mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" \
    --pid-file="$DIR/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --user=root \
    --log-error="$DIR/mariadbd.log" &
  wait_for mariadbd mariadb --no-defaults -S "$DIR/mysql.sock" -u root -e 'select 1'
  mariadb --no-defaults -S "$DIR/mysql.sock" -u root -e \
    "create database if not exists slurm_acct_db;
     create user if not exists 'slurm'@'127.0.0.1' identified by 'slurm';
     grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"

  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=${SLURMDBD_PORT:-16819}
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
EOF
  chmod 600 "$DIR/slurmdbd.conf"

  cat > "$DIR/slurm.conf" <<EOF
ClusterName=resnetjax
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
ReturnToService=2
JobRequeue=1
KillWait=10
MessageTimeout=20
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${SLURMDBD_PORT:-16819}
JobAcctGatherType=jobacct_gather/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=30 State=UP
PartitionName=low Nodes=$host MaxTime=30 PriorityTier=1 PreemptMode=REQUEUE GraceTime=20 State=UP
PartitionName=high Nodes=$host MaxTime=30 PriorityTier=10 PreemptMode=OFF State=UP
EOF
  export SLURM_CONF=$DIR/slurm.conf
  slurmdbd  # Reads slurmdbd.conf beside $SLURM_CONF.
  wait_for slurmdbd bash -c "exec 3<>/dev/tcp/localhost/${SLURMDBD_PORT:-16819}"
  slurmctld -f "$DIR/slurm.conf"
  wait_for slurmctld scontrol ping
  sacctmgr -i add cluster resnetjax >/dev/null 2>&1 || true
  slurmd -f "$DIR/slurm.conf"
  TRIES=120 wait_for slurmd bash -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
  echo "SLURM up in $DIR: export SLURM_CONF=$DIR/slurm.conf"
}

stop() {
  DIR=$(cd "$1" && pwd)
  local daemon pid
  # Jobs first, so no task outlives its cluster (slurmstepd would).
  if [[ -s $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF=$DIR/slurm.conf
    scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 60); do
      [[ -z $(squeue -h -u "$(id -un)" 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  # The order that loses nothing: compute node, controller, accounting, stores.
  for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    [[ -s $DIR/$daemon.pid ]] || continue
    pid=$(cat "$DIR/$daemon.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$daemon.pid"
  done
}

case ${1:-} in
  install) install ;;
  start) [[ $# -eq 2 ]] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
