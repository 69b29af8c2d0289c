#!/usr/bin/env bash
# A single-node Slurm on this machine, started by hand (no systemd), for tests and for trying the
# sbatch templates: munged, slurmctld and slurmd with every file (config, munge key and socket,
# state, spool, logs, pid files) under one directory, listening on loopback only.
#
#   launch/slurm/local-slurm.sh start DIR [--kill-wait S] [--cred-expire S]
#   export SLURM_CONF=DIR/slurm.conf        # then sbatch, squeue, scontrol ... talk to it
#   launch/slurm/local-slurm.sh stop DIR     # cancels its jobs, stops the daemons by pid
#
#   --kill-wait S     slurm.conf KillWait: seconds between Slurm's SIGTERM and SIGKILL to a job
#                     (scontrol requeue, preemption, scancel, time limit); default 30, as Slurm's
#   --cred-expire S   AuthInfo cred_expire: a requeued job may start again S + 1 s after it
#                     ended; default 120, as Slurm's; at least 5
#
# Needs root (slurmd starts jobs as their users) and Debian's slurmctld, slurmd, slurm-client and
# munge (launch/install_deps.sh). Every directory above DIR must be searchable by all (munged
# refuses a socket others cannot reach). The node is this host (`hostname -s`) with all its CPUs, in
# partition "debug". The daemons bind to the address this host's name resolves to
# (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny), which must be a loopback address
# (Debian's /etc/hosts has `127.0.1.1 <hostname>`); otherwise start refuses, rather than open
# Slurm's ports to the network. Ports are chosen free at start. Process tracking by process tree
# (proctrack/linuxproc), no task plugin, no accounting: nothing needs cgroups or systemd
# (../shared/spec/ecosystem.md section 1.4); on a cgroup v2 host slurmd still initialises its
# cgroup plugin, told not to ask systemd.
set -euo pipefail

usage() { sed -n '6,8p' "$0" | sed 's/^#   //' >&2; exit 2; }
die() { echo "local-slurm: $*" >&2; exit 1; }

[ $# -ge 2 ] || usage
action=$1 dir=$2
shift 2
kill_wait=30 cred_expire=120
while [ $# -gt 0 ]; do
  case "$1" in
    --kill-wait) kill_wait=$2; shift 2 ;;
    --cred-expire) cred_expire=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ "$kill_wait" =~ ^[0-9]+$ ]] || die "--kill-wait $kill_wait: not a number of seconds"
[[ "$cred_expire" =~ ^[0-9]+$ ]] && [ "$cred_expire" -ge 5 ] ||
  die "--cred-expire $cred_expire: a number of seconds, at least 5 (Slurm ignores less)"

conf="$dir/slurm.conf"
run="$dir/run"  # sockets and pid files
# The order daemons start in; stop goes backwards.
daemons=(munged slurmctld slurmd)

# A process that has exited but not been reaped counts as gone: in containers whose PID 1 does not
# reap orphans, daemons that exit stay zombies.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

pid_of() {  # prints the pid of daemon $1 when it runs
  local f="$run/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && echo "$pid"
}

stop() {
  if [ -f "$conf" ] && pid_of slurmctld >/dev/null; then
    # Stopping slurmd leaves running jobs (their slurmstepd) behind: end them first.
    local jobs
    jobs=$(SLURM_CONF="$conf" squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      local wait_s
      wait_s=$(sed -n 's/^KillWait=//p' "$conf")
      # shellcheck disable=SC2086  # one job id a word
      SLURM_CONF="$conf" scancel $jobs || true
      for _ in $(seq 1 $(( 2 * ${wait_s:-30} + 20 ))); do
        [ -z "$(SLURM_CONF="$conf" squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  local d pid
  for (( i = ${#daemons[@]} - 1; i >= 0; i-- )); do
    d=${daemons[$i]}
    pid=$(pid_of "$d") || continue
    kill "$pid"
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "local-slurm: $d (pid $pid) ignored SIGTERM for 10 s; SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

# The daemons' last log lines, for a start that failed.
show_logs() {
  for f in "$dir/log/munged.log" "$dir/log/slurmctld.log" "$dir/log/slurmd.log"; do
    [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
  done >&2
}

free_port() {  # a TCP port nothing listens on, from a range Linux does not hand out itself
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free TCP port found in 20000-31999"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root: slurmd must run as root to start jobs as their users"
  local b
  for b in munged munge slurmctld slurmd sbatch scontrol squeue sinfo; do
    command -v "$b" >/dev/null || die "$b not found: install Debian's slurmctld slurmd slurm-client munge (launch/install_deps.sh)"
  done
  for b in "${daemons[@]}"; do
    if pid=$(pid_of "$b"); then die "$b already runs for $dir (pid $pid); stop it first"; fi
  done
  local host addrs
  host=$(hostname -s)
  addrs=$(getent ahosts "$(hostname)" | awk '{print $1}' | sort -u | tr '\n' ' ')
  [ -n "$addrs" ] || die "this host's name '$(hostname)' does not resolve; add '127.0.1.1 $(hostname) $host' to /etc/hosts"
  for a in $addrs; do
    [[ "$a" == 127.* || "$a" == ::1 ]] ||
      die "this host's name '$(hostname)' resolves to $a, not to loopback: Slurm would listen on it. Add '127.0.1.1 $(hostname) $host' to /etc/hosts first"
  done

  mkdir -p "$dir/munge" "$run" "$dir/state" "$dir/spool" "$dir/log"
  # munged checks that everyone may reach its socket and that only its user reads its key.
  chmod 0711 "$dir"
  chmod 0755 "$run"
  chmod 0700 "$dir/munge"
  if [ ! -f "$dir/munge/munge.key" ]; then
    (umask 077; head -c 1024 /dev/urandom >"$dir/munge/munge.key")
  fi
  chmod 0400 "$dir/munge/munge.key"
  local socket="$run/munge.socket"
  rm -f "$socket" "$socket.lock"  # stale ones from a killed munged block a restart

  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  [ "$slurmd_port" != "$ctld_port" ] || slurmd_port=$(( ctld_port + 1 ))
  cat >"$conf" <<EOF
# Written by launch/slurm/local-slurm.sh: a single-node Slurm on loopback, without systemd.
ClusterName=s0local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=$cred_expire
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# Nothing triggers scheduling when a requeued job's start delay (cred_expire) runs out: only the
# periodic passes (default every 30 s for backfill, 60 s for the main loop) start it.
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=$kill_wait
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
    printf 'CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\n' >"$dir/cgroup.conf"
  fi
  export SLURM_CONF="$conf"

  munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
    { show_logs; die "munged did not start"; }
  if ! munge -S "$socket" -n | unmunge -S "$socket" >/dev/null; then
    show_logs; stop; die "munge credentials do not round-trip through $socket"
  fi
  slurmctld || { show_logs; stop; die "slurmctld did not start"; }
  slurmd || { show_logs; stop; die "slurmd did not start"; }
  local state=""
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
  done
  if [ "$state" != idle ]; then
    show_logs; stop
    die "node $host is '${state:-unknown}' 30 s after start, not idle"
  fi
  echo "local-slurm: up: node $host ($(nproc) CPUs), slurmctld on 127.0.0.1:$ctld_port, slurmd on :$slurmd_port, KillWait $kill_wait s" >&2
  echo "export SLURM_CONF=$conf"
}

case "$action" in
  start) start ;;
  stop) [ -d "$dir" ] || die "$dir: no such directory"; stop ;;
  *) usage ;;
esac
