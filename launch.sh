#!/usr/bin/env bash
# The one launcher of resnet_jax.
#
#   ./launch.sh CONFIG WORKDIR [--config.x=y ...]            all local devices
#   ./launch.sh CONFIG WORKDIR --nproc N [--config.x=y ...]  N processes on this
#       machine joined through a local coordinator (CPU collectives): tests
#       multi-host behaviour on one machine
#   srun ./launch.sh CONFIG WORKDIR [...]                     one process per SLURM
#       task; SLURM's variables become the coordinator flags
#
# Options may come before, between or after CONFIG and WORKDIR; flags take
# the --flag=value form (or --nproc N).
#
# The Python process replaces this shell (exec), so SIGTERM/SIGINT from a
# scheduler reach it directly; with --nproc they are forwarded to every child,
# and the first child to exit non-zero is named and the others are stopped.
set -euo pipefail
usage() {
  echo "usage: $0 CONFIG WORKDIR [--nproc N] [--config.FIELD=VALUE ...]${1:+ ($1)}" >&2
  exit 2
}
nproc=0
args=()
positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --nproc) [[ $# -ge 2 ]] || usage "--nproc needs a number"; nproc=$2; shift 2 ;;
    --nproc=*) nproc=${1#--nproc=}; shift ;;
    -h|--help) usage ;;
    -*) args+=("$1"); shift ;;
    *) positional+=("$1"); shift ;;
  esac
done
[[ ${#positional[@]} -eq 2 ]] || usage "expected CONFIG and WORKDIR, got ${#positional[@]} positional argument(s): ${positional[*]:-none}"
config=${positional[0]} workdir=${positional[1]}
[[ $nproc =~ ^[0-9]+$ ]] || { echo "error: --nproc takes a whole number, got '$nproc'" >&2; exit 2; }
PYTHON=${PYTHON:-python}
main=("$PYTHON" -m resnet_jax.main --config "$config" --workdir "$workdir")

if [[ $nproc -gt 1 ]]; then
  # A port the OS says is free now (a random one could be taken); any number
  # the interpreter does not give (PYTHON=echo in tests) falls back to random.
  port=${RESNET_JAX_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])' 2>/dev/null)}
  [[ $port =~ ^[0-9]+$ ]] || port=$((20000 + RANDOM % 20000))
  # On a GPU host each process gets its own share of the GPUs (else every
  # process would see, and preallocate memory on, all of them).
  gpus=0
  if [[ -z ${CUDA_VISIBLE_DEVICES+x} ]] && command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  if [[ $gpus -gt 0 && $((gpus % nproc)) -ne 0 ]]; then
    echo "error: $gpus GPUs do not split evenly over --nproc $nproc; pass a divisor of $gpus" >&2
    exit 2
  fi
  pids=()
  stopping=0
  trap 'stopping=1; kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
  for ((i = 0; i < nproc; i++)); do
    if [[ $gpus -gt 0 ]]; then
      share=$((gpus / nproc))
      export CUDA_VISIBLE_DEVICES=$(seq -s, $((i * share)) $((i * share + share - 1)))
    fi
    "${main[@]}" --coordinator_address="localhost:$port" --num_processes="$nproc" \
      --process_id="$i" ${args[@]+"${args[@]}"} &
    pids+=($!)
  done
  # The first process to fail is named and the others stopped: with a peer
  # dead they would wait in a collective until JAX gives up. SIGTERM first,
  # SIGKILL for any still there after a grace. bash's own report of a killed
  # child ("line N: 4242 Killed ...") would come first and say less: it
  # goes to /dev/null, ours to fd 3 (the children keep the real stderr).
  exec 3>&2 2>/dev/null
  status=0 deadline=0 left=("${!pids[@]}")
  while [[ ${#left[@]} -gt 0 ]]; do
    still=() failed=()
    for i in "${left[@]}"; do
      if kill -0 "${pids[i]}" 2>/dev/null; then still+=("$i"); continue; fi
      rc=0
      wait "${pids[i]}" || rc=$?
      # Exit 75 is a process that saw a peer die (resnet_jax/parallelism/
      # distributed.py): when both ended since the last look, name the peer.
      if [[ $rc -eq 75 ]]; then
        failed+=("$i:$rc")
      elif [[ $rc -ne 0 ]]; then
        failed=("$i:$rc" ${failed[@]+"${failed[@]}"})
      fi
    done
    left=(${still[@]+"${still[@]}"})
    if [[ $status -eq 0 && ${#failed[@]} -gt 0 ]]; then
      i=${failed[0]%:*} status=${failed[0]#*:}
      if [[ $stopping -eq 0 ]]; then  # Not stopped by a signal to this script.
        signal=''
        [[ $status -le 128 ]] || signal=" (SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128))))"
        echo "launch.sh: process $i (pid ${pids[i]}) exited with $status$signal; stopping the others" >&3
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 15))
      fi
    fi
    if [[ ${#left[@]} -gt 0 && $deadline -gt 0 && $SECONDS -ge $deadline ]]; then
      for i in "${left[@]}"; do kill -KILL "${pids[i]}" 2>/dev/null || true; done
    fi
    [[ ${#left[@]} -eq 0 ]] || sleep 0.2
  done
  exec 2>&3 3>&-
  exit "$status"
fi

if [[ ${SLURM_NTASKS:-1} -gt 1 && -n ${SLURM_PROCID:-} ]]; then
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  exec "${main[@]}" --coordinator_address="$head:${RESNET_JAX_PORT:-12355}" \
    --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID" ${args[@]+"${args[@]}"}
fi

exec "${main[@]}" ${args[@]+"${args[@]}"}
