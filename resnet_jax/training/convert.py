"""PyTorch (torchvision layout) ResNet weights -> Flax variables.

torchvision's module names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer1.0.downsample.0/1`, `fc`) map one to one onto this codebase's
(`conv1`, `bn1`, `layer1_0.conv1`, ..., `layer1_0.downsample_conv/bn`, `fc`).
Convolution kernels go from OIHW to HWIO and the classifier from (out, in) to
(in, out); BatchNorm's running mean and variance become `batch_stats`.
"""

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import errors
from resnet_jax import models


def _numpy(t) -> np.ndarray:
  return t.detach().cpu().numpy() if hasattr(t, 'detach') else np.asarray(t)


def _flax_path(torch_key: str) -> tuple:
  """'layer1.0.downsample.1.weight' -> ('layer1_0', 'downsample_bn', 'weight')."""
  parts = torch_key.split('.')
  if parts[0].startswith('layer'):
    parts = [f'{parts[0]}_{parts[1]}'] + parts[2:]
  if parts[1:2] == ['downsample']:
    parts = [parts[0], {'0': 'downsample_conv', '1': 'downsample_bn'}[parts[2]]] + parts[3:]
  return tuple(parts)


def torch_name(path) -> str:
  """A parameter's torchvision-layout name from its Flax path (strings or
  jax.tree_util keys): ('layer1_0', 'downsample_bn', 'scale') ->
  'layer1.0.downsample.1.weight'. The inverse of `_flax_path` for parameters."""
  parts = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
  *modules, leaf = parts
  out = []
  for m in modules:
    head, _, index = m.partition('_')
    if head.startswith('layer') and index.isdigit():
      out += [head, index]
    else:
      out += {'downsample_conv': ['downsample', '0'],
              'downsample_bn': ['downsample', '1']}.get(m, [m])
  return '.'.join(out + [{'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)])


def infer_stem(state_dict: Mapping) -> str:
  """'imagenet' for a 7x7 first convolution, 'cifar' for 3x3."""
  k = _numpy(state_dict['conv1.weight']).shape[-1]
  return {7: 'imagenet', 3: 'cifar'}[k]


def from_torch(model_name: str, state_dict: Mapping, num_classes: Optional[int] = None,
               stem: Optional[str] = None) -> dict:
  """Converts a torchvision-layout `state_dict` into `{'params', 'batch_stats'}`.

  Args:
    model_name: 'resnet18', 'resnet34', 'resnet50', 'resnet101' or 'resnet152'.
    state_dict: name -> tensor (torch tensors or numpy arrays).
    num_classes: classifier outputs; default: read from `fc.weight`.
    stem: 'imagenet' or 'cifar'; default: read from `conv1.weight`.

  Returns:
    Variables for `models.create_model(model_name, num_classes, stem=stem)`.

  Raises:
    errors.UserError: the state dict does not fit the model (missing,
      unexpected or wrongly shaped entries).
  """
  if model_name not in models.IMAGENET_FAMILY:
    raise errors.UserError(f'from_torch converts {models.IMAGENET_FAMILY}, not '
                           f'{model_name!r}')
  state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()
                if not k.endswith('num_batches_tracked')}
  if 'conv1.weight' not in state_dict or 'fc.weight' not in state_dict:
    raise errors.UserError('the state dict has no conv1.weight/fc.weight: not a '
                           'torchvision-layout ResNet')
  stem = stem or infer_stem(state_dict)
  num_classes = num_classes or _numpy(state_dict['fc.weight']).shape[0]
  model = models.create_model(model_name, num_classes, stem=stem)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 32, 32, 3))))
  out = {'params': {}, 'batch_stats': {}}
  for key, tensor in state_dict.items():
    *module, leaf = _flax_path(key)
    value = _numpy(tensor).astype(np.float32)
    if leaf == 'weight' and value.ndim == 4:
      collection, name, value = 'params', 'kernel', value.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and value.ndim == 2:
      collection, name, value = 'params', 'kernel', value.T
    elif leaf == 'weight':
      collection, name = 'params', 'scale'
    elif leaf == 'bias':
      collection, name = 'params', 'bias'
    elif leaf == 'running_mean':
      collection, name = 'batch_stats', 'mean'
    elif leaf == 'running_var':
      collection, name = 'batch_stats', 'var'
    else:
      raise errors.UserError(f'unexpected entry {key!r} in the state dict')
    node = out[collection]
    for m in module:
      node = node.setdefault(m, {})
    node[name] = value
  _check_same_tree(target, out, model_name)
  return jax.tree.map(jnp.asarray, out)


def _check_same_tree(target, got, model_name):
  want = {jax.tree_util.keystr(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  have = {jax.tree_util.keystr(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(got)[0]}
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
  if missing or extra or wrong:
    raise errors.UserError(
        f'the state dict does not fit {model_name}: missing {missing[:3]}, '
        f'unexpected {extra[:3]}, wrong shape {wrong[:3]}')


def load_torch_file(path: str) -> dict:
  """Reads a `.pth` state dict (also one wrapped as {'state_dict': ...})."""
  try:
    import torch
  except ImportError as e:
    raise errors.UserError('init_from reads PyTorch files and needs PyTorch: '
                           'pip install -e ".[torch]"') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except (OSError, RuntimeError, EOFError) as e:
    raise errors.UserError(f'cannot read {path} as a PyTorch state dict ({e}); '
                           'check --config.init_from') from e
  for key in ('state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise errors.UserError(f'{path} holds a {type(obj).__name__}, not a state dict')
  return obj
