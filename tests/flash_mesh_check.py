"""Run in a subprocess with 4 simulated CPU devices: the flash-attention path under a
(data 2, fsdp 1, model 2) mesh, its kernel in a shard_map over batch and heads (Pallas TPU
interpret mode), against the XLA attention on one device. Prints 'ok'."""
# ruff: noqa: E402

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import flax.linen as nn
import jax
import numpy as np
from jax.experimental.pallas import tpu as pltpu

sys.path.insert(0, str(Path(__file__).parent))
from test_flash_attention import CFG, _batch, _loss

from mtf import partitioning
from mtf.model.params import init_params

batch = _batch(packed=True)
params = init_params(CFG, jax.random.key(0))
want, want_grads = jax.value_and_grad(_loss)(params, CFG, batch, True)
flash = CFG.replace(attention_kernel="flash")
step = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 3))
with (jax.set_mesh(partitioning.make_mesh((2, 1, 2))),
      nn.logical_axis_rules(partitioning.RULES), pltpu.force_tpu_interpret_mode()):
    assert "shard_map" in str(jax.make_jaxpr(_loss, static_argnums=(1, 3))(
        params, flash, batch, True))
    got, got_grads = step(params, flash, batch, True)
np.testing.assert_allclose(got, want, rtol=1e-6)
for w, g in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads), strict=True):
    np.testing.assert_allclose(g, w, atol=5e-6 * float(np.abs(w).max()))
print("ok")
