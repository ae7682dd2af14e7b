"""The fused, chunked output projection + cross-entropy equals the plain one exactly."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtf import losses, step
from mtf.model import T5Config, Transformer, init_params
from mtf.model.family import family_of
from mtf.step import LossConfig, gradients

CONFIG = T5Config(vocab_size=53, emb_dim=16, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.0)


def reference_loss_terms(params, batch, dropout_rng, family, loss, frozen=None):
    """The loss as it was before chunking: whole [batch, length, vocab] logits, autodiff."""
    assert frozen is None  # full finetuning only
    inputs = {k: batch[k] for k in CONFIG.batch_spec.model_inputs if k in batch}
    logits = Transformer(family.config).apply({"params": params}, **inputs, enable_dropout=False)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
    weights = weights.astype(jnp.float32)
    per_token, z = losses.token_cross_entropy(logits, targets, loss.z_loss, loss.label_smoothing)
    token_weights, denominator = losses.normalization_weights(
        weights, loss.normalizing_factor, batch.get("decoder_segment_ids"))
    stats = {"denominator": denominator, "z_numerator": jnp.sum(z * token_weights),
             "tokens": jnp.sum(weights)}
    return jnp.sum(per_token * token_weights), (stats, per_token * weights)


def make_batch(packed: bool, seed: int = 0, batch: int = 4, inputs: int = 10, targets: int = 12):
    rng = np.random.default_rng(seed)
    tgt = rng.integers(2, CONFIG.vocab_size, (batch, targets)).astype(np.int32)
    for row, n in enumerate([12, 3, 0, 9][:batch]):
        tgt[row, n:] = 0
    dec = np.zeros_like(tgt)
    dec[:, 1:] = tgt[:, :-1]
    out = {"encoder_input_tokens": rng.integers(2, CONFIG.vocab_size, (batch, inputs)),
           "decoder_input_tokens": dec, "decoder_target_tokens": tgt}
    if packed:  # two segments per row
        out["encoder_segment_ids"] = np.repeat([[1] * 5 + [2] * 5], batch, 0)
        out["decoder_segment_ids"] = np.where(tgt > 0, np.where(np.arange(targets) < 5, 1, 2), 0)
        dec[:, 5] = 0
    return {k: jnp.asarray(np.asarray(v, np.int32)) for k, v in out.items()}


def assert_same(got, want, rtol=1e-6):
    """Loss to rtol; every gradient leaf to rtol of its own largest entry."""
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(got[2]["token_loss"], want[2]["token_loss"], rtol=rtol,
                               atol=1e-7)
    np.testing.assert_allclose(got[2]["z_loss"], want[2]["z_loss"], rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("mode,packed,chunks,microbatches", [
    (losses.TOKENS, False, 5, 1), (losses.TOKENS, True, 3, 2),
    (losses.PER_SEQUENCE, True, 4, 2), (losses.PER_SEQUENCE, False, 5, 2),
    (1000.0, True, 1, 1), (1000.0, False, 4, 2)])
def test_chunked_equals_plain(monkeypatch, mode, packed, chunks, microbatches):
    params = init_params(CONFIG, jax.random.key(1))
    batch = make_batch(packed)
    model = family_of(CONFIG)
    loss = LossConfig(normalizing_factor=mode, z_loss=1e-3, label_smoothing=0.1, chunks=chunks)
    got = jax.jit(lambda p, b: gradients(p, b, None, model, loss, microbatches))(params, batch)
    monkeypatch.setattr(step, "loss_terms", reference_loss_terms)
    want = jax.jit(lambda p, b: gradients(p, b, None, model, loss, microbatches))(params, batch)
    assert_same(got, want)


@pytest.mark.parametrize("z_loss,label_smoothing", [(0.0, 0.0), (1e-4, 0.0), (0.0, 0.2)])
def test_each_term_alone_and_tied_logits(monkeypatch, z_loss, label_smoothing):
    config = CONFIG.replace(logits_via_embedding=True)
    params = init_params(config, jax.random.key(2))
    batch = make_batch(False, seed=3)
    model = family_of(config)
    loss = LossConfig(z_loss=z_loss, label_smoothing=label_smoothing, chunks=3)
    got = jax.jit(lambda p, b: gradients(p, b, None, model, loss))(params, batch)
    monkeypatch.setattr(step, "loss_terms", reference_loss_terms)
    want = jax.jit(lambda p, b: gradients(p, b, None, model, loss))(params, batch)
    assert_same(got, want)


def test_never_holds_the_whole_logits():
    """With 8 chunks no [batch, length, vocab] array is in the differentiated program."""
    config = CONFIG.replace(vocab_size=1031)
    params = init_params(config, jax.random.key(0))
    batch = make_batch(False, targets=16)
    model = family_of(config)

    def hlo(chunks):
        fn = jax.jit(lambda p, b: gradients(p, b, None, model, LossConfig(chunks=chunks)))
        return fn.lower(params, batch).as_text()

    assert "4x16x1031" in hlo(1)
    text = hlo(8)
    assert "4x16x1031" not in text and "4x2x1031" in text


def test_the_per_token_outputs_are_not_differentiable_and_chunks_are_checked():
    hidden = jnp.ones((1, 2, 4))
    kernel = jnp.ones((4, 5))
    targets = jnp.array([[1, 2]])

    def per_token_sum(h):
        settings = losses.ChunkedLoss(chunks=2)
        return losses.fused_cross_entropy(h, kernel, targets, jnp.ones((1, 2)), settings)[1].sum()

    assert float(jnp.abs(jax.grad(per_token_sum)(hidden)).sum()) == 0.0
    with pytest.raises(ValueError, match="LOSS_CHUNKS=0"):
        LossConfig(chunks=0)


def test_chunked_loss_on_eight_devices():
    script = Path(__file__).with_name("multidevice_check.py")
    done = subprocess.run([sys.executable, str(script), "chunked"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode,packed,microbatches", [
    (losses.TOKENS, True, 2), (losses.PER_SEQUENCE, False, 1)])
def test_the_pallas_loss_kernel_equals_plain(monkeypatch, mode, packed, microbatches):
    """LOSS_KERNEL='pallas' in TPU interpret mode, with small tiles so that several token
    and vocabulary tiles (the last one partly past the vocabulary) run."""
    from jax.experimental.pallas import tpu as pltpu

    from mtf import loss_kernel

    monkeypatch.setattr(loss_kernel, "ROW_TILES", (16, 128))
    monkeypatch.setattr(loss_kernel, "COLUMN_TILES", (8, 256))
    config = CONFIG.replace(vocab_size=300)
    params = init_params(config, jax.random.key(1))
    batch = make_batch(packed)
    model = family_of(config)
    loss = LossConfig(normalizing_factor=mode, z_loss=1e-3, label_smoothing=0.1,
                      kernel="pallas")
    with pltpu.force_tpu_interpret_mode(), jax.default_matmul_precision("float32"):
        got = jax.jit(lambda p, b: gradients(p, b, None, model, loss, microbatches))(params,
                                                                                   batch)
    monkeypatch.setattr(step, "loss_terms", reference_loss_terms)
    want = jax.jit(lambda p, b: gradients(p, b, None, model, loss, microbatches))(params, batch)
    assert_same(got, want, rtol=2e-6)  # float32 rounding: an online log-sum-exp over tiles
    with pytest.raises(ValueError, match="LOSS_KERNEL='triton'.*'xla', 'pallas'"):
        LossConfig(kernel="triton")


def test_the_pallas_loss_kernel_on_eight_devices():
    script = Path(__file__).with_name("multidevice_check.py")
    done = subprocess.run([sys.executable, str(script), "pallas"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (
        done.stdout + done.stderr[-4000:])


def test_the_pallas_loss_feeds_the_mxu_what_xla_default_precision_would():
    from mtf import loss_kernel

    assert loss_kernel.operand_dtype("float32") == jnp.bfloat16
    assert loss_kernel.operand_dtype("bfloat16") == jnp.bfloat16
    with jax.default_matmul_precision("float32"):
        assert loss_kernel.operand_dtype("float32") == jnp.float32
