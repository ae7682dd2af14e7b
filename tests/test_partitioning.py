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
