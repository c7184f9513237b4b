"""The config's fields: what each means, which a resume may change, and the
value runs had before a field existed (`config_validation` checks them)."""


# One line per config field: the public interface of a run (see --help).
FIELDS = {
    'model': 'network name: resnet20..1202, preact_resnet18/110/164/1001, '
             'resnet18..152, resnext29_8x64d/16x64d, wrn28_10, wrn16_8 (tiny, for tests: '
             'resnet8, wrn10_1)',
    'stem': "'cifar' (3x3 conv) or 'imagenet' (7x7/2 conv + max-pool); resnet18..152 only",
    'shortcut': "'' keeps the paper's shortcut; 'A' (zero-pad) or 'B' (1x1 projection)",
    'zero_init_residual': "start each residual branch's last BatchNorm scale at 0",
    'dropout_rate': 'dropout between the convolutions of Wide ResNet blocks',
    'bn_momentum': "BatchNorm running-average decay (PyTorch's momentum 0.1 = 0.9 here)",
    'bn_epsilon': 'BatchNorm epsilon',
    'bn_group_size': 'BatchNorm statistics per group of N examples; 0 = the whole batch',
    'blurpool': "FFCV's BlurPool: a fixed 3x3 blur before strided convolutions",
    'half_precision': 'bfloat16 computation; parameters and statistics stay float32',
    'store_conv_inputs': "'auto' (on for CPU), 'on' or 'off': keep conv inputs for "
                         'the backward pass instead of recomputing them; same numbers',
    'cpu_conv': "'auto' (CPU backend: convolutions whose shapes XLA:CPU is slow at run "
                "as one matrix product; same numbers to float rounding) or 'off'",
    'init_from': 'weights to start from: a resnet_jax workdir or one of its '
                 'checkpoints (WORKDIR/checkpoints/STEP), or a torchvision-layout .pth '
                 '(resnet18..152)',
    'dataset': "'cifar10' or 'cifar100' (tfds), or the name of an image-folder "
               'dataset in data_dir (NAME/train/<class>/*, NAME/test/<class>/*)',
    'data_dir': 'tfds data directory, or the folder holding image-folder datasets; '
                'unset = tfds default (see prepare_data)',
    'augment': 'pad 4 + random 32x32 crop + horizontal flip on training images '
               '(with image_size: random-resized crop + flip)',
    'image_size': '0 = the in-memory 32x32 pipelines; N > 0 = an image folder of any '
                  'size read from its files: training takes random-resized N x N crops, '
                  'evaluation resizes the shorter side to N/0.875 and centre-crops N '
                  '(224 for ImageNet)',
    'crop_min_area': 'with image_size: the smallest random-resized crop, as a fraction '
                     'of the image area (0.08: Inception, torchvision)',
    'file_order': "with image_size: each epoch's file order, 'index_shuffle' (grain's: "
                  "no process holds it) or 'permutation' (numpy's: runs before "
                  '2026-12-07)',
    'final_image_size': 'progressive resizing (FFCV): the training size grows linearly '
                        'from image_size at resize_start_epoch to this at '
                        'resize_end_epoch, in steps of 32 pixels; 0 = off',
    'resize_start_epoch': 'progressive resizing: the epoch the growth starts',
    'resize_end_epoch': 'progressive resizing: the epoch final_image_size is reached',
    'eval_image_size': 'with image_size: the evaluation crop size; 0 = the last '
                       'training size',
    'validation_size': 'training images held out (chosen by seed) and evaluated during '
                       'training instead of the test split; 0 = none',
    'augment_policy': "'' or 'trivialaugment' (one random operation per training "
                      'image, after crop and flip)',
    'cutout_size': 'side of the square Cutout sets to the mean pixel; 0 = off',
    'mixup_alpha': 'mixup Beta(alpha, alpha) mixing weight; 0 = off',
    'cutmix_alpha': 'CutMix Beta(alpha, alpha) box area; 0 = off (not with mixup)',
    'label_smoothing': 'weight of the uniform distribution in the targets; 0 = off',
    'ema_decay': 'decay of the moving average of parameters and BatchNorm statistics, '
                 'evaluated beside the raw weights; 0 = off',
    'flip_tta': 'evaluation also averages the class probabilities of each image '
                'and its mirror image (reported beside the plain view)',
    'batch_size': 'global training batch, over all devices and processes',
    'eval_batch_size': 'global evaluation batch; the last batch is padded and masked',
    'num_epochs': 'run length in epochs (may be fractional), when num_train_steps is -1',
    'num_train_steps': 'run length in steps; -1 derives it from num_epochs',
    'learning_rate': 'peak learning rate (for a batch of lr_scale_batch when that is '
                     'set)',
    'lr_scale_batch': 'linear scaling rule (Goyal et al. 2017): the peak is '
                      'learning_rate x batch_size / lr_scale_batch (256 for ImageNet); '
                      '0 = learning_rate as given',
    'lr_schedule': "'piecewise' (lr_boundaries), 'cosine' (linear warm-up over "
                   "warmup_steps, then cosine decay to 0) or 'triangular' (FFCV's "
                   "'cyclic': linear from 1e-4 x the peak at step 0 to the peak at "
                   'lr_peak_epoch, then linear to 0 at the end of the run; no warm-up '
                   'fields)',
    'lr_boundaries': 'piecewise: fractions of the run where the learning rate is '
                     'multiplied',
    'lr_decay_factor': 'piecewise: the factor applied at each boundary',
    'lr_peak_epoch': 'triangular: the epoch (may be fractional) where the learning '
                     "rate peaks (FFCV's lr_peak_epoch, 2 in its configs)",
    'warmup_steps': 'warm-up steps (0 = none): piecewise holds warmup_lr, cosine '
                    'rises linearly from warmup_lr to learning_rate',
    'warmup_epochs': 'warm-up length in epochs (any batch size); 0 = warmup_steps',
    'warmup_shape': "piecewise warm-up: 'constant' (holds warmup_lr) or 'linear' "
                    '(warmup_lr rising to the peak, Goyal et al. 2017); cosine is linear',
    'warmup_lr': 'learning rate during (constant) or at the start of (linear, cosine) '
                 'the warm-up; capped at the peak, so a warm-up never runs downward '
                 '(Goyal et al.: from 0.1 to 0.1 x batch/256; at batch <= 256 the peak '
                 'from step 0)',
    'momentum': 'SGD momentum',
    'nesterov': 'Nesterov momentum',
    'weight_decay': 'L2 coefficient added to the gradient (coupled, before momentum)',
    'weight_decay_on': "'kernels' (conv and dense kernels: BatchNorm and biases left "
                       "out), 'all' parameters, or 'ffcv' (FFCV's rule, no decay where "
                       "the torchvision name holds 'bn': 'kernels' plus the classifier's "
                       "bias and the shortcut BatchNorm, torchvision's downsample.1)",
    'optimizer': "'sgd' (momentum) or 'lars' (optax's LARS, for batches of 8k+; "
                 'weight_decay_on also masks its trust ratio)',
    'lars_trust': "LARS trust coefficient (the ratio's eta)",
    'parallelism': "'jit' (one program over a device mesh) or 'pmap'",
    'num_devices': 'devices used per process; -1 = all',
    'input_pipeline': "'auto', 'device' (the split lives on the devices; batches are "
                      "made inside the compiled step) or 'host' (batches made by host "
                      "workers); auto = device unless TrivialAugment is on or the split "
                      "does not fit, and a resumed run keeps its own",
    'steps_per_call': 'training steps per compiled call; -1 = the largest divisor of '
                      'log_every_steps up to 32; any value gives the same numbers',
    'input_workers': 'host pipeline: processes building batches; -1 = one per core '
                     'less one with TrivialAugment, else 1. With image_size: grain '
                     'worker processes decoding files, the cores shared among them as '
                     'threads; -1 = threads in the training process up to 8 cores, '
                     'else one process per 4 cores',
    'seed': 'initialisation, example order, augmentation and dropout seed',
    'log_every_steps': 'steps between training-metric lines',
    'checkpoint_every_steps': 'steps between checkpoints (also at evals and the end)',
    'eval_every_epochs': 'epochs between evaluations on the whole test split (the '
                         'validation split when validation_size > 0)',
    'keep_checkpoints': 'how many recent checkpoints to keep (the best is kept too)',
    'eval_step': 'checkpoint step that --mode=eval restores; -1 = latest',
}


# Resuming a workdir with a different value of one of these would blend two
# recipes: refused. (store_conv_inputs is bitwise neutral, tested.)
RECIPE_FIELDS = (
    'model', 'stem', 'shortcut', 'zero_init_residual', 'dropout_rate', 'bn_momentum',
    'bn_epsilon', 'half_precision', 'init_from', 'dataset', 'augment', 'image_size',
    'crop_min_area', 'file_order', 'final_image_size', 'resize_start_epoch', 'resize_end_epoch',
    'batch_size', 'lr_scale_batch', 'warmup_epochs', 'warmup_shape', 'weight_decay_on',
    'optimizer', 'lars_trust', 'bn_group_size', 'blurpool',
    'validation_size', 'augment_policy', 'cutout_size', 'mixup_alpha', 'cutmix_alpha',
    'label_smoothing', 'ema_decay', 'num_epochs', 'num_train_steps', 'learning_rate',
    'lr_schedule', 'lr_boundaries', 'lr_decay_factor', 'lr_peak_epoch', 'warmup_steps',
    'warmup_lr',
    'momentum', 'nesterov', 'weight_decay', 'seed')
# These change where and how often things happen, never the training numbers
# (device count, jit/pmap and cpu_conv: only by float rounding; flip_tta adds an
# evaluation view): a resume may change them.
RUNTIME_FIELDS = (
    'store_conv_inputs', 'cpu_conv', 'data_dir', 'eval_batch_size', 'parallelism', 'num_devices',
    'input_pipeline', 'steps_per_call', 'input_workers',
    'log_every_steps', 'checkpoint_every_steps', 'eval_every_epochs',
    'keep_checkpoints', 'eval_step', 'flip_tta', 'eval_image_size')


# Fields added after runs existed, with the value those runs had implicitly
# (the default, except where `CHANGED_DEFAULTS` says).
ADDED_LATER = {'validation_size': 0, 'augment_policy': '', 'cutout_size': 0,
               'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'label_smoothing': 0.0,
               'ema_decay': 0.0, 'lr_schedule': 'piecewise', 'flip_tta': False,
               'image_size': 0, 'crop_min_area': 0.08, 'final_image_size': 0,
               'resize_start_epoch': 0.0, 'resize_end_epoch': 0.0, 'eval_image_size': 0,
               'lr_scale_batch': 0, 'warmup_epochs': 0.0, 'warmup_shape': 'constant',
               'weight_decay_on': 'kernels', 'optimizer': 'sgd', 'lars_trust': 0.001,
               'lr_peak_epoch': 2.0, 'bn_group_size': 0, 'blurpool': False,
               'file_order': 'permutation', 'cpu_conv': 'off'}
# Fields whose default for new runs differs from what older runs had: a run
# resumed from its own record keeps its `ADDED_LATER` value.
CHANGED_DEFAULTS = {'file_order': 'index_shuffle', 'cpu_conv': 'auto'}
