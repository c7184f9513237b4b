r"""Builds a dataset from a local archive or folder, with no network.

  python -m resnet_jax.prepare_data --archive cifar-10-binary.tar.gz --data_dir DIR
  python -m resnet_jax.prepare_data --archive cifar-10-binary.tar.gz --data_dir DIR \
      --as_image_folder          # DIR/cifar10-png: the exact pixels, no TensorFlow
  python -m resnet_jax.prepare_data --archive imagenette2-320.tgz --data_dir DIR
  python -m resnet_jax.prepare_data --imagenet FOLDER --data_dir DIR

Accepts the official archives of https://www.cs.toronto.edu/~kriz/cifar.html
in either layout (binary `*-binary.tar.gz` or python `*-python.tar.gz`), for
CIFAR-10 and CIFAR-100: the result is tfds's own `cifar10` / `cifar100`
dataset (same version, features and example order as a download would give;
`data/cifar_official.py`).

Also accepts an image-folder dataset, as a `.tar.gz` or a directory holding
`NAME/train/<class>/*` and `NAME/test/<class>/*` (or `NAME/val/<class>/*`,
as Imagenette's `imagenette2-320.tgz`): every image is checked (32x32 sets
decoded in full, others by their headers), then the folder is placed at
`DIR/NAME`, and `--config.dataset=NAME --config.data_dir=DIR` trains from it
(no TensorFlow needed; images larger than 32x32 with `--config
configs/imagenet.py`, the ImageNet recipes at 224 px). Classes named by
ImageNet's WordNet ids (Imagenette, Imagewoof) get a `classes.txt` of their
readable names, where the dataset brings none.

`--imagenet FOLDER` arranges ILSVRC-2012, the official files or Kaggle's
copy, into `DIR/imagenet2012/{train,val}/<wnid>/` (`data/ilsvrc.py`,
`data/ilsvrc_kaggle.py`).
"""

import os
import shutil
import tarfile
from typing import Optional

from absl import flags

from resnet_jax import errors
from resnet_jax import logs
from resnet_jax import paths
from resnet_jax.data import archives
from resnet_jax.data import cifar_official
from resnet_jax.data import ilsvrc
from resnet_jax.data import ilsvrc_kaggle
from resnet_jax.data import image_folder
from resnet_jax.data import imagenet_classes
from resnet_jax.data import staging

_ARCHIVE = paths.define_flag(
    'archive', None, 'Path of an official CIFAR archive, or of an image-folder dataset '
    '(a directory or .tar.gz/.tgz holding NAME/train and NAME/val or NAME/test).')
_DATA_DIR = paths.define_flag(
    'data_dir', None, 'Where datasets live (--config.data_dir for training): the tfds '
    'CIFAR dataset, DATA_DIR/NAME for an image folder, DATA_DIR/imagenet2012 for ILSVRC.')
_IMAGENET = paths.define_flag(
    'imagenet', None, 'The official ILSVRC-2012 files (ILSVRC2012_img_train.tar, ..._val.tar,'
    " ..._devkit_t12.tar.gz) in one folder, or Kaggle's download (LOC_synset_mapping.txt, "
    'ILSVRC/Data/CLS-LOC): arranged into DATA_DIR/imagenet2012/{train,val}/<wnid>/.')
_AS_IMAGE_FOLDER = flags.DEFINE_bool(
    'as_image_folder', False, 'Official CIFAR archives only: write the exact pixels as a PNG '
    'image folder, DATA_DIR/cifar10-png (or cifar100-png), instead of a tfds '
    'dataset: trains without TensorFlow.')

# What `--archive` takes, for the errors that say so.
_ACCEPTED = ('--archive takes an official CIFAR archive (cifar-10-binary.tar.gz, '
             'cifar-10-python.tar.gz or their cifar-100 twins) or an image-folder '
             'dataset: a folder or .tar.gz/.tgz holding NAME/train/<class>/ and '
             "NAME/val/<class>/ or NAME/test/<class>/ (Imagenette's imagenette2-320.tgz)")
# Images larger than 32x32: the default config (cifar.py) would train ResNet-20.
_IMAGENET_CONFIG = '--config configs/imagenet.py'
_IMAGENET_SIZE = ' (the ImageNet recipes at 224 px; --config.image_size=N for another size)'


def _image_folder_name(archive: str) -> Optional[str]:
  """NAME if `archive` is a directory or .tar.gz holding NAME/train/, else None.

  Reads an archive only as far as it takes to tell (its first members)."""
  if os.path.isdir(archive):
    return os.path.basename(os.path.normpath(archive))
  if not os.path.isfile(archive):
    return None
  top = None
  try:
    with tarfile.open(archive, 'r:*') as tar:
      for member in iter(tar.next, None):
        parts = member.name.strip('./').split('/')
        if top is None:
          top = parts[0]
          if not top or any(top == l.folder for l in cifar_official.LAYOUTS):
            return None
        if (len(parts) > 2 and parts[0] == top
            and parts[1] in ('train',) + image_folder.EVAL_FOLDERS):
          return top
  except archives.READ_ERRORS:
    # Unreadable from its start: `detect_layout` says so. Damaged further on:
    # taken for the image folder it begins as, `archives.extract` says so.
    return top or None
  return None


def _ilsvrc_hint(archive: str, data_dir: str) -> Optional[str]:
  """The error for ILSVRC-2012's files given to `--archive`: the official
  files (their folder or one of them) or Kaggle's download go to `--imagenet`."""
  official = (ilsvrc.TRAIN_TAR, ilsvrc.VAL_TAR, ilsvrc.DEVKIT)
  if os.path.isdir(archive):
    kaggle = ilsvrc_kaggle.find(archive)
    if kaggle:
      what, folder = "Kaggle's ImageNet download", kaggle[0]
    elif any(os.path.isfile(os.path.join(archive, f)) for f in official):
      what, folder = 'the official ILSVRC-2012 files', archive
    else:
      return None
  elif os.path.basename(archive) in official:
    what, folder = 'an official ILSVRC-2012 file', os.path.dirname(archive) or '.'
  elif os.path.basename(archive) == ilsvrc_kaggle.ZIP:
    return (f"{archive} is Kaggle's ImageNet download: unzip it, then pass the folder it "
            f'unzipped into as --imagenet (prepare_data --imagenet FOLDER --data_dir '
            f'{data_dir})')
  else:
    return None
  return (f'{archive} is {what}, which --imagenet arranges, not --archive: '
          f'python -m resnet_jax.prepare_data --imagenet {folder} --data_dir {data_dir}')


def _name_imagenet_classes(root: str, folders: tuple) -> bool:
  """Writes `root/classes.txt` from ImageNet's class list when every class
  folder is a wnid and the dataset brings no names file: eval, the
  confusion matrix and predict then say "tench", not "n01440764"."""
  if any(os.path.exists(os.path.join(root, f)) for f in image_folder.NAME_FILES):
    return False
  named = imagenet_classes.names_of(folders)
  if named:
    imagenet_classes.write_names(root, named)
  return bool(named)


def prepare_image_folder(source: str, name: str, data_dir: str) -> dict:
  """Checks every image of an image-folder dataset and places it at
  `data_dir/name`, with a `classes.txt` of ImageNet's names where its
  classes are wnids and it has no names file (the source is left as it is).

  Args:
    source: a directory (`name/train`, `name/test`) or a .tar.gz holding one.
    name: the dataset's name (its top folder).
    data_dir: where datasets live; `--config.data_dir` for training.

  Returns:
    {'dataset', 'path', 'train', 'test', 'classes', 'small', 'smallest',
    'largest', 'imagenet_names'}: what was built.

  Raises:
    errors.UserError: naming the file or folder at fault and the fix.
    errors.Stopped: SIGTERM or SIGINT (the partial copy removed).
  """
  target = staging.check_target(
      data_dir, name, f'--config.dataset={name} --config.data_dir={data_dir} (images over '
      f'32x32: {_IMAGENET_CONFIG})')
  with staging.Staging(data_dir) as stage:
    built = os.path.join(stage.path, name)
    if os.path.isdir(source):
      root, shown = source, source
    else:
      archives.extract(source, stage.path)
      root, shown = built, f'{source}:{name}'
    try:
      folders = image_folder.class_folders(root)
      sizes = {split: image_folder.image_sizes(root, split) for split in image_folder.SPLITS}
      small = all(s == (image_folder.SIZE, image_folder.SIZE)
                  for split in sizes.values() for s in split)
      if small:  # The in-memory pipelines decode them all: so does the check.
        for split in image_folder.SPLITS:
          image_folder.load_split(root, split)
    except errors.UserError as e:  # Name files as the user knows them.
      raise errors.UserError(str(e).replace(root, shown)) from e
    if os.path.isdir(source):
      shutil.copytree(source, built)
    named = _name_imagenet_classes(built, folders)  # In the copy: the source stays as it is.
    stage.place(built, target)
  every = [s for split in sizes.values() for s in split]
  areas = sorted(every, key=lambda s: s[0] * s[1])
  return dict(dataset=name, path=target, classes=len(folders), small=small,
              smallest=areas[0], largest=areas[-1], imagenet_names=named,
              **{split: len(s) for split, s in sizes.items()})


def _check_flags(archive: str, imagenet: str, data_dir: str,
                 as_image_folder: bool) -> Optional[str]:
  """Refuses flags that would be ignored or cannot work, before any building.

  Returns:
    NAME where `archive` is an image-folder dataset, else None.
  """
  if archive and imagenet:
    raise errors.UserError('pass --archive or --imagenet, not both (one would be ignored): '
                           '--imagenet arranges ILSVRC-2012, --archive builds CIFAR or an '
                           'image-folder dataset; run prepare_data once for each')
  if not (archive or imagenet) or not data_dir:
    raise errors.UserError('--data_dir and one of --archive or --imagenet are required')
  name = None
  if archive:
    hint = _ilsvrc_hint(archive, data_dir)
    if hint:
      raise errors.UserError(hint)
    if not os.path.exists(archive):
      raise errors.UserError(f'archive {archive} does not exist; {_ACCEPTED}')
    name = _image_folder_name(archive)
  if as_image_folder and (imagenet or name):
    what = '--imagenet always builds one' if imagenet else f'{archive} is one already'
    raise errors.UserError('--as_image_folder writes an official CIFAR archive as an image '
                           f'folder; {what}: drop --as_image_folder')
  return name


def main(argv):
  del argv
  logs.setup()
  archive, imagenet, data_dir = _ARCHIVE.value, _IMAGENET.value, _DATA_DIR.value
  name = _check_flags(archive, imagenet, data_dir, _AS_IMAGE_FOLDER.value)
  if imagenet:
    arrange = ilsvrc_kaggle.arrange if ilsvrc_kaggle.find(imagenet) else ilsvrc.arrange
    print(ilsvrc.summary(arrange(imagenet, data_dir), data_dir))
    return
  if name:
    info = prepare_image_folder(archive, name, data_dir)
    sizes = '' if info['small'] else ' ({}x{} to {}x{} pixels)'.format(
        *info['smallest'], *info['largest'])
    named = ", named by ImageNet's class list (classes.txt)" if info['imagenet_names'] else ''
    print(f"Built image-folder dataset {name} in {info['path']}: {info['train']} train "
          f"and {info['test']} test images of {info['classes']} classes{sizes}{named}.\n"
          f"Train with {'' if info['small'] else _IMAGENET_CONFIG + ' '}--config.dataset={name} "
          f"--config.data_dir={data_dir}" + ('' if info['small'] else _IMAGENET_SIZE))
    return
  if _AS_IMAGE_FOLDER.value:
    info = cifar_official.prepare_png_folder(archive, data_dir)
    print(f"Built image-folder dataset {info['name']} in {info['path']}: {info['train']} "
          f"train and {info['test']} test images of {info['classes']} classes, the exact "
          f"pixels{'' if info['official'] else ' (from an unofficial archive)'}.\n"
          f"Train with --config.dataset={info['name']} --config.data_dir={data_dir}")
    return
  info = cifar_official.prepare(archive, data_dir)
  print(f"Built {info['dataset']} in {info['path']}: {info['train']} train and {info['test']} "
        f"test images{'' if info['official'] else ' (from an unofficial archive)'}.\n"
        f"Train with --config.dataset={info['dataset']} --config.data_dir={data_dir}")


if __name__ == '__main__':
  errors.run_cli(main)
