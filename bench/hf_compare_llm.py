"""mtf's decoder-only train step and greedy decoding beside Hugging Face on the same shapes.

    python bench/hf_compare_llm.py [--family llama bloom] [--vocab 32000] [--steps 10]

For each family: HF `LlamaForCausalLM` / `BloomForCausalLM` (random init, the shapes of
gin/models/<family>_small.gin) trained with `torch.optim.AdamW` on synthetic sequences of
--inputs + --targets tokens (the prompt's labels -100, as x-LLM trains), then `python -m
mtf.bench train --model <family>_small --optimizer adamw` with the same shapes, in
separate processes one after the other on the same machine; then HF `generate` (greedy,
its cache, exactly --targets new tokens) beside `python -m mtf.bench decode`. Prints one
JSON line per family: tokens/s of each and mtf/HF. Needs the `test` extra (torch,
transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# gin/models/llama_small.gin and bloom_small.gin
SHAPES = {"llama": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=4,
                        head_dim=64, intermediate_size=1408, num_hidden_layers=8,
                        rms_norm_eps=1e-6, tie_word_embeddings=False),
          "bloom": dict(hidden_size=512, n_head=8, n_layer=8)}


def hf_model(family: str, vocab: int):
    import torch
    from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SHAPES["llama"]))
    return BloomForCausalLM(BloomConfig(vocab_size=vocab, **SHAPES["bloom"]))


def hf_train_tokens_per_s(family: str, vocab: int, batch: int, inputs: int, targets: int,
                          steps: int) -> float:
    import torch

    net = hf_model(family, vocab).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    length = inputs + targets

    def step():
        ids = torch.randint(2, vocab, (batch, length + 1))
        labels = ids.clone()
        labels[:, :inputs + 1] = -100  # the loss on the last `targets` predictions
        loss = net(input_ids=ids[:, :-1], labels=labels[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * length * steps / (time.perf_counter() - start)


def hf_generated_tokens_per_s(family: str, vocab: int, batch: int, inputs: int, targets: int,
                              repeats: int) -> float:
    import torch

    net = hf_model(family, vocab).eval()
    ids = torch.randint(3, vocab, (batch, inputs))

    def generate():
        with torch.no_grad():
            return net.generate(input_ids=ids, max_new_tokens=targets, min_new_tokens=targets,
                                do_sample=False, num_beams=1, use_cache=True, pad_token_id=0)

    generate()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate()
        best = min(best, time.perf_counter() - start)
    return batch * (out.shape[1] - inputs) / best


def mtf_bench(command: str, family: str, vocab: int, batch: int, inputs: int, targets: int,
              *extra: str) -> dict:
    """The last JSON line of `python -m mtf.bench <command>` with these shapes."""
    out = subprocess.run(
        [sys.executable, "-m", "mtf.bench", command, "--model", f"{family}_small", "--vocab",
         str(vocab), "--batch", str(batch), "--inputs", str(inputs), "--targets",
         str(targets), *extra],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["llama", "bloom"],
                        choices=sorted(SHAPES))
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=96)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "processor": platform.processor() or platform.machine(),
               "python": platform.python_version()}
    for family in args.family:
        shapes = (family, args.vocab, args.batch, args.inputs, args.targets)
        hf_train = hf_train_tokens_per_s(*shapes, args.steps)
        mtf_train = mtf_bench("train", *shapes, "--steps", str(args.steps), "--optimizer",
                              "adamw")
        hf_decode = hf_generated_tokens_per_s(*shapes, args.repeats)
        mtf_decode = mtf_bench("decode", *shapes, "--repeats", str(args.repeats))
        print(json.dumps({
            "family": family, "vocab": args.vocab, "batch": args.batch,
            "inputs": args.inputs, "targets": args.targets,
            "hf_train_tokens_per_s": round(hf_train, 1),
            "mtf_train_tokens_per_s": round(mtf_train["tokens_per_s"], 1),
            "train_mtf_over_hf": round(mtf_train["tokens_per_s"] / hf_train, 3),
            "hf_generated_tokens_per_s": round(hf_decode, 1),
            "mtf_generated_tokens_per_s": round(mtf_decode["generated_tokens_per_s"], 1),
            "decode_mtf_over_hf": round(mtf_decode["generated_tokens_per_s"] / hf_decode, 3),
            "machine": machine}), flush=True)


if __name__ == "__main__":
    main()
