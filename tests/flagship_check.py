"""Builds gin/mt0_xxl.gin abstractly on 8 simulated devices (run by test_train.py).

argv: an xP3 tree. Prints one JSON line. Nothing the size of the model is allocated. The
step is built from the gin-bound `RunConfig` exactly as the train loop and
`mtf.plan` build it (`run_setup.setup`).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["XP3_DIR"] = sys.argv[1]

import gin  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402

from mtf import config, plan, run_setup  # noqa: E402

config.parse(["gin/mt0_xxl.gin"], ["MODEL_DIR=/tmp/unused"])
run = plan.run_config()
model_config, data, loss = run.model_config, run.data, run.loss
program = run_setup.setup(run).program
mesh = program.mesh
lowered = program.lower()
mixture = seqio.get_mixture_or_task(data.mixture_or_task_name)
params = sum(int(np.prod(x.shape)) for x in
             __import__("jax").tree.leaves(program.abstract_state.params))
layers = program.shardings.params["encoder"]
mlp = (layers["layers"] if model_config.scan_layers else layers["layers_0"])["mlp"]
batch = program.abstract_batch["encoder_input_tokens"].shape
print(json.dumps({
    "params": params, "emb_dim": model_config.emb_dim, "dtype": model_config.dtype,
    "dropout": model_config.dropout_rate, "mixture_tasks": len(mixture.tasks),
    "batch": batch[0], "lengths": [batch[1], program.abstract_batch[
        "decoder_target_tokens"].shape[1]],
    "pack": data.pack, "normalizing": loss.normalizing_factor, "z_loss": loss.z_loss,
    "mesh": dict(mesh.shape), "mlp_spec": [str(a) for a in mlp["wi_0"]["kernel"].spec],
    "initial": gin.query_parameter("%INITIAL_CHECKPOINT_PATH"),
    "lowered": len(lowered.as_text()) > 0}))
