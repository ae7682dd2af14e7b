"""Hugging Face's MT5 as the independent numerical reference for the tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import MT5Config, MT5ForConditionalGeneration


def random_hf_mt5(seed: int, **config) -> MT5ForConditionalGeneration:
    """A randomly initialised MT5 in eval mode with an untied lm_head, as mT5 has."""
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(MT5Config(dropout_rate=0.0, **config))
    vocab, dim = model.shared.weight.shape
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, dim) * dim**-0.5)
    with torch.no_grad():  # non-trivial norm scales, so a transposed scale would show
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model.eval()


def hf_logits(model, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
            attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long),
            decoder_attention_mask=torch.tensor(batch["decoder_target_tokens"] > 0,
                                                dtype=torch.long))
    return out.logits.float().numpy()
