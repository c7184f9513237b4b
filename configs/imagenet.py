r"""ImageNet configs: ResNet-50 with the recipe of Goyal et al. 2017, and presets.

Default (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): ResNet-50 with
the ImageNet stem, 224 px random-resized crops + flip, 90 epochs, SGD momentum
0.9, weight decay 1e-4, learning rate 0.1 x batch/256 (the linear scaling
rule) after a linear 5-epoch warm-up from 0.1, divided by 10 at epochs 30,
60 and 80, the last BatchNorm scale of each residual block initialised to 0;
evaluation on the 50,000 validation images resized to 256 and centre-cropped
to 224 (top-1 and top-5).

  python -m resnet_jax.prepare_data --imagenet ~/Downloads/ilsvrc --data_dir ~/data
  python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50 \
    --config.data_dir=~/data
  python -m resnet_jax.main --config configs/imagenet.py:resnet50_fast_16 ...

Any field can be overridden: `--config.batch_size=1024` (the learning rate
and the warm-up follow: they are per 256 images and in epochs). docs/imagenet.md
says how to get the data, run on 8 GPUs or several nodes, and what the runs
are expected to cost.
"""

import os

import ml_collections

from resnet_jax import config_files


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  """The default ImageNet config, or a preset: `configs/imagenet.py:NAME`.

  Args:
    preset: '' (ResNet-50, Goyal et al.) or a key of `PRESETS`.
  """
  cifar = config_files.load_module(os.path.join(os.path.dirname(__file__), 'cifar.py'))
  c = cifar.get_config()
  c.update(dict(
      model='resnet50', stem='imagenet', zero_init_residual=True,
      dataset='imagenet2012', image_size=224, crop_min_area=0.08,
      batch_size=256, eval_batch_size=256, num_epochs=90.0,
      learning_rate=0.1, lr_scale_batch=256, lr_schedule='piecewise',
      lr_boundaries=(30 / 90, 60 / 90, 80 / 90), lr_decay_factor=0.1,
      warmup_epochs=5.0, warmup_shape='linear', warmup_lr=0.1,
      momentum=0.9, weight_decay=1e-4, log_every_steps=100,
      checkpoint_every_steps=2000, eval_every_epochs=1.0, keep_checkpoints=2))
  if preset:
    if preset not in PRESETS:
      raise ValueError(f'unknown preset {preset!r}; choose one of: {", ".join(PRESETS)}')
    c.update(PRESETS[preset])
  return c


def _fast(epochs: int) -> dict:
  """An FFCV-style fast recipe of `epochs` epochs: progressive resizing
  160 -> 192 over the last third, evaluated at 224 with flip TTA, label
  smoothing 0.1, no weight decay on BatchNorm (the default here), cosine
  decay after a 2-epoch warm-up, batch 1024."""
  return dict(num_epochs=float(epochs), image_size=160, final_image_size=192,
              resize_start_epoch=round(0.70 * epochs, 1),
              resize_end_epoch=round(0.85 * epochs, 1), eval_image_size=224,
              flip_tta=True, label_smoothing=0.1, batch_size=1024, eval_batch_size=1024,
              lr_schedule='cosine', warmup_epochs=2.0, warmup_lr=0.0,
              half_precision=True)


PRESETS = {
    # Goyal et al. 2017 (the default), and the same recipe for the other depths.
    'resnet50': dict(model='resnet50'),
    'resnet18': dict(model='resnet18'),
    'resnet34': dict(model='resnet34'),
    'resnet101': dict(model='resnet101'),
    'resnet152': dict(model='resnet152'),
    # The Flax ImageNet example: 100 epochs, batch 1024 (0.1 per 256), linear
    # warm-up over 5 epochs from 0, then cosine; bfloat16 compute.
    'resnet50_flax': dict(num_epochs=100.0, batch_size=1024, eval_batch_size=1024,
                          lr_schedule='cosine', warmup_epochs=5.0, warmup_lr=0.0,
                          zero_init_residual=False, half_precision=True),
    # FFCV-style fast recipes (Leclerc et al. 2022's ingredients; the schedule
    # is this codebase's cosine).
    'resnet50_fast_16': _fast(16),
    'resnet50_fast_24': _fast(24),
    'resnet50_fast_32': _fast(32),
    'resnet50_fast_40': _fast(40),
    'resnet50_fast_88': _fast(88),
    'resnet18_fast_16': dict(_fast(16), model='resnet18'),
    'resnet18_fast_88': dict(_fast(88), model='resnet18'),
}

# Where each preset's recipe comes from (docs/presets.md is generated from
# PRESETS and these).
SOURCES = {
    'resnet50': 'Goyal et al. 2017', 'resnet18': 'Goyal et al. 2017 (their recipe)',
    'resnet34': 'Goyal et al. 2017 (their recipe)',
    'resnet101': 'Goyal et al. 2017 (their recipe)',
    'resnet152': 'Goyal et al. 2017 (their recipe)',
    'resnet50_flax': 'the Flax ImageNet example (warm-up + cosine, 100 epochs)',
    **{name: 'FFCV-style (Leclerc et al. 2022): progressive resizing, test at 224, '
             'label smoothing, flip TTA; cosine schedule'
       for name in ('resnet50_fast_16', 'resnet50_fast_24', 'resnet50_fast_32',
                    'resnet50_fast_40', 'resnet50_fast_88', 'resnet18_fast_16',
                    'resnet18_fast_88')},
}
