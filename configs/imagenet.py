r"""ImageNet configs: ResNet-50 with the recipe of Goyal et al. 2017, and presets.

Default (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): ResNet-50 with
the ImageNet stem, 224 px random-resized crops + flip, 90 epochs, SGD with
Nesterov momentum 0.9, weight decay 1e-4 (not on BatchNorm), learning rate
0.1 x batch/256 (the linear scaling rule) after a linear 5-epoch warm-up from
0.1, divided by 10 at epochs 30, 60 and 80, the last BatchNorm scale of each
residual block initialised to 0, BatchNorm statistics over groups of 32
images whatever the batch (their n = 32 per worker);
evaluation on the 50,000 validation images resized to 256 and centre-cropped
to 224 (top-1 and top-5).

  python -m resnet_jax.prepare_data --imagenet ~/Downloads/ilsvrc --data_dir ~/data
  python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50 \
    --config.data_dir=~/data
  python -m resnet_jax.main --config configs/imagenet.py:resnet50_fast_16 ...

Any field can be overridden: `--config.batch_size=1024` (the learning rate
and the warm-up follow: they are per 256 images and in epochs; BatchNorm's
groups stay 32). RECIPES below holds each preset's source, field by field
(docs/presets.md shows them side by side). docs/imagenet.md
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
      momentum=0.9, nesterov=True, weight_decay=1e-4, bn_group_size=32,
      log_every_steps=100,
      checkpoint_every_steps=2000, eval_every_epochs=1.0, keep_checkpoints=2))
  if preset:
    if preset not in PRESETS:
      raise ValueError(f'unknown preset {preset!r}; choose one of: {", ".join(PRESETS)}')
    c.update(PRESETS[preset])
  return c


# FFCV's configs (libffcv/ffcv-imagenet@4dd291a, rn50_configs/ and
# rn18_configs/rn*_<E>_epochs.yaml): the epochs of the 160 -> 192 px ramp,
# (start_ramp, end_ramp) per length.
FFCV_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48),
              88: (65, 76)}


def ffcv_first_large_epoch(epochs: int, low: int = 160, high: int = 192) -> int:
  """The first (0-based) epoch FFCV trains at `high` px: its `get_resolution`
  (train_imagenet.py:168-185), evaluated once per whole epoch, rounds the
  interpolated size to a multiple of 32, so a ramp of 32 px is one switch."""
  start, end = FFCV_RAMPS[epochs]
  for epoch in range(epochs):
    if epoch <= start:
      size = low
    elif epoch >= end:
      size = high
    else:  # np.interp, then np.round (half to even) of size / 32.
      size = int(round((low + (high - low) * (epoch - start) / (end - start)) / 32)) * 32
    if size == high:
      return epoch
  return epochs


def _ffcv(model: str, epochs: int) -> dict:
  """FFCV's recipe of `epochs` epochs (rn50_/rn18_<E>_epochs.yaml and
  train_imagenet.py): BlurPool, 160 px switching to 192 at FFCV's epoch,
  evaluation at 256 with flip TTA, label smoothing 0.1, its triangular
  ('cyclic') schedule peaking at epoch 2, no weight decay where torchvision's
  names hold 'bn', no zero-init; ResNet-50 on 8 GPUs of 512 (BatchNorm per
  GPU), ResNet-18 on one GPU of 1024."""
  switch = float(ffcv_first_large_epoch(epochs))
  big = model == 'resnet50'
  return dict(model=model, num_epochs=float(epochs), image_size=160, final_image_size=192,
              resize_start_epoch=switch, resize_end_epoch=switch, eval_image_size=256,
              flip_tta=True, label_smoothing=0.1, batch_size=4096 if big else 1024,
              eval_batch_size=1024, bn_group_size=512 if big else 0,
              learning_rate=1.7 if big else 0.5, lr_scale_batch=4096 if big else 1024,
              lr_schedule='triangular', lr_peak_epoch=2.0, warmup_epochs=0.0,
              nesterov=False, weight_decay=1e-4 if big else 5e-5, weight_decay_on='ffcv',
              zero_init_residual=False, blurpool=True, half_precision=True)


PRESETS = {
    # Goyal et al. 2017 (the default), and the same recipe for the other depths.
    'resnet50': dict(model='resnet50'),
    'resnet18': dict(model='resnet18'),
    'resnet34': dict(model='resnet34'),
    'resnet101': dict(model='resnet101'),
    'resnet152': dict(model='resnet152'),
    # The Flax ImageNet example's configs/tpu.py (its 76.37% on TPU v3-8):
    # 100 epochs, batch 1024 (0.1 per 256), linear warm-up over 5 epochs from
    # 0, then cosine; Nesterov; bfloat16; BatchNorm per TPU core (128), as
    # in the 2021 runs behind its README.
    'resnet50_flax': dict(num_epochs=100.0, batch_size=1024, eval_batch_size=1024,
                          lr_schedule='cosine', warmup_epochs=5.0, warmup_lr=0.0,
                          bn_group_size=128, half_precision=True),
    # FFCV's own configs (libffcv/ffcv-imagenet), field by field.
    'resnet50_fast_16': _ffcv('resnet50', 16),
    'resnet50_fast_24': _ffcv('resnet50', 24),
    'resnet50_fast_32': _ffcv('resnet50', 32),
    'resnet50_fast_40': _ffcv('resnet50', 40),
    'resnet50_fast_56': _ffcv('resnet50', 56),
    'resnet50_fast_88': _ffcv('resnet50', 88),
    'resnet18_fast_16': _ffcv('resnet18', 16),
    'resnet18_fast_88': _ffcv('resnet18', 88),
}

_FFCV_NAMES = [n for n in PRESETS if '_fast_' in n]
_FFCV_TOP1 = {'resnet50_fast_16': '73.8%', 'resnet50_fast_24': '75.6%',
              'resnet50_fast_32': '76.6%', 'resnet50_fast_40': '77.2%',
              'resnet50_fast_56': '78.0%', 'resnet50_fast_88': '78.4%',
              'resnet18_fast_16': '66.9%', 'resnet18_fast_88': '72.4%'}

# Where each preset's recipe comes from (docs/presets.md is generated from
# PRESETS and these).
SOURCES = {
    'resnet50': 'Goyal et al. 2017', 'resnet18': 'Goyal et al. 2017 (their recipe)',
    'resnet34': 'Goyal et al. 2017 (their recipe)',
    'resnet101': 'Goyal et al. 2017 (their recipe)',
    'resnet152': 'Goyal et al. 2017 (their recipe)',
    'resnet50_flax': "the Flax ImageNet example's configs/tpu.py (76.37%, TPU v3-8)",
    **{name: (f"FFCV's {name.split('_')[0].replace('resnet', 'rn')}_"
              f"{name.split('_')[-1]}_epochs.yaml ({_FFCV_TOP1[name]})")
       for name in _FFCV_NAMES},
}

# Each source's recipe, field by field: (field, the source's value, where the
# source says so, why this codebase differs or ''). A field in parentheses is
# no config field (an initialiser, a filter, a storage format): its value is
# text, and `why` says what this codebase does instead. docs/presets.md shows
# every row beside the preset's value; tests/test_docs.py fails on a
# difference without a why, and on a why where nothing differs.
_GOYAL = 'Goyal et al. 2017'
_FB = 'fb.resnet.torch@985e569'
GOYAL_RECIPE = [
    ('stem', 'imagenet', f'{_GOYAL} §5.1 (the ResNet-50 of [12], stride on the 3x3)', ''),
    ('zero_init_residual', True, f'{_GOYAL} §5.1', ''),
    ('image_size', 224, f'{_GOYAL} §5.1', ''),
    ('crop_min_area', 0.08, f'{_FB} datasets/transforms.lua:130-162', ''),
    ('batch_size', 256, f'{_GOYAL} §5.1 (kn = 256: 8 workers x 32)', ''),
    ('bn_group_size', 32, f'{_GOYAL} §2.3, §5.1 ("n = 32 throughout")', ''),
    ('num_epochs', 90.0, f'{_GOYAL} §5.1', ''),
    ('learning_rate', 0.1, f'{_GOYAL} §5.1 (0.1 kn/256)', ''),
    ('lr_scale_batch', 256, f'{_GOYAL} §2.1, §5.1', ''),
    ('lr_schedule', 'piecewise', f'{_GOYAL} §5.1', ''),
    ('lr_boundaries', (30 / 90, 60 / 90, 80 / 90), f'{_GOYAL} §5.1 (epochs 30, 60, 80)', ''),
    ('lr_decay_factor', 0.1, f'{_GOYAL} §5.1', ''),
    ('warmup_epochs', 5.0, f'{_GOYAL} §2.2', ''),
    ('warmup_shape', 'linear', f'{_GOYAL} §2.2', ''),
    ('warmup_lr', 0.1, f'{_GOYAL} §2.2 (from 0.1 up to 0.1 k; none at k <= 1)', ''),
    ('momentum', 0.9, f'{_GOYAL} §5.1', ''),
    ('nesterov', True, f'{_GOYAL} §5.1 ("standard momentum ... equally effective")', ''),
    ('weight_decay', 1e-4, f'{_GOYAL} §5.1', ''),
    ('weight_decay_on', 'kernels and the classifier bias (not BatchNorm)', f'{_GOYAL} §5.1',
     "'kernels': the classifier's 1,000 biases are not decayed; no rule here decays "
     'them without decaying the BatchNorm parameters'),
    ('label_smoothing', 0.0, f'{_GOYAL} §5.1', ''),
    ('bn_momentum', 0.9, f'{_GOYAL} §5.1 ("running average (with momentum 0.9)")', ''),
    ('bn_epsilon', 1e-5, f"{_FB} models/resnet.lua (Torch's SpatialBatchNormalization)", ''),
    ('half_precision', False, f'{_GOYAL} §5', ''),
    ('eval_image_size', 0, f'{_FB} datasets/imagenet.lua:96-98 (resize 256, crop 224)', ''),
    ('(classifier init)', 'N(0, 0.01)', f'{_GOYAL} §5.1',
     "flax's truncated LeCun normal, this codebase's init for every recipe"),
    ('(training crop)', 'RandomSizedCrop: aspect uniform in [3/4, 4/3], bicubic',
     f'{_FB} datasets/transforms.lua:130-162',
     "torchvision's RandomResizedCrop (log-uniform aspect), bilinear with antialiasing; "
     "[12]'s colour jitter and lighting, which the paper does not name, are left out"),
    ('(evaluation resize)', 'bicubic', f'{_FB} datasets/transforms.lua:37-50',
     "bilinear with antialiasing (Pillow), torchvision's evaluation"),
    ('(reported)', '76.40% top-1 (23.60 ± 0.12% error), kn = 256, 5 runs',
     f'{_GOYAL} §5.1', 'not yet measured here'),
]
_FLAX = 'google/flax@18f8f311 examples/imagenet/'
FLAX_RECIPE = [
    ('model', 'resnet50', f'{_FLAX}configs/default.py:24', ''),
    ('zero_init_residual', True, f'{_FLAX}models.py:49,79', ''),
    ('image_size', 224, f'{_FLAX}input_pipeline.py:22', ''),
    ('crop_min_area', 0.1, f'{_FLAX}input_pipeline.py:99-101 (area_range (0.08, 1), '
     'but min_object_covered=0.1 of the whole image)',
     "torchvision's 0.08 with torchvision's crop (next rows): one crop definition "
     'serves every recipe here'),
    ('batch_size', 1024, f'{_FLAX}configs/tpu.py:25', ''),
    ('bn_group_size', 128, 'google/flax@635c79b7 examples/imagenet/models.py '
     '(no axis_name: per TPU core, 1024 / 8)', ''),
    ('num_epochs', 100.0, f'{_FLAX}configs/default.py:35', ''),
    ('learning_rate', 0.1, f'{_FLAX}configs/default.py:28, train.py:344', ''),
    ('lr_scale_batch', 256, f'{_FLAX}train.py:344', ''),
    ('lr_schedule', 'cosine', f'{_FLAX}train.py:90-109', ''),
    ('warmup_epochs', 5.0, f'{_FLAX}configs/default.py:29', ''),
    ('warmup_lr', 0.0, f'{_FLAX}train.py:90-109', ''),
    ('momentum', 0.9, f'{_FLAX}configs/default.py:30', ''),
    ('nesterov', True, f'{_FLAX}train.py:253-257', ''),
    ('weight_decay', 1e-4, f'{_FLAX}train.py:123-129', ''),
    ('weight_decay_on', 'kernels', f'{_FLAX}train.py:123-129 (params with ndim > 1)', ''),
    ('label_smoothing', 0.0, f'{_FLAX}train.py:73-76', ''),
    ('bn_momentum', 0.9, f'{_FLAX}models.py:104-111', ''),
    ('bn_epsilon', 1e-5, f'{_FLAX}models.py:104-111', ''),
    ('eval_image_size', 0, f'{_FLAX}input_pipeline.py:22 (224, as training)', ''),
    ('half_precision', True, f'{_FLAX}configs/tpu.py:28 (bfloat16 on TPU)', ''),
    ('(conv init)', "LeCun normal (flax's default)", f'{_FLAX}models.py:103',
     "He normal (fan-out), torchvision's and Goyal's, this codebase's init"),
    ('(training crop)', "TF's sample_distorted_bounding_box (aspect uniform), bicubic",
     f'{_FLAX}input_pipeline.py:80-113',
     "torchvision's RandomResizedCrop (log-uniform aspect), bilinear with antialiasing"),
    ('(evaluation)', 'centre 0.875 of the short side, bicubic to 224; 49,152 of 50,000 '
     'images (whole batches)', f'{_FLAX}input_pipeline.py:116-141, train.py:334-340',
     'resize to 256, centre 224, bilinear with antialiasing; all 50,000 images'),
    ('(epoch length)', 'images // batch: 1251 steps, 125,100 in all', f'{_FLAX}train.py:325-332',
     'images / batch: 1251.1 steps, 125,114 in all'),
    ('(BatchNorm today)', 'over all devices (axis_name, since google/flax@1c6cb6b0, 2023)',
     f'{_FLAX}models.py:104-111',
     'the preset follows the 2021 runs that produced the README numbers'),
    ('(reported)', '76.37% top-1, TPU v3-8, 4.4 h', f'{_FLAX}README.md:42-48',
     'not yet measured here'),
]
_FFCV = 'libffcv/ffcv-imagenet@4dd291a '


def ffcv_recipe(name: str) -> list:
  """FFCV's config behind preset `name`, field by field."""
  epochs = int(name.split('_')[-1])
  big = name.startswith('resnet50')
  yaml = f"{_FFCV}{'rn50' if big else 'rn18'}_configs/{'rn50' if big else 'rn18'}_{epochs}_epochs.yaml"
  code = f'{_FFCV}train_imagenet.py'
  start, end = FFCV_RAMPS[epochs]
  switch = float(ffcv_first_large_epoch(epochs))
  return [
      ('model', 'resnet50' if big else 'resnet18', f'{yaml} (model.arch)', ''),
      ('zero_init_residual', False, f"{code}:328-348 (torchvision's default)", ''),
      ('blurpool', True, f'{yaml} (use_blurpool); {code}:115-126, 335-340', ''),
      ('image_size', 160, f'{yaml} (min_res)', ''),
      ('final_image_size', 192, f'{yaml} (max_res)', ''),
      ('resize_start_epoch', switch,
       f'{yaml} (start_ramp {start}, end_ramp {end}); {code}:168-185 per whole epoch', ''),
      ('resize_end_epoch', switch, f'{code}:168-185 (one 32-px step: one switch)', ''),
      ('eval_image_size', 256, f'{yaml} (validation.resolution)', ''),
      ('crop_min_area', 0.08, 'libffcv/ffcv@3a12966 ffcv/fields/rgb_image.py:234', ''),
      ('batch_size', 4096 if big else 1024,
       f"{yaml} (batch_size {512 if big else 1024} per GPU x {8 if big else 1})", ''),
      ('bn_group_size', 512 if big else 0,
       f'{code}:328-348 (DistributedDataParallel without SyncBatchNorm: per GPU)', ''),
      ('num_epochs', float(epochs), f'{yaml} (epochs)', ''),
      ('learning_rate', 1.7 if big else 0.5, f'{yaml} (lr)', ''),
      ('lr_scale_batch', 4096 if big else 1024, f'{yaml} (lr at that batch)', ''),
      ('lr_schedule', 'triangular', f"{yaml} (cyclic); {code}:107-113, 356-358", ''),
      ('lr_peak_epoch', 2.0, f'{code}:60' if big else f'{yaml} (lr_peak_epoch)', ''),
      ('warmup_epochs', 0.0, f'{code}:107-113 (the schedule rises itself)', ''),
      ('momentum', 0.9, f'{yaml} (momentum)', ''),
      ('nesterov', False, f'{code}:187-208', ''),
      ('weight_decay', 1e-4 if big else 5e-5, f'{yaml} (weight_decay)', ''),
      ('weight_decay_on', 'ffcv', f"{code}:187-208 (no decay where the name holds 'bn')", ''),
      ('label_smoothing', 0.1, f'{yaml} (label_smoothing)', ''),
      ('bn_momentum', 0.9, f"{code}:328-348 (torchvision's BatchNorm2d, momentum 0.1)", ''),
      ('bn_epsilon', 1e-5, f"{code}:328-348 (torchvision's BatchNorm2d)", ''),
      ('flip_tta', True, f'{yaml} (lr_tta); {code}:394-414', ''),
      ('half_precision', 'float16 with loss scaling', f'{code}:367-373',
       'bfloat16, which needs no loss scaling; float16 is not offered'),
      ('(flip TTA)', 'sum of the two views\' logits', f'{code}:403-404',
       'mean of the two views\' probabilities; the top-1 of either rarely differs'),
      *([('(BatchNorm running averages)', "rank 0's (DDP broadcasts its buffers)",
          f'{code}:328-348', 'the mean over all groups (layers.GroupBatchNorm)')]
        if big else []),
      ('(training resize)', 'OpenCV INTER_AREA', 'libffcv/ffcv@3a12966 libffcv/libffcv.cpp:40-41',
       "JPEG scaled decoding, a Gaussian blur matched to Pillow's antialiasing, then "
       'bilinear (image_decoding.antialias): low-pass like INTER_AREA, not the same filter'),
      ('(epoch length)', f"whole batches (drop_last): {1281167 // (4096 if big else 1024)} "
       'steps', f'{code}:210-252', f"images / batch: {1281167 / (4096 if big else 1024):.1f} "
       'steps, the stream running on across epochs (one more step in 4 to 8)'),
      ('(stored images)', 'longest side <= 500 px, half JPEG q90, half raw',
       f'{_FFCV}write_imagenet.sh, README.md:65',
       'the original JPEGs; FFCV rewrites the dataset into its own format'),
      ('(reported)', f'{_FFCV_TOP1[name]} top-1, {"8" if big else "1"} x A100',
       f'{_FFCV}README.md', 'not yet measured here'),
  ]


RECIPES = {
    **{name: [('model', 'resnet50', f'{_GOYAL} §5.1',
               '' if name == 'resnet50' else 'their recipe at another depth (they '
               'train ResNet-50 only)')]
       + GOYAL_RECIPE for name in ('resnet50', 'resnet18', 'resnet34', 'resnet101',
                                   'resnet152')},
    'resnet50_flax': FLAX_RECIPE,
    **{name: ffcv_recipe(name) for name in _FFCV_NAMES},
}
