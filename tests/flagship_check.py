"""Builds gin/mt0_xxl.gin abstractly on 8 simulated devices (run by test_train.py).

argv: an xP3 tree. Prints one JSON line. Nothing the size of the model is allocated.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["XP3_DIR"] = sys.argv[1]

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402

from mtf import config, optim, partitioning, state, step  # noqa: E402
from mtf.data import batches  # noqa: E402

config.parse(["gin/mt0_xxl.gin"], ["MODEL_DIR=/tmp/unused"])
model_config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
data = gin.query_parameter("train.train.data").scoped_configurable_fn()
loss = gin.query_parameter("train.train.loss").scoped_configurable_fn()
mesh = partitioning.make_mesh(gin.query_parameter("%MESH_SHAPE"))
tx = optim.make_optimizer(gin.query_parameter("%OPTIMIZER"),
                          optim.make_schedule("constant", gin.query_parameter("%LEARNING_RATE")))
abstract, shardings = state.state_shardings(model_config, tx, mesh)
mixture = seqio.get_mixture_or_task(data.mixture_or_task_name)
lengths = batches.task_feature_lengths(data.task_feature_lengths)
batch_size = gin.query_parameter("%BATCH_SIZE")
spec = partitioning.batch_sharding(mesh)
abstract_batch = {k: jax.ShapeDtypeStruct(
    (batch_size, lengths["inputs"] if k.startswith("encoder") else lengths["targets"]),
    np.int32, sharding=spec) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                       "decoder_target_tokens", "decoder_loss_weights")}
abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              abstract, shardings)
fn = jax.jit(lambda s, b: step.train_step(s, b, None, config=model_config, optimizer=tx,
                                          loss=loss), donate_argnums=(0,))
with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.RULES):
    lowered = fn.lower(abstract_state, abstract_batch)
params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
mlp = shardings.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec
print(json.dumps({
    "params": params, "emb_dim": model_config.emb_dim, "dtype": model_config.dtype,
    "dropout": model_config.dropout_rate, "mixture_tasks": len(mixture.tasks),
    "batch": batch_size, "lengths": [lengths["inputs"], lengths["targets"]],
    "pack": data.pack, "normalizing": loss.normalizing_factor, "z_loss": loss.z_loss,
    "mesh": dict(mesh.shape), "mlp_spec": [str(a) for a in mlp],
    "initial": gin.query_parameter("%INITIAL_CHECKPOINT_PATH"),
    "lowered": "stablehlo" in lowered.as_text()[:2000] or len(lowered.as_text()) > 0}))
