"""PyTorch parity: torchvision-layout weights converted to Flax give the same logits."""

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from resnet_jax.training import convert  # noqa: E402
from resnet_jax import errors  # noqa: E402
from resnet_jax import models  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import torch_resnet  # noqa: E402  (benchmarks/: the twin's networks)


def _randomize_batchnorm(model, generator) -> None:
  """Random affine parameters and running statistics, so parity covers them."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.25)
        m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


def _torch_model(name, num_classes, stem, seed=0):
  torch.manual_seed(seed)
  net = torch_resnet.ResNet(name, num_classes, stem)
  _randomize_batchnorm(net, torch.Generator().manual_seed(seed))
  with torch.no_grad():
    net.fc.weight.mul_(30)  # Logits of order 1-10, so 1e-4 is a strict bound.
  return net.eval()


@pytest.mark.parametrize('name,stem,size', [
    ('resnet18', 'cifar', 32), ('resnet18', 'imagenet', 64),
    ('resnet34', 'imagenet', 64), ('resnet50', 'cifar', 32),
    ('resnet50', 'imagenet', 64),
    # The deepest two in the full suite only: resnet50's blocks, repeated.
    pytest.param('resnet101', 'imagenet', 64, marks=pytest.mark.slow),
    pytest.param('resnet152', 'imagenet', 64, marks=pytest.mark.slow)])
@pytest.mark.slow
def test_eval_logits_match_pytorch(name, stem, size):
  net = _torch_model(name, 10, stem)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x)).numpy()
  variables = convert.from_torch(name, net.state_dict(), num_classes=10)
  model = models.create_model(name, 10, stem=stem)
  got = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  diff = np.abs(got - expected).max()
  print(f'{name} {stem}: max |logit diff| = {diff:.2e}, max |logit| = '
        f'{np.abs(expected).max():.2f}')
  assert diff < 1e-4


def test_mismatched_state_dict_is_refused():
  net = _torch_model('resnet18', 10, 'cifar')
  with pytest.raises(errors.UserError, match='does not fit resnet34'):
    convert.from_torch('resnet34', net.state_dict())
  with pytest.raises(errors.UserError, match='converts'):
    convert.from_torch('resnet20', net.state_dict())


def test_stem_and_classes_are_read_from_the_weights():
  sd = _torch_model('resnet18', 7, 'imagenet').state_dict()
  assert convert.infer_stem(sd) == 'imagenet'
  variables = convert.from_torch('resnet18', sd)
  assert variables['params']['fc']['kernel'].shape == (512, 7)
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['var'],
                                sd['bn1.running_var'].numpy())


@pytest.mark.slow
def test_init_from_replaces_the_classifier_and_keeps_the_rest(tmp_path, tiny_data):
  from resnet_jax.training import init_from
  from resnet_jax.training import train_state
  from tests.conftest import tiny_config
  net = _torch_model('resnet18', 1000, 'cifar')
  path = tmp_path / 'imagenet_like.pth'
  torch.save({'state_dict': net.state_dict()}, path)
  config = tiny_config(tiny_data['data_dir'], model='resnet18', init_from=str(path))
  model = train_state.create_model(config, 10)
  tx = train_state.create_optimizer(config, lambda s: 0.1)
  fresh = train_state.create_train_state(jax.random.key(0), model, tx)
  state = init_from.init_from_torch(fresh, config, num_classes=10)
  converted = convert.from_torch('resnet18', net.state_dict())
  np.testing.assert_array_equal(state.params['layer4_1']['conv2']['kernel'],
                                converted['params']['layer4_1']['conv2']['kernel'])
  np.testing.assert_array_equal(state.batch_stats['bn1']['mean'],
                                converted['batch_stats']['bn1']['mean'])
  # The 1000-class head is replaced by the fresh 10-class one.
  np.testing.assert_array_equal(state.params['fc']['kernel'],
                                fresh.params['fc']['kernel'])
  config.stem = 'imagenet'
  with pytest.raises(errors.UserError, match='set --config.stem=cifar'):
    init_from.init_from_torch(fresh, config, num_classes=10)
