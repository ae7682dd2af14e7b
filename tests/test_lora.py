"""LoRA adapters: exact start, frozen base, merging, microbatches, and HF PEFT round trips
(PEFT on torch CPU as the independent reference)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from mtf import partitioning, state, step
from mtf.convert import CheckpointError, adapters, load_hf, peft
from mtf.errors import SettingError
from mtf.model import LoraConfig, T5Config, Transformer, init_params, lora
from mtf.model.family import family_of
from mtf.optim import make_optimizer
from tests.conftest import random_batch
from tests.hf_reference import hf_logits, random_hf_mt5

CONFIG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=2, head_dim=8, mlp_dim=48, dropout_rate=0.0)
ADAPTED = CONFIG.replace(lora=LoraConfig(rank=4, alpha=8.0))
HF_SHAPES = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def logits(config, params, batch):
    return np.asarray(Transformer(config).apply({"params": params}, **batch,
                                                enable_dropout=False))


def real_positions(batch):
    """Target positions that are not padding (HF and mtf mask padded queries differently)."""
    return batch["decoder_target_tokens"] > 0


def randomized(adapter_tree, seed=1, scale=0.1):
    leaves, tree = jax.tree.flatten(adapter_tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [np.asarray(scale * jax.random.normal(k, x.shape))
                                     for k, x in zip(keys, leaves, strict=True)])


def test_zero_b_is_the_base_exactly_and_merging_keeps_the_adapted_logits():
    # (a scanned tree's merge is checked against HF PEFT in the export test)
    config, adapted = CONFIG, ADAPTED
    batch = random_batch(np.random.default_rng(0), 64)
    base, fresh = lora.split(init_params(adapted, jax.random.key(0)))
    assert all(not np.any(b) for b in jax.tree.leaves(
        {k: v for k, v in traverse_util.flatten_dict(fresh).items() if k[-1] == "lora_b"}))
    np.testing.assert_array_equal(logits(adapted, lora.join(base, fresh), batch),
                                  logits(config, base, batch))
    trained = randomized(fresh)
    out = logits(adapted, lora.join(base, trained), batch)
    assert np.abs(out - logits(config, base, batch)).max() > 1e-2  # the adapters act
    merged = lora.merge(lora.join(base, trained), adapted)
    assert set(traverse_util.flatten_dict(merged)) == set(traverse_util.flatten_dict(base))
    np.testing.assert_allclose(logits(config, merged, batch), out, atol=1e-5, rtol=1e-5)


def _lora_state(config, optimizer):
    mesh = partitioning.make_mesh((1, 1, 1), jax.devices()[:1])
    return state.init_state(config, optimizer, mesh, jax.random.key(0))


def test_training_moves_only_the_adapters_and_optimizer_state_is_theirs():
    config = ADAPTED.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.1))
    optimizer = make_optimizer("adamw", lambda _: 1e-2)
    start = _lora_state(config, optimizer)
    frozen0 = jax.tree.map(np.asarray, start.frozen)
    adapters0 = jax.tree.map(np.asarray, start.params)
    # optimizer state: AdamW's two moments of the adapters, nothing of the base
    moments = sum(x.size for x in jax.tree.leaves(start.opt_state) if x.ndim)
    assert moments == 2 * lora.count(start.params)
    train = jax.jit(lambda s, b, r: step.train_step(s, b, r, config=config, optimizer=optimizer,
                                                    loss=step.LossConfig()))
    batch = random_batch(np.random.default_rng(0), 64, batch=4)
    current, losses = start, []
    for _ in range(4):
        current, metrics = train(current, batch, jax.random.key(3))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    for path, before in traverse_util.flatten_dict(frozen0).items():
        after = traverse_util.flatten_dict(current.frozen)[path]
        np.testing.assert_array_equal(np.asarray(after), before, err_msg=str(path))
    changed = [not np.array_equal(np.asarray(after), before) for before, after in zip(
        jax.tree.leaves(adapters0), jax.tree.leaves(current.params), strict=True)]
    assert all(changed)


def test_microbatches_give_the_one_batch_adapter_gradients():
    optimizer = make_optimizer("adafactor")
    start = _lora_state(ADAPTED, optimizer)
    params = randomized(start.params)  # non-zero B: gradients reach both A and B
    model = family_of(ADAPTED)
    batch = random_batch(np.random.default_rng(1), 64, batch=8)
    loss = step.LossConfig(normalizing_factor="AVERAGE_PER_SEQUENCE")
    one = jax.jit(lambda p, f: step.gradients(p, batch, None, model, loss, 1, f))
    four = jax.jit(lambda p, f: step.gradients(p, batch, None, model, loss, 4, f))
    (l1, g1, _), (l4, g4, _) = one(params, start.frozen), four(params, start.frozen)
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-6)
    assert set(traverse_util.flatten_dict(g1)) == set(traverse_util.flatten_dict(params))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_bad_settings_are_named():
    with pytest.raises(SettingError, match=r"matches no kernel.*encoder/layers_0/attention/"
                       r"query/kernel"):
        lora.targeted(CONFIG.replace(lora=LoraConfig(targets="q_proj")))
    with pytest.raises(SettingError, match=r"LORA_RANK=40 is larger than kernel "):
        lora.targeted(CONFIG.replace(lora=LoraConfig(rank=40)))
    with pytest.raises(SettingError, match="LORA_RANK=0"):
        LoraConfig(rank=0)
    with pytest.raises(SettingError, match="not a regular expression"):
        LoraConfig(targets="(query")
    # the mesh/state builder refuses them before anything is compiled
    with pytest.raises(SettingError, match="matches no kernel"):
        _lora_state(CONFIG.replace(lora=LoraConfig(targets="lm_head")), make_optimizer())


def test_adapters_refuse_another_base():
    base = lora.split(init_params(ADAPTED, jax.random.key(0)))[0]
    other = lora.split(init_params(ADAPTED, jax.random.key(5)))[0]
    record = adapters.base_record("/ckpt/base", ADAPTED, base)
    adapters.check_base(record, adapters.base_record("/elsewhere/base", ADAPTED, base), "run")
    with pytest.raises(CheckpointError, match=r"trained on the base /ckpt/base.*other "
                       r"weights"):
        adapters.check_base(record, adapters.base_record("/ckpt/other", ADAPTED, other), "run")
    bigger = ADAPTED.replace(emb_dim=64)
    with pytest.raises(CheckpointError, match="a model of another shape"):
        adapters.check_base(record, adapters.base_record(
            "/ckpt/big", bigger, lora.split(init_params(bigger, jax.random.key(0)))[0]), "run")


def _hf_base(tmp_path):
    """A random HF MT5 (float32) saved and read into mtf: the base on both sides."""
    model = random_hf_mt5(0, **HF_SHAPES)
    model.save_pretrained(tmp_path / "base")
    config, params = load_hf(tmp_path / "base")
    return model, config.replace(dropout_rate=0.0), params


@pytest.mark.parametrize("scan", [False, True])
def test_exported_adapters_give_mtf_logits_in_hf_peft_and_import_back_exactly(tmp_path, scan):
    import peft as hf_peft

    model, config, params = _hf_base(tmp_path)
    targets = "encoder/.*attention/(query|value)/kernel$|mlp/w[io]"
    adapted = config.replace(lora=LoraConfig(rank=4, alpha=12.0, targets=targets),
                             scan_layers=scan)
    if scan:
        from mtf.model import scan_params

        params = scan_params(params, config)
    _, fresh = lora.split(init_params(adapted, jax.random.key(0)))
    trained = randomized(fresh)
    batch = random_batch(np.random.default_rng(2), 64)
    ours = logits(adapted, lora.join(params, trained), batch)

    peft.save(tmp_path / "adapter", adapted, trained, base_name=str(tmp_path / "base"))
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["r"] == 4 and written["lora_alpha"] == 12.0
    assert "encoder.block.1.layer.0.SelfAttention.v" in written["target_modules"]
    assert "decoder.block.0.layer.0.SelfAttention.q" not in written["target_modules"]
    reference = hf_peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    theirs = hf_logits(reference, batch)
    real = real_positions(batch)
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=1e-4)

    imported_config, imported = peft.load(tmp_path / "adapter", config)
    expected = lora.unscan_adapters(trained) if scan else trained
    flat_in, flat_out = (traverse_util.flatten_dict(t) for t in (expected, imported))
    assert set(flat_in) == set(flat_out)
    for key, value in flat_in.items():
        np.testing.assert_array_equal(flat_out[key], np.asarray(value), err_msg=str(key))
    assert lora.targeted(imported_config).keys() == lora.targeted(
        adapted.replace(scan_layers=False)).keys()


def test_adapters_trained_with_hf_peft_import_to_the_same_logits(tmp_path):
    import peft as hf_peft

    model, config, params = _hf_base(tmp_path)
    torch.manual_seed(1)
    peft_model = hf_peft.get_peft_model(model, hf_peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["q", "v", "wo"], init_lora_weights=False,
        task_type="SEQ_2_SEQ_LM"))  # init_lora_weights=False: random B, as after training
    peft_model.eval().save_pretrained(tmp_path / "trained")
    batch = random_batch(np.random.default_rng(3), 64)
    theirs = hf_logits(peft_model, batch)
    real = real_positions(batch)
    adapted, imported = peft.load(tmp_path / "trained", config)
    np.testing.assert_allclose(logits(adapted, lora.join(params, imported), batch)[real],
                               theirs[real], atol=1e-4, rtol=1e-4)
    merged_config, merged = adapters.apply(str(tmp_path / "base"), config, params,
                                           str(tmp_path / "trained"))
    np.testing.assert_allclose(logits(merged_config, merged, batch)[real], theirs[real],
                               atol=1e-4, rtol=1e-4)


def test_peft_folders_of_other_models_are_refused(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM",
         "base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: np.zeros((4, 32), np.float32)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="task_type 'CAUSAL_LM'"):
        peft.load(folder, CONFIG)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["task_type"] = "SEQ_2_SEQ_LM"
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match=r"self_attn\.q_proj.*not a LoRA adapter of an "
                       r"attention or MLP layer of this base.*meta-llama/Llama-2-7b-hf"):
        peft.load(folder, CONFIG)
    settings.update(peft_type="IA3")
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match="peft_type 'IA3'"):
        peft.load(folder, CONFIG)
    # an mT5 adapter of another size
    peft.save(tmp_path / "small", ADAPTED, randomized(
        lora.split(init_params(ADAPTED, jax.random.key(0)))[1]))
    with pytest.raises(CheckpointError, match="for a model of another size"):
        peft.load(tmp_path / "small", CONFIG.replace(emb_dim=64))


@pytest.mark.slow
def test_same_lora_loss_and_gradients_on_eight_devices():
    script = Path(__file__).with_name("multidevice_check.py")
    result = subprocess.run([sys.executable, str(script), "lora"], capture_output=True,
                            text=True, timeout=600, cwd=script.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "lora ok" in result.stdout


def test_lora_model_flops_leave_out_the_frozen_weight_gradients():
    """MFU of a LoRA run (train's log, bench, plan) counts 4x the base's multiply-adds, not
    6x: no weight gradients; attention's activation products keep their full 6x."""
    from mtf import flops

    base = T5Config(vocab_size=250112, emb_dim=512, num_heads=6, num_encoder_layers=8,
                    num_decoder_layers=8, head_dim=64, mlp_dim=1024)
    adapted = base.replace(lora=LoraConfig())
    one_token = [flops.model_flops_per_step(c, 8, 1, 1) for c in (base, adapted)]
    assert one_token[1] / one_token[0] == pytest.approx(2 / 3, rel=1e-3)  # weights only
    long = [flops.model_flops_per_step(c, 8, 1024, 1024) for c in (base, adapted)]
    attention = 6 * 8 * (1024 * 8 * 2 * 1024 * 6 * 64 + 1024 * 8 * 2 * 2048 * 6 * 64)
    assert long[0] - long[1] == pytest.approx((long[0] - attention) / 3, rel=1e-9)
