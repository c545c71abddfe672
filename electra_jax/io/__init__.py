"""Checkpoint interop: Hugging Face and original TF1 ELECTRA formats (see electra_jax.io.convert).

  common.py       tree kinds, expected shapes, rename-table gather / scatter, pair sharing
  huggingface.py  HF directories in and out (config.json, safetensors, tokenizer files)
  tf1.py          google-research/electra TF1 checkpoints in
"""
