"""The forward-pass run: builds the configured model and runs it on one synthetic batch.

Until the training loop lands, this is what `python -m mtf.launch` runs; it exercises the
same config -> model path that training will.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mtf.model import T5Config, Transformer, init_params


def forward_pass(model_config: T5Config, batch_size: int = 4, inputs_length: int = 64,
                 targets_length: int = 32, seed: int = 0) -> dict[str, float]:
    """Random-init forward pass; prints and returns the token cross-entropy and timing."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(2, model_config.vocab_size, (batch_size, targets_length))
    batch = {
        "encoder_input_tokens": rng.integers(2, model_config.vocab_size,
                                             (batch_size, inputs_length)),
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
    }
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    params = init_params(model_config, jax.random.key(seed))
    n_params = sum(x.size for x in jax.tree.leaves(params))

    @jax.jit
    def loss_fn(params, batch):
        logits = Transformer(model_config).apply({"params": params}, **batch,
                                                 enable_dropout=False)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)
        return nll.mean()

    shape = (batch_size, targets_length, model_config.vocab_size)
    loss_fn(params, batch).block_until_ready()  # compile
    start = time.perf_counter()
    loss = loss_fn(params, batch)
    loss = float(loss)
    seconds = time.perf_counter() - start
    if not np.isfinite(loss):
        raise FloatingPointError(f"forward pass gave a non-finite loss ({loss})")
    tokens = batch_size * (inputs_length + targets_length)
    print(f"model: {n_params / 1e6:.2f}M parameters, activations {model_config.dtype}")
    print(f"logits {shape}; random-init cross-entropy {loss:.4f} "
          f"(uniform would be {np.log(model_config.vocab_size):.4f})")
    print(f"forward pass: {seconds * 1e3:.1f} ms, {tokens / seconds:.0f} tokens/s "
          f"on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    return {"loss": loss, "seconds": seconds, "parameters": float(n_params)}
