"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set before jax imports).

With the argument `chunked`, every mesh runs the chunked loss (label smoothing, z-loss) and
is compared with the plain whole-logits loss on one device.
"""
# ruff: noqa: E402

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import flax.linen as nn
import jax
import numpy as np

from mtf import partitioning
from mtf.model import T5Config, init_params
from mtf.model.family import family_of
from mtf.optim import make_optimizer
from mtf.state import init_state
from mtf.step import LossConfig, gradients

assert jax.device_count() == 8, jax.devices()
CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=2, head_dim=8, mlp_dim=64, dropout_rate=0.0)
rng = np.random.default_rng(0)
tgt = rng.integers(2, 64, (8, 6)).astype(np.int32)
tgt[::3, 4:] = 0
dec = np.zeros_like(tgt)
dec[:, 1:] = tgt[:, :-1]
BATCH = {"encoder_input_tokens": rng.integers(2, 64, (8, 10)).astype(np.int32),
         "decoder_input_tokens": dec, "decoder_target_tokens": tgt}
optimizer = make_optimizer("adafactor")
CHUNKED = sys.argv[1:] in (["chunked"], ["pallas"])
loss_config = LossConfig(normalizing_factor="AVERAGE_PER_SEQUENCE",
                         label_smoothing=0.1 if CHUNKED else 0.0, chunks=4 if CHUNKED else 1)


def run(shape, microbatches=1):
    devices = jax.devices()[:1] if shape == (1, 1, 1) else None
    mesh = partitioning.make_mesh(shape, devices)
    state = init_state(CONFIG, optimizer, mesh, jax.random.key(0))
    batch = jax.device_put(BATCH, partitioning.batch_sharding(mesh))
    model = family_of(CONFIG)
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.RULES):
        fn = jax.jit(lambda p, b: gradients(p, b, None, model, loss_config, microbatches))
        loss, grads, _ = fn(state.params, batch)
    embedding = state.params["token_embedder"]["embedding"]
    return float(loss), jax.tree.map(np.asarray, grads), embedding.sharding


if sys.argv[1:] == ["lora"]:
    # LoRA: the adapters' loss and gradients on sharded meshes (microbatched too) equal one
    # device's, and each adapter is sharded like its kernel along the kernel's other axis
    from mtf.model import LoraConfig, lora

    adapted = CONFIG.replace(lora=LoraConfig(rank=4, alpha=8.0))

    def run_lora(shape, microbatches):
        devices = jax.devices()[:1] if shape == (1, 1, 1) else None
        mesh = partitioning.make_mesh(shape, devices)
        state = init_state(adapted, optimizer, mesh, jax.random.key(0))
        trained = jax.tree.map(lambda x: x + 0.1, state.params)  # B != 0
        batch = jax.device_put(BATCH, partitioning.batch_sharding(mesh))
        model = family_of(adapted)
        with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.RULES):
            fn = jax.jit(lambda p, f, b: gradients(p, b, None, model, loss_config, microbatches,
                                                   f))
            loss, grads, _ = fn(trained, state.frozen, batch)
        return float(loss), jax.tree.map(np.asarray, grads), state

    reference_loss, reference_grads, _ = run_lora((1, 1, 1), 1)
    assert lora.count(reference_grads) == lora.count(lora.split(
        init_params(adapted, jax.random.key(0)))[1])
    for shape, k in [((2, 2, 2), 2), ((1, 2, 4), 1)]:
        loss, grads, state = run_lora(shape, k)
        assert abs(loss - reference_loss) < 1e-5 * abs(reference_loss), (shape, loss)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                     grads, reference_grads)
        query = state.params["encoder"]["layers_0"]["attention"]["query"]
        kernel = state.frozen["encoder"]["layers_0"]["attention"]["query"]["kernel"]
        print(shape, k, "loss", loss, "kernel", kernel.sharding.spec, "A",
              query["lora_a"].sharding.spec, "B", query["lora_b"].sharding.spec)
        if shape == (2, 2, 2):
            P = jax.sharding.PartitionSpec
            assert kernel.sharding.spec == P("fsdp", "model"), kernel.sharding.spec
            assert query["lora_a"].sharding.spec == P(None, "fsdp")
            assert query["lora_b"].sharding.spec == P(None, "model")
    print("lora ok")
    sys.exit(0)

if sys.argv[1:] == ["pallas"]:
    # LOSS_KERNEL='pallas' (TPU interpret mode, small tiles so several run) per device under
    # shard_map equals the XLA chunked loss on one device; a vocabulary-sharded mesh is refused
    import dataclasses

    from jax.experimental.pallas import tpu as pltpu

    from mtf import loss_kernel
    from mtf.errors import SettingError

    loss_kernel.ROW_TILES, loss_kernel.COLUMN_TILES = (16, 128), (8, 256)
    CONFIG = CONFIG.replace(vocab_size=300)
    reference_loss, reference_grads, _ = run((1, 1, 1), 1)
    loss_config = dataclasses.replace(loss_config, kernel="pallas")
    with pltpu.force_tpu_interpret_mode(), jax.default_matmul_precision("float32"):
        for shape, k in [((8, 1, 1), 1), ((2, 4, 1), 1)]:
            loss, grads, _ = run(shape, k)
            assert abs(loss - reference_loss) <= 1e-6 * abs(reference_loss), (shape, loss)
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads),
                            strict=True):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * float(np.abs(b).max()))
            print("pallas", shape, k, "loss", loss, "xla", reference_loss)
        for shape, k, message in [((4, 1, 2), 1, "MESH_SHAPE's model axis to 1"),
                                  ((8, 1, 1), 2, "batch of 4 rows does not split over the 8")]:
            try:
                run(shape, k)
            except SettingError as e:
                assert message in str(e), e
            else:
                raise AssertionError(f"{shape} x {k} microbatches was not refused")
    print("ok")
    sys.exit(0)

if CHUNKED:
    # on each mesh, the chunked loss equals the plain one on that same mesh to 1e-6
    from test_chunked_loss import reference_loss_terms

    from mtf import step

    chunked_terms = step.loss_terms
    for shape, k in [((1, 1, 1), 1), ((8, 1, 1), 1), ((2, 2, 2), 2), ((1, 2, 4), 4)]:
        step.loss_terms = reference_loss_terms
        plain_loss, plain_grads, _ = run(shape, k)
        step.loss_terms = chunked_terms
        loss, grads, _ = run(shape, k)
        assert abs(loss - plain_loss) <= 1e-6 * abs(plain_loss), (shape, loss, plain_loss)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(np.abs(b).max()))
        print("chunked", shape, k, "loss", loss, "plain", plain_loss)
    print("ok")
    sys.exit(0)  # the plain loss across meshes is test_partitioning's run of this script
reference_loss, reference_grads, sharding = run((1, 1, 1))
for shape, k in [((8, 1, 1), 1), ((2, 2, 2), 1), ((1, 4, 2), 2), ((2, 1, 4), 4), ((-1, 2, 2), 2)]:
    loss, grads, sharding = run(shape, k)
    assert abs(loss - reference_loss) < 1e-5 * abs(reference_loss), (shape, loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                 grads, reference_grads)
    print(shape, k, "loss", loss, "embedding sharding", sharding.spec)
# the (vocab, embed) table is really split over model x fsdp on the 2x2x2 mesh
_, _, sharding = run((2, 2, 2))
assert sharding.spec == jax.sharding.PartitionSpec("model", "fsdp"), sharding.spec
print("ok")
sys.exit(0)
