r"""CIFAR-10 ResNet-20 with the recipe of He et al. 2015 (sec. 4.2).

Global batch 128, SGD momentum 0.9, weight decay 1e-4 (coupled, on conv and
dense kernels), learning rate 0.1 divided by 10 at 50% and 75% of the run
(32k and 48k of 64k steps), 64k steps, 4-pixel pad + random crop + flip.

  python -m resnet_jax.main --config configs/cifar.py --workdir runs/resnet20

Any field can be overridden: `--config.batch_size=256`.
"""

import ml_collections


def get_config(arg=None):
  """Returns the default config; `arg` is reserved for presets."""
  del arg
  c = ml_collections.ConfigDict()

  # Model.
  c.model = 'resnet20'           # models.MODELS key, e.g. resnet56, resnet18.
  c.stem = 'cifar'               # 'cifar' or 'imagenet' (resnet18..152 only).
  c.shortcut = ''                # '' = paper's default; 'A' or 'B' overrides.
  c.zero_init_residual = False   # Last BN scale of each branch starts at 0.
  c.dropout_rate = 0.0           # Wide ResNets only.
  c.bn_momentum = 0.9            # Running-average decay (PyTorch 0.1).
  c.bn_epsilon = 1e-5
  c.half_precision = False       # bfloat16 compute, float32 params/stats.
  c.init_from = ''               # torchvision-layout .pth to start from.

  # Data.
  c.dataset = 'cifar10'          # 'cifar10' or 'cifar100'.
  c.data_dir = ml_collections.config_dict.placeholder(str)  # None = tfds default.
  c.augment = True               # Pad 4 + random 32x32 crop + flip.

  # Optimisation.
  c.batch_size = 128             # Global, over all devices and hosts.
  c.eval_batch_size = 512        # Global; the last batch is padded and masked.
  c.num_epochs = 163.84          # 64k steps at batch 128 on 50k images.
  c.num_train_steps = -1         # -1 = derive from num_epochs.
  c.learning_rate = 0.1          # At batch_size; not rescaled automatically.
  c.lr_boundaries = (0.5, 0.75)  # Fractions of the run where lr is divided.
  c.lr_decay_factor = 0.1
  c.warmup_steps = 0             # Constant warmup_lr for this many steps.
  c.warmup_lr = 0.01
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4          # Added to the gradient of kernels.

  # Runtime.
  c.parallelism = 'jit'          # 'jit' (SPMD over a device mesh) or 'pmap'.
  c.num_devices = -1             # Devices used per process; -1 = all.
  c.seed = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_epochs = 1        # Also evaluated at the end of the run.
  c.keep_checkpoints = 3
  return c
