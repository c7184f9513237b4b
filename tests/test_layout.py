"""The package's map: folders by concern, imports flowing one way, small modules."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'resnet_jax')

# Lower layers never import higher ones; a folder may import itself.
LAYERS = (
    {'errors', 'logs', 'config_files', 'paths'},
    {'models', 'layers'},
    {'data', 'parallelism', 'reporting'},
    {'workdir'},
    {'training', 'experiments'},
    {'main', 'predict', 'prepare_data', 'results', 'benchmark', 'accelerator_check',
     'experiment'},
)
MAX_LINES = 420


def _modules():
  """{dotted name under resnet_jax: path}."""
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(root, f), PACKAGE)[:-3].replace(os.sep, '.')
        found[rel.removesuffix('.__init__').removesuffix('__init__')] = os.path.join(root, f)
  return found


def _imports(path: str) -> set:
  """resnet_jax modules `path` imports (module level and inside functions)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        'resnet_jax'):
      base = node.module[len('resnet_jax'):].lstrip('.')
      for alias in node.names:
        out.add(f'{base}.{alias.name}' if base else alias.name)
    elif isinstance(node, ast.Import):
      out.update(a.name[len('resnet_jax.'):] for a in node.names
                 if a.name.startswith('resnet_jax.'))
  return out


def _layer(module: str) -> int:
  top = module.split('.')[0]
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f'{module} is in no layer of tests/test_layout.py')


def test_imports_flow_downward_without_cycles():
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    if not name:
      continue
    targets = {t for t in _imports(path) if t in modules or t.rsplit('.', 1)[0] in modules}
    # `from resnet_jax.data import datasets` names the module, `from
    # resnet_jax.logs import log` a member: keep the module.
    graph[name] = {t if t in modules else t.rsplit('.', 1)[0] for t in targets} - {name}
    for t in graph[name]:
      assert _layer(t) <= _layer(name), f'{name} imports {t}, a higher layer'
  # No cycles (within a folder, where the layers allow both directions).
  state = {}

  def visit(node, trail):
    if state.get(node) == 'done':
      return
    assert state.get(node) != 'open', f'import cycle: {" -> ".join(trail + [node])}'
    state[node] = 'open'
    for t in sorted(graph.get(node, ())):
      visit(t, trail + [node])
    state[node] = 'done'

  for node in sorted(graph):
    visit(node, [])


def test_every_folder_says_what_it_holds_and_modules_stay_small():
  for name, path in _modules().items():
    lines = open(path).read().count('\n')
    assert lines <= MAX_LINES, f'{name} has {lines} lines; split it by job'
    if path.endswith('__init__.py') and name:
      doc = ast.get_docstring(ast.parse(open(path).read()))
      assert doc and 'Imports' in doc, f'{path} needs a docstring saying what it holds'


def test_pyproject_installs_every_folder_and_the_configs():
  import tomllib
  with open(os.path.join(os.path.dirname(PACKAGE), 'pyproject.toml'), 'rb') as f:
    setup = tomllib.load(f)['tool']['setuptools']
  folders = {'resnet_jax'} | {
      f'resnet_jax.{d}' for d in os.listdir(PACKAGE)
      if os.path.isfile(os.path.join(PACKAGE, d, '__init__.py'))}
  assert set(setup['packages']) == folders | {'resnet_jax.configs'}
  assert setup['package-dir'] == {'resnet_jax.configs': 'configs'}
