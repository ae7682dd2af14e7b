"""The network's own promises: T5X's tree, logical axes, scan/remat, packing, decode cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from flax import traverse_util

from mtf.model import (
    T5Config,
    Transformer,
    abstract_params,
    flat_shapes,
    init_params,
    logical_axes,
    scan_params,
    unscan_params,
)
from mtf.model.config import REMAT_POLICIES
from mtf.model.layers import relative_position_bucket

CONFIG = T5Config(vocab_size=61, emb_dim=24, num_heads=3, num_encoder_layers=2,
                  num_decoder_layers=3, head_dim=5, mlp_dim=40, dropout_rate=0.0)
LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "joined_kv", "vocab", "relpos_buckets",
                 "layers"}


def apply(config, params, batch, **kwargs):
    return Transformer(config).apply({"params": params},
                                     **{k: jnp.asarray(v) for k, v in batch.items()},
                                     enable_dropout=False, **kwargs)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


def test_parameter_tree_is_t5x(fixtures):
    """Names and shapes equal those of a real T5X checkpoint (T5.1.1 tiny)."""
    from mtf.convert import read_t5x_tree

    target = read_t5x_tree(fixtures / "t5x" / "test_t5_tiny.checkpoint_0")["optimizer"]["target"]
    theirs = {k: v.shape for k, v in traverse_util.flatten_dict(target, sep="/").items()}
    tiny = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, head_dim=3, mlp_dim=16)
    assert flat_shapes(tiny) == theirs


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
    axes = logical_axes(CONFIG.replace(scan_layers=scan))
    shapes = abstract_params(CONFIG.replace(scan_layers=scan))
    flat_axes = traverse_util.flatten_dict(axes, sep="/")
    for name, shape in traverse_util.flatten_dict(shapes, sep="/").items():
        spec = flat_axes[name]
        assert spec is not None and len(spec) == len(shape.shape), name
        assert set(spec) <= LOGICAL_NAMES, (name, spec)


def test_activations_carry_logical_constraints(params):
    """Under a mesh with rules, activations are constrained by their logical names."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    rules = (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"))
    batch = random_batch(np.random.default_rng(0), CONFIG.vocab_size)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jaxpr = str(jax.make_jaxpr(lambda p, b: apply(CONFIG, p, b))(params, batch))
    # per layer at least: q, k, v, attention output, mlp hidden, two residuals
    layers = CONFIG.num_encoder_layers + CONFIG.num_decoder_layers
    assert jaxpr.count("sharding_constraint") >= 7 * layers
    assert "P('data', None, 'model')" in jaxpr  # logits: batch -> data, vocab -> model


@pytest.mark.parametrize("remat", REMAT_POLICIES)
def test_scanned_and_remat_match_unscanned(params, remat):
    batch = random_batch(np.random.default_rng(1), CONFIG.vocab_size)
    reference = apply(CONFIG, params, batch)
    scanned = CONFIG.replace(scan_layers=True, remat_policy=remat)
    stacked = scan_params(params, CONFIG)
    assert stacked["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 40, 24)
    np.testing.assert_allclose(apply(scanned, stacked, batch), reference, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, unscan_params(stacked, CONFIG), params)

    def loss(p, cfg):
        return apply(cfg, p, batch).sum()

    g_ref = jax.grad(loss)(params, CONFIG)
    g_scan = unscan_params(jax.grad(loss)(stacked, scanned), CONFIG)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g_scan, g_ref)


def test_packed_segments_equal_separate_examples(params):
    rng = np.random.default_rng(2)
    a_in, b_in = rng.integers(2, 61, 5), rng.integers(2, 61, 4)
    a_tgt, b_tgt = rng.integers(2, 61, 3), rng.integers(2, 61, 4)

    def single(inp, tgt, in_len=12, tgt_len=9):
        enc = np.zeros((1, in_len), np.int32)
        enc[0, :len(inp)] = inp
        out = np.zeros((1, tgt_len), np.int32)
        out[0, :len(tgt)] = tgt
        dec = np.zeros_like(out)
        dec[0, 1:len(tgt)] = tgt[:-1]
        return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
                "decoder_target_tokens": out}

    la = apply(CONFIG, params, single(a_in, a_tgt))[0, :3]
    lb = apply(CONFIG, params, single(b_in, b_tgt))[0, :4]

    enc = np.zeros((1, 12), np.int32)
    enc[0, :5], enc[0, 5:9] = a_in, b_in
    enc_seg = np.zeros_like(enc)
    enc_seg[0, :5], enc_seg[0, 5:9] = 1, 2
    tgt = np.zeros((1, 9), np.int32)
    tgt[0, :3], tgt[0, 3:7] = a_tgt, b_tgt
    dec = np.zeros_like(tgt)  # each segment starts with BOS 0
    dec[0, 1:3], dec[0, 4:7] = a_tgt[:-1], b_tgt[:-1]
    dec_seg = np.zeros_like(tgt)
    dec_seg[0, :3], dec_seg[0, 3:7] = 1, 2
    pos = np.concatenate([np.arange(3), np.arange(4), [0, 0]])[None]
    packed = apply(CONFIG, params, {
        "encoder_input_tokens": enc, "decoder_input_tokens": dec, "decoder_target_tokens": tgt,
        "encoder_segment_ids": enc_seg, "decoder_segment_ids": dec_seg,
        "decoder_positions": pos})
    np.testing.assert_allclose(packed[0, :3], la, atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:7], lb, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_decoding_cache_reproduces_teacher_forced_logits(params, scan):
    config = CONFIG.replace(scan_layers=scan)
    p = scan_params(params, CONFIG) if scan else params
    batch = random_batch(np.random.default_rng(3), CONFIG.vocab_size, batch=2, targets=6)
    batch["decoder_target_tokens"][:] = np.maximum(batch["decoder_target_tokens"], 2)
    batch["decoder_input_tokens"][:, 1:] = batch["decoder_target_tokens"][:, :-1]
    full = apply(config, p, batch)
    model = Transformer(config)
    length = batch["decoder_target_tokens"].shape[1]
    cache = model.init(jax.random.key(0), **{k: jnp.asarray(v) for k, v in batch.items()},
                       enable_dropout=False, decode=True, max_decode_length=length)["cache"]
    encoded = model.apply({"params": p}, jnp.asarray(batch["encoder_input_tokens"]),
                          enable_dropout=False, method=Transformer.encode)
    for i in range(length):
        step, mutated = model.apply(
            {"params": p, "cache": cache}, encoded, jnp.asarray(batch["encoder_input_tokens"]),
            jnp.asarray(batch["decoder_input_tokens"][:, i:i + 1]),
            jnp.asarray(batch["decoder_target_tokens"][:, i:i + 1]), enable_dropout=False,
            decode=True, max_decode_length=length, mutable=["cache"],
            method=Transformer.decode)
        cache = mutated["cache"]
        np.testing.assert_allclose(step[:, 0], full[:, i], atol=1e-5)


def test_dropout_is_active_only_when_enabled(params):
    config = CONFIG.replace(dropout_rate=0.3)
    batch = {k: jnp.asarray(v) for k, v in
             random_batch(np.random.default_rng(4), CONFIG.vocab_size).items()}
    model = Transformer(config)
    off = model.apply({"params": params}, **batch, enable_dropout=False)
    np.testing.assert_allclose(off, apply(CONFIG, params, batch), atol=1e-6)
    on1 = model.apply({"params": params}, **batch, enable_dropout=True,
                      rngs={"dropout": jax.random.key(1)})
    on2 = model.apply({"params": params}, **batch, enable_dropout=True,
                      rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(on1, off) and not np.allclose(on1, on2)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (8, 12)])
def test_relative_position_buckets_match_hf(bidirectional, buckets, max_distance):
    import torch
    from transformers.models.mt5.modeling_mt5 import MT5Attention

    rel = np.arange(-300, 301)
    theirs = MT5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets,
        max_distance=max_distance).numpy()
    ours = relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mlp_activations"):
        CONFIG.replace(mlp_activations=("swish",))
    with pytest.raises(ValueError, match="dtype"):
        CONFIG.replace(dtype="float17")
    with pytest.raises(ValueError, match="num_heads"):
        CONFIG.replace(num_heads=0)
    assert T5Config.from_json(CONFIG.to_json()) == CONFIG
