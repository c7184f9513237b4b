"""The documentation tells the truth: the config reference is current, every
command it shows exists, and its links point at files that exist."""

import os
import re
import subprocess
import sys

import pytest

from configs import cifar
from resnet_jax.workdir import config_docs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md', 'BENCHMARKS.md'] + [
    os.path.join('docs', f) for f in sorted(os.listdir(os.path.join(REPO, 'docs')))]


def _read(page):
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def test_the_config_reference_is_generated_from_the_fields():
  assert _read('docs/config.md') == config_docs.reference_markdown(
      cifar.get_config()), ('docs/config.md is stale: python -m '
                            'resnet_jax.workdir.config_docs > docs/config.md')


def test_the_preset_table_is_generated_from_the_presets():
  modules = config_docs.shipped_presets()
  assert list(modules) == ['configs/cifar.py', 'configs/imagenet.py']
  assert _read('docs/presets.md') == config_docs.presets_markdown(modules), (
      'docs/presets.md is stale: python -m resnet_jax.workdir.config_docs '
      'presets > docs/presets.md')
  for module in modules.values():  # Every preset says where it is from.
    assert set(module.SOURCES) == set(module.PRESETS)


def test_every_imagenet_preset_differs_from_its_source_only_where_it_says_why():
  module = config_docs.shipped_presets()['configs/imagenet.py']
  assert set(module.RECIPES) == set(module.PRESETS)
  for name in module.PRESETS:
    for field, ours, theirs, where, why, differs in config_docs.recipe_rows(module, name):
      assert where, (name, field)
      if field != '(reported)':
        assert differs == bool(why), (
            f'{name}.{field}: here {ours!r}, source {theirs!r}; ' +
            ('a difference needs its reason' if differs else 'no difference, no reason'))
  # Every field a preset sets is checked against its source.
  for name, fields in module.PRESETS.items():
    checked = {row[0] for row in module.RECIPES[name]}
    assert set(fields) - {'eval_batch_size'} <= checked, (name, set(fields) - checked)


def test_the_front_page_stays_a_front_page():
  assert len(_read('README.md')) <= 12_000


@pytest.mark.slow
def test_every_module_the_docs_run_answers_help():
  modules = sorted({m for page in PAGES
                    for m in re.findall(r'python -m (resnet_jax\.[a-z_]+)(?![\w.])', _read(page))})
  assert 'resnet_jax.main' in modules and 'resnet_jax.predict' in modules
  for module in modules:
    result = subprocess.run([sys.executable, '-m', module, '--help'], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    # absl prints the usage and exits 1; anything else is a broken command.
    assert result.returncode in (0, 1) and 'Traceback' not in result.stderr, module
    assert 'Try --helpfull' in result.stdout, module  # absl's usage text.


def test_links_between_pages_point_at_files_that_exist():
  for page in PAGES:
    for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', _read(page)):
      if '://' in target:
        continue
      path = os.path.normpath(os.path.join(REPO, os.path.dirname(page), target))
      assert os.path.exists(path), f'{page} links to {target}, which does not exist'


def test_sections_the_code_cites_exist():
  # e.g. configs/cifar.py: (docs/recipes.md, "Beyond the paper recipe").
  cited = []
  for folder in ('configs', 'resnet_jax', 'benchmarks'):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if name.endswith(('.py', '.sh')):
          text = open(os.path.join(root, name)).read()
          cited += re.findall(r'(README\.md|docs/[a-z_]+\.md)[,:]? "([^"]+)"', text)
  assert ('docs/recipes.md', 'Beyond the paper recipe') in cited
  for page, section in cited:
    headings = re.findall(r'^#+ (.+)$', _read(page), re.M)
    assert any(h.startswith(section) for h in headings), (page, section)
