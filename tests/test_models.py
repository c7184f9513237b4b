"""Model zoo: shapes, parameter counts against the papers, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import layers
from resnet_jax import models
from resnet_jax.reporting import summary


def _num_params(model, image=32):
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image, image, 3)), train=False))
  return sum(x.size for x in jax.tree.leaves(shapes['params'])), shapes


# (name, classes, stem, exact count, paper's figure in millions or None).
# Exact counts are this codebase's; torchvision's counts agree exactly for the
# ImageNet-stem models and kuangliu/pytorch-cifar's for CIFAR-stem resnet18.
PARAM_TABLE = [
    ('resnet20', 10, 'cifar', 269_722, 0.27),
    ('resnet32', 10, 'cifar', 464_154, 0.46),
    ('resnet44', 10, 'cifar', 658_586, 0.66),
    ('resnet56', 10, 'cifar', 853_018, 0.85),
    ('resnet110', 10, 'cifar', 1_727_962, 1.7),
    ('resnet1202', 10, 'cifar', 19_421_274, 19.4),
    ('preact_resnet110', 10, 'cifar', 1_730_522, 1.7),
    ('preact_resnet164', 10, 'cifar', 1_703_258, 1.7),
    ('preact_resnet1001', 10, 'cifar', 10_327_706, 10.2),
    ('resnet18', 10, 'cifar', 11_173_962, None),
    # By hand: stem 1,728; stages 147,968 + 525,184 + 2,098,944 + 8,392,192
    # (convs, 1x1 projections, BatchNorm scale+bias); final BatchNorm 1,024;
    # classifier 5,130. kuangliu/pytorch-cifar's PreActResNet18 has 11,171,146:
    # it omits the final BN-ReLU that He et al. 2016 put before the pooling.
    ('preact_resnet18', 10, 'cifar', 11_172_170, None),
    ('resnet18', 1000, 'imagenet', 11_689_512, 11.7),
    ('resnet34', 1000, 'imagenet', 21_797_672, 21.8),
    ('resnet50', 1000, 'imagenet', 25_557_032, 25.6),
    ('resnet101', 1000, 'imagenet', 44_549_160, 44.5),
    ('resnet152', 1000, 'imagenet', 60_192_808, 60.2),
    ('resnext29_8x64d', 10, 'cifar', 34_426_698, 34.4),
    ('resnext29_16x64d', 10, 'cifar', 68_155_210, 68.1),
    ('wrn28_10', 10, 'cifar', 36_479_194, 36.5),
    ('wrn16_8', 10, 'cifar', 10_961_370, 11.0),
]


@pytest.mark.parametrize('name,classes,stem,exact,paper', PARAM_TABLE)
def test_parameter_counts_match_the_papers(name, classes, stem, exact, paper):
  n, shapes = _num_params(models.create_model(name, classes, stem=stem))
  assert n == exact
  if paper is not None:
    if name == 'preact_resnet1001':
      # The paper's 10.2M leaves out BatchNorm's scale and offset.
      bn = sum(x.size for path, x in jax.tree_util.tree_flatten_with_path(
          shapes['params'])[0] if 'bn' in jax.tree_util.keystr(path))
      n -= bn
    # Within the rounding of the paper's last digit (some papers truncate).
    assert abs(n / 1e6 - paper) <= (0.005 if paper < 1 else 0.06)


def test_resnet20_counts_per_stage():
  model = models.create_model('resnet20')
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, 32, 32, 3))))
  stages = summary.params_per_stage(variables['params'])
  assert list(stages) == ['stem', 'layer1', 'layer2', 'layer3', 'head']
  assert stages['stem'] == 3 * 3 * 3 * 16 + 2 * 16
  assert stages['head'] == 64 * 10 + 10
  assert sum(stages.values()) == 269_722


def test_macs_match_known_figures():
  # ResNet-20 by hand: stem 32*32*16*27, stage 1 six convs of 32*32*16*144,
  # stages 2 and 3 one strided conv of 1,179,648 and five of 2,359,296 each,
  # classifier 64*10.
  by_hand = 32 * 32 * 16 * 27 + 6 * 32 * 32 * 16 * 144 + 2 * (
      1_179_648 + 5 * 2_359_296) + 640
  assert summary.count_macs(models.create_model('resnet20')) == by_hand == 40_551_040
  # ResNet-50 at 224px: the commonly quoted 4.09G multiply-adds.
  r50 = models.create_model('resnet50', 1000, stem='imagenet')
  assert round(summary.count_macs(r50, image_size=224) / 1e9, 2) == 4.09


@pytest.mark.slow
def test_scanned_stages_match_unrolled_ones(monkeypatch):
  # resnet1202 and preact_resnet1001 scan their repeated blocks; forcing the
  # scan on resnet20 must leave parameters, MACs and BatchNorm behaviour alone.
  monkeypatch.setattr(models, 'SCAN_ABOVE_BLOCKS', 0)
  model = models.create_model('resnet20')
  n, shapes = _num_params(model)
  assert n == 269_722 and 'layer1_rest' in shapes['params']
  assert summary.count_macs(model) == 40_551_040
  assert summary.params_per_stage(shapes['params'])['layer3'] == 203_520
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stacked = updates['batch_stats']['layer1_rest']['block']['bn1']['mean']
  assert stacked.shape == (2, 16) and not np.allclose(stacked, 0)


@pytest.mark.parametrize('name', ['resnet8', 'preact_resnet110', 'wrn16_8'])
def test_output_shapes_and_variable_collections(name):
  model = models.create_model(name, num_classes=7)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert set(variables) == {'params', 'batch_stats'}
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_imagenet_stem_downsamples_by_four():
  model = models.create_model('resnet18', 10, stem='imagenet')
  variables = model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3)))
  logits, state = model.apply(variables, jnp.ones((1, 64, 64, 3)),
                              capture_intermediates=True, mutable=['intermediates'])
  assert logits.shape == (1, 10)
  size = lambda name: state['intermediates'][name]['__call__'][0].shape[1:3]
  # The 7x7 conv halves 64 to 32, the max-pool halves it again: the first
  # stage sees 16x16 (a stride-1 stem or no pool would give 32 or 64).
  assert size('conv1') == (32, 32) and size('layer1_0') == (16, 16)
  assert size('layer4_1') == (2, 2)
  cifar = models.create_model('resnet18', 10)
  _, state = cifar.apply(cifar.init(jax.random.key(0), jnp.ones((1, 64, 64, 3))),
                         jnp.ones((1, 64, 64, 3)), capture_intermediates=True,
                         mutable=['intermediates'])
  assert size('layer1_0') == (64, 64)  # The CIFAR stem keeps the resolution.


def test_option_a_shortcut_has_no_parameters_and_option_b_has():
  n_a, _ = _num_params(models.create_model('resnet20'))
  n_b, _ = _num_params(models.create_model('resnet20', shortcut='B'))
  # Option B adds two 1x1 projections + BN: 16->32 and 32->64.
  assert n_b - n_a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_train_mode_updates_batch_stats_eval_mode_uses_them():
  model = models.create_model('resnet8')
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3)) * 3 + 1
  variables = model.init(jax.random.key(0), x)
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updates['batch_stats'])
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode: no mutation possible, and outputs depend on the stored stats.
  out1 = model.apply(variables, x, train=False)
  out2 = model.apply({**variables, **updates}, x, train=False)
  assert not np.allclose(out1, out2)
  np.testing.assert_array_equal(out1, model.apply(variables, x, train=False))


def test_zero_init_residual_makes_blocks_identity_at_init():
  model = models.create_model('resnet8', zero_init_residual=True)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  scales = [v['bn2']['scale'] for k, v in variables['params'].items()
            if k.startswith('layer')]
  assert scales and all(np.all(s == 0) for s in scales)


def test_half_precision_keeps_parameters_float32():
  model = models.create_model('resnet8', dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert model.apply(variables, jnp.ones((1, 32, 32, 3))).dtype == jnp.float32


def test_bad_names_and_options_are_refused():
  with pytest.raises(ValueError, match='unknown model'):
    models.create_model('resnet21')
  with pytest.raises(ValueError, match='only has the CIFAR stem'):
    models.create_model('resnet20', stem='imagenet')
  with pytest.raises(ValueError, match='Wide ResNets only'):
    models.create_model('resnet20', dropout_rate=0.3)
  with pytest.raises(ValueError, match='pre-activation'):
    models.create_model('preact_resnet164', zero_init_residual=True)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['resnet8', 'preact_resnet164'])
def test_stored_conv_inputs_give_the_plain_gradients(name):
  """`store_conv_inputs` only changes what XLA keeps in memory: the loss,
  the gradients and the BatchNorm updates equal the plain model's."""
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  labels = jnp.arange(8) % 10

  def run(store):
    # One block per stage keeps the pre-activation bottleneck net small.
    model = models.ResNet(**{**models.MODELS[name], 'stage_sizes': (1, 1, 1)},
                          store_conv_inputs=store)
    variables = model.init(jax.random.key(0), x)

    def loss(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    # The XLA options the train step compiles with when inputs are stored.
    options = layers.KEEP_BARRIERS_OPTIONS if store else None
    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                      compiler_options=options)(variables['params'])
    barriers = {train: jax.jit(lambda p, train=train: model.apply(
        {**variables, 'params': p}, x, train=train, mutable=['batch_stats'])).lower(
            variables['params']).as_text().count('optimization_barrier')
                for train in (True, False)}
    num_convs = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(variables['params']))
    return value, (grads, updates), barriers, num_convs

  plain_loss, plain, plain_barriers, num_convs = run(False)
  loss, stored, barriers, _ = run(True)
  # One barrier per convolution in training, none in evaluation or when off.
  assert barriers == {True: num_convs, False: 0}
  assert plain_barriers == {True: 0, False: 0}
  # The same maths with another memory plan: identical bits (measured on JAX
  # 0.10 with AVX-512 and AVX2, and on JAX 0.12).
  np.testing.assert_array_equal(loss, plain_loss)
  for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
