#!/bin/bash
# The CPU-scale efficiency study (experiments/efficiency/README.md).
cd /work/main
source .venv/bin/activate
export ELECTRA_JAX_CACHE=/work/runs/cache JAX_COMPILATION_CACHE_DIR=/work/runs/jax_cache
CFG="configs/ablations/efficiency.py:steps=1000,vocab=/work/runs/efficiency_vocab/enwiki00-4096-vocab.txt"
date -u +"start %FT%TZ"
python -m electra_jax.sweep --config=$CFG --workdir=/work/runs/efficiency --pretrain_only
date -u +"pretrained %FT%TZ"
python -m electra_jax.sweep --config=$CFG --workdir=/work/runs/efficiency
date -u +"end %FT%TZ"
