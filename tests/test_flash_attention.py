"""The TPU flash-attention path (mtf.model.flash) against mtf's XLA attention.

The kernel is TPU-only; here it runs in Pallas' TPU interpret mode on the CPU, the same
kernel code executed op by op, so the numbers are the kernel's own.
"""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mtf.errors import SettingError
from mtf.model import flash, layers, masks
from mtf.model.config import T5Config
from mtf.model.network import Transformer
from mtf.model.params import init_params

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=2, num_encoder_layers=1,
               num_decoder_layers=1, head_dim=16, mlp_dim=48, dropout_rate=0.1)
LENGTH = 128  # the kernel's block


def _batch(packed: bool) -> dict:
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 64, (2, LENGTH)).astype(np.int32)
    tgt = rng.integers(2, 64, (2, LENGTH)).astype(np.int32)
    enc[0, 100:] = 0
    tgt[1, 90:] = 0
    batch = {}
    if packed:  # row 0: two segments in both streams, then padding
        enc_seg = np.where(np.arange(LENGTH) < 60, 1, 2)[None].repeat(2, 0)
        tgt_seg = np.where(np.arange(LENGTH) < 50, 1, 2)[None].repeat(2, 0)
        enc_seg[enc == 0], tgt_seg[tgt == 0] = 0, 0
        batch = {"encoder_segment_ids": jnp.asarray(enc_seg),
                 "decoder_segment_ids": jnp.asarray(tgt_seg)}
    dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
    if packed:
        dec[:, 50] = 0  # the second target segment starts with its own BOS
    return dict(batch, encoder_input_tokens=jnp.asarray(enc),
                decoder_input_tokens=jnp.asarray(dec), decoder_target_tokens=jnp.asarray(tgt))


def _loss(params, config, batch, dropout):
    logits = Transformer(config).apply({"params": params}, **batch, enable_dropout=dropout,
                                       rngs={"dropout": jax.random.key(3)})
    targets = batch["decoder_target_tokens"]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    token = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return -jnp.sum(token * (targets > 0))


@pytest.mark.parametrize("packed,dropout", [(False, True), (True, False)])
def test_flash_attention_gives_the_xla_attentions_loss_and_gradients(packed, dropout):
    batch = _batch(packed)
    params = init_params(CFG, jax.random.key(0))
    want, want_grads = jax.value_and_grad(_loss)(params, CFG, batch, dropout)
    with pltpu.force_tpu_interpret_mode():
        got, got_grads = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 3))(
            params, CFG.replace(attention_kernel="flash"), batch, dropout)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want_grads),
                            jax.tree.leaves(got_grads), strict=True):
        scale = float(jnp.max(jnp.abs(w)))
        assert float(jnp.max(jnp.abs(g - w))) <= 5e-6 * scale, jax.tree_util.keystr(path)
    # the relative position bias gets its gradient through the kernel's bias input
    assert float(jnp.abs(got_grads["encoder"]["relpos_bias"]["rel_embedding"]).max()) > 0


def test_segment_masks_allow_what_the_dense_masks_allow_at_every_real_query():
    batch = _batch(packed=True)
    enc, tgt = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    enc_seg, tgt_seg = batch["encoder_segment_ids"], batch["decoder_segment_ids"]
    pairs = [(masks.encoder_segments(enc, enc_seg), masks.encoder_mask(enc, enc_seg), enc),
             (masks.decoder_segments(tgt, tgt_seg), masks.decoder_mask(tgt, tgt_seg), tgt),
             (masks.cross_segments(tgt, enc, tgt_seg, enc_seg),
              masks.cross_mask(tgt, enc, tgt_seg, enc_seg), tgt)]
    for segments, dense, queries in pairs:
        real = np.asarray(queries > 0)[:, None, :, None]
        got = np.asarray(segments.dense())
        np.testing.assert_array_equal(got & real, np.asarray(dense) & real)


def test_flash_attention_refuses_lengths_off_its_block_with_the_fix():
    params_batch = {"encoder_input_tokens": jnp.ones((1, 100), jnp.int32),
                    "decoder_input_tokens": jnp.ones((1, 128), jnp.int32),
                    "decoder_target_tokens": jnp.ones((1, 128), jnp.int32)}
    config = CFG.replace(attention_kernel="flash")
    params = init_params(CFG, jax.random.key(0))
    with pytest.raises(SettingError,
                       match=r"lengths \[100, 100\] are not multiples.*ATTENTION_KERNEL = 'xla'"):
        Transformer(config).apply({"params": params}, **params_batch, enable_dropout=False)
    with pytest.raises(SettingError, match="attention_kernel='paged'.*'xla', 'flash'"):
        CFG.replace(attention_kernel="paged")


def test_flash_attention_runs_its_kernel_per_device_on_a_mesh():
    script = Path(__file__).with_name("flash_mesh_check.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-4000:])


@pytest.mark.parametrize("q_len,kv_len,causal", [(512, 512, True), (256, 512, False)])
def test_flash_attention_with_large_tiles_matches_dot_product_attention(q_len, kv_len, causal):
    """Lengths past one block, so the kernels run the 512/1024 tiles `block_sizes` picks."""
    keys = jax.random.split(jax.random.key(1), 6)
    b, h, d = 2, 2, 64
    query = jax.random.normal(keys[0], (b, q_len, h, d))
    key = jax.random.normal(keys[1], (b, kv_len, h, d))
    value = jax.random.normal(keys[2], (b, kv_len, h, d))
    bias = jax.random.normal(keys[3], (1, h, q_len, kv_len)) if causal else None
    q_ids = jnp.where(jnp.arange(q_len) < q_len - 40, 1, 0)[None].repeat(b, 0)
    kv_ids = jnp.where(jnp.arange(kv_len) < kv_len - 70, 1, 0)[None].repeat(b, 0)
    mask = masks.SegmentMask(q_ids, q_ids if causal else kv_ids, causal=causal)
    assert flash.block_sizes(q_len, kv_len).block_k_major_dkv == 512

    def reference(query, key, value, bias):
        bias_sum = jnp.where(mask.dense(), 0.0, layers.NEG_INF)
        bias_sum = bias_sum if bias is None else bias_sum + bias
        out = layers.dot_product_attention(query, key, value, bias_sum, keys[4], 0.25,
                                           jnp.float32, False)
        return jnp.sum(jnp.where(q_ids[:, :, None, None] > 0, out, 0.0) ** 2)

    def kernel(query, key, value, bias):
        out = flash.attention(query, key, value, bias, mask, keys[4], 0.25, jnp.float32)
        return jnp.sum(jnp.where(q_ids[:, :, None, None] > 0, out, 0.0) ** 2)

    argnums = (0, 1, 2, 3) if causal else (0, 1, 2)
    want = jax.value_and_grad(reference, argnums)(query, key, value, bias)
    with pltpu.force_tpu_interpret_mode():
        got = jax.jit(jax.value_and_grad(kernel, argnums))(query, key, value, bias)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()))


def test_tpu_kernels_are_refused_on_other_devices_and_scoring_never_uses_them():
    from mtf import partitioning, program
    from mtf.eval import scoring
    from mtf.step import LossConfig

    mesh = partitioning.make_mesh((1, 1, 1), jax.devices()[:1])
    flash_config = CFG.replace(attention_kernel="flash")
    with pytest.raises(SettingError, match=r"ATTENTION_KERNEL = 'flash' and LOSS_KERNEL = "
                                           r"'pallas' run on TPU only; these devices are cpu"):
        program.check_kernels_run_on(mesh, flash_config, LossConfig(kernel="pallas"))
    program.check_kernels_run_on(mesh, CFG, LossConfig())
    # a checkpoint trained with the flash kernel scores prompts of any length on the CPU
    params = init_params(CFG, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(2, 64, (2, 10)), jnp.int32)
    rows = (params, tokens, jnp.array([0, 1]), tokens[:, :5])
    np.testing.assert_array_equal(scoring.score_rows(*rows, config=flash_config)[0],
                                  scoring.score_rows(*rows, config=CFG)[0])
