r"""Trains or evaluates a ResNet on CIFAR.

  python -m resnet_jax.main --config configs/cifar.py --workdir runs/resnet20
  python -m resnet_jax.main --config configs/cifar.py --workdir runs/resnet20 --mode=eval

Running the train command again on the same workdir resumes from its latest
checkpoint. Any config field can be overridden: `--config.batch_size=256`.
"""

import os

from absl import flags
from ml_collections import config_flags

from resnet_jax.parallelism import distributed
from resnet_jax import errors
from resnet_jax import logs
from resnet_jax.logs import log

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training config file, e.g. configs/cifar.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resuming if possible) or eval the latest checkpoint.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0-based.')
flags.mark_flags_as_required(['config', 'workdir'])


def _describe_fields() -> str:
  from resnet_jax.workdir import config_validation
  width = max(map(len, config_validation.FIELDS))
  return '\n'.join(f'  --config.{k:<{width}}  {v}'
                   for k, v in config_validation.FIELDS.items())


# absl's --help prints the main module's docstring: list the config fields.
__doc__ += '\nConfig fields (configs/cifar.py sets them):\n' + _describe_fields() + '\n'


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
  setup = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value)
  logs.setup()
  log.info('Runtime: %s', setup)
  for line in distributed.describe_devices():
    (log.warning if line.startswith('warning:') else log.info)('%s', line)
  from resnet_jax.training import evaluation
  from resnet_jax.training import loop
  from resnet_jax.training import run_setup  # After flag parsing: keeps --help fast.
  run_setup.preflight(_CONFIG.value)  # Refuse a bad config before touching anything.
  if _MODE.value == 'eval':
    if not os.path.isdir(workdir):
      raise errors.UserError(f'workdir {workdir} does not exist; pass the '
                             '--workdir of a trained run')
    step = None if _CONFIG.value.eval_step == -1 else _CONFIG.value.eval_step
    result = evaluation.evaluate_checkpoint(_CONFIG.value, workdir, step)
    others = ', '.join(f'{k[:-len("eval_accuracy")].rstrip("_")} {100 * v:.2f}%'
                       for k, v in result.items()
                       if k.endswith('_eval_accuracy') and k != 'eval_accuracy')
    log.info('Evaluated step %d: test accuracy %.2f%%%s on %d examples, wrote %s',
             result['step'], 100 * result['eval_accuracy'],
             f' ({others})' if others else '', result['eval_examples'],
             os.path.join(workdir, 'eval.json'))
    return
  # Creates the workdir only once the run is accepted; refused while another
  # run holds it.
  loop.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == '__main__':
  errors.run_cli(main)
