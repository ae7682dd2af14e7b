"""Sharding: the rule table, mesh shapes, and equal numerics on 8 simulated devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec

from mtf import partitioning
from mtf.model import T5Config, abstract_params, logical_axes

HERE = Path(__file__).resolve().parent


def test_same_loss_and_gradients_on_every_mesh():
    """1 device vs data / fsdp / model meshes and their 2D combinations, with microbatches."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
    result = subprocess.run([sys.executable, str(HERE / "multidevice_check.py")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


def test_mesh_shape_resolution_and_errors():
    assert partitioning.mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="uses 4 devices, but there are 8"):
        partitioning.mesh_shape((2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        partitioning.mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.mesh_shape((-1, 3, 1), 8)


def test_every_parameter_maps_through_the_rule_table():
    config = T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, head_dim=8, mlp_dim=64, scan_layers=True)
    specs = logical_axes(config)
    assert partitioning.unannotated(specs, abstract_params(config)) == []
    names = {n for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
             for n in spec}
    assert names <= {name for name, _ in partitioning.RULES}


def test_an_unannotated_parameter_is_caught():
    specs = {"a": PartitionSpec("embed"), "b": None}
    shapes = {"a": jax.ShapeDtypeStruct((4,), "float32"),
              "b": jax.ShapeDtypeStruct((4, 4), "float32")}
    assert partitioning.unannotated(specs, shapes) == ["['b']"]


def test_microbatches_stay_spread_over_the_data_devices():
    """Microbatch i takes rows i, i + k, ...: every data-parallel device already holds its
    share of every microbatch, so the compiled step moves no batch rows between devices (a
    contiguous split, rows [i B/k, (i + 1) B/k), would sit on 1/k of them and be shuffled)."""
    code = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
from mtf import config, plan, run_setup
config.parse(["gin/mt0_tiny.gin"], ["MESH_SHAPE=(8, 1, 1)", "NUM_MICROBATCHES=4",
                                    "BATCH_SIZE=32", "PACK=False"])
run = plan.run_config()
program = run_setup.setup(run).program
text = program.compile().as_text()
print(text.count(" collective-permute("), text.count(" all-gather("))
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    permutes, gathers = map(int, done.stdout.split()[-2:])
    assert (permutes, gathers) == (0, 0)
