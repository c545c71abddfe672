#!/bin/bash
# Second fine-tuning pass: SST-2 added to FINETUNE after RTE/MRPC/STS-B had run. The trial-level
# DONE markers are removed so the launcher revisits each trial; finished tasks (finetune_<task>.DONE)
# and pre-training (pretrain.DONE) are skipped, only SST-2 runs.
cd /work/main
source .venv/bin/activate
export ELECTRA_JAX_CACHE=/work/runs/cache JAX_COMPILATION_CACHE_DIR=/work/runs/jax_cache
CFG="configs/ablations/efficiency.py:steps=1000,vocab=/work/runs/efficiency_vocab/enwiki00-4096-vocab.txt"
while kill -0 $(cat /work/runs/efficiency.pid) 2>/dev/null; do sleep 10; done
rm -f /work/runs/efficiency/*/DONE
date -u +"sst2 start %FT%TZ"
python -m electra_jax.sweep --config=$CFG --workdir=/work/runs/efficiency
date -u +"sst2 end %FT%TZ"
