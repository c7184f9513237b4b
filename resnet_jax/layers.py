"""Layers the blocks need beyond Flax's own."""

from typing import Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


class BatchDropout(nn.Module):
  """Dropout whose mask is drawn for the whole global batch.

  Under jit the batch is global already. Under pmap each replica sees its
  own rows, and `nn.Dropout` would draw every replica the same mask from the
  same key; here each replica draws the global mask and keeps its own rows, so
  pmap trains with the masks jit draws (threefry draws do not depend on how an
  array is split). Otherwise the same as `nn.Dropout` (inverted scaling).
  """
  rate: float
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    key = self.make_rng('dropout')
    if self.axis_name is None:
      mask = jax.random.bernoulli(key, keep, x.shape)
    else:
      replicas = lax.psum(1, self.axis_name)
      full = jax.random.bernoulli(key, keep, (x.shape[0] * replicas,) + x.shape[1:])
      mask = lax.dynamic_slice_in_dim(full, lax.axis_index(self.axis_name) * x.shape[0],
                                      x.shape[0])
    return lax.select(mask, x / keep, jnp.zeros_like(x))
