"""Model summary: parameters per stage and multiply-adds per image."""

import collections
from typing import List

import flax.linen as nn
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np


def _variables(model: nn.Module, image_size: int = 32):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x), x


def params_per_stage(params) -> 'collections.OrderedDict[str, int]':
  """Parameter counts grouped by top-level module: stem, layer1..N, head."""
  counts = collections.defaultdict(int)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path[0].key
    group = name.split('_')[0] if name.startswith('layer') else (
        'head' if name in ('fc', 'bn_final') else 'stem')
    counts[group] += int(np.prod(leaf.shape))
  layers = sorted((g for g in counts if g.startswith('layer')), key=lambda g: int(g[5:]))
  order = ['stem'] + layers + ['head']
  return collections.OrderedDict((g, counts[g]) for g in order if g in counts)


def count_macs(model: nn.Module, image_size: int = 32) -> int:
  """Multiply-adds of one eval-mode forward pass on one image.

  Counts convolutions and dense layers (the convention of the papers' FLOP
  figures), read off the traced program so every architecture is covered.
  """
  variables, x = _variables(model, image_size)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _macs(jaxpr.jaxpr)


def _macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval
      out = eqn.outvars[0].aval
      out_channels = rhs.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += int(np.prod(out.shape)) * int(np.prod(rhs.shape)) // out_channels
    elif name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      k = int(np.prod([lhs.shape[d] for d in lhs_contract]))
      total += int(np.prod(eqn.outvars[0].aval.shape)) * k
    if name == 'scan':  # The body runs `length` times (scanned deep stages).
      total += eqn.params['length'] * _macs(eqn.params['jaxpr'].jaxpr)
      continue
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _macs(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _macs(sub)
  return total


def describe(model: nn.Module, name: str = '', image_size: int = 32) -> List[str]:
  """Lines for the log: parameters per stage and in total, MACs per image."""
  variables, _ = _variables(model)
  stages = params_per_stage(variables['params'])
  total = sum(stages.values())
  macs = count_macs(model, image_size) / 1e6
  lines = [f'Model {name}: {total:,} parameters, '
           f'{macs:,.1f}M multiply-adds per {image_size}x{image_size} image']
  lines += [f'  {group:<8} {n:>12,} parameters' for group, n in stages.items()]
  return lines
