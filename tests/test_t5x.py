"""Real T5X checkpoints (../shared/fixtures/t5x) through the same path mT5's use."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from hf_reference import hf_logits
from transformers import MT5ForConditionalGeneration

from mtf.convert import CheckpointError, infer_config, load_hf, load_t5x, read_t5x_tree, save_hf
from mtf.convert.t5x import StoredArray, materialize, resolve_spec
from mtf.model import T5Config, Transformer

T5_1_1_TINY = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=3, mlp_dim=16, dropout_rate=0.0)


def test_inline_fixture_loads_runs_and_exports_to_transformers(fixtures, tmp_path):
    path = fixtures / "t5x" / "test_t5_tiny.checkpoint_0"
    params = load_t5x(path, T5_1_1_TINY)
    batch = random_batch(np.random.default_rng(0), 32128)
    ours = np.asarray(Transformer(T5_1_1_TINY).apply(
        {"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()},
        enable_dropout=False))
    assert ours.shape == (3, 7, 32128) and np.isfinite(ours).all()

    save_hf(T5_1_1_TINY, params, tmp_path)
    hf = MT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    mask = batch["decoder_target_tokens"] > 0
    np.testing.assert_allclose(hf_logits(hf, batch)[mask], ours[mask], atol=1e-4)
    config, back = load_hf(tmp_path)
    assert config == T5_1_1_TINY
    np.testing.assert_array_equal(back["decoder"]["logits_dense"]["kernel"],
                                  params["decoder"]["logits_dense"]["kernel"])


def test_config_inferred_from_shapes_and_adafactor_state(fixtures):
    path = fixtures / "t5x" / "test_t5_tiny.checkpoint_0"
    target = read_t5x_tree(path)["optimizer"]["target"]
    assert infer_config(target, dropout_rate=0.0) == T5_1_1_TINY
    params, state = load_t5x(path, optimizer_state=True)
    assert state["step"] == 0
    v = state["param_states"]["decoder"]["logits_dense"]["kernel"]["v"]
    assert v.shape == params["decoder"]["logits_dense"]["kernel"].shape


def test_scanned_model_loads_t5x_checkpoint(fixtures):
    path = fixtures / "t5x" / "test_t5_tiny.checkpoint_0"
    params = load_t5x(path, T5_1_1_TINY.replace(scan_layers=True))
    assert params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 8, 12)


def test_out_of_line_fixture_reads_through_tensorstore(fixtures):
    """The zarr/tensorstore layout the public mT5 checkpoints use."""
    tree = read_t5x_tree(fixtures / "t5x" / "tiny_t5" / "checkpoint_1")
    stored = tree["optimizer"]["state"]["param_states"]
    assert all(isinstance(v, StoredArray) for v in stored.values())
    assert stored["kernel"].shape == (10, 5)
    values = materialize(stored)
    np.testing.assert_array_equal(values["bias"], np.ones(5, np.float32))
    assert values["kernel"].dtype == np.float64 and values["kernel"].shape == (10, 5)
    assert 0.0 <= values["kernel"].min() and values["kernel"].max() <= 1.0
    assert int(values["step"]) == 1
    # a checkpoint without parameters is refused by the params loader, clearly
    with pytest.raises(CheckpointError, match="no parameters"):
        load_t5x(fixtures / "t5x" / "tiny_t5" / "checkpoint_1")


def test_specs_resolve_to_local_files_and_gcs():
    spec = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.encoder.x/"},
            "metadata": {"shape": [2]}}
    local = resolve_spec(spec, "/ckpt/checkpoint_1000000")
    assert local["kvstore"] == {"driver": "file",
                                "path": "/ckpt/checkpoint_1000000/target.encoder.x/"}
    remote = resolve_spec(spec, "gs://t5-data/pretrained_models/t5x/mt5_xxl/checkpoint_1000000")
    assert remote["kvstore"] == {
        "driver": "gcs", "bucket": "t5-data",
        "path": "pretrained_models/t5x/mt5_xxl/checkpoint_1000000/target.encoder.x/"}
    assert spec["kvstore"]["driver"] == "gfile"  # the stored spec is not mutated
