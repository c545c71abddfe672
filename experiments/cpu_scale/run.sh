#!/bin/bash
# usage: [CFG=tiny,vocab=bert,objective=...] run.sh NAME [overrides...]
# Pre-trains on the shared Wikipedia sample with the BERT uncased vocab; the run
# directory is $CS_DIR/NAME (default /work/exp/cs). Rerunning the same command resumes.
name=$1; shift
cd "$(dirname "$0")/../.."   # the repository root
. ${VENV:-.venv}/bin/activate
DATA=${DATA:-${ELECTRA_JAX_DATA:?set DATA or ELECTRA_JAX_DATA to the public data root (corpus/, vocab/, glue/)}}
python -m electra_jax.main --config=configs/pretrain.py:${CFG:-tiny,vocab=bert} \
  --workdir=${CS_DIR:-/work/exp/cs}/$name --noprogress \
  --config.data.source="$DATA/corpus/enwiki-2015-wikiextractor-sample/wiki_en_*.txt" \
  --config.data.vocab="$DATA/vocab/bert-base-uncased-vocab.txt" \
  "$@" >> ${CS_DIR:-/work/exp/cs}/$name.log 2>&1
