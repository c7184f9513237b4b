"""Model zoo: shapes, parameter counts against the papers, BatchNorm modes."""

import flax.linen as nn
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
@pytest.mark.slow
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
  # Each as one program (eager, the scans and their ops took seconds).
  variables = jax.jit(model.init)(jax.random.key(0), x)
  _, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables)
  stacked = updates['batch_stats']['layer1_rest']['block']['bn1']['mean']
  assert stacked.shape == (2, 16) and not np.allclose(stacked, 0)


@pytest.mark.parametrize('name', ['resnet8', 'preact_resnet110', 'wrn16_8'])
@pytest.mark.slow
def test_output_shapes_and_variable_collections(name):
  # Shapes and dtypes are the traced program's: eval_shape traces init and
  # apply as a run would, without the seconds a wide net's eager ops take.
  model = models.create_model(name, num_classes=7)
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert set(variables) == {'params', 'batch_stats'}
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


@pytest.mark.slow
def test_imagenet_stem_downsamples_by_four():
  def intermediates(model):  # Their shapes, traced (eval_shape).
    x = jnp.ones((1, 64, 64, 3))
    return jax.eval_shape(lambda: model.apply(
        model.init(jax.random.key(0), x), x, capture_intermediates=True,
        mutable=['intermediates']))
  logits, state = intermediates(models.create_model('resnet18', 10, stem='imagenet'))
  assert logits.shape == (1, 10)
  size = lambda name: state['intermediates'][name]['__call__'][0].shape[1:3]
  # The 7x7 conv halves 64 to 32, the max-pool halves it again: the first
  # stage sees 16x16 (a stride-1 stem or no pool would give 32 or 64).
  assert size('conv1') == (32, 32) and size('layer1_0') == (16, 16)
  assert size('layer4_1') == (2, 2)
  _, state = intermediates(models.create_model('resnet18', 10))
  assert size('layer1_0') == (64, 64)  # The CIFAR stem keeps the resolution.


def test_option_a_shortcut_has_no_parameters_and_option_b_has():
  n_a, _ = _num_params(models.create_model('resnet20'))
  n_b, _ = _num_params(models.create_model('resnet20', shortcut='B'))
  # Option B adds two 1x1 projections + BN: 16->32 and 32->64.
  assert n_b - n_a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.fixture(scope='module')
def resnet18_variables():
  """ResNet-18 (ImageNet stem, cpu_conv off) initialised for 64 px, as one
  program: the eager init's hundreds of small ops took seconds per test."""
  return jax.jit(models.create_model('resnet18', stem='imagenet').init)(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


# Shapes of `layers.im2col_conv`: (input, kernel HWIO, strides, padding).
IM2COL_SHAPES = [
    ((4, 6, 6, 16), (3, 3, 16, 24), (1, 1), ((1, 1), (1, 1))),
    ((4, 7, 7, 16), (3, 3, 16, 24), (2, 2), ((1, 1), (1, 1))),
    ((4, 2, 2, 32), (3, 3, 32, 32), (1, 1), ((1, 1), (1, 1))),
    ((4, 1, 1, 32), (3, 3, 32, 32), (1, 1), ((1, 1), (1, 1))),
    ((4, 8, 8, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0))),
    ((2, 18, 18, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
]


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', IM2COL_SHAPES)
@pytest.mark.slow
def test_im2col_conv_is_the_convolution_to_float_rounding(x_shape, k_shape, strides,
                                                          padding):
  """The output and both gradients of `im2col_conv`, against float64 sums:
  within the bound on rounding any order of summation can reach, gamma_K =
  K u / (1 - K u) times the sum of the terms' magnitudes (Higham, Accuracy and
  Stability of Numerical Algorithms, 3.1), K the terms of each sum. It holds
  on any CPU (vector width, FMA); a wrong tap or order would miss it by far."""
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, k_shape)
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  im2col = lambda x, w: layers.im2col_conv(x, w, strides, padding)
  g = jax.random.normal(kg, jax.eval_shape(im2col, x, w).shape)

  @jax.jit  # As a train step runs it; eager, its dozens of slices took seconds.
  def output_and_gradients(x, w, g):
    y, pullback = jax.vjp(im2col, x, w)
    return (y, *pullback(g))
  got = output_and_gradients(x, w, g)
  y = got[0]
  with jax.enable_x64(True):
    x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
    exact_y, exact_pull = jax.vjp(conv, x64, w64)
    exact = (exact_y, *exact_pull(g64))
    # The same sums of the terms' magnitudes.
    size_y, size_pull = jax.vjp(conv, np.abs(x64), np.abs(w64))
    sizes = (size_y, *size_pull(np.abs(g64)))
    n, ho, wo, f = y.shape
    kh, kw_, c, _ = k_shape
    terms = (kh * kw_ * c, kh * kw_ * f, n * ho * wo)  # Output, d/dx, d/dw.
    u = 2.0 ** -24
    for name, a, e, s, k in zip(('output', 'd/dx', 'd/dw'), got, exact, sizes, terms):
      assert a.shape == e.shape, name
      bound = k * u / (1 - k * u) * np.asarray(s)
      error = np.abs(np.asarray(a, np.float64) - np.asarray(e))
      assert np.all(error <= bound), (name, float(np.max(error / np.maximum(bound, 1e-300))))


@pytest.mark.slow
def test_cpu_conv_has_nn_convs_parameters(resnet18_variables):
  """`CpuConv` (either path) and `StoredInputCpuConv` draw the parameters
  `nn.Conv` draws: the same tree, names and numbers (checkpoints and
  init_from are shared)."""
  x = jnp.ones((2, 2, 2, 16))
  for cls in (layers.CpuConv, layers.StoredInputCpuConv):
    for padding in (((1, 1), (1, 1)), 'SAME'):  # The im2col path, nn.Conv's own.
      for bias in (False, True):
        kwargs = dict(padding=padding, use_bias=bias)
        expected = nn.Conv(8, (3, 3), **kwargs).init(jax.random.key(3), x)
        variables = cls(8, (3, 3), **kwargs).init(jax.random.key(3), x)
        assert jax.tree.structure(variables) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
          np.testing.assert_array_equal(a, b)
  # A whole model: cpu_conv on and off initialise alike.
  off = resnet18_variables
  on = jax.jit(models.create_model('resnet18', stem='imagenet', cpu_conv=True).init)(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert jax.tree.structure(on) == jax.tree.structure(off)
  for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(off)):
    np.testing.assert_array_equal(a, b)


def _train_program(model, x):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats'])).lower(
      variables).as_text()


@pytest.mark.slow
def test_cpu_conv_is_the_cpu_backends_only(monkeypatch):
  """With the config resolved for another backend, the model is the one it
  always was: its lowered program equals cpu_conv='off''s, every
  convolution an HLO convolution. On the CPU, 'auto' takes the path."""
  from resnet_jax.training import train_state
  from tests.conftest import tiny_config
  config = tiny_config(None)
  config.update(model='resnet18', stem='imagenet')
  x = jnp.zeros((2, 64, 64, 3))
  assert config.cpu_conv == 'auto' and jax.default_backend() == 'cpu'
  on_cpu = train_state.create_model(config, 10)
  assert on_cpu.cpu_conv
  config.cpu_conv = 'off'
  off = _train_program(train_state.create_model(config, 10), x)
  num_convs = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(
      jax.eval_shape(lambda: on_cpu.init(jax.random.key(0), x))['params']))
  assert off.count('stablehlo.convolution') == num_convs
  assert _train_program(on_cpu, x).count('stablehlo.convolution') < num_convs
  for backend in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda backend=backend: backend)
    config.cpu_conv = 'auto'
    model = train_state.create_model(config, 10)
    assert not model.cpu_conv and not model.store_conv_inputs
    config.cpu_conv = 'off'
    assert _train_program(model, x) == _train_program(train_state.create_model(config, 10), x)


@pytest.mark.slow
def test_cpu_conv_trains_as_the_plain_model_to_rounding(resnet18_variables):
  """A ResNet-18 training step's loss, gradients and BatchNorm updates with
  `cpu_conv` on: as far from float64's as the plain float32 model's are
  (the yardstick is that model's own rounding, measured in the same run),
  within a factor of 4 (measured, the worst leaf: 1.04 on JAX 0.10 with
  AVX-512 and with AVX2, 1.01 on JAX 0.12)."""
  x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  labels = jnp.arange(4) % 10
  # One set of variables for all three (cpu_conv initialises as nn.Conv does:
  # test_cpu_conv_has_nn_convs_parameters), cast to each step's dtype.
  variables = resnet18_variables

  def step(cpu_conv, dtype=jnp.float32):
    model = models.create_model('resnet18', stem='imagenet', cpu_conv=cpu_conv,
                                dtype=dtype)

    def loss(params):
      logits, updates = model.apply({**variables, 'params': params}, x.astype(dtype),
                                    train=True, mutable=['batch_stats'])
      return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
              updates)
    params = jax.tree.map(lambda p: p.astype(dtype), variables['params'])
    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return [np.asarray(a, np.float64) for a in jax.tree.leaves((value, grads, updates))]

  on, off = step(True), step(False)
  with jax.enable_x64(True):
    exact = step(False, jnp.float64)
  for a, b, e in zip(on, off, exact):
    assert np.linalg.norm(a - e) <= 4 * np.linalg.norm(b - e) + 1e-12 * np.linalg.norm(e)


def test_cpu_conv_leaves_the_cifar_resnets_program_alone():
  """The CIFAR ResNets (3x3 kernels on maps of 8x8 and more, option-A
  shortcuts) have no shape the rule takes: the same program on the CPU, so
  their records (ResNet-20's, ResNet-8's) keep their bits."""
  x = jnp.zeros((2, 32, 32, 3))
  on, off = (_train_program(models.create_model('resnet8', cpu_conv=c,
                                                store_conv_inputs=True), x)
             for c in (True, False))
  assert on == off
