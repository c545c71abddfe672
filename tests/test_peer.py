"""The PyTorch peer (benchmarks/torch_peer.py) used for learning parity is ELECTRA as ours is.

experiments/cpu_scale/peer_parity.py copies electra_jax's initial parameters into the
peer and evaluates it with electra_jax's own held-out draws; these checks are what its
comparisons rest on.
"""

import sys

import flax
import jax
import numpy as np
import pytest

from conftest import REPO
from configs import pretrain

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
sys.path.insert(0, str(REPO / 'benchmarks'))
sys.path.insert(0, str(REPO / 'experiments' / 'cpu_scale'))
import peer_parity  # noqa: E402  pylint: disable=g-import-not-at-top
import torch_peer  # noqa: E402  pylint: disable=g-import-not-at-top

from electra_jax.pretrain import build  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def tiny():
  c = pretrain.get_config('tiny')
  c.model.vocab_size = 97
  return c


def test_peer_with_our_parameters_computes_our_logits(tiny):
  """Random values in every parameter (so a misplaced or untransposed tensor shows), copied
  into the peer by peer_parity.load_params: both models give the same logits."""
  model = build.build_model(tiny)
  shapes = flax.core.meta.unbox(
      jax.eval_shape(build.init_params_fn(tiny, model), jax.random.key(0)))
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: rs.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  peer = torch_peer.TorchPeer(tiny, seed=0)
  assert peer_parity.load_params(peer, params) == len(peer.opt.params)
  ids = rs.randint(5, 97, (2, 12))
  ids[:, 0] = tiny.tokens.cls_id
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  seg = (np.arange(12) >= 6).astype(np.int64)[None].repeat(2, 0)
  pos = np.array([[1, 3], [2, 7]])
  ours_d = jax.jit(lambda p: model.apply({'params': p}, ids, mask, seg, True,
                                         method=model.discriminator_logits))(params)
  ours_g = jax.jit(lambda p: model.apply({'params': p}, ids, mask, seg, pos, True,
                                         method=model.generator_logits))(params)
  peer.model.eval()
  t = lambda a: torch.from_numpy(a).long()
  with torch.no_grad():
    peer_d = peer.model.discriminator_logits(t(ids), t(mask), t(seg)).numpy()
    peer_g = peer.model.generator_logits(t(ids), t(mask), t(seg), t(pos)).numpy()
  np.testing.assert_allclose(np.asarray(ours_d)[mask > 0], peer_d[mask > 0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(ours_g), peer_g, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('head_init', torch_peer.HEAD_INITS)
def test_generator_head_init(tiny, head_init):
  """'hf' initialises the generator head as HF's pre-trained models (and the official code)
  do: normal(0.02) weights, zero biases; 'torch' keeps PyTorch's uniform Linear default."""
  dense = torch_peer.TorchElectra(tiny, head_init=head_init).generator_predictions.dense
  w, b = dense.weight.detach().numpy(), dense.bias.detach().numpy()
  if head_init == 'hf':
    assert abs(w.std() - tiny.model.initializer_range) < 0.005 and not b.any()
  else:
    bound = 1 / np.sqrt(w.shape[1])
    assert w.std() > 3 * tiny.model.initializer_range and np.abs(w).max() <= bound and b.any()
