#!/usr/bin/env bash
# The one call a session with a lent accelerator makes first:
#
#   benchmarks/accelerator_check.sh [--deadline SECONDS]   on the accelerator
#   benchmarks/accelerator_check.sh --smoke                on any CPU, tiny sizes
#
# 1. The environment: nvidia-smi, JAX's devices.
# 2. Parity (benchmarks/device_parity.py): one step on the accelerator vs the
#    CPU at the highest matmul precision; a bfloat16 step is finite, keeps
#    float32 parameters, and (ResNet-50 at 224 px, not with --smoke) gives the
#    float32 loss to 5%.
# 3. Throughput: python -m resnet_jax.benchmark for resnet20, resnet56 and
#    wrn16_8, float32 and bfloat16, with PyTorch on the same device where its
#    baseline has the model (the CIFAR ResNets).
# 4. ResNet-20 with the paper recipe (64k steps, batch 128) on the JPEG copy
#    of CIFAR-10, stopped by SIGTERM at the deadline (it checkpoints and
#    exits); the workdir is tarred into $OUT/accel_r20.tar. Carried back into
#    the checkout as .runs/accel_r20.tar, the next call resumes it.
# (Before 4.) ImageNet: a bfloat16 ResNet-50 step at 224 px (images/s, peak
#    memory, batch per device) and the JPEG loader on this host's cores
#    (benchmarks/jpeg_decoding.py); needs grain, simplejpeg and OpenCV (wheels
#    in .whl/ where the machine lacks them).
#
# Everything it prints also goes to $OUT/check.log. Inputs, where the device
# machine lacks them (carried as ignored folders): .whl/*.whl (wheels, e.g.
# ml_collections), .data/cifar10-jpeg.tar.gz (or RESNET_JAX_DATA=DIR holding
# cifar10-jpeg/). Exit code: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
deadline=330
while [[ $# -gt 0 ]]; do
  case $1 in
    --smoke) smoke=1; shift ;;
    --deadline) deadline=$2; shift 2 ;;
    --deadline=*) deadline=${1#--deadline=}; shift ;;
    *) echo "error: unknown option $1; use [--smoke] [--deadline SECONDS]" >&2; exit 2 ;;
  esac
done
[[ $deadline =~ ^[0-9]+$ ]] || { echo "error: --deadline takes seconds, got '$deadline'" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/check.log") 2>&1
failed=0
section() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
step() { "$@" || { echo "FAILED ($?): $*"; failed=1; }; }

if [[ -d .whl ]] && ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

section environment
if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
step "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

section parity
step "$PY" benchmarks/device_parity.py $([[ $smoke == 1 ]] && echo --smoke)
[[ $smoke == 1 ]] || step "$PY" benchmarks/device_parity.py --imagenet --batch_size 32

section throughput
if [[ $smoke == 1 ]]; then
  models=(resnet8); sizes=(--config.batch_size=16 --windows=2 --steps=2 --warmup=1
                           --min_window_seconds=0 --noloop)
else
  models=(resnet20 resnet56 wrn16_8); sizes=()
fi
has_torch=0
"$PY" -c 'import torch' 2>/dev/null && has_torch=1
for model in "${models[@]}"; do
  for half in False True; do
    torch=()
    [[ $has_torch == 1 ]] && torch=(--torch)
    dtype=$([[ $half == True ]] && echo bf16 || echo fp32)
    step "$PY" -m resnet_jax.benchmark --config configs/cifar.py --config.model="$model" \
      --config.half_precision=$half "${sizes[@]}" "${torch[@]}" \
      > "$OUT/bench_${model}_${dtype}.json"
    cat "$OUT/bench_${model}_${dtype}.json"
  done
done

section imagenet
# ResNet-50 at 224 px in bfloat16 (images/s, peak memory, batch per device)
# on synthetic uint8 images, and the JPEG loader's images/s on this host's
# cores. Both need an image folder for the class count: 1000 classes of one
# small JPEG each, made here. JPEGs for the loader: .data/jpegs (e.g. some of
# the ImageNet sample) if carried, else 256 synthetic 500x375 photos (128x96
# with --smoke: the same decode and crop path at a tenth of the time).
fake=$(mktemp -d)
step "$PY" - "$fake" "$([[ $smoke == 1 ]] && echo 10 || echo 1000)" \
  "$([[ $smoke == 1 ]] && echo 128x96 || echo 500x375)" <<'PY'
import os, sys
import numpy as np
from PIL import Image
root, classes = sys.argv[1], int(sys.argv[2])
width, height = map(int, sys.argv[3].split('x'))
rng = np.random.default_rng(0)
for split in ('train', 'val'):
  for c in range(classes):
    os.makedirs(f'{root}/fake/{split}/c{c:04d}')
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
        f'{root}/fake/{split}/c{c:04d}/0.jpg')
os.makedirs(f'{root}/photos')
y, x = np.mgrid[0:height, 0:width]
for i in range(256):
  image = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin((x + i) / 9.0)], -1)
  image += rng.normal(0, 12, image.shape)
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      f'{root}/photos/{i:03d}.jpg', quality=90)
PY
if [[ $smoke == 1 ]]; then
  # Batch 8: BatchNorm groups of 4, the recipe's 32 being the whole batch.
  r50=(--config.model=resnet18 --config.image_size=32 --config.batch_size=8
       --config.bn_group_size=4 --windows=2 --steps=2 --warmup=1 --min_window_seconds=0)
  jpeg=(--size 32 --repeats 1)
else
  r50=(--config.batch_size=256)
  jpeg=(--repeats 2)
fi
step "$PY" -m resnet_jax.benchmark --config configs/imagenet.py --config.data_dir="$fake" \
  --config.dataset=fake --config.half_precision=True "${r50[@]}" > "$OUT/bench_resnet50_bf16.json"
cat "$OUT/bench_resnet50_bf16.json"
photos=$fake/photos
[[ -d .data/jpegs ]] && photos=.data/jpegs
step "$PY" benchmarks/jpeg_decoding.py "$photos" "${jpeg[@]}" | tee "$OUT/jpeg_decoding.txt"

section training
data=${RESNET_JAX_DATA:-}
if [[ -z $data ]]; then
  data=$(mktemp -d)
  if [[ $smoke == 1 ]]; then  # A tiny stand-in, written as the tests write theirs.
    step "$PY" - "$data" <<'PY'
import pathlib, sys
from tests import cifar_archives
arrays = cifar_archives.random_cifar10(num_train=64, num_test=20, seed=0, balanced=True)
cifar_archives.write_image_folder(pathlib.Path(sys.argv[1]), arrays, 'cifar10-jpeg')
PY
  elif [[ -f .data/cifar10-jpeg.tar.gz ]]; then
    [[ -d $data/cifar10-jpeg ]] || tar xzf .data/cifar10-jpeg.tar.gz -C "$data"
  else
    echo "FAILED: no data; carry .data/cifar10-jpeg.tar.gz or set RESNET_JAX_DATA"; failed=1
  fi
fi
runs=runs
[[ $smoke == 1 ]] && runs=$OUT/runs  # The smoke run leaves the checkout alone.
workdir=$runs/accel_r20
if [[ $smoke == 0 && -f .runs/accel_r20.tar && ! -d $workdir ]]; then
  mkdir -p "$runs" && tar xf .runs/accel_r20.tar -C "$runs"  # A previous call's run.
fi
train=(--config configs/cifar.py --workdir "$workdir" --config.dataset=cifar10-jpeg
       --config.data_dir="$data")
[[ $smoke == 1 ]] && train+=(--config.model=resnet8 --config.batch_size=16
                             --config.num_train_steps=6 --config.log_every_steps=2
                             --config.checkpoint_every_steps=2)
timeout -s TERM "$deadline" "$PY" -m resnet_jax.main "${train[@]}"
rc=$?
case $rc in
  0) echo "training: finished" ;;
  124|143) echo "training: stopped at the ${deadline} s deadline; checkpointed, resumable" ;;
  *) echo "FAILED ($rc): training"; failed=1 ;;
esac
tar cf "$OUT/accel_r20.tar" -C "$runs" accel_r20
step "$PY" -m resnet_jax.results "$workdir"

section done
echo "check: $([[ $failed == 0 ]] && echo passed || echo FAILED); outputs in $OUT"
exit $failed
