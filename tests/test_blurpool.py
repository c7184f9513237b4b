"""FFCV's BlurPool (`blurpool`): the blur by hand, no new parameters, and the
convolutions FFCV's rule picks (stride > 1 and 16+ input channels). The
PyTorch twin's FFCV module against this one: tests/test_torch_twin.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import layers
from resnet_jax import models


def test_the_blur_is_ffcvs_binomial_filter_with_zero_padding():
  x = np.random.RandomState(0).normal(0, 1, (2, 5, 6, 3)).astype(np.float32)
  y = layers.BlurPool().apply({}, x)
  # By hand: [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16 on each channel, stride 1,
  # zero padding 1.
  kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros(x.shape)
  for i in range(5):
    for j in range(6):
      want[:, i, j] = np.einsum('nhwc,hw->nc', padded[:, i:i + 3, j:j + 3], kernel)
  assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
  # A constant image: the inside keeps its value; the zero padding darkens the
  # edges (12/16) and corners (9/16).
  ones = layers.BlurPool().apply({}, jnp.ones((1, 4, 4, 1)))[0, :, :, 0]
  np.testing.assert_allclose(ones, [[9 / 16, 12 / 16, 12 / 16, 9 / 16],
                                    [12 / 16, 1, 1, 12 / 16],
                                    [12 / 16, 1, 1, 12 / 16],
                                    [9 / 16, 12 / 16, 12 / 16, 9 / 16]], rtol=1e-6)
  half = layers.BlurPool().apply({}, jnp.asarray(x, jnp.bfloat16))
  assert half.dtype == jnp.bfloat16


def _blurred_convs(model, size=64) -> set:
  """The convolutions whose input `model` blurs, as 'block/conv'."""
  x = jnp.ones((1, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  _, state = jax.eval_shape(lambda v: model.apply(
      v, x, capture_intermediates=True, mutable=['intermediates']), variables)
  found = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]:
    names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    found |= {'/'.join(names[:i] + [n.removesuffix('_blurpool')])
              for i, n in enumerate(names) if n.endswith('_blurpool')}
  return found


@pytest.mark.parametrize('name,stem,blurred', [
    # torchvision's ResNet-50 as FFCV wraps it: the strided 3x3 (conv2) and
    # 1x1 projection of each stage's first block; not the 7x7 stem (3 channels)
    # nor layer1's stride-1 projection.
    ('resnet50', 'imagenet', {f'layer{i}_0/{c}' for i in (2, 3, 4)
                              for c in ('conv2', 'downsample_conv')}),
    ('resnet18', 'imagenet', {f'layer{i}_0/{c}' for i in (2, 3, 4)
                              for c in ('conv1', 'downsample_conv')}),
    # CIFAR ResNet-20: option-A shortcuts have no convolution.
    ('resnet20', 'cifar', {'layer2_0/conv1', 'layer3_0/conv1'}),
])
@pytest.mark.slow
def test_blurpool_adds_no_parameters_and_blurs_the_strided_convolutions(
    name, stem, blurred):
  plain = models.create_model(name, 10, stem=stem)
  model = models.create_model(name, 10, stem=stem, blurpool=True)
  shapes = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(
      lambda: m.init(jax.random.key(0), jnp.ones((1, 64, 64, 3)))))
  assert shapes(model) == shapes(plain)  # The filter is fixed, not a parameter.
  assert _blurred_convs(plain) == set()
  assert _blurred_convs(model) == blurred


@pytest.mark.slow
def test_the_blurred_convolution_convolves_the_blurred_input():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  model = models.create_model('resnet8', blurpool=True)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  _, state = jax.jit(lambda v: model.apply(v, x, capture_intermediates=True,
                                           mutable=['intermediates']))(variables)
  block = state['intermediates']['layer2_0']
  blurred = block['conv1_blurpool']['__call__'][0]
  out = block['conv1']['__call__'][0]
  block_input = state['intermediates']['layer1_0']['__call__'][0]
  np.testing.assert_allclose(blurred, layers.BlurPool().apply({}, block_input),
                             rtol=1e-6, atol=1e-6)
  kernel = variables['params']['layer2_0']['conv1']['kernel']
  conv = lambda y: jax.lax.conv_general_dilated(
      y, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert out.shape == (2, 16, 16, 32)
  np.testing.assert_allclose(out, conv(blurred), rtol=1e-5, atol=1e-5)
  assert not np.allclose(out, conv(block_input), atol=1e-2)
