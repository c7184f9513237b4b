r"""CIFAR configs: ResNet-20 with the recipe of He et al. 2015, and presets.

Default (He et al. 2015, sec. 4.2): global batch 128, SGD momentum 0.9, weight
decay 1e-4 (coupled, on conv and dense kernels), learning rate 0.1 divided by
10 at 50% and 75% of the run (32k and 48k of 64k steps), 64k steps, 4-pixel
pad + random crop + flip.

  python -m resnet_jax.main --config configs/cifar.py --workdir runs/resnet20
  python -m resnet_jax.main --config configs/cifar.py:resnet56 --workdir runs/r56

Any field can be overridden: `--config.batch_size=256`.
`resnet_jax.workdir.config_fields.FIELDS` says what each one means
(`python -m resnet_jax.main --help` prints it).
"""

import ml_collections

def get_config(preset: str = '') -> ml_collections.ConfigDict:
  """The default config, or a preset: `configs/cifar.py:NAME`.

  Args:
    preset: '' (ResNet-20) or a key of `PRESETS`.
  """
  c = ml_collections.ConfigDict()
  # Model.
  c.model = 'resnet20'
  c.stem = 'cifar'
  c.shortcut = ''
  c.zero_init_residual = False
  c.dropout_rate = 0.0
  c.bn_momentum = 0.9
  c.bn_epsilon = 1e-5
  c.bn_group_size = 0
  c.blurpool = False
  c.half_precision = False
  c.store_conv_inputs = 'auto'
  c.cpu_conv = 'auto'
  c.init_from = ''
  # Data.
  c.dataset = 'cifar10'
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.augment = True
  c.image_size = 0
  c.crop_min_area = 0.08
  c.file_order = 'index_shuffle'
  c.final_image_size = 0
  c.resize_start_epoch = 0.0
  c.resize_end_epoch = 0.0
  c.eval_image_size = 0
  c.validation_size = 0
  # Beyond the paper recipe (all off by default).
  c.augment_policy = ''
  c.cutout_size = 0
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.label_smoothing = 0.0
  c.ema_decay = 0.0
  c.flip_tta = False
  # Optimisation: 163.84 epochs of 50k images at batch 128 = 64k steps.
  c.batch_size = 128
  c.eval_batch_size = 512
  c.num_epochs = 163.84
  c.num_train_steps = -1
  c.learning_rate = 0.1
  c.lr_scale_batch = 0
  c.lr_schedule = 'piecewise'
  c.lr_boundaries = (0.5, 0.75)
  c.lr_decay_factor = 0.1
  c.lr_peak_epoch = 2.0
  c.warmup_steps = 0
  c.warmup_epochs = 0.0
  c.warmup_shape = 'constant'
  c.warmup_lr = 0.01
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.weight_decay_on = 'kernels'
  c.optimizer = 'sgd'
  c.lars_trust = 0.001
  # Runtime.
  c.parallelism = 'jit'
  c.input_pipeline = 'auto'
  c.steps_per_call = -1
  c.input_workers = -1
  c.num_devices = -1
  c.seed = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_epochs = 1.0
  c.keep_checkpoints = 3
  c.eval_step = -1
  if preset:
    if preset not in PRESETS:
      raise ValueError(f'unknown preset {preset!r}; choose one of: {", ".join(PRESETS)}')
    c.update(PRESETS[preset])
  return c


# The papers' recipes. Epoch-based boundaries are fractions of the run.
PRESETS = {
    # He et al. 2015: 64k steps, lr 0.1 /10 at 32k and 48k.
    'resnet20': dict(model='resnet20'),
    'resnet32': dict(model='resnet32'),
    'resnet44': dict(model='resnet44'),
    'resnet56': dict(model='resnet56'),
    # "0.01 to warm up ... until the training error is below 80% (about 400
    # iterations)", then the same schedule.
    'resnet110': dict(model='resnet110', warmup_steps=400),
    # "n = 200 ... trained as described above" (the 110-layer recipe).
    'resnet1202': dict(model='resnet1202', warmup_steps=400),
    # He et al. 2016 (Identity Mappings): 64k steps, batch 128, same schedule,
    # warm-up at 0.01 for 400 steps for the 164/1001-layer nets.
    'preact_resnet110': dict(model='preact_resnet110', warmup_steps=400),
    'preact_resnet164': dict(model='preact_resnet164', warmup_steps=400),
    'preact_resnet1001': dict(model='preact_resnet1001', warmup_steps=400),
    # The common CIFAR recipe of ResNet-18 (kuangliu/pytorch-cifar style, step
    # schedule): 200 epochs, weight decay 5e-4.
    'resnet18': dict(model='resnet18', num_epochs=200.0, weight_decay=5e-4),
    # Zagoruyko & Komodakis 2016: 200 epochs, Nesterov, wd 5e-4, lr 0.1 x0.2
    # at epochs 60, 120, 160.
    'wrn28_10': dict(model='wrn28_10', num_epochs=200.0, weight_decay=5e-4,
                     nesterov=True, lr_boundaries=(0.3, 0.6, 0.8),
                     lr_decay_factor=0.2),
    'wrn16_8': dict(model='wrn16_8', num_epochs=200.0, weight_decay=5e-4,
                    nesterov=True, lr_boundaries=(0.3, 0.6, 0.8),
                    lr_decay_factor=0.2),
    # Xie et al. 2017: 300 epochs, lr 0.1 /10 at epochs 150 and 225, wd 5e-4.
    'resnext29_8x64d': dict(model='resnext29_8x64d', num_epochs=300.0,
                            weight_decay=5e-4),
    # Beyond the paper recipes (docs/recipes.md, "Beyond the paper recipe").
    # DeVries & Taylor 2017: ResNet-18, 200 epochs, Nesterov, wd 5e-4, lr 0.1
    # x0.2 at epochs 60, 120, 160; a 16x16 Cutout on CIFAR-10 (8x8 on CIFAR-100).
    'resnet18_cutout': dict(model='resnet18', num_epochs=200.0, weight_decay=5e-4,
                            nesterov=True, lr_boundaries=(0.3, 0.6, 0.8),
                            lr_decay_factor=0.2, cutout_size=16),
    # Zhang et al. 2018 (mixup), CIFAR: 200 epochs, batch 128, lr 0.1 /10 at
    # epochs 100 and 150, wd 1e-4, alpha 1.
    'preact_resnet18_mixup': dict(model='preact_resnet18', num_epochs=200.0,
                                  lr_boundaries=(0.5, 0.75), mixup_alpha=1.0),
    'wrn28_10_mixup': dict(model='wrn28_10', num_epochs=200.0,
                           lr_boundaries=(0.5, 0.75), mixup_alpha=1.0),
    # The tools combined for short runs (10 epochs of ResNet-20), the
    # combination chosen on a 5,000-image validation split (docs/results.md).
    'resnet20_modern': dict(model='resnet20', num_epochs=10.0, lr_schedule='cosine',
                            warmup_steps=200, label_smoothing=0.1, ema_decay=0.999,
                            flip_tta=True),
}

# Where each preset's recipe comes from (docs/presets.md is generated from
# PRESETS and these).
SOURCES = {
    'resnet20': 'He et al. 2015, sec. 4.2', 'resnet32': 'He et al. 2015, sec. 4.2',
    'resnet44': 'He et al. 2015, sec. 4.2', 'resnet56': 'He et al. 2015, sec. 4.2',
    'resnet110': 'He et al. 2015, sec. 4.2 (warm-up at 0.01 for ~400 steps)',
    'resnet1202': 'He et al. 2015, sec. 4.2 (the 110-layer recipe)',
    'preact_resnet110': 'He et al. 2016 (Identity Mappings)',
    'preact_resnet164': 'He et al. 2016 (Identity Mappings)',
    'preact_resnet1001': 'He et al. 2016 (Identity Mappings)',
    'resnet18': 'the common ResNet-18 CIFAR recipe (kuangliu/pytorch-cifar style)',
    'wrn28_10': 'Zagoruyko & Komodakis 2016', 'wrn16_8': 'Zagoruyko & Komodakis 2016',
    'resnext29_8x64d': 'Xie et al. 2017',
    'resnet18_cutout': 'DeVries & Taylor 2017 (Cutout)',
    'preact_resnet18_mixup': 'Zhang et al. 2018 (mixup)',
    'wrn28_10_mixup': 'Zhang et al. 2018 (mixup)',
    'resnet20_modern': 'this codebase: chosen on a validation split (docs/results.md)',
}
