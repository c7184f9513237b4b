"""ImageNet's 1,000 wnid -> name pairs, shipped with the package."""

import fnmatch
import os
import tomllib

from resnet_jax.data import imagenet_classes
from tests.processes import REPO


def test_the_thousand_classes_with_their_public_names():
  names = imagenet_classes.names()
  assert len(names) == 1000 and all(w[0] == 'n' and len(w) == 9 for w in names)
  assert list(names) == sorted(names)  # The file in label order.
  # Facts any ImageNet class list agrees on: the first and last classes,
  # label 1, names with spaces, hyphens and apostrophes.
  assert list(names.items())[:2] == [('n01440764', 'tench'), ('n01443537', 'goldfish')]
  assert list(names.items())[-1] == ('n15075141', 'toilet tissue')
  assert names['n01484850'] == 'great white shark'
  assert names['n03590841'] == "jack-o'-lantern"
  # Two pairs of classes share a name: both of each are there, under their own ids.
  assert {w for w, n in names.items() if n == 'crane'} == {'n02012849', 'n03126707'}
  assert {w for w, n in names.items() if n == 'maillot'} == {'n03710637', 'n03710721'}
  assert len(set(names.values())) == 998
  names['n01440764'] = 'changed'  # A copy: the next caller gets the facts.
  assert imagenet_classes.names()['n01440764'] == 'tench'


def test_names_of_a_subset_only_when_every_folder_is_an_imagenet_class():
  imagenette = ['n01440764', 'n02102040', 'n02979186']
  assert imagenet_classes.names_of(imagenette) == {
      'n01440764': 'tench', 'n02102040': 'English springer',
      'n02979186': 'cassette player'}
  assert imagenet_classes.names_of(imagenette + ['n99999999']) is None
  assert imagenet_classes.names_of(['cat', 'dog']) is None
  assert imagenet_classes.names_of([]) is None


def test_every_data_file_of_the_package_is_installed():
  # setuptools leaves files that are not modules out of a wheel unless
  # package-data lists them (checked by building one: without the line, the
  # names file was missing).
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    package_data = tomllib.load(f)['tool']['setuptools'].get('package-data', {})
  package = os.path.join(REPO, 'resnet_jax')
  for root, dirs, files in os.walk(package):
    dirs[:] = [d for d in dirs if d != '__pycache__']
    dotted = os.path.relpath(root, REPO).replace(os.sep, '.')
    for name in files:
      if name.endswith('.py'):
        continue
      patterns = package_data.get(dotted, []) + package_data.get('*', [])
      assert any(fnmatch.fnmatch(name, p) for p in patterns), (
          f'{dotted}/{name} is not in pyproject.toml\'s package-data: an installed '
          'package would lack it')
  assert os.path.isfile(os.path.join(package, 'data', imagenet_classes.FILE))
