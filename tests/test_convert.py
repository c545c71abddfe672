"""Interop with Hugging Face and original TF1 ELECTRA checkpoints, both directions.

Reference: transformers' PyTorch ELECTRA classes with random weights (every
parameter perturbed, so a misplaced bias or LayerNorm cannot hide), offline.
"""

import json
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from electra_jax.io import convert
from electra_jax.io import common
from electra_jax.io import weights
from electra_jax.models import electra

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TOL = 1e-5
# Discriminator sizes; the generator follows ModelConfig's derivation from `frac`.
CONFIGS = {
    # embedding != hidden (both towers project), 1 layer, generator hidden == embedding
    'proj_1layer': dict(vocab=61, emb=16, hidden=32, layers=1, heads=2, inter=64, frac=0.5,
                        types=2),
    # 3 layers, 4 heads vs the generator's 1, generator projects too
    'deep_4heads': dict(vocab=50, emb=24, hidden=128, layers=3, heads=4, inter=96, frac=0.5,
                        types=3),
    # embedding == hidden (no projection), generator as large as the discriminator
    'noproj_full': dict(vocab=40, emb=48, hidden=48, layers=2, heads=3, inter=80, frac=1.0,
                        types=2),
}
MAX_POS = 16


def hf_configs(spec):
  disc = transformers.ElectraConfig(
      vocab_size=spec['vocab'], embedding_size=spec['emb'], hidden_size=spec['hidden'],
      num_hidden_layers=spec['layers'], num_attention_heads=spec['heads'],
      intermediate_size=spec['inter'], max_position_embeddings=MAX_POS,
      type_vocab_size=spec['types'], hidden_act='gelu')
  gh = int(round(spec['hidden'] * spec['frac']))
  gen_heads, gen_inter = ((spec['heads'], spec['inter']) if spec['frac'] == 1.0
                          else (max(1, gh // 64), 4 * gh))
  gen = transformers.ElectraConfig(**{**disc.to_dict(), 'hidden_size': gh,
                                      'num_attention_heads': gen_heads,
                                      'intermediate_size': gen_inter,
                                      'num_hidden_layers': gen_layers(spec)})
  return disc, gen


def gen_layers(spec) -> int:
  return int(round(spec['layers'] * spec.get('gen_layers', 1.0)))


def randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.1
      p.copy_(noise + (1.0 if name.endswith('LayerNorm.weight') else 0.0))
  return model.eval()


def make_hf_pair(spec, tmp_path, *, tie=True, seed=0):
  """Random ElectraForPreTraining + ElectraForMaskedLM saved under tmp_path/{disc,gen}."""
  torch.manual_seed(seed)
  dcfg, gcfg = hf_configs(spec)
  disc = randomize(transformers.ElectraForPreTraining(dcfg), seed)
  gen = randomize(transformers.ElectraForMaskedLM(gcfg), seed + 1)
  if tie:  # google/electra-*-generator ships a copy of the discriminator's embeddings
    with torch.no_grad():
      for name, p in disc.electra.embeddings.named_parameters():
        dict(gen.electra.embeddings.named_parameters())[name].copy_(p)
  disc.save_pretrained(tmp_path / 'disc')
  gen.save_pretrained(tmp_path / 'gen')
  return disc, gen


def inputs(spec, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(0, spec['vocab'], (3, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0  # padding
  mask[2, 8:] = 0
  seg = np.zeros_like(ids)
  seg[:, 4:] = spec['types'] - 1
  return ids, mask, seg


def torch_logits(model, ids, mask, seg):
  with torch.no_grad():
    out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(seg, dtype=torch.long))
  return (out.logits if hasattr(out, 'logits') else out.last_hidden_state).numpy()


def ours(conv, method, ids, mask, seg):
  model = electra.Pretrainer(conv.model_config)
  extra = (None,) if method == 'generator_logits' else ()
  fn = jax.jit(lambda p, *a: model.apply({'params': p}, *a, *extra, True, method=method))
  return np.asarray(fn(conv.params, ids, mask, seg))


def both_logits(conv, ids, mask, seg):
  """(generator logits [B, L, V] at every position, discriminator logits [B, L]): one compile."""
  model = electra.Pretrainer(conv.model_config)
  fn = jax.jit(lambda p, *a: model.apply({'params': p}, *a, None, True))
  return tuple(np.asarray(x) for x in fn(conv.params, ids, mask, seg))


def body_hidden(cfg, params, ids, mask, seg):
  """ElectraModel hidden states [B, L, H], what fine-tuning builds on."""
  model = electra.ElectraModel(cfg)
  return np.asarray(jax.jit(lambda p, *a: model.apply({'params': p}, *a, True))(params, ids, mask,
                                                                                 seg))


def assert_close(a, b, mask):
  """Within TOL at real tokens (where HF and we agree by construction) and at pads."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  np.testing.assert_allclose(a[mask == 1], b[mask == 1], atol=TOL, rtol=TOL)
  np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL)


# ----------------------------------------------------------------------------- HF import


@pytest.mark.parametrize('name', list(CONFIGS))
def test_hf_import_matches_transformers(name, tmp_path):
  spec = CONFIGS[name]
  disc, gen = make_hf_pair(spec, tmp_path)
  ids, mask, seg = inputs(spec)
  pair = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  assert pair.kind == 'pretrainer' and pair.model['sharing'] == 'embeddings'
  assert pair.model['generator_fraction'] == pytest.approx(spec['frac'])
  gen_logits, disc_logits = both_logits(pair, ids, mask, seg)
  assert_close(gen_logits, torch_logits(gen, ids, mask, seg), mask)
  assert_close(disc_logits, torch_logits(disc, ids, mask, seg), mask)

  # Each directory alone is the matching cut of the pair.
  d = weights.import_hf(tmp_path / 'disc')
  g = weights.import_hf(tmp_path / 'gen')
  assert d.kind == 'discriminator' and g.kind == 'generator'
  for single in (d, g):
    cut = common.single_tower(pair, single.kind)
    assert cut.model == single.model and common.same_arrays(cut.params, single.params)


def test_single_tower_imports_run(tmp_path):
  """A lone generator (its own tower config) and a lone discriminator body run as in HF."""
  spec = CONFIGS['deep_4heads']
  disc, gen = make_hf_pair(spec, tmp_path)
  ids, mask, seg = inputs(spec)
  g = weights.import_hf(tmp_path / 'gen')
  assert_close(ours(g, 'generator_logits', ids, mask, seg), torch_logits(gen, ids, mask, seg),
               mask)
  # Fine-tuning starts from the body: ElectraModel on imported params = HF's encoder.
  d = weights.import_hf(tmp_path / 'disc')
  body = body_hidden(d.model_config, convert.electra_model_params(d), ids, mask, seg)
  assert_close(body, torch_logits(disc.electra, ids, mask, seg), mask)


def test_hf_pair_sharing_follows_weights(tmp_path):
  spec = CONFIGS['proj_1layer']
  make_hf_pair(spec, tmp_path, tie=False)
  pair = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  assert pair.model['sharing'] == 'none'
  assert {'generator_embeddings', 'discriminator_embeddings'} <= set(pair.params)

  # A generator that is the discriminator (same weights) -> sharing 'all'.
  spec = CONFIGS['noproj_full']
  dcfg, _ = hf_configs(spec)
  disc = randomize(transformers.ElectraForPreTraining(dcfg), 3)
  gen = randomize(transformers.ElectraForMaskedLM(dcfg), 4)
  gen.electra.load_state_dict(disc.electra.state_dict())
  disc.save_pretrained(tmp_path / 'd2')
  gen.save_pretrained(tmp_path / 'g2')
  pair = weights.import_hf(tmp_path / 'd2', tmp_path / 'g2')
  assert pair.model['sharing'] == 'all' and 'generator' not in pair.params
  ids, mask, seg = inputs(spec)
  assert_close(ours(pair, 'generator_logits', ids, mask, seg), torch_logits(gen, ids, mask, seg),
               mask)


def test_generator_off_the_derivation_rule(tmp_path):
  """HF pairs whose generator heads / FFN are hand-picked need explicit generator sizes."""
  if not common._has_explicit_generator():  # pylint: disable=protected-access
    pytest.skip('ModelConfig has no explicit generator size fields (see fit_generator)')
  spec = CONFIGS['proj_1layer']
  dcfg, _ = hf_configs(spec)
  gcfg = transformers.ElectraConfig(**{**dcfg.to_dict(), 'hidden_size': 16,
                                       'num_attention_heads': 2, 'intermediate_size': 48})
  disc = randomize(transformers.ElectraForPreTraining(dcfg), 6)
  gen = randomize(transformers.ElectraForMaskedLM(gcfg), 7)
  disc.save_pretrained(tmp_path / 'disc')
  gen.save_pretrained(tmp_path / 'gen')
  pair = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  gen_cfg = pair.model_config.generator
  assert (gen_cfg.hidden_size, gen_cfg.num_heads, gen_cfg.intermediate_size) == (16, 2, 48)
  ids, mask, seg = inputs(spec)
  gen_logits, disc_logits = both_logits(pair, ids, mask, seg)
  assert_close(gen_logits, torch_logits(gen, ids, mask, seg), mask)
  assert_close(disc_logits, torch_logits(disc, ids, mask, seg), mask)
  convert.export_hf(pair, tmp_path / 'out')
  back = weights.import_hf(tmp_path / 'out')
  assert back.model == pair.model and common.same_arrays(back.params, pair.params)


def test_hf_pytorch_bin_with_tied_head_and_buffers(tmp_path):
  """Older hub files: pytorch_model.bin with the tied lm head and position_ids stored."""
  spec = CONFIGS['proj_1layer']
  _, gen = make_hf_pair(spec, tmp_path)
  sd = dict(gen.state_dict())
  sd['generator_lm_head.weight'] = gen.electra.embeddings.word_embeddings.weight.detach().clone()
  sd['electra.embeddings.position_ids'] = torch.arange(MAX_POS)[None]
  (tmp_path / 'bin').mkdir()
  torch.save(sd, tmp_path / 'bin' / 'pytorch_model.bin')
  (tmp_path / 'bin' / 'config.json').write_text((tmp_path / 'gen' / 'config.json').read_text())
  a = weights.import_hf(tmp_path / 'bin')
  b = weights.import_hf(tmp_path / 'gen')
  assert common.same_arrays(a.params, b.params)


# ----------------------------------------------------------------------------- errors


def _edit_safetensors(path, fn):
  from safetensors.numpy import load_file, save_file
  sd = load_file(str(path))
  fn(sd)
  save_file(sd, str(path), metadata={'format': 'pt'})


def _edit_config(path, **changes):
  cfg = json.loads(path.read_text())
  cfg.update(changes)
  path.write_text(json.dumps(cfg))


def test_mismatches_name_parameter_and_shapes(tmp_path):
  spec = CONFIGS['proj_1layer']
  make_hf_pair(spec, tmp_path)
  word = 'electra.embeddings.word_embeddings.weight'

  _edit_config(tmp_path / 'disc' / 'config.json', vocab_size=70)
  with pytest.raises(ValueError, match=rf'{word} has shape \(61, 16\).*\(70, 16\).*vocab_size=70'):
    weights.import_hf(tmp_path / 'disc')
  _edit_config(tmp_path / 'disc' / 'config.json', vocab_size=61, embedding_size=20)
  with pytest.raises(ValueError,
                     match=rf'{word} has shape \(61, 16\).*\(61, 20\).*embedding_size=20'):
    weights.import_hf(tmp_path / 'disc')
  _edit_config(tmp_path / 'disc' / 'config.json', embedding_size=16)

  shutil.copytree(tmp_path / 'disc', tmp_path / 'holey')
  st = tmp_path / 'holey' / 'model.safetensors'
  _edit_safetensors(st, lambda sd: sd.pop('electra.encoder.layer.0.output.dense.bias'))
  with pytest.raises(ValueError, match=r'missing.*electra\.encoder\.layer\.0\.output\.dense\.bias '
                                       r'\(shape \(32,\)\)'):
    weights.import_hf(tmp_path / 'holey')

  st = tmp_path / 'gen' / 'model.safetensors'
  _edit_safetensors(st, lambda sd: sd.update(extra=np.zeros((2, 3), np.float32)))
  with pytest.raises(ValueError, match=r'unexpected.*extra \(shape \(2, 3\)\)'):
    weights.import_hf(tmp_path / 'gen')
  assert weights.import_hf(tmp_path / 'gen', strict=False).kind == 'generator'

  # The pair must agree, and the generator must fit ModelConfig's derivation.
  _edit_config(tmp_path / 'gen' / 'config.json', vocab_size=62)
  _edit_safetensors(st, lambda sd: sd.update(
      {k: np.zeros((62,) + sd[k].shape[1:], np.float32)
       for k in ('electra.embeddings.word_embeddings.weight', 'generator_lm_head.bias')}))
  with pytest.raises(ValueError, match='generator vocab_size=62 but discriminator vocab_size=61'):
    weights.import_hf(tmp_path / 'disc', tmp_path / 'gen', strict=False)
  fit = lambda **gen: common.fit_generator(  # noqa: E731
      hidden=32, num_heads=2, intermediate=64, num_layers=1, **gen,
      base=common.model_dict(vocab_size=61, embedding_size=16, hidden_size=32, num_layers=1,
                             num_heads=2, intermediate_size=64))
  assert fit(gen_hidden=16, gen_heads=1, gen_intermediate=64, gen_layers=1) == {
      'generator_fraction': 0.5, 'generator_layers': 1.0}
  # Another depth is model.generator_layers (official: a fraction of the discriminator's).
  assert fit(gen_hidden=16, gen_heads=1, gen_intermediate=64, gen_layers=2) == {
      'generator_fraction': 0.5, 'generator_layers': 2.0}
  off_rule = dict(gen_hidden=16, gen_heads=2, gen_intermediate=48, gen_layers=1)
  if common._has_explicit_generator():  # pylint: disable=protected-access
    assert fit(**off_rule)['generator_num_heads'] == 2
  else:
    with pytest.raises(ValueError, match=r"generator sizes \{'hidden': 16, 'heads': 2"):
      fit(**off_rule)


# ----------------------------------------------------------------------------- export


def random_pretrainer(spec, sharing, seed=0):
  """Random electra_jax Pretrainer params (biases and LayerNorms random too: nothing hides)."""
  model = common.model_dict(
      vocab_size=spec['vocab'], embedding_size=spec['emb'], hidden_size=spec['hidden'],
      num_layers=spec['layers'], num_heads=spec['heads'], intermediate_size=spec['inter'],
      max_position_embeddings=MAX_POS, type_vocab_size=spec['types'],
      generator_fraction=spec['frac'], generator_layers=spec.get('gen_layers', 1.0),
      sharing=sharing)
  shapes = common.expected_shapes(electra.ModelConfig.from_config(model), 'pretrainer')
  rs = np.random.RandomState(seed)
  flat = {p: (rs.normal(0, 0.1, shape) + (p[-1] == 'scale')).astype(np.float32)
          for p, shape in shapes.items()}
  return common.Converted('pretrainer', model, common.unflatten(flat))


def load_hf(cls, path):
  model, info = getattr(transformers, cls).from_pretrained(
      path, output_loading_info=True, attn_implementation='eager')
  assert {k: v for k, v in info.items() if v} == {}, info
  return model.eval()


@pytest.mark.parametrize('name,sharing', [('proj_1layer', 'embeddings'), ('deep_4heads', 'none'),
                                          ('noproj_full', 'gdes')])
def test_export_loads_in_transformers_and_matches(name, sharing, tmp_path):
  spec = CONFIGS[name]
  conv = random_pretrainer(spec, sharing)
  ids, mask, seg = inputs(spec, seed=1)
  written = convert.export_hf(conv, tmp_path)
  disc = load_hf('ElectraForPreTraining', written['discriminator'])
  gen = load_hf('ElectraForMaskedLM', written['generator'])
  gen_logits, disc_logits = both_logits(conv, ids, mask, seg)
  assert_close(torch_logits(disc, ids, mask, seg), disc_logits, mask)
  assert_close(torch_logits(gen, ids, mask, seg), gen_logits, mask)
  if sharing != 'gdes':
    return
  # GDES: the exported discriminator embeddings are the generator's plus the deltas.
  convert.export_hf(conv, tmp_path / 'body', 'ElectraModel')
  body = load_hf('ElectraModel', tmp_path / 'body')
  cfg = conv.model_config
  dp = electra.discriminator_params(conv.params, sharing)
  assert_close(torch_logits(body, ids, mask, seg), body_hidden(cfg, dp, ids, mask, seg), mask)


@pytest.mark.parametrize('sharing', ['embeddings', 'none', 'all'])
def test_round_trip_is_exact(sharing, tmp_path):
  spec = CONFIGS['noproj_full'] if sharing == 'all' else CONFIGS['deep_4heads']
  conv = random_pretrainer(spec, sharing, seed=2)
  convert.export_hf(conv, tmp_path / 'hf')
  back = weights.import_hf(tmp_path / 'hf')  # holds discriminator/ and generator/
  assert back.kind == 'pretrainer' and back.model == conv.model
  assert common.same_arrays(back.params, conv.params)
  # Through the electra_jax export format as well.
  convert.save_electra_jax(back, tmp_path / 'ej')
  again = weights.load_electra_jax(tmp_path / 'ej')
  assert again.model == conv.model and common.same_arrays(again.params, conv.params)
  assert common.same_arrays(weights.load_electra_jax(tmp_path / 'ej', 'model').params,
                            electra.discriminator_params(conv.params, sharing))


def test_cli_round_trip_with_tokenizer(tmp_path):
  spec = CONFIGS['proj_1layer']
  conv = random_pretrainer(spec, 'embeddings', seed=3)
  specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  words = ['the', 'cat', 'sat', 'on', 'mat', '##s', 'a', 'dog']
  vocab = specials + words + [f'w{i}' for i in range(spec['vocab'] - 13)]
  (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  convert.save_electra_jax(conv, tmp_path / 'ej')
  convert.convert('electra_jax', 'hf', tmp_path / 'ej', tmp_path / 'hf',
                  vocab=str(tmp_path / 'vocab.txt'))
  for tower in ('discriminator', 'generator'):
    files = {p.name for p in (tmp_path / 'hf' / tower).iterdir()}
    assert {'config.json', 'model.safetensors', 'vocab.txt', 'tokenizer_config.json',
            'special_tokens_map.json'} <= files
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf' / 'discriminator')
  assert tok('The cats sat')['input_ids'] == [2, 5, 6, 10, 7, 3]
  summary = convert.convert('hf', 'electra_jax', tmp_path / 'hf', tmp_path / 'ej2')
  assert summary['kind'] == 'pretrainer' and summary['sharing'] == 'embeddings'
  back = weights.load_electra_jax(tmp_path / 'ej2')
  assert common.same_arrays(back.params, conv.params)
  assert back.vocab == vocab and back.tokens == dict(pad_id=0, unk_id=1, cls_id=2, sep_id=3,
                                                     mask_id=4)
  r = subprocess.run([sys.executable, '-m', 'electra_jax.io.convert', '--from=hf', '--to=hf',
                      'a', 'b'], capture_output=True, text=True, timeout=120)
  assert r.returncode != 0


# ----------------------------------------------------------------------------- TF1


def hf_to_tf1(name: str, tower: str, untied: bool) -> tuple:
  """Official TF1 name of an HF tensor (the reverse of transformers' old TF loader)."""
  if name == 'generator_lm_head.bias':
    return 'generator_predictions/output_bias', False
  n = name.removeprefix('electra.').replace('layer.', 'layer_').replace('.', '/')
  n = n.replace('LayerNorm/weight', 'LayerNorm/gamma').replace('LayerNorm/bias', 'LayerNorm/beta')
  n = n.replace('_embeddings/weight', '_embeddings').replace('dense_prediction', 'dense_1')
  transposed = n.endswith('/weight')
  if transposed:
    n = n.removesuffix('weight') + 'kernel'
  if n.startswith('embeddings/'):
    n = ('generator/' if untied and tower == 'generator' else 'electra/') + n
  elif n.startswith(('encoder/', 'embeddings_project/')):
    n = f'{tower}/{n}'
  return n, transposed


def write_tf1(path, named_arrays: dict):
  """A TF1 checkpoint with these variables plus Adam slots and global_step."""
  tf = pytest.importorskip('tensorflow')
  graph = tf.Graph()
  with graph.as_default():
    for name, value in named_arrays.items():
      tf.compat.v1.get_variable(name, initializer=tf.constant(value))
      for slot in ('adam_m', 'adam_v'):
        tf.compat.v1.get_variable(f'{name}/{slot}', initializer=tf.constant(value * 0 + 1))
    tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, str(path / 'model.ckpt'), global_step=1000)


@pytest.mark.parametrize('name,tie', [('proj_1layer', True), ('deep_4heads', False)])
def test_tf1_checkpoint_matches_hf_import(name, tie, tmp_path):
  spec = CONFIGS[name]
  disc, gen = make_hf_pair(spec, tmp_path, tie=tie)
  named = {}
  for tower, model in (('electra', disc), ('generator', gen)):
    for k, v in model.state_dict().items():
      if k == 'generator_lm_head.weight' or (tower == 'generator' and tie and '.embeddings.' in k):
        continue  # tied to the word embeddings; one shared embedding copy
      tf_name, transposed = hf_to_tf1(k, tower, untied=not tie)
      named[tf_name] = v.numpy().T.copy() if transposed else v.numpy()
  (tmp_path / 'tf1').mkdir()
  write_tf1(tmp_path / 'tf1', named)
  got = weights.import_tf1(tmp_path / 'tf1', num_heads=spec['heads'])
  want = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  assert got.kind == 'pretrainer' and got.model == want.model
  assert got.model['sharing'] == ('embeddings' if tie else 'none')
  assert common.same_arrays(got.params, want.params)
  convert.convert('tf1', 'hf', tmp_path / 'tf1', tmp_path / 'hf', num_heads=spec['heads'])
  assert common.same_arrays(weights.import_hf(tmp_path / 'hf').params, want.params)

  # Discriminator-only checkpoint (what fine-tuning releases look like).
  (tmp_path / 'tf1d').mkdir()
  write_tf1(tmp_path / 'tf1d', {k: v for k, v in named.items()
                                if k.startswith(('electra/', 'discriminator_predictions/'))})
  d = weights.import_tf1(tmp_path / 'tf1d' / 'model.ckpt-1000', num_heads=spec['heads'])
  assert d.kind == 'discriminator'
  assert common.same_arrays(d.params, weights.import_hf(tmp_path / 'disc').params)
  v = spec['vocab']
  with pytest.raises(ValueError, match=rf'electra/embeddings/word_embeddings has shape \({v}, '
                                       rf'{spec["emb"]}\).*\({v}, 8\).*embedding_size=8'):
    weights.import_tf1(tmp_path / 'tf1d', num_heads=spec['heads'], embedding_size=8)


# A generator half as deep as its discriminator (the official generator_layers=0.5).
SHALLOW_GEN = dict(CONFIGS['deep_4heads'], layers=2, gen_layers=0.5)


def test_generator_layers_through_hf_and_tf1(tmp_path):
  """A shallower generator: HF export (num_hidden_layers) loads in transformers with equal
  logits and imports back exactly; a TF1 checkpoint of it imports as the HF pair does."""
  conv = random_pretrainer(SHALLOW_GEN, 'embeddings', seed=3)
  assert conv.model_config.generator.num_layers == 1
  written = convert.export_hf(conv, tmp_path / 'hf')
  gen = load_hf('ElectraForMaskedLM', written['generator'])
  assert gen.config.num_hidden_layers == 1
  ids, mask, seg = inputs(SHALLOW_GEN, seed=1)
  assert_close(torch_logits(gen, ids, mask, seg), both_logits(conv, ids, mask, seg)[0], mask)
  back = weights.import_hf(tmp_path / 'hf')
  assert back.model == conv.model and back.model['generator_layers'] == 0.5
  assert common.same_arrays(back.params, conv.params)

  disc, gen = make_hf_pair(SHALLOW_GEN, tmp_path, seed=4)
  named = {}
  for tower, model in (('electra', disc), ('generator', gen)):
    for k, v in model.state_dict().items():
      if k == 'generator_lm_head.weight' or (tower == 'generator' and '.embeddings.' in k):
        continue
      tf_name, transposed = hf_to_tf1(k, tower, untied=False)
      named[tf_name] = v.numpy().T.copy() if transposed else v.numpy()
  (tmp_path / 'tf1').mkdir()
  write_tf1(tmp_path / 'tf1', named)
  got = weights.import_tf1(tmp_path / 'tf1', num_heads=SHALLOW_GEN['heads'])
  want = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  assert got.model == want.model and got.model['generator_layers'] == 0.5
  assert common.same_arrays(got.params, want.params)


# ----------------------------------------------------------------------------- training


def pretrain_config_for(conv):
  """The tiny test config with config.model sized like the imported pair."""
  from conftest import tiny_config
  config = tiny_config()
  config.model.update({k: conv.model[k] for k in weights.STRUCTURE})
  config.model.layer_norm_eps = conv.model['layer_norm_eps']
  config.tokens.update(pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
  config.train.seq_len = MAX_POS
  config.objective.max_predictions_per_seq = 3
  return config


def test_continued_pretraining_from_import(tmp_path):
  from electra_jax import sharding
  from electra_jax.pretrain import loop
  spec = CONFIGS['proj_1layer']
  make_hf_pair(spec, tmp_path)
  pair = weights.import_hf(tmp_path / 'disc', tmp_path / 'gen')
  config = pretrain_config_for(pair)
  mesh = sharding.make_mesh(config.mesh)
  model = loop.build_model(config)
  tx, schedule = loop.build_optimizer(config)
  state, shardings = loop.init_train_state(config, model, tx, mesh, pair)
  assert common.same_arrays(common.to_numpy(state.params), pair.params)
  step = loop.make_train_step(config, model, tx, schedule, mesh, shardings)
  rs = np.random.RandomState(0)
  ids = rs.randint(5, spec['vocab'], (config.train.batch_size, MAX_POS)).astype(np.int32)
  batch = {'input_ids': ids, 'input_mask': np.ones_like(ids), 'segment_ids': np.zeros_like(ids)}
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  for _ in range(2):  # step 0 has learning rate 0 (warmup)
    state, metrics = step(state, batch, jax.random.key(0))
  assert int(state.step) == 2 and np.isfinite(float(metrics['loss']))
  assert float(metrics['grad_norm']) > 0
  trained = convert.wrap(state.params, config.model)
  assert trained.kind == 'pretrainer' and not common.same_arrays(trained.params, pair.params)
  convert.export_hf(trained, tmp_path / 'out')  # and back out to Hugging Face
  assert common.same_arrays(weights.import_hf(tmp_path / 'out').params, trained.params)

  bad = dict(config.model)
  bad['vocab_size'] = 99
  with pytest.raises(ValueError, match="vocab_size: checkpoint 61, config 99"):
    weights.check_compatible(pair, bad)


@pytest.mark.slow
def test_pretraining_workdir_exports_to_hf(tmp_path):
  """A run's latest orbax checkpoint -> HF pair (CLI) -> the same weights."""
  from electra_jax.io import checkpoint
  from electra_jax import sharding
  from electra_jax.pretrain import loop
  conv = random_pretrainer(CONFIGS['proj_1layer'], 'none', seed=5)
  config = pretrain_config_for(conv)
  mesh = sharding.make_mesh(config.mesh)
  model = loop.build_model(config)
  tx, _ = loop.build_optimizer(config)
  state, _ = loop.init_train_state(config, model, tx, mesh, conv)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json())
  ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False,
                                 abstract_state=loop.abstract_train_state(config, model, tx, mesh))
  ckpt.save(0, state, {}, jax.random.key(0))
  ckpt.close()
  convert.convert('electra_jax', 'hf', workdir, tmp_path / 'out')
  back = weights.import_hf(tmp_path / 'out')
  assert back.model == conv.model and common.same_arrays(back.params, conv.params)


def test_finetuning_starts_from_hf_weights(tmp_path):
  """electra_jax.io.weights.load (fine-tuning's loader) reads an HF dir through interop."""
  pretrained = pytest.importorskip('electra_jax.io.weights')
  spec = CONFIGS['deep_4heads']
  disc, _ = make_hf_pair(spec, tmp_path)
  ckpt = pretrained.load(str(tmp_path / 'disc'))
  assert set(ckpt.params) == {'embeddings', 'discriminator'}  # the head is dropped
  assert common.same_arrays(ckpt.params, convert.electra_model_params(
      weights.import_hf(tmp_path / 'disc')))
  cfg = electra.ModelConfig.from_config(ckpt.model_config)
  assert cfg.discriminator == electra.ModelConfig.from_config(
      weights.import_hf(tmp_path / 'disc').model).discriminator

  # The fine-tuning state: body from the checkpoint, only the task head initialised.
  finetune = pytest.importorskip('electra_jax.finetune.loop')
  heads = pytest.importorskip('electra_jax.models.heads')
  from electra_jax import sharding
  import optax
  model = heads.FinetuneModel(cfg, heads.HeadConfig(kind='classification', num_labels=3))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  state, _, missing, unexpected = finetune.create_state(model, optax.adamw(1e-4), mesh, MAX_POS,
                                                        jax.random.key(0), ckpt.params)
  assert unexpected == [] and missing and all(k.startswith('classifier/') for k in missing)
  body = {k: v for k, v in common.to_numpy(state.params).items() if k != 'classifier'}
  assert common.same_arrays(body, ckpt.params)
