r"""Trains or evaluates a ResNet: CIFAR with configs/cifar.py (the default), or
ImageNet and other image folders with configs/imagenet.py (docs/imagenet.md).

  python -m resnet_jax.main --config configs/cifar.py --workdir runs/resnet20
  python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50 \
    --config.data_dir=~/data                                     # ResNet-50 on ILSVRC-2012
  python -m resnet_jax.main --workdir runs/resnet20              # resumes it
  python -m resnet_jax.main --workdir runs/resnet20 --mode=eval

A workdir remembers its run: given only --workdir, an existing run resumes (or
is evaluated) with the config its run.json records; --config.FIELD=VALUE may
still change runtime fields (cadence, data_dir, devices). Without --config a
new run uses configs/cifar.py, which also ships inside the package: that path
works from any folder. Any config field can be overridden:
`--config.batch_size=256`. `~` in --workdir, --config and the path fields
(data_dir, init_from) is expanded."""

import os

from absl import flags
from ml_collections import config_flags

from resnet_jax import config_files
from resnet_jax import errors
from resnet_jax.parallelism import distributed
from resnet_jax import logs
from resnet_jax.logs import log
from resnet_jax import paths


_CONFIG = errors.define_config_flag(
    config_files.default_or_none(), 'Training config file[:preset], e.g. '
    'configs/cifar.py:resnet56 or configs/imagenet.py:resnet50_fast_16; default: the '
    'run in --workdir, or configs/cifar.py for a new one.')
_WORKDIR = paths.define_flag('workdir', None, 'Where checkpoints and metrics go.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resuming if possible) or eval the latest checkpoint.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0-based.')
flags.mark_flags_as_required(['workdir'])


def _describe_fields() -> str:
  from resnet_jax.workdir import config_fields
  try:
    defaults = config_files.load_default()
  except errors.UserError:
    defaults = {}
  width = max(len(f'{k}={defaults.get(k)!r}') for k in config_fields.FIELDS)
  return '\n'.join(f'  --config.{k + "=" + repr(defaults.get(k)):<{width}}  {v}'
                   for k, v in config_fields.FIELDS.items())


def _describe_presets() -> str:
  """The shipped configs' presets, one wrapped paragraph per file."""
  import textwrap
  from resnet_jax.workdir import config_docs
  try:
    modules = config_docs.shipped_presets()
  except errors.UserError:
    return ''
  return ''.join(textwrap.fill(f'{path}: {", ".join(module.PRESETS)}', 88,
                               initial_indent='  ', subsequent_indent='    ') + '\n'
                 for path, module in modules.items())


# absl's --help prints the main module's docstring: list the presets and the
# config fields.
__doc__ += ('\n\nPresets, --config FILE:NAME (docs/presets.md):\n' + _describe_presets()
            + '\nConfig fields, with the defaults of configs/cifar.py:\n' +
            _describe_fields() + '\n')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}; config fields go as '
                           '--config.FIELD=VALUE')
  workdir = _WORKDIR.value
  if '://' in workdir:
    raise errors.UserError(
        f'workdir {workdir} is an object-store URL, which this version does not write '
        '(run.json, metrics, the lock and plots use local files); pass a local or '
        'shared directory, e.g. the bucket mounted with gcsfuse')
  logs.quiet_libraries()
  setup = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value)
  logs.setup()
  log.info('Runtime: %s', setup)
  for line in distributed.describe_devices():
    (log.warning if line.startswith('warning:') else log.info)('%s', line)
  from resnet_jax.training import evaluation
  from resnet_jax.training import loop
  from resnet_jax.training import run_setup  # After flag parsing: keeps --help fast.
  config = _config(workdir)
  run_setup.preflight(config)  # Refuse a bad config before touching anything.
  if _MODE.value == 'eval':
    if not os.path.isdir(workdir):
      raise errors.UserError(f'workdir {workdir} does not exist; pass the '
                             '--workdir of a trained run')
    step = None if config.eval_step == -1 else config.eval_step
    result = evaluation.evaluate_checkpoint(config, workdir, step)
    others = ', '.join(f'{k[:-len("eval_accuracy")].rstrip("_")} {100 * v:.2f}%'
                       for k, v in result.items()
                       if k.endswith('_eval_accuracy') and k != 'eval_accuracy')
    log.info('Evaluated step %d: %s accuracy %.2f%%%s on %d examples, wrote %s and %s',
             result['step'], result['split'], 100 * result['eval_accuracy'],
             f' ({others})' if others else '', result['eval_examples'],
             os.path.join(workdir, 'eval.json'), os.path.join(workdir, 'confusion.png'))
    return
  # Creates the workdir only once the run is accepted; refused while another
  # run holds it.
  loop.train_and_evaluate(config, workdir)


def _config(workdir: str):
  """--config when given; else the workdir's own run's, else the default."""
  from resnet_jax.workdir import run_config
  flag = flags.FLAGS['config']
  overrides = paths.expand_config(config_flags.get_override_values(flag))
  given = ' '.join(f'--config.{k}={v}' for k, v in overrides.items())
  if not flag.present:
    remembered = run_config.remembered(workdir, _CONFIG.value, overrides)
    if remembered is not None:
      log.info('Config: the run in %s (its run.json)%s', workdir,
               f', with {given}' if given else '')
      return remembered
  if _CONFIG.value is None:
    config_files.shipped_dir()  # Raises the error that says what is missing.
  log.info('Config: %s%s%s', config_flags.get_config_filename(flag),
           '' if flag.present else ' (the default)', f', with {given}' if given else '')
  _log_preset(config_flags.get_config_filename(flag))
  # Once, here: training, run.json and a resume's checks see the expanded paths.
  return paths.expand_config(_CONFIG.value)


def _log_preset(argument: str) -> None:
  """Names a preset's source and the fields it sets (docs/presets.md)."""
  path, _, preset = argument.partition(':')
  if not preset:
    return
  from resnet_jax.workdir import config_docs
  module = config_files.load_module(config_files.resolve(path))
  if preset in getattr(module, 'PRESETS', {}):
    changes = config_docs.preset_changes(module, preset)
    log.info('Preset %s (%s): %s', preset, getattr(module, 'SOURCES', {}).get(preset, '?'),
             ', '.join(f'{k}={v!r}' for k, v in changes.items()) or 'the defaults')


if __name__ == '__main__':
  errors.run_cli(main, prepare_argv=config_files.prepare_argv)
