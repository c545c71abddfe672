#!/bin/bash
# usage: [CFG=tiny,objective=...] run.sh NAME [overrides...]
name=$1; shift
cd "$(dirname "$0")/../.."   # the repository root
. .venv/bin/activate
python -m electra_jax.main --config=configs/pretrain.py:${CFG:-tiny} --workdir=${QR_DIR:-/work/exp/qr}/$name --noprogress "$@" > ${QR_DIR:-/work/exp/qr}/$name.log 2>&1
