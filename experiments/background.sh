#!/usr/bin/env bash
# A long learning run in the background, pinned to one core and niced, so that a second
# run and the test suite share the 2-core machine with it (docs/results.md).
#   bash experiments/background.sh CORE LOG [overrides...]
#   bash experiments/background.sh 1 runs/dqn_seed0.log experiment=breakout_dopamine_dqn seed=0
# The same command resumes the run from its last checkpoint. Pause it for a benchmark with
# kill -STOP <pid> and go on with kill -CONT <pid>; the pid is in LOG.pid.
set -euo pipefail
core=$1 log=$2
shift 2
mkdir -p "$(dirname "$log")"
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false"  # one XLA thread: the run keeps to its core
cd "$(dirname "$0")/.."
nohup taskset -c "$core" nice -n 10 .venv/bin/python -m dqn_jax "$@" >>"$log" 2>&1 &
echo $! >"$log.pid"
echo "started pid $! on core $core: $log"
