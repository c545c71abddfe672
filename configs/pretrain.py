r"""ELECTRA pre-training: one config, sizes tiny / small / base / large.

Quickstart (2-core CPU, about 6 minutes, offline data that ships with Python):
  python -m electra_jax.main --config=configs/pretrain.py:tiny --workdir=runs/tiny

ELECTRA-Small as in the paper (1M steps, batch 128 x 128; 4 days on one V100,
GLUE dev ~79.9 after fine-tuning), on your own text and the BERT vocab:
  python -m electra_jax.main --config=configs/pretrain.py:size=small,vocab=bert \
    --config.data.vocab=/path/to/bert-base-uncased-vocab.txt \
    --config.data.source='/path/to/corpus/*.txt' --workdir=runs/small

Base (766k steps, batch 256 x 512) and Large (400k steps, batch 2048 x 512)
are sized for TPU pods / multi-GPU; see README "Scale out" (with
--config.train.grad_accum_steps=K a global batch is split into K microbatches
inside the step, for fewer accelerators). Add `,runlocal=True` to any size
for a CPU smoke run of the same code path. README "Pre-training" maps every
knob of the official configure_pretraining.py to its key here.

Arguments (`configs/pretrain.py:k=v,k=v`):
  size      tiny | small | base | large          (a bare word sets it)
  vocab     builtin (8192-token WordPiece trained on the offline corpus) | bert
            (BERT uncased, 30522 tokens; set --config.data.vocab to its path)
  objective electra (default) or a variant from electra_jax/pretrain/objectives.py
  runlocal  shrink batch, length and steps for a smoke run
"""

from electra_jax import configlib
import ml_collections

# Special-token ids of the two vocabularies we ship configs for.
VOCABS = {
    'builtin': dict(vocab_size=8192, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4),
    'bert': dict(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103),
}


def get_config(arg=None):
  arg = configlib.parse_arg(arg, lazy_field='size', size='tiny', vocab='', objective='electra',
                            runlocal=False)
  size = configlib.size_table(arg.size)
  vocab = arg.vocab or ('builtin' if arg.size == 'tiny' else 'bert')
  if vocab not in VOCABS:
    raise ValueError(f'unknown vocab {vocab!r}; expected one of {sorted(VOCABS)}')
  tokens = VOCABS[vocab]

  # Lazy references: max_predictions_per_seq follows seq_len and mask_prob when
  # either is overridden on the command line (official formula).
  seq_len = ml_collections.FieldReference(size['seq_len'])
  mask_prob = ml_collections.FieldReference(size['mask_prob'])

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.size = arg.size

  c.model = ml_collections.ConfigDict(dict(
      vocab_size=tokens['vocab_size'],
      embedding_size=size['embedding_size'],
      hidden_size=size['hidden_size'],
      num_layers=size['num_layers'],
      num_heads=size['num_heads'],
      intermediate_size=size['intermediate_size'],
      max_position_embeddings=512,
      type_vocab_size=2,
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      layer_norm_eps=1e-12,
      initializer_range=0.02,
      # Generator hidden size = round(fraction * hidden_size); its FFN is 4x
      # that and its heads max(1, hidden // 64), as in the official code.
      generator_fraction=size['generator_fraction'],
      # Generator depth = round(generator_layers * num_layers) (the official
      # `generator_layers`; 1.0 = as deep as the discriminator, as in the paper).
      generator_layers=1.0,
      # Explicit generator sizes, for imported checkpoints whose generator does
      # not follow the rules above (0 = derived from generator_fraction / _layers).
      generator_hidden_size=0,
      generator_num_heads=0,
      generator_intermediate_size=0,
      generator_num_layers=0,
      # none | embeddings (official default) | all (generator = discriminator) | gdes
      sharing='embeddings',
      dtype='float32',  # compute dtype; params stay float32
      # Matmul operand dtype ('' = dtype). 'bfloat16' with dtype float32: mixed
      # precision, bf16 matmuls with float32 accumulation, everything else float32
      # (2x the float32 matmul rate on AVX512-BF16 CPUs and on GPUs).
      matmul_dtype='',
      # einsum (explicit softmax, attention dropout) | xla | cudnn: the last two
      # call jax.nn.dot_product_attention, which has no attention dropout.
      attention_impl='einsum',
      remat=False,  # rematerialise each layer in the backward pass
      # GELU, LayerNorm and dropout recomputed in the backward pass (fine-tuning's default):
      # a third less step memory for ~5% more time per ELECTRA-Small step on CPU
      # (benchmarks/results/memory_session8.md). Pre-training keeps them, for speed.
      recompute_activations=False,
      # masked: the generator's LM head only at the masked positions (official);
      # full: at every position (for benchmarks / the All-Tokens MLM ablation).
      generator_head='masked',
      # Extra heads some objective variants need (electra_jax/pretrain/variants.py).
      discriminator_mlm_head=arg.objective in ('replace_mlm', 'all_tokens_mlm'),
      generator_baseline_head=arg.objective == 'adversarial',
  ))

  c.tokens = ml_collections.ConfigDict(
      {k: v for k, v in tokens.items() if k != 'vocab_size'})

  c.objective = ml_collections.ConfigDict(dict(
      name=arg.objective,
      mask_prob=mask_prob,
      # int((mask_prob + 0.005) * seq_len): 19 at 128 / 0.15, 79 at 512 / 0.15.
      max_predictions_per_seq=((mask_prob + 0.005) * seq_len).to_int(),
      # Of the chosen positions: this share becomes [MASK], `random_token_prob`
      # a random token, the rest keep the original. Official ELECTRA: 0.85 / 0.
      # BERT's 80/10/10: 0.8 / 0.1.
      mask_token_prob=0.85,
      random_token_prob=0.0,
      temperature=1.0,
      disallow_correct=False,
      gen_weight=1.0,
      disc_weight=50.0,
      # two_stage only: generator-only MLM steps before the discriminator starts.
      stage_steps=0,
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=size['learning_rate'],
      warmup_steps=size['warmup_steps'],
      decay_power=1.0,  # polynomial decay to 0 over num_steps; 1 = linear
      weight_decay=0.01,  # not on LayerNorm or biases
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      bias_correction=False,  # the official AdamWeightDecay has none
      clip_norm=1.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=size['batch_size'],  # global, over all hosts
      # Split each global batch into this many microbatches inside the step and sum
      # their gradients before one update: the same step in less accelerator memory
      # (batch_size must be a multiple of grad_accum_steps x the mesh's batch shards).
      grad_accum_steps=1,
      seq_len=seq_len,
      num_steps=size['num_steps'],
      log_every=100,
      eval_every=5000,
      eval_batches=20,
      # The official eval_batch_size is 128 at every size (Base and Large too).
      eval_batch_size=min(128, size['batch_size']),
      checkpoint_every=1000,
      keep_checkpoints=3,
      nan_policy='stop',  # stop | skip (skip the update, keep going)
      # skip: the run stops (as with stop) once more than this share of the last
      # `skip_window` steps (or of all steps, in a shorter run) was skipped.
      max_skipped_fraction=0.1,
      skip_window=100,
      # Continue pre-training from these weights when the workdir has no checkpoint:
      # an electra_jax export dir, an HF dir with discriminator/ + generator/, or
      # a TF1 ELECTRA checkpoint ('' = random init).
      init_from='',
  ))

  # Device mesh: batch is split over data x fsdp; fsdp > 1 also shards the
  # parameters and optimizer state (FSDP). -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.data = ml_collections.ConfigDict(dict(
      # builtin:python-docs | file glob or directory | tfds:NAME[/CONFIG]:FEATURE
      source='builtin:python-docs' if vocab == 'builtin' else '',
      vocab='builtin' if vocab == 'builtin' else '',  # path to vocab.txt, or builtin
      lowercase=True,
      eval_fraction=0.01,
      num_shards=8,
      num_workers=2,
      tfds_data_dir='',
      # The data build stops with an error when more than this share of the lines is not
      # valid UTF-8, or of the tokens is cut away to fit train.seq_len (a line far longer
      # than an example), and when it yields fewer examples than one global batch.
      max_undecodable_fraction=0.5,
      max_truncated_fraction=0.5,
  ))

  if arg.size == 'tiny':
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    # ~400 held-out sequences (5% of the builtin corpus): standard errors of the held-out
    # AUC and accuracies stay below 0.01 (pretrain/evaluation.py prints them).
    c.train.eval_batches = 12
    c.data.eval_fraction = 0.05
  if arg.runlocal:
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.seq_len = 64
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.optimizer.warmup_steps = 5
  return c
