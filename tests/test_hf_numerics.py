"""mtf's network against Hugging Face's MT5 (an independent implementation), via load_hf."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_batch
from hf_reference import hf_logits, random_hf_mt5
from transformers import MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration

from mtf.convert import load_hf, save_hf
from mtf.model import Transformer

CONFIGS = {
    # head count not a power of two, encoder deeper than decoder, tiny vocabulary
    "odd": dict(vocab_size=37, d_model=24, d_kv=5, d_ff=40, num_layers=3,
                num_decoder_layers=2, num_heads=3),
    "decoder_deeper": dict(vocab_size=131, d_model=32, d_kv=8, d_ff=48, num_layers=1,
                           num_decoder_layers=4, num_heads=5),
    "few_buckets": dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                        num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=8,
                        relative_attention_max_distance=12),
}


def mtf_logits(config, params, batch):
    return np.asarray(Transformer(config).apply(
        {"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()},
        enable_dropout=False))


def valid(batch):
    return batch["decoder_target_tokens"] > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_hf_mt5(tmp_path, name):
    model = random_hf_mt5(seed=len(name), **CONFIGS[name])
    model.save_pretrained(tmp_path)
    config, params = load_hf(tmp_path)
    batch = random_batch(np.random.default_rng(0), CONFIGS[name]["vocab_size"], inputs=30,
                         targets=20)
    ours, theirs = mtf_logits(config, params, batch), hf_logits(model, batch)
    mask = valid(batch)
    assert ours.shape == theirs.shape
    assert np.abs(ours[mask] - theirs[mask]).max() < 1e-4


def test_pytorch_bin_and_sharded_safetensors_load_the_same(tmp_path):
    model = random_hf_mt5(seed=3, **CONFIGS["odd"])
    model.save_pretrained(tmp_path / "st", max_shard_size="20KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").exists()
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    config_a, params_a = load_hf(tmp_path / "st")
    config_b, params_b = load_hf(tmp_path / "bin")
    assert config_a == config_b
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_mtf_hf_mtf_round_trip_is_exact_and_transformers_agrees(tmp_path):
    model = random_hf_mt5(seed=5, **CONFIGS["odd"])
    model.save_pretrained(tmp_path / "a")
    config, params = load_hf(tmp_path / "a")
    save_hf(config, params, tmp_path / "b", max_shard_bytes=8_000)  # forces several shards
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    config2, params2 = load_hf(tmp_path / "b")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params, params2)

    reloaded = MT5ForConditionalGeneration.from_pretrained(tmp_path / "b").eval()
    batch = random_batch(np.random.default_rng(1), config.vocab_size)
    mask = valid(batch)
    np.testing.assert_allclose(hf_logits(reloaded, batch)[mask],
                               mtf_logits(config, params, batch)[mask], atol=1e-4)


def test_tied_t5_v1_logits_via_embedding(tmp_path):
    """T5 v1.0-style tied logits (rescaled by d_model**-0.5) map to logits_via_embedding."""
    torch.manual_seed(0)
    hf = T5ForConditionalGeneration(T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=True)).eval()
    hf.save_pretrained(tmp_path / "a")
    config, params = load_hf(tmp_path / "a")
    assert config.logits_via_embedding and "logits_dense" not in params["decoder"]
    batch = random_batch(np.random.default_rng(2), 50)
    mask = valid(batch)
    np.testing.assert_allclose(mtf_logits(config, params, batch)[mask],
                               hf_logits(hf, batch)[mask], atol=1e-4)
    save_hf(config, params, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "t5"
    back = T5ForConditionalGeneration.from_pretrained(tmp_path / "b").eval()
    np.testing.assert_allclose(hf_logits(back, batch)[mask],
                               mtf_logits(config, params, batch)[mask], atol=1e-4)


def test_bfloat16_activations_stay_close_to_float32(tmp_path):
    model = random_hf_mt5(seed=7, **CONFIGS["decoder_deeper"])
    model.save_pretrained(tmp_path)
    config, params = load_hf(tmp_path)
    batch = random_batch(np.random.default_rng(3), config.vocab_size, inputs=16, targets=12)
    f32 = mtf_logits(config, params, batch)
    bf16 = mtf_logits(config.replace(dtype="bfloat16"), params, batch)
    mask = valid(batch)
    assert np.isfinite(bf16).all()
    scale = np.abs(f32[mask]).max()
    assert np.abs(bf16[mask] - f32[mask]).max() < 0.05 * scale
    # and the same next-token choice almost everywhere
    agree = (bf16[mask].argmax(-1) == f32[mask].argmax(-1)).mean()
    assert agree > 0.9
