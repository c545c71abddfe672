r"""Fine-tuning sweep: one checkpoint on the GLUE tasks, `num_seeds` seeds each (paper: 10).

One trial per task, each fine-tuning `num_seeds` seeds one after another (on a
cluster: one job per task, all tasks at once). The report's row of a task holds
the median over its seeds and every seed's score (`<task>_seeds`).

  python -m electra_jax.sweep --config=configs/glue_seeds.py:init=runs/small/export \
      --workdir=runs/glue_small --backend=slurm --slurm_gpus_per_node=1 --slurm_time=12:00:00
  python -m electra_jax.sweep --config=configs/glue_seeds.py:init=runs/small/export,tasks=rte+mrpc \
      --workdir=runs/glue_small                                   # two tasks, here

Arguments (`glue_seeds.py:k=v,...`): init (required: an export dir, a pre-training
workdir or a Hugging Face ELECTRA dir), size (small: the recipe's learning rate
and layer decay, configs/finetune.py), tasks ('+'-separated; the eight GLUE tasks
of the paper's score), num_seeds (10), seed (0: the first seed), data (the
public data root, default $ELECTRA_JAX_DATA; GLUE TSVs in <data>/glue).
"""

from configs.ablations import common
from electra_jax import configlib

TASKS = ('cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'qnli', 'rte')


def sweep(add, arg=None):
  a = configlib.parse_arg(arg, init='', size='small', tasks='+'.join(TASKS), num_seeds=10, seed=0,
                          data='')
  if not a.init:
    raise ValueError('configs/glue_seeds.py needs init=PATH (the checkpoint to fine-tune), '
                     'e.g. --config=configs/glue_seeds.py:init=runs/small/export')
  for task in a.tasks.split('+'):
    ft = common.glue_finetune(data=a.data, tasks=(task,), num_seeds=a.num_seeds, size=a.size)
    ft['arg'] += f',seed={a.seed}'
    add(name=task, init=a.init, finetune=ft)
