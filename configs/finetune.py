r"""Fine-tuning on GLUE, SQuAD 1.1 / 2.0 and CoNLL-2000 chunking (the paper's recipe).

  python -m electra_jax.finetune --config=configs/finetune.py:task=rte,size=small \
    --config.train.init_from=runs/small/export --config.data.data_dir=/path/to/glue \
    --workdir=runs/ft_rte

Arguments (`configs/finetune.py:k=v,k=v`):
  task      cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli | squad1 | squad2
            | chunk                                             (a bare word sets it)
  size      tiny | small | base | large: model shape for random init and the recipe's
            lr / layer decay for that size. With a checkpoint, size= given must match
            its shape (refused otherwise); leave it out for a checkpoint of another
            shape and set the rate (--config.optimizer.learning_rate)
  vocab     '' (the checkpoint's vocab.txt) | a path to a vocab.txt (e.g. BERT uncased) |
            builtin (the 8192-token vocab of the `tiny` pre-training quickstart)
  init      shortcut for --config.train.init_from
  num_seeds run seeds seed .. seed+N-1 and report median / spread (the paper: median of 10)
  runlocal  shrink sequence length, epochs and data for a CPU smoke run

`train.init_from`: '' = random initialisation (the baseline); an electra_jax
pre-training workdir (its latest checkpoint; the discriminator is cut out); an
export dir written by electra_jax.io.checkpoint; a Hugging Face ELECTRA dir
(config.json + weights), imported with electra_jax.io.convert; a Hugging Face Hub id
(google/electra-small-discriminator) from the local HF cache; a fine-tuned RUN/model. Missing and
unexpected parameter keys are logged and saved in results.json.

Recipe (docs/reference.md, "Fine-tuning"): lr 3e-4 / 1e-4 / 5e-5 (small / base /
large), layer-wise decay 0.8 / 0.8 / 0.9 (official off-by-one by default;
`optimizer.fixed_top_layer=True` for the fix), 10% warmup then linear decay,
batch 32, Adam eps 1e-6, weight decay 0.01, 3 epochs (RTE, STS-B 10; SQuAD 2),
max_seq_length 128. SQuAD as the official configure_finetuning.py / qa_tasks.py:
max_seq_length 512, doc stride 128, query 64, n-best 20, answer 30, the joint start/end
head with beam 20 (1.1 and 2.0), for 2.0 the answerability classifier on the start
logits with loss weight 0.5 and null threshold -2.75 (README, "SQuAD: the official
recipe").
`tiny` (2 layers, 64 hidden) is ours for CPU runs: lr 1e-3, decay 0.8.

The run checkpoints every train.checkpoint_every steps and after every epoch; the same
command resumes it exactly. It ends by writing workdir/model/ (weights, head, configs,
labels, vocab) for electra_jax.predict and the export to Hugging Face.

Expected: ELECTRA-Small medians (official README, dev) CoLA 57.0, MRPC 88.0,
RTE 66.7. Measured at size=tiny on 2 shared CPU cores (wall): RTE (10 epochs)
5-14 min, MRPC 6-11 min, CoLA 7-14 min; SQuAD 1.1 (38 dev articles, 2 epochs,
length 384, independent start / end head) 46 min. A tiny model from random init scores
at chance on all of them.
"""

import sys as _sys
from pathlib import Path as _Path

# Config files import each other as `configs.*`: from any working directory.
if str(_Path(__file__).resolve().parents[1]) not in _sys.path:
  _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
from configs import pretrain
from electra_jax import configlib
import ml_collections
from ml_collections import config_dict

# Fine-tuning recipe per size: (learning rate, layer-wise LR decay).
RECIPE = {'tiny': (1e-3, 0.8), 'small': (3e-4, 0.8), 'base': (1e-4, 0.8), 'large': (5e-5, 0.9)}
SQUAD_TASKS = ('squad1', 'squad2')


def get_config(arg=None):
  arg = configlib.parse_arg(arg, lazy_field='task', task='rte', size='small', vocab='',
                            init='', num_seeds=1, seed=0, runlocal=False)
  configlib.size_table(arg.size)  # an unknown size fails here, naming the known ones
  lr, layer_decay = RECIPE[arg.size]
  squad = arg.task.lower().replace('.', '').replace('_', '').replace('-', '') in (
      'squad1', 'squad2', 'squad', 'squadv1', 'squadv2', 'squad11', 'squad20')

  c = ml_collections.ConfigDict()
  c.seed = arg.seed
  c.num_seeds = arg.num_seeds
  c.size = arg.size

  c.task = ml_collections.ConfigDict(dict(
      name=arg.task,
      # SQuAD only (ignored by other tasks); the official configure_finetuning.py values.
      doc_stride=128,
      max_query_length=64,
      n_best_size=20,
      max_answer_length=30,
      # SQuAD 2.0: electra_jax.predict answers '' when a question's null score is above
      # this. None = the official qa_na_threshold -2.75 with the answerability classifier
      # (on its logit), 0.0 without (on null minus best span score, as BERT's).
      qa_na_threshold=config_dict.placeholder(float),
  ))

  c.data = ml_collections.ConfigDict(dict(
      # local (GLUE TSVs / SQuAD JSON / CoNLL files) | tfds (never downloads)
      source='local',
      # local: GLUE root (holding RTE/, MRPC/, ...) or the task's folder; SQuAD: folder with
      # {train,dev}-v1.1.json or a .json file; CoNLL: folder with train.txt / test.txt.
      # tfds: the TFDS data_dir ('' = TFDS's default).
      data_dir='',
      train_split='train',
      eval_splits='',   # comma-separated; '' = the task's own (MNLI: both dev sets)
      # GLUE leaderboard files into workdir/test_predictions: auto = every test split whose
      # data exists; '' = none; or a comma-separated list (each must exist).
      test_splits='auto',
      vocab=arg.vocab,  # path to vocab.txt | builtin | '' (the checkpoint's vocab.txt)
      lowercase=True,
      max_train_examples=0,  # 0 = all; >0 keeps the first N (smoke runs)
      max_eval_examples=0,
  ))

  # Model shape for random init (a checkpoint's own config replaces it): the
  # pre-training config's model for this size; vocab_size 0 = the vocab's size.
  c.model = pretrain.get_config(f'size={arg.size}').model
  c.model.vocab_size = 0
  # Fine-tuning recomputes GELU, LayerNorm and dropout in the backward pass (pre-training
  # keeps them, for speed): ELECTRA-Small's step at 32 x 128 needs 0.78 GB of XLA
  # temporaries instead of 1.94 GB.
  c.model.recompute_activations = True

  c.head = ml_collections.ConfigDict(dict(
      dropout_rate=0.1,
      # Classification / regression head: official (dropout, one dense layer on [CLS], the
      # paper's) | hf (Hugging Face's dense -> GELU -> dropout -> dense: exports exactly to
      # ElectraForSequenceClassification).
      form='official',
      # SQuAD (the official qa_tasks.py): True = the XLNet-style joint head (end logits
      # conditioned on the start, predicted with a beam of qa_beam_size starts x ends), the
      # official default for 1.1 and 2.0; False = independent start / end logits (BERT's;
      # exports to Hugging Face's ElectraForQuestionAnswering).
      qa_joint=True,
      qa_beam_size=20,
      # SQuAD 2.0: the official answerability classifier (on [CLS] and the start-weighted
      # token vector), its loss weighted by qa_answerable_weight; it scores "no answer".
      # False: the null answer's span score does (as BERT). Off for 1.1 (see README).
      qa_answerable=True,
      qa_answerable_weight=0.5,
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=lr,
      layerwise_lr_decay=layer_decay,  # 1.0 turns it off
      fixed_top_layer=False,  # False: the official off-by-one (top layer gets decay^2)
      warmup_fraction=0.1,
      decay_power=1.0,  # linear decay to 0
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      bias_correction=False,
      clip_norm=1.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      eval_batch_size=64,
      epochs=0.0,  # 0 = the task's (RTE / STS-B 10, SQuAD 2, others 3)
      seq_len=512 if squad else 128,  # examples are truncated / windowed to this length
      log_every=50,
      # Length-bucketed batching (training and evaluation): rows of similar length batched
      # together and cut to one of this many evenly spaced lengths up to seq_len (128: 32,
      # 64, 96, 128), so jit compiles a handful of shapes; 1 = every batch at seq_len.
      length_buckets=4,
      # Checkpoints (train state, data position, dropout key) every N steps and at the end
      # of every epoch (0: only there); a run started again resumes from the newest one.
      checkpoint_every=1000,
      keep_checkpoints=2,
      # '' = random init; an export dir | a pre-training workdir | a Hugging Face dir | a TF1
      # checkpoint (electra_jax.io.weights.load); the same key as pre-training's.
      init_from=arg.init,
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  if arg.runlocal:
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.epochs = 1.0
    c.train.seq_len = 128 if squad else 64
    c.train.log_every = 5
    c.data.max_train_examples = 64
    c.data.max_eval_examples = 32
    c.data.test_splits = ''
  return c
