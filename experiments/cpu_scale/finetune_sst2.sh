#!/bin/bash
# usage: finetune_sst2.sh NAME INIT [overrides...]   (INIT: a pre-training run dir or export, '' = random)
# SST-2 at size tiny: the first 4000 training sentences, 3 epochs, length 64, full dev set.
name=$1; init=$2; shift 2
cd "$(dirname "$0")/../.."   # the repository root
. ${VENV:-.venv}/bin/activate
DATA=${DATA:-${ELECTRA_JAX_DATA:?set DATA or ELECTRA_JAX_DATA to the public data root (corpus/, vocab/, glue/)}}
# size=tiny / the vocab only for random init: a checkpoint of another shape brings its own
# (size= would have to match it); the tiny recipe's rate is given explicitly for both.
[ -z "$init" ] && shape=",size=tiny,vocab=${VOCAB:-builtin}" || shape=''
python -m electra_jax.finetune --config=configs/finetune.py:task=sst2$shape --config.optimizer.learning_rate=1e-3 \
  --workdir=${MC_DIR:-/work/exp/mc}/$name --noprogress \
  --config.train.init_from="$init" --config.data.data_dir=$DATA/glue \
  --config.data.max_train_examples=4000 --config.train.seq_len=64 --config.data.test_splits='' \
  "$@" >> ${MC_DIR:-/work/exp/mc}/$name.log 2>&1
