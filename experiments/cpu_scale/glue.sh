#!/bin/bash
# usage: glue.sh NAME INIT [overrides...]    (INIT: a pre-training run dir or export; '' = random init)
# Fine-tunes INIT on RTE, MRPC, STS-B and CoLA with 3 seeds each (the tiny recipe: lr 1e-3,
# layer-wise decay 0.8; each task's epochs; length 128; BERT uncased vocab), one run dir per
# task under $GLUE_DIR/NAME/ (default /work/exp/glue). A random-init control must be given the
# pre-trained model's shape as overrides (H128_SHAPE below). Rerunning resumes.
#   H128_SHAPE="--config.model.hidden_size=128 --config.model.num_layers=4 --config.model.num_heads=2
#     --config.model.intermediate_size=512 --config.model.embedding_size=128"
name=$1; init=$2; shift 2
cd "$(dirname "$0")/../.."   # the repository root
. ${VENV:-.venv}/bin/activate
DATA=${DATA:-${ELECTRA_JAX_DATA:?set DATA or ELECTRA_JAX_DATA to the public data root (corpus/, vocab/, glue/)}}
out=${GLUE_DIR:-/work/exp/glue}/$name
mkdir -p "$out"
# size=tiny / the vocab only for random init: a checkpoint brings its own shape and vocab
# (size= would have to match it); the tiny recipe's rate is given explicitly for both.
[ -z "$init" ] && shape=",size=tiny,vocab=$DATA/vocab/bert-base-uncased-vocab.txt" || shape=''
for task in ${TASKS:-rte mrpc stsb cola}; do
  python -m electra_jax.finetune \
    --config=configs/finetune.py:task=$task$shape,num_seeds=${SEEDS:-3} \
    --config.optimizer.learning_rate=1e-3 \
    --workdir="$out/$task" --noprogress --config.train.init_from="$init" \
    --config.data.data_dir=$DATA/glue --config.data.test_splits='' \
    "$@" >> "$out/$task.log" 2>&1 || echo "$task failed: see $out/$task.log"
done
