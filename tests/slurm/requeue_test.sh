#!/usr/bin/env bash
# A real single-node Slurm (launch/slurm/local-slurm.sh: Debian's munged, slurmctld, slurmd,
# started here by hand) runs the sbatch template of a mode (run: launch/slurm/s0d-run.sbatch;
# serve: launch/slurm/s0d-serve.sbatch, the job spec submitted with the s0 client) with a
# launcher:
#   1. Slurm's SIGTERM: a stand-in rank that needs 3 s to commit after SIGTERM gets them, on every
#      rank (`scancel`; mpirun's own kill sequence would end it after 2 s);
#   2. a 2-rank job on the tiny committed Qwen3.5 fixture (two runs, groups of one) is requeued
#      mid-run twice: `scontrol requeue` (Slurm's SIGTERM: the ranks commit, Slurm requeues), then,
#      once it has restarted and progressed, the time-limit warning (`scancel --signal=USR1
#      --batch`, what --signal=B:USR1@T sends: the ranks commit and the batch script requeues
#      the job itself). The job must restart twice (SLURM_RESTART_COUNT 1 and 2), resume each run
#      from its committed step both times, finish (serve: then `s0 shutdown`), exit 0, and leave
#      final states byte-identical to an uninterrupted run of the same spec (launch/s0d-mpirun
#      run, outside Slurm).
#
# Usage: tests/slurm/requeue_test.sh S0D_BINARY S0_BINARY mpirun|srun run|serve
# Exit status: 0 passed, 1 failed (the reason, the job's log and the daemons' logs are printed),
# 77 skipped (not root: slurmd must run as root).
set -euo pipefail

s0d=$(realpath "$1")
s0=$(realpath "$2")
launcher=$3
mode=$4
src=$(cd "$(dirname "$0")/../.." && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: needs root: slurmd runs as root to start jobs (launch/slurm/local-slurm.sh)"
  exit 77
fi
case "$launcher" in mpirun|srun) ;; *) echo "launcher: mpirun or srun" >&2; exit 2 ;; esac
case "$mode" in run|serve) ;; *) echo "mode: run or serve" >&2; exit 2 ;; esac

# AddressSanitizer builds: LeakSanitizer is told about Open MPI's own allocations kept until exit,
# as tests/daemon/run_job_test.cpp does; sbatch takes the environment along to the ranks.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="suppressions=$src/tests/daemon/lsan_openmpi.supp:print_suppressions=0"

work=$(mktemp -d "/tmp/s0-slurm-$mode-$launcher.XXXXXX")
chmod 0711 "$work"  # munged wants every directory above its socket searchable by all
slurm="$work/slurm"
job_log=""
passed=0
cleanup() {
  "$src/launch/slurm/local-slurm.sh" stop "$slurm" || true
  if [ "$passed" -eq 1 ]; then rm -rf "$work"; else echo "[test] files kept in $work" >&2; fi
}
trap cleanup EXIT

fail() {
  echo "[test] FAILED: $*" >&2
  if [ -n "$job_log" ] && [ -f "$job_log" ]; then
    echo "--- job log $job_log" >&2
    cat "$job_log" >&2
  fi
  for f in "$slurm/log/slurmctld.log" "$slurm/log/slurmd.log"; do
    [ -f "$f" ] && { echo "--- $f (last lines)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}
note() { echo "[test] $(date +%T) $*"; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$(( SECONDS + limit ))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $limit s"
    sleep 0.2
  done
}

job_field() {  # job_field JOB NAME: one field of `scontrol show job`
  scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}
job_is() { [ "$(job_field "$1" JobState)" = "$2" ]; }
restarts_are() { [ "$(job_field "$1" Restarts)" = "$2" ]; }

# The lines one start of the batch script wrote (SLURM_RESTART_COUNT = $1) to the job's log.
section() {
  awk -v r="$1" '/^s0d-requeue: job [0-9]+ restart [0-9]+: / { cur = $5 + 0 }
                 cur == r' "$job_log"
}
# True when section $1 has a line containing $2. (Not grep -q: with pipefail, its early exit can
# fail the pipeline through awk's SIGPIPE.)
has() { section "$1" | grep -F -- "$2" >/dev/null; }
# True when every run has logged at least $2 steps in section $1.
progressed() {
  [ -f "$job_log" ] || return 1
  local run
  for run in lr-0.01_seed-1 lr-0.02_seed-1; do
    [ "$(section "$1" | grep -c "run $run: step ")" -ge "$2" ] || return 1
  done
}
# The step a run resumed after in section $1 (empty when it did not resume there).
resumed_after() {
  section "$1" | sed -n "s|.*run $2: resuming after step \([0-9]*\)/$n_steps .*|\1|p" | sed -n 1p
}

env_line=$("$src/launch/slurm/local-slurm.sh" start "$slurm" --kill-wait 10 --cred-expire 5) ||
  fail "local-slurm.sh could not start Slurm"
eval "$env_line"
note "Slurm up ($SLURM_CONF); launcher $launcher"

submit() {  # submit DIR MODE [template arguments]: prints the job id
  local dir=$1 template="$src/launch/slurm/s0d-$2.sbatch"
  shift 2
  (cd "$dir" && sbatch --parsable -n 2 --export="ALL,S0_HOME=$src,S0_LAUNCHER=$launcher" \
     "$template" "$@")
}

# --- 1. Slurm's SIGTERM leaves every rank the time to commit --------------------------------
fake="$work/fake"
mkdir -p "$fake"
cat >"$fake/rank" <<'EOF'
#!/bin/bash
# Stands in for s0d: on SIGTERM (or the stop signal) it takes 3 s to "commit", then exits 75.
# Further SIGTERMs do not shorten the 3 s (mpirun signals the process group, sleep included).
rank=${OMPI_COMM_WORLD_RANK:-$SLURM_PROCID}
trap 'stop=1' TERM USR1
touch "up.$rank"
while [ -z "${stop:-}" ]; do sleep 0.1; done
done_at=$(( $(date +%s%N) + 3000000000 ))
while [ "$(date +%s%N)" -lt "$done_at" ]; do sleep 0.1; done
touch "committed.$rank"
exit 75
EOF
chmod +x "$fake/rank"
job=$(S0D="$fake/rank" submit "$fake" run spec-unused)
job_log="$fake/s0d-run-$job.log"
wait_for 60 "the stand-in ranks starting" test -e "$fake/up.0" -a -e "$fake/up.1"
scancel "$job"
note "job $job: scancel (Slurm's SIGTERM to every process of the job)"
# Killed before its 3 s were up, a rank never writes the file.
wait_for 30 "the stand-in ranks committing after Slurm's SIGTERM" \
  test -e "$fake/committed.0" -a -e "$fake/committed.1"
note "both stand-in ranks had 3 s to commit after SIGTERM"

# --- 2. requeue twice mid-run, finish, compare with an uninterrupted run ---------------------
# The fixture's two short examples (40 and 20 tokens): short steps.
fixture="$src/tests/fixtures/qwen35/text_f32_grouped"
awk -F, 'NF <= 41' "$fixture/data.jsonl" >"$work/data.jsonl"
spec() {  # spec N_STEPS: the job's spec text
  printf '%s\n' "version: 1" "name: \"slurm-requeue\"" "model: \"$fixture/model\"" \
    "data: \"$work/data.jsonl\"" "out_dir: \"out\"" \
    "method { n_steps: $1 history_every: 100 }" "seeds: [1]" "grid { lr: [0.01, 0.02] }" \
    "runtime { group_size: 1 threads_per_rank: 1 stall_timeout_s: 300 }"
}
# Steps: about 4 s of training per run with this build (a step takes ~12 ms in a Release build
# here, ~0.25 s under AddressSanitizer in Debug), at least 30. The job must outlast two
# interrupts, and each lets the runs take a few steps more than the two the test waits for: the
# steps taken while it notices them and while Slurm delivers the signal.
mkdir -p "$work/calib" "$work/ref" "$work/job"
spec 5 >"$work/calib/job.txtpb"
(cd "$work/calib" && "$s0d" run job.txtpb >run.log 2>&1) ||
  { cat "$work/calib/run.log" >&2; fail "the calibration run failed"; }
per_step=$(sed -n 's/.*run lr-0.01_seed-1: done: 5 steps, .*, \([0-9.]*\) s$/\1/p' \
  "$work/calib/run.log" | awk '{print $1 / 5}')
[ -n "$per_step" ] || { cat "$work/calib/run.log" >&2; fail "no run time in the calibration log"; }
n_steps=$(awk -v t="$per_step" 'BEGIN { n = int(4 / t); print n < 30 ? 30 : (n > 1000 ? 1000 : n) }')
note "a step takes ${per_step} s: $n_steps steps per run"
spec "$n_steps" >"$work/ref/job.txtpb"
spec "$n_steps" >"$work/job/job.txtpb"

note "reference: launch/s0d-mpirun -n 2 run job.txtpb, outside Slurm"
(cd "$work/ref" && "$src/launch/s0d-mpirun" -n 2 --s0d "$s0d" --logs logs -- run job.txtpb \
   >run.log 2>&1) || { cat "$work/ref/run.log" >&2; fail "the reference run failed"; }

daemon_up() { "$s0" list "${client[@]}" >/dev/null 2>&1; }
if [ "$mode" = run ]; then
  job=$(S0D="$s0d" submit "$work/job" run job.txtpb --log-level debug)
  note "job $job: s0d run"
else
  mkdir -m 0700 "$work/ctl"
  client=(--endpoint "ipc://$work/ctl/control.sock" --timeout 2 --retries 1)
  job=$(S0D="$s0d" submit "$work/job" serve --dir "$work/queue" --endpoint "${client[1]}" \
          --log-level debug)
  note "job $job: s0d serve"
  wait_for 120 "s0d serve answering at ${client[1]}" daemon_up
  "$s0" submit "$work/job/job.txtpb" --job-id sweep "${client[@]}" || fail "s0 submit failed"
  note "job spec submitted to the daemon"
fi
job_log="$work/job/s0d-$mode-$job.log"
wait_for 120 "job $job: 2 steps of each run" progressed 0 2
scontrol requeue "$job"
note "job $job: scontrol requeue"
if [ "$launcher" = srun ]; then
  # What a requeue can leave behind (launch/slurm/s0d-requeue): the PMIx directory of a step the
  # restart will use (its step 0 cleans up; the ranks are step 1).
  tmpfs=$(scontrol show config | awk '$1 == "TmpFS" {print $3}')
  mkdir -p "${tmpfs:-/tmp}/spmix_appdir_$(id -u)_$job.1"
fi
wait_for 120 "job $job restarting (Restarts=1)" restarts_are "$job" 1
wait_for 120 "job $job: 2 steps of each run after the restart" progressed 1 2
scancel --signal=USR1 --batch "$job"
note "job $job: SIGUSR1 to the batch shell (the time-limit warning)"
wait_for 120 "job $job restarting again (Restarts=2)" restarts_are "$job" 2
if [ "$mode" = serve ]; then
  wait_for 120 "s0d serve answering again" daemon_up
  "$s0" watch sweep "${client[@]}" >"$work/watch.log" 2>&1 ||
    { cat "$work/watch.log" >&2; fail "s0 watch sweep failed"; }
  "$s0" shutdown "${client[@]}" || fail "s0 shutdown failed"
  note "job sweep done; s0 shutdown"
fi
wait_for 180 "job $job completing" job_is "$job" COMPLETED
note "job $job completed"

[ "$(job_field "$job" ExitCode)" = 0:0 ] || fail "job $job: ExitCode $(job_field "$job" ExitCode)"
has 0 "restart 0: SIGTERM from Slurm" ||
  fail "restart 0: the batch script did not log Slurm's SIGTERM"
has 1 "restart 1: time-limit warning (SIGUSR1)" ||
  fail "restart 1: the batch script did not log the time-limit warning"
has 1 "restart 1: committed; requeueing job $job" ||
  fail "restart 1: the batch script did not requeue the job after the commit"
has 2 "restart 2: s0d finished (exit 0)" || fail "restart 2: s0d did not finish"
for run in lr-0.01_seed-1 lr-0.02_seed-1; do
  k1=$(resumed_after 1 "$run")
  k2=$(resumed_after 2 "$run")
  [ -n "$k1" ] && [ "$k1" -ge 1 ] && [ "$k1" -lt "$n_steps" ] ||
    fail "$run: restart 1 did not resume from a committed step (got '${k1}')"
  [ -n "$k2" ] && [ "$k2" -gt "$k1" ] && [ "$k2" -lt "$n_steps" ] ||
    fail "$run: restart 2 did not resume after step $k1 (got '${k2}')"
  note "$run: resumed after step $k1, then after step $k2 of $n_steps"
  [ -f "$work/job/out/runs/$run/done" ] || fail "$run: no done marker"
  want="$work/ref/out/runs/$run/states.safetensors"
  [ -s "$want" ] || fail "$run: the reference has no states"
  cmp "$want" "$work/job/out/runs/$run/states.safetensors" ||
    fail "$run: final states differ from the uninterrupted run"
done
note "final states byte-identical to the uninterrupted run"
passed=1
