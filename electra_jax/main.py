r"""Pre-train ELECTRA: flags -> loop.train_and_evaluate(config, workdir).

  python -m electra_jax.main --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python -m electra_jax.main --config=configs/pretrain.py:small --config.train.num_steps=1000 ...

Run again on the same workdir to resume from its latest checkpoint. Multi-host:
pass --coordinator_address/--num_processes/--process_id, or --multihost to let
jax.distributed.initialize() detect the cluster (TPU pods, SLURM); see README "Scale out".
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from electra_jax import hostmem

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and its argument, e.g. configs/pretrain.py:tiny', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, export).')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None, 'Where built data shards and the builtin vocab are cached '
    '(default $ELECTRA_JAX_CACHE or ~/.cache/electra_jax).')
_EXPORT_ONLY = flags.DEFINE_bool(
    'export_only', False, 'Restore the latest checkpoint, write workdir/export/ and exit.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show the tqdm progress bar.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() and let it detect the cluster '
    '(TPU pod slices, SLURM). Also turned on by the env ELECTRA_JAX_MULTIHOST=1.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (env JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (hosts).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index.')

FINETUNE_HINT = ('python -m electra_jax.finetune --config=configs/finetune.py:task=rte,size={size} '
                 '--config.init_checkpoint={export} --config.data.data_dir=PATH/TO/glue '
                 '--workdir=runs/rte')


def init_distributed() -> None:
  """jax.distributed.initialize() when the flags or the environment ask for it."""
  import jax  # pylint: disable=g-import-not-at-top
  explicit = {k: v for k, v in dict(coordinator_address=_COORDINATOR.value,
                                    num_processes=_NUM_PROCESSES.value,
                                    process_id=_PROCESS_ID.value).items() if v is not None}
  auto = _MULTIHOST.value or os.environ.get('ELECTRA_JAX_MULTIHOST') == '1'
  if explicit or auto or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(**explicit)
    logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; expected only flags')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/pretrain.py:tiny')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required, e.g. --workdir=runs/tiny')
  if not flags.FLAGS['verbosity'].present:
    # orbax logs every save at INFO; keep the console for our metrics lines.
    logging.set_verbosity(logging.WARNING)
  init_distributed()
  from electra_jax.pretrain import loop  # pylint: disable=g-import-not-at-top  (after distributed init)
  cache_dir = _CACHE_DIR.value or os.environ.get('ELECTRA_JAX_CACHE') or None
  try:
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, cache_dir=cache_dir,
                                       export_only=_EXPORT_ONLY.value,
                                       progress=_PROGRESS.value)
  except (ValueError, FileNotFoundError, loop.NonFiniteError) as e:
    # One line the user can act on; the traceback is for bugs, not bad inputs.
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0 or summary.get('preempted'):
    return
  wd = summary.get('workdir', _WORKDIR.value)
  export = summary.get('export_dir')
  print('\nDone. Outputs in', wd)
  for name, path in (('metrics', os.path.join(wd, 'metrics.jsonl')),
                     ('eval metrics', os.path.join(wd, 'eval.jsonl')),
                     ('TensorBoard', os.path.join(wd, 'tensorboard')),
                     ('checkpoints', os.path.join(wd, 'checkpoints')),
                     ('learning curves', summary.get('curves')),
                     ('exported params', export)):
    if path:
      print(f'  {name:16s} {path}')
  if export:
    hint = FINETUNE_HINT.format(export=export, size=_CONFIG.value.size)
    print('Next: fine-tune the discriminator, e.g. on RTE (GLUE TSVs):\n  ' + hint)
    print(f'Compare runs: python -m electra_jax.plot {wd} [OTHER_WORKDIR ...] --out curves.png')


if __name__ == '__main__':
  hostmem.reexec_with_tuned_malloc()  # before any step runs: see electra_jax/hostmem.py
  app.run(main)
