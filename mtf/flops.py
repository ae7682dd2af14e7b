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
from mtf.model import T5Config


def model_flops_per_step(config: T5Config, batch: int, inputs: int, targets: int) -> float:
    """Training FLOPs (forward + backward) of one step at these shapes. With LoRA the frozen
    base's weight gradients are not computed: its matmuls cost 4x their multiply-adds, not
    6x (attention's activation-by-activation products keep both backward matmuls; the
    adapters' own rank-r matmuls are left out, under 1% at rank 8)."""
    emb, heads, hd, mlp = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    n_in = len(config.mlp_activations)
    proj = 4 * emb * heads * hd                    # q, k, v, o
    ffn = (n_in + 1) * emb * mlp                   # wi_* and wo
    cross = 2 * emb * heads * hd                   # cross-attention q, o (per target token)
    cross_kv = 2 * emb * heads * hd                # its k, v (per input token)
    weights = batch * (inputs * (config.num_encoder_layers * (proj + ffn)
                                 + config.num_decoder_layers * cross_kv)
                       + targets * (config.num_decoder_layers * (proj + ffn + cross)
                                    + emb * config.vocab_size))
    attention = batch * (inputs * config.num_encoder_layers * 2 * inputs * heads * hd
                         + targets * config.num_decoder_layers * 2 * (targets + inputs)
                         * heads * hd)
    weight_passes = 4.0 if config.lora is not None else 6.0
    return weight_passes * weights + 6.0 * attention


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
