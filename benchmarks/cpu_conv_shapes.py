r"""Where XLA:CPU spends a ResNet's convolution time, per layer shape: the
forward pass, the input gradient and the weight gradient of each distinct
convolution of a model, by several paths.

  python benchmarks/cpu_conv_shapes.py --model resnet18 --stem imagenet --size 64
  python benchmarks/cpu_conv_shapes.py --issue          # The rows of issue 46.
  python benchmarks/cpu_conv_shapes.py --issue --paths lax,im2col,nchw,onednn

Paths:
  lax     `lax.conv_general_dilated`, NHWC/HWIO (what `nn.Conv` lowers to).
  im2col  `layers.im2col_conv`: strided slices + one matrix product.
  nchw    `lax.conv_general_dilated` with NCHW/OIHW operands (layout only:
          the operands are made in that layout outside the timed call).
  onednn  `lax`, compiled with `xla_cpu_use_onednn` (XLA's oneDNN thunks).
  onednn_cc  `lax`, compiled with `xla_cpu_experimental_onednn_custom_call`.
  xnn     `lax`, compiled with XNNPACK's individual-convolution library fusion.
  ynn     `lax`, compiled with YNNPACK's individual-convolution library fusion.

Each cell is the best of 3 timed runs (ms per call; a run repeats the call
until it lasts --min_run_ms, default 50). `x` is how often the shape occurs
in the model; `total` sums forward + both gradients over the occurrences;
`pick` is the path with the least total, `cpu_conv` what `layers.CpuConv`
takes ('auto'). The paths' outputs are checked against `lax` (max |difference|
/ max |value|).
"""

import argparse
import collections
import os
import sys
import time

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_jax import layers  # pylint: disable=g-import-not-at-top
from resnet_jax import models  # pylint: disable=g-import-not-at-top

# (model, stem, image size, batch) of the issue's table, and CIFAR's ResNet-20.
ISSUE_ROWS = (('resnet18', 'imagenet', 32, 16), ('resnet18', 'imagenet', 64, 16),
              ('resnet18', 'imagenet', 128, 16), ('resnet50', 'imagenet', 224, 16),
              ('resnet20', 'cifar', 32, 128))

# XLA options of the flag paths (`lax` compiled under them).
FLAG_PATHS = {
    'onednn': {'xla_cpu_use_onednn': True},
    'onednn_cc': {'xla_cpu_experimental_onednn_custom_call': True},
    'xnn': {'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'},
    'ynn': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'},
}
NHWC = ('NHWC', 'HWIO', 'NHWC')
NCHW = ('NCHW', 'OIHW', 'NCHW')


def conv_shapes(model: str, stem: str, size: int, batch: int) -> collections.Counter:
  """{(input shape, kernel shape, strides, padding): occurrences} of the
  model's convolutions in training."""
  net = models.create_model(model, stem=stem)
  seen = collections.Counter()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      m, x = context.module, args[0]
      kernel = tuple(m.kernel_size) + (x.shape[-1], m.features)
      seen[(tuple(x.shape), kernel, tuple(m.strides),
            tuple(tuple(p) for p in m.padding))] += 1
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: net.init_with_output(jax.random.key(0), x, train=True), x)
  return seen


def _forward(path, strides, padding):
  if path == 'im2col':
    return lambda x, w: layers.im2col_conv(x, w, strides, padding)
  dims = NCHW if path == 'nchw' else NHWC
  return lambda x, w: lax.conv_general_dilated(x, w, strides, padding,
                                               dimension_numbers=dims)


def pass_functions(path, strides, padding):
  """{'fwd', 'dx', 'dw'}: functions of (x, w, cotangent)."""
  f = _forward(path, strides, padding)
  return {
      'fwd': lambda x, w, g: f(x, w),
      'dx': lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0],
      'dw': lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0],
  }


def milliseconds(compiled, args, min_seconds: float = 0.05) -> float:
  """Best of 3 runs of at least `min_seconds`, per call."""
  jax.block_until_ready(compiled(*args))
  n, best = 1, float('inf')
  for _ in range(3):
    while True:
      start = time.perf_counter()
      for _ in range(n):
        out = compiled(*args)
      jax.block_until_ready(out)
      took = time.perf_counter() - start
      if took >= min_seconds:
        break
      n = max(n + 1, int(n * 1.2 * min_seconds / max(took, 1e-6)))
    best = min(best, took / n)
  return 1000 * best


def measure(shape, paths, min_seconds: float = 0.05) -> dict:
  """{path: {'fwd', 'dx', 'dw': ms, 'error': relative max difference}}."""
  x_shape, k_shape, strides, padding = shape
  key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, x_shape)
  w = jax.random.normal(key_w, k_shape) / np.sqrt(np.prod(k_shape[:3]))
  reference = jax.jit(_forward('lax', strides, padding))(x, w)
  g = jax.random.normal(key_g, reference.shape)
  results = {}
  for path in paths:
    options = FLAG_PATHS.get(path)
    layout = 'nchw' if path == 'nchw' else ('lax' if options else path)
    args = (x, w, g)
    if layout == 'nchw':
      args = (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2))
    row = {}
    try:
      for name, fn in pass_functions(layout, strides, padding).items():
        compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
        row[name] = milliseconds(compiled, args, min_seconds)
        if name == 'fwd':
          y = compiled(*args)
          if layout == 'nchw':
            y = y.transpose(0, 2, 3, 1)
          row['error'] = float(jnp.max(jnp.abs(y - reference)) / jnp.max(jnp.abs(reference)))
    except Exception as e:  # pylint: disable=broad-except
      row = {'failed': f'{type(e).__name__}: {str(e).splitlines()[0][:80]}'}
    results[path] = row
  return results


def _describe(shape) -> str:
  (n, h, w, c), (kh, kw, _, f), (s, _), _ = shape
  return f'{kh}x{kw}/{s} {c:>4}->{f:<4} {h:>3}x{w:<3} n{n}'


def table(model, stem, size, batch, paths, min_seconds: float = 0.05) -> dict:
  """Prints one model's table; returns {path: total ms of its convolutions}."""
  print(f'\n{model} ({stem} stem) at {size} px, batch {batch}; ms per call '
        '(fwd / dx / dw), x = occurrences')
  header = f'{"shape":<28} {"x":>2} ' + ' '.join(f'{p + " fwd/dx/dw":>25}' for p in paths)
  print(header + '  pick    cpu_conv')
  totals = collections.Counter()
  taken = 0.0
  for shape, count in sorted(conv_shapes(model, stem, size, batch).items(),
                             key=lambda kv: (-kv[0][0][1], kv[0][1])):
    results = measure(shape, paths, min_seconds)
    cells, sums = [], {}
    for p in paths:
      r = results[p]
      if 'failed' in r:
        cells.append(f'{"failed":>25}')
        continue
      sums[p] = r['fwd'] + r['dx'] + r['dw']
      totals[p] += count * sums[p]
      cells.append(f'{r["fwd"]:7.2f}/{r["dx"]:7.2f}/{r["dw"]:7.2f}'
                   + ('!' if r['error'] > 1e-4 else ' '))
    pick = min(sums, key=sums.get)
    chosen = 'im2col' if layers.cpu_conv_takes_im2col(*shape) else 'lax'
    taken += count * sums.get(chosen, float('nan'))
    print(f'{_describe(shape):<28} {count:>2} ' + ' '.join(cells) + f'  {pick:<7} {chosen}')
  print(f'{"total ms (fwd+dx+dw)":<31} ' + ' '.join(f'{totals[p]:>25.1f}' for p in paths)
        + f'  cpu_conv {taken:.1f}')
  return dict(totals, cpu_conv=taken)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet18')
  parser.add_argument('--stem', default='imagenet')
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--issue', action='store_true', help="all of issue 46's rows")
  parser.add_argument('--paths', default='lax,im2col,nchw',
                      help='comma-separated: lax, im2col, nchw, ' + ', '.join(FLAG_PATHS))
  parser.add_argument('--min_run_ms', type=float, default=50.0,
                      help='each timed run repeats the call until it lasts this long')
  args = parser.parse_args()
  paths = args.paths.split(',')
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} cores; '
        "'!' = output differs from lax by more than 1e-4 of its largest value")
  rows = ISSUE_ROWS if args.issue else ((args.model, args.stem, args.size, args.batch),)
  for row in rows:
    table(*row, paths, args.min_run_ms / 1000)


if __name__ == '__main__':
  main()
