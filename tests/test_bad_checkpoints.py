"""Unusable checkpoints fail with errors that name the file, the parameter and the fix."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from hf_reference import random_hf_mt5
from safetensors.numpy import load_file, save_file

from mtf.convert import CheckpointError, load_hf, load_params, load_t5x, save_hf
from mtf.model import T5Config

SMALL = dict(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4)


@pytest.fixture
def hf_dir(tmp_path):
    random_hf_mt5(seed=0, **SMALL).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_wrong_shape_names_parameter_and_both_shapes(hf_dir):
    name = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
    rewrite(hf_dir, lambda t: t.__setitem__(name, np.zeros((25, 16), np.float32)))
    with pytest.raises(CheckpointError) as e:
        load_hf(hf_dir)
    assert f"{name}: expected shape (24, 16), found (25, 16)" in str(e.value)


def test_missing_and_unknown_keys_are_listed(hf_dir):
    def change(t):
        del t["decoder.block.0.layer.2.layer_norm.weight"]
        t["encoder.block.9.layer.0.SelfAttention.q.weight"] = np.zeros((16, 16), np.float32)

    rewrite(hf_dir, change)
    with pytest.raises(CheckpointError) as e:
        load_hf(hf_dir)
    message = str(e.value)
    assert "missing from the checkpoint:\n  decoder.block.0.layer.2.layer_norm.weight" in message
    assert "not in the model:\n  encoder.block.9.layer.0.SelfAttention.q.weight" in message


def test_config_shape_mismatch_reports_every_parameter(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["d_ff"] = 32
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        load_hf(hf_dir)
    assert str(e.value).count("expected shape") == 3 * (2 + 2)  # wi_0, wi_1, wo per layer


def test_truncated_safetensors(hf_dir):
    data = (hf_dir / "model.safetensors").read_bytes()
    (hf_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        load_hf(hf_dir)


def test_truncated_pytorch_bin(hf_dir):
    state = random_hf_mt5(seed=0, **SMALL).state_dict()
    torch.save(state, hf_dir / "pytorch_model.bin")
    (hf_dir / "model.safetensors").unlink()
    data = (hf_dir / "pytorch_model.bin").read_bytes()
    (hf_dir / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot be loaded"):
        load_hf(hf_dir)


def test_pickle_that_is_not_a_state_dict(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    torch.save([torch.zeros(3)], hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_hf(hf_dir)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused_not_executed(hf_dir, capsys):
    (hf_dir / "model.safetensors").unlink()
    with open(hf_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"shared.weight": Payload()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_hf(hf_dir)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_files(tmp_path, hf_dir):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_hf(tmp_path)
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        load_hf(hf_dir)
    with pytest.raises(CheckpointError, match="no T5X checkpoint at"):
        load_t5x(tmp_path / "checkpoint_7")
    with pytest.raises(CheckpointError, match="not an mtf parameter directory"):
        load_params(tmp_path)


def test_truncated_t5x_msgpack(fixtures, tmp_path):
    data = (fixtures / "t5x" / "test_t5_tiny.checkpoint_0").read_bytes()
    (tmp_path / "checkpoint").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable T5X msgpack checkpoint"):
        load_t5x(tmp_path)


def test_t5x_checkpoint_for_another_model(fixtures):
    wrong = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, num_encoder_layers=3,
                     num_decoder_layers=2, head_dim=3, mlp_dim=32)
    with pytest.raises(CheckpointError) as e:
        load_t5x(fixtures / "t5x" / "test_t5_tiny.checkpoint_0", wrong)
    message = str(e.value)
    assert "encoder/layers_0/mlp/wi_0/kernel: expected shape (8, 32), found (8, 16)" in message
    assert "missing from the checkpoint:\n  encoder/layers_2/attention/key/kernel" in message


def test_t5x_out_of_line_array_missing_its_folder(fixtures, tmp_path):
    shutil.copytree(fixtures / "t5x" / "tiny_t5" / "checkpoint_1", tmp_path / "ckpt")
    (tmp_path / "ckpt").chmod(0o755)
    shutil.rmtree(tmp_path / "ckpt" / "state.param_states.kernel")
    from mtf.convert.t5x import materialize, read_t5x_tree

    tree = read_t5x_tree(tmp_path / "ckpt")
    with pytest.raises(CheckpointError,
                       match="array optimizer/state/param_states/kernel: its folder .* missing"):
        materialize(tree)


def test_save_hf_checks_params_against_config(hf_dir, tmp_path):
    config, params = load_hf(hf_dir)
    with pytest.raises(CheckpointError, match="token_embedder/embedding"):
        save_hf(config.replace(vocab_size=41), params, tmp_path / "out")
