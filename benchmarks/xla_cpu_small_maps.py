"""XLA:CPU's 3x3 convolution on 2x2 feature maps, against the same
convolution as one matrix product (im2col), at ResNet-18's layer widths.

  python benchmarks/xla_cpu_small_maps.py

Why it matters: an ImageNet-stem ResNet at 48-64 px has 2x2 maps in its last
stage, where XLA:CPU is ~40x slower than the matrix product (measured on a
2-core AMD EPYC: 2.2 s against 52 ms per batch of 256 at 512 channels), so
such runs train several times slower on a CPU than at 32 px (1x1 maps) or at
96 px and more. GPUs use cuDNN and are not affected. Prints ms per call.
The models now take the matrix product on such shapes (`cpu_conv`,
`layers.CpuConv`); benchmarks/cpu_conv_shapes.py measures every layer shape.
"""

import time

import jax
import jax.numpy as jnp

DIMS = ('NHWC', 'HWIO', 'NHWC')


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMS)


def im2col(x, w):
  patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                                                 dimension_numbers=DIMS)
  # The patches' features are ordered (channel, row, column).
  return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])


def milliseconds(fn, *args, repeats: int = 3) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return 1000 * (time.perf_counter() - start) / repeats


if __name__ == '__main__':
  key = jax.random.key(0)
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}; batch 256, 3x3, stride 1')
  for size, channels in ((1, 512), (2, 512), (2, 256), (4, 512), (7, 512)):
    x = jax.random.normal(key, (256, size, size, channels))
    w = jax.random.normal(key, (3, 3, channels, channels)) / (3 * channels ** 0.5)
    gap = float(jnp.max(jnp.abs(conv(x, w) - im2col(x, w))))
    print(f'{size}x{size}x{channels}: conv {milliseconds(conv, x, w):8.1f} ms, '
          f'im2col {milliseconds(im2col, x, w):8.1f} ms (max difference {gap:.1e})')
