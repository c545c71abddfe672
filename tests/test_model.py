"""Model structure: sharing modes, gradient flow between the towers, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from electra_jax.pretrain import flops
from electra_jax.pretrain import objectives
from electra_jax.pretrain import loop
from electra_jax.models import electra
from configs import pretrain


def _setup(sharing, fraction=0.5):
  c = tiny_config()
  c.model.vocab_size = 97  # a size no other parameter axis has
  c.model.sharing = sharing
  c.model.generator_fraction = 1.0 if sharing == 'all' else fraction
  model = loop.build_model(c)
  cfg = objectives.ObjectiveConfig.from_config(c)
  rng = np.random.RandomState(0)
  B, L = 4, c.train.seq_len
  ids = rng.randint(5, c.model.vocab_size, (B, L)).astype(np.int32)
  ids[:, 0] = c.tokens.cls_id
  mask = np.ones((B, L), np.int32)
  mask[0, 20:] = 0
  ids = np.where(mask == 1, ids, 0)
  batch = {'input_ids': jnp.asarray(ids), 'input_mask': jnp.asarray(mask),
           'segment_ids': jnp.zeros((B, L), jnp.int32)}
  variables = model.init(jax.random.key(0), batch['input_ids'], batch['input_mask'],
                         batch['segment_ids'], jnp.zeros((B, cfg.max_predictions_per_seq),
                                                         jnp.int32), True)
  params = jax.tree.map(lambda x: getattr(x, 'value', x), variables['params'],
                        is_leaf=lambda x: hasattr(x, 'value'))
  return c, model, cfg, params, batch


def _grads(sharing, gen_weight, disc_weight):
  c, model, cfg, params, batch = _setup(sharing)
  cfg = cfg.__class__(**{**cfg.__dict__, 'gen_weight': gen_weight, 'disc_weight': disc_weight})
  g = jax.jit(jax.grad(lambda p: objectives.ELECTRA.loss(p, batch, jax.random.key(1),
                                                         model=model, cfg=cfg)[0]))(params)
  return params, g


def _norm(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('sharing', ['none', 'embeddings', 'gdes'])
def test_disc_loss_sends_no_gradient_to_generator(sharing):
  _, g = _grads(sharing, gen_weight=0.0, disc_weight=1.0)
  assert _norm(g['generator']) == 0.0
  assert _norm(g['generator_predictions']) == 0.0
  assert _norm(g['discriminator']) > 0
  if sharing == 'none':
    assert _norm(g['generator_embeddings']) == 0.0
  if sharing == 'gdes':  # the generator's embeddings get nothing from the discriminator
    assert _norm(g['embeddings']) == 0.0
    assert _norm(g['discriminator_embeddings_delta']) > 0


def test_gen_loss_sends_no_gradient_to_discriminator():
  _, g = _grads('embeddings', gen_weight=1.0, disc_weight=0.0)
  assert _norm(g['discriminator']) == 0.0
  assert _norm(g['discriminator_predictions']) == 0.0
  assert _norm(g['generator']) > 0


def test_shared_table_gets_gradient_from_both_losses():
  _, g_gen = _grads('embeddings', 1.0, 0.0)
  _, g_disc = _grads('embeddings', 0.0, 1.0)
  for g in (g_gen, g_disc):
    assert _norm(g['embeddings']['word_embeddings']) > 0
    assert _norm(g['embeddings']['LayerNorm']) > 0


def test_shared_parameters_exist_once():
  _, _, _, params, _ = _setup('embeddings')
  assert set(params) == {'embeddings', 'generator', 'discriminator', 'generator_predictions',
                         'discriminator_predictions'}
  # The generator's output layer is the word table itself: no second [V, E] array.
  vocab_e = [x for x in jax.tree.leaves(params) if x.ndim == 2 and x.shape[0] == 97]
  assert len(vocab_e) == 1
  _, _, _, params_all, _ = _setup('all')
  assert 'generator' not in params_all  # the generator is the discriminator
  _, _, _, params_none, _ = _setup('none')
  assert {'generator_embeddings', 'discriminator_embeddings'} <= set(params_none)


def test_generator_sizes_follow_official_rule():
  mc = electra.ModelConfig.from_config(pretrain.get_config('small').model)
  assert (mc.generator.hidden_size, mc.generator.num_heads, mc.generator.intermediate_size) == (
      64, 1, 256)
  mc = electra.ModelConfig.from_config(pretrain.get_config('base').model)
  assert (mc.generator.hidden_size, mc.generator.num_heads, mc.generator.intermediate_size) == (
      256, 4, 1024)


def test_gdes_discriminator_params_fold_in_delta():
  _, model, _, params, batch = _setup('gdes')
  params = jax.tree.map(lambda x: x, params)
  params['discriminator_embeddings_delta']['word_embeddings'] += 0.5
  disc = electra.discriminator_params(params, 'gdes')
  np.testing.assert_allclose(disc['embeddings']['word_embeddings'],
                             params['embeddings']['word_embeddings'] + 0.5)
  hidden_full = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                            batch['segment_ids'], True, method=model.discriminator_hidden)
  standalone = electra.ElectraModel(model.cfg)
  hidden_cut = standalone.apply({'params': disc}, batch['input_ids'], batch['input_mask'],
                                batch['segment_ids'], True)
  np.testing.assert_allclose(hidden_full, hidden_cut, atol=1e-5)


def test_generator_head_masked_equals_full_at_positions():
  _, model, _, params, batch = _setup('embeddings')
  pos = jnp.array([[1, 5, 7]] * 4)
  a = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                  batch['segment_ids'], pos, True, method=model.generator_logits)
  full = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                     batch['segment_ids'], None, True, method=model.generator_logits)
  np.testing.assert_allclose(a, jnp.take_along_axis(full, pos[..., None], 1), atol=1e-5)


@pytest.mark.parametrize('impl', ['xla'])
def test_attention_impls_agree(impl):
  c, model, _, params, batch = _setup('embeddings')
  c.model.attention_impl = impl
  c.model.attention_dropout_rate = 0.0
  other = loop.build_model(c)
  args = (batch['input_ids'], batch['input_mask'], batch['segment_ids'], True)
  a = model.apply({'params': params}, *args, method=model.discriminator_logits)
  b = other.apply({'params': params}, *args, method=other.discriminator_logits)
  real = np.asarray(batch['input_mask']) == 1
  np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  c, _, _, params, batch = _setup('embeddings')
  c.model.dtype = 'bfloat16'
  model = loop.build_model(c)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  out = model.apply({'params': params}, batch['input_ids'], batch['input_mask'],
                    batch['segment_ids'], True, method=model.discriminator_logits)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_generator_layers_sets_the_generator_depth():
  """generator_layers (the official fraction) and generator_num_layers (an explicit count)."""
  c = tiny_config(**{'model.num_layers': 4, 'model.generator_layers': 0.5})
  cfg = electra.ModelConfig.from_config(c.model)
  assert (cfg.generator.num_layers, cfg.discriminator.num_layers) == (2, 4)
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: electra.Pretrainer(cfg).init(
      jax.random.key(0), ids, ids + 1, ids, None, True))['params']
  assert sorted(shapes['generator']['encoder']) == ['layer_0', 'layer_1']
  assert len(shapes['discriminator']['encoder']) == 4
  c.model.generator_num_layers = 3  # explicit count wins (imported checkpoints)
  assert electra.ModelConfig.from_config(c.model).generator.num_layers == 3
  c.model.generator_num_layers, c.model.generator_layers = 0, 0.1  # round(0.4) = 0 layers
  with pytest.raises(ValueError, match='generator_layers=0.1 gives the generator'):
    electra.ModelConfig.from_config(c.model)


def test_bad_model_config_errors():
  c = tiny_config()
  c.model.sharing = 'all'
  with pytest.raises(ValueError, match='generator_fraction=1.0'):
    electra.ModelConfig.from_config(c.model)
  c.model.generator_fraction = 1.0
  c.model.generator_layers = 0.5  # sharing=all needs equal depth too
  with pytest.raises(ValueError, match=r'generator_layers=0.5: generator \(hidden 64, layers 1'):
    electra.ModelConfig.from_config(c.model)
  c = tiny_config()
  c.model.attention_impl = 'cudnn'
  with pytest.raises(ValueError, match='attention_dropout_rate=0'):
    electra.ModelConfig.from_config(c.model)


def test_param_counts_match_paper():
  """Discriminators: 14M / 110M / 335M (paper, embeddings included)."""
  expected = {'small': 14e6, 'base': 110e6, 'large': 335e6}
  for size, n in expected.items():
    mc = electra.ModelConfig.from_config(pretrain.get_config(size).model)
    got = flops.param_counts(mc)['discriminator']
    assert abs(got - n) / n < 0.05, (size, got)


def test_flops_match_xla_cost_analysis():
  """Our analytic count agrees with XLA's own count of the step's FLOPs."""
  c = tiny_config()
  c.model.num_layers = 1
  c.train.seq_len = 64
  c.model.vocab_size = 512
  ours = flops.train_flops_per_step(c)
  model = loop.build_model(c)
  cfg = objectives.ObjectiveConfig.from_config(c)
  B, L = c.train.batch_size, c.train.seq_len
  batch = {'input_ids': jnp.full((B, L), 7, jnp.int32), 'input_mask': jnp.ones((B, L), jnp.int32),
           'segment_ids': jnp.zeros((B, L), jnp.int32)}
  params = model.init(jax.random.key(0), batch['input_ids'], batch['input_mask'],
                      batch['segment_ids'], jnp.zeros((B, cfg.max_predictions_per_seq),
                                                      jnp.int32), True)['params']
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  grad = jax.jit(jax.grad(lambda p: objectives.ELECTRA.loss(p, batch, jax.random.key(0),
                                                            model=model, cfg=cfg)[0]))
  cost = grad.lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla = cost['flops']
  # XLA also counts elementwise work (softmax, GELU, LayerNorm, Adam-free here).
  assert 0.7 < ours / xla < 1.05, (ours, xla)
