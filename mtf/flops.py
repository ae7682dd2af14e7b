"""Model FLOPs per step and peak device FLOP/s, for the MFU estimate.

Model FLOPs count the matmuls of the forward pass (x2 for multiply-add) and twice that
for the backward pass; embedding lookups, norms and softmax are left out, as in the PaLM
appendix's MFU. Peak FLOP/s comes from the device's data sheet where known (bf16 dense)
or is measured with a dense matmul on the device itself (CPUs).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from mtf import hardware
from mtf.model.family import ModelConfig, family_of


def model_flops_per_step(config: ModelConfig, batch: int, inputs: int, targets: int
                         ) -> float:
    """Training FLOPs (forward + backward) of one step at these shapes, as the model's
    family counts them (`ModelFamily.model_flops_per_step`)."""
    return family_of(config).model_flops_per_step(batch, inputs, targets)


def measure_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a dense [size, size] matmul on the default device (best of `repeats`)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (size, size), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops_per_device(dtype: str = "bfloat16") -> float:
    """The data sheet's bf16 peak (`hardware.CHIPS`), or a matmul measured here (CPUs)."""
    chip = hardware.chip_of(jax.devices()[0].device_kind)
    if chip is not None:
        return chip.peak_bf16_flops
    return measure_peak_flops(dtype if jax.default_backend() != "cpu" else "float32")
