"""The 1,000 ILSVRC-2012 classes: WordNet id -> readable name.

`imagenet_classes.txt` beside this module holds one line per class, `<wnid>
<name>` in wnid order (the usual 0-999 label order), the format of the
`classes.txt` that `ilsvrc` writes and `image_folder` reads. The names are
the short ones of the public "imagenet-sample-images" collection, one file
per class named `<wnid>_<name>.JPEG` (underscores there, spaces here):
"tench", "great white shark". Two pairs of classes share a name, as in the
devkit: "crane" (n02012849, the bird; n03126707, the machine) and "maillot"
(n03710637, n03710721); `image_folder.unique_names` tells them apart for
display.

Folders named by wnids (Imagenette, Imagewoof, any ImageNet subset) get
readable names from here without a names file of their own.
"""

import functools
from importlib import resources
import os
from typing import Iterable, Optional

FILE = 'imagenet_classes.txt'
COUNT = 1000
NAMES_FILE = 'classes.txt'  # What a dataset's folder holds; `image_folder` reads it.


@functools.cache
def _pairs() -> tuple:
  text = resources.files(__package__).joinpath(FILE).read_text(encoding='utf-8')
  return tuple(tuple(line.split(' ', 1)) for line in text.splitlines() if line)


def names() -> dict:
  """{wnid: readable name} of the 1,000 classes, in wnid order (a new dict
  each call: the caller may change it)."""
  return dict(_pairs())


def names_of(wnids: Iterable[str]) -> Optional[dict]:
  """{wnid: readable name} for `wnids` if every one is an ImageNet class,
  else None: a folder of other classes (the user's own, or some named like
  wnids and some not) keeps its folder names rather than half of them."""
  known = names()
  wnids = list(wnids)
  if not wnids or any(w not in known for w in wnids):
    return None
  return {w: known[w] for w in wnids}


def write_names(root: str, names: dict) -> None:
  """Writes `root/classes.txt`: a line `<folder> <name>` per class of
  `names`, in its order."""
  with open(os.path.join(root, NAMES_FILE), 'w', encoding='utf-8') as f:
    f.writelines(f'{folder} {name}\n' for folder, name in names.items())
