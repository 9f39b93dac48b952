#!/usr/bin/env bash
# Runs tokpre on N processes on this machine, each with its own simulated CPU devices: the multi-host code path
# (jax.distributed, per-process data shards, global arrays, gloo collectives) without a cluster. Tests use it.
#
# Needs: bash >= 5.1, the project's Python environment (set PYTHON, default: python), a free TCP port on localhost.
# Usage:
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
#       --config=configs/ae_then_dyn.py --workdir=runs/mp --config.mesh.shape='(1,-1,1)'
# Environment (all optional): NUM_PROCESSES (2), DEVICES_PER_PROCESS (4), PORT (free port picked at random),
# PYTHON (python), LOG_DIR (unset: every process writes to this terminal; set: <LOG_DIR>/process_<i>.log).
# Each process gets TOKPRE_COORDINATOR=localhost:<PORT>, TOKPRE_NUM_PROCESSES, TOKPRE_PROCESS_ID, JAX_PLATFORMS=cpu
# and XLA_FLAGS=--xla_force_host_platform_device_count=<DEVICES_PER_PROCESS>; tokpre.sharding initialises
# jax.distributed from them. The script waits for every process and exits non-zero if any failed (the others are
# then stopped, so a crashed peer does not leave the rest blocked in a collective).
set -u
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PYTHON="${PYTHON:-python}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  (
    export TOKPRE_COORDINATOR="localhost:${PORT}" TOKPRE_NUM_PROCESSES="${NUM_PROCESSES}" TOKPRE_PROCESS_ID="$i"
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS} ${XLA_FLAGS_EXTRA:-}"
    if [[ -n "${LOG_DIR:-}" ]]; then
      mkdir -p "$LOG_DIR"
      exec "$PYTHON" -m tokpre.main "$@" >"${LOG_DIR}/process_${i}.log" 2>&1
    else
      exec "$PYTHON" -m tokpre.main "$@"
    fi
  ) &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
for ((n = 0; n < NUM_PROCESSES; n++)); do
  # wait -n -p (bash >= 5.1): the next process to finish, and which one; on a failure stop the others rather
  # than leave them blocked in a collective with a dead peer.
  wait -n -p done_pid "${running[@]}"
  rc=$?
  still=()
  for p in "${running[@]}"; do [[ "$p" == "${done_pid:-}" ]] || still+=("$p"); done
  running=("${still[@]+"${still[@]}"}")
  if ((rc != 0)); then
    echo "local_multiprocess.sh: process with pid ${done_pid:-?} exited with status $rc; stopping the others" >&2
    status=$rc
    cleanup
    wait
    break
  fi
done
exit "$status"
