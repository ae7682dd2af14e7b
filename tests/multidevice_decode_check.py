"""Run in a subprocess with 8 simulated CPU devices: decoding and scoring on sharded meshes
(parameters sharded by the training rules) give the one-device results."""
# ruff: noqa: E402

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
import numpy as np

from mtf import partitioning
from mtf.eval import decoding, scoring
from mtf.model import T5Config, init_params

assert jax.device_count() == 8, jax.devices()
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=2, head_dim=8, mlp_dim=64, dropout_rate=0.0)
PARAMS = init_params(CONFIG, jax.random.key(0))
rng = np.random.default_rng(0)
INPUTS = rng.integers(2, 64, (8, 10)).astype(np.int32)
INPUTS[::3, 6:] = 0
PROMPTS = [list(rng.integers(2, 64, n)) + [1] for n in (3, 7, 5, 9, 2, 4, 6, 8)]
CHOICES = [[list(rng.integers(2, 64, n)) + [1] for n in lengths]
           for lengths in ([1, 3], [2], [4, 1, 2], [3, 3], [1], [2, 2, 2, 2], [5], [1, 4])]


def run(shape):
    devices = jax.devices()[:1] if shape == (1, 1, 1) else None
    mesh = partitioning.make_mesh(shape, devices)
    params = partitioning.place_params(PARAMS, CONFIG, mesh)
    embedding = params["token_embedder"]["embedding"]
    greedy = decoding.Decoder(CONFIG, decoding.DecodeConfig(max_decode_length=6), mesh)(
        params, INPUTS)
    beams = decoding.Decoder(CONFIG, decoding.DecodeConfig(max_decode_length=5, beam_size=3),
                           mesh)(params, INPUTS)
    scored = scoring.Scorer(CONFIG, mesh, 8, 10, 6, 24).score(params, PROMPTS, CHOICES)
    return greedy, beams, scored, embedding.sharding.spec


one = run((1, 1, 1))
for shape in [(2, 2, 2), (1, 2, 4)]:
    greedy, beams, scored, spec = run(shape)
    assert spec != jax.sharding.PartitionSpec(), f"{shape}: parameters not sharded"
    np.testing.assert_array_equal(greedy.tokens, one[0].tokens)
    np.testing.assert_array_equal(beams.tokens, one[1].tokens)
    np.testing.assert_allclose(beams.scores, one[1].scores, atol=1e-4)
    for a, b in zip(scored.scores, one[2].scores, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
print("ok")
