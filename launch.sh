#!/usr/bin/env bash
# Runs training on all local devices:
#   ./launch.sh CONFIG WORKDIR [--config.x=y ...]
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
exec python -m resnet_jax.main --config "$config" --workdir "$workdir" "$@"
