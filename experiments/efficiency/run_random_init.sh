#!/bin/bash
# Control for the efficiency study: the same fine-tuning from a random initialisation.
cd /work/main
source .venv/bin/activate
export JAX_COMPILATION_CACHE_DIR=/work/runs/jax_cache
for task in rte mrpc stsb sst2; do
  [ -f /work/runs/efficiency_random_init/$task/multiseed.json ] && continue
  python -m electra_jax.finetune --config=configs/finetune.py:task=$task,size=tiny \
    --config.num_seeds=3 --config.data.vocab=/work/runs/efficiency_vocab/enwiki00-4096-vocab.txt \
    --config.data.data_dir=${DATA:?set DATA to the public data root}/glue --config.data.max_train_examples=1500 \
    --config.train.epochs=3 --config.train.seq_len=64 --config.data.test_splits= \
    --workdir=/work/runs/efficiency_random_init/$task
done
date -u +"end %FT%TZ"
