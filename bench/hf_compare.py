"""mtf's train step beside Hugging Face transformers (PyTorch, Adafactor) on the same shapes.

    python bench/hf_compare.py [--model small] [--vocab 32128 250112] [--steps 10]
    python bench/hf_compare.py --decode [--model small] [--vocab 250112]
    python bench/hf_compare.py --lora 8 [--model small] [--vocab 250112]

For each vocabulary: HF `MT5ForConditionalGeneration` (random init, the mT5 shapes of
gin/models/mt5_<model>.gin) trained with `transformers.optimization.Adafactor` (T5X-like:
scale_parameter, no relative step, lr 1e-3, no warm-up init) on synthetic batches, then
`python -m mtf.bench train` with the same shapes, in separate processes one after the
other on the same machine. Prints one JSON line per vocabulary with both throughputs and
mtf/HF. With --decode: HF `generate` (greedy, its cache, min_new_tokens = max_new_tokens =
--targets so every row generates the same number of tokens) beside `python -m mtf.bench
decode` (the same), generated tokens/s of each and mtf/HF. With --lora R: HF PEFT LoRA
(rank R, alpha 2R, q/k/v/o/wi_0/wi_1/wo, AdamW) on the frozen HF model beside `python -m
mtf.bench train --lora_rank R --optimizer adamw` (the same adapters and optimizer; it
also reports mtf's full finetuning of the same shapes). Needs the `test` extra (torch,
transformers, peft).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SHAPES = {  # emb, heads, layers, mlp (mT5; head_dim 64)
    "small": (512, 6, 8, 1024), "base": (768, 12, 12, 2048), "large": (1024, 16, 24, 2816),
}


def _hf_mt5(model: str, vocab: int):
    """A randomly initialised HF MT5 of the mT5 shapes of gin/models/mt5_<model>.gin."""
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    torch.manual_seed(0)
    emb, heads, layers, mlp = SHAPES[model]
    config = MT5Config(vocab_size=vocab, d_model=emb, d_kv=64, d_ff=mlp, num_layers=layers,
                       num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0,
                       feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return MT5ForConditionalGeneration(config)


def _train_seconds(net, opt, vocab: int, batch: int, inputs: int, targets: int,
                   steps: int) -> float:
    """Seconds for `steps` HF training steps on random batches, after one warm-up step."""
    import torch

    def step():
        ids = torch.randint(2, vocab, (batch, inputs))
        labels = torch.randint(2, vocab, (batch, targets))
        loss = net(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def hf_tokens_per_s(model: str, vocab: int, batch: int, inputs: int, targets: int,
                    steps: int) -> float:
    from transformers.optimization import Adafactor

    net = _hf_mt5(model, vocab).train()
    opt = Adafactor(net.parameters(), lr=1e-3, scale_parameter=True, relative_step=False,
                    warmup_init=False, clip_threshold=1.0, decay_rate=-0.8)

    return batch * (inputs + targets) * steps / _train_seconds(net, opt, vocab, batch, inputs,
                                                               targets, steps)


def hf_peft_result(model: str, vocab: int, batch: int, inputs: int, targets: int,
                   steps: int, rank: int) -> dict:
    """HF PEFT LoRA training: tokens/s and the optimizer state's bytes."""
    import peft
    import torch

    net = peft.get_peft_model(_hf_mt5(model, vocab), peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="SEQ_2_SEQ_LM",
        target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])).train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    seconds = _train_seconds(net, opt, vocab, batch, inputs, targets, steps)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values()
                      for t in s.values() if torch.is_tensor(t))
    return {"tokens_per_s": batch * (inputs + targets) * steps / seconds,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "optimizer_state_bytes": state_bytes}


def hf_generated_tokens_per_s(model: str, vocab: int, batch: int, inputs: int, targets: int,
                              repeats: int) -> float:
    import torch

    net = _hf_mt5(model, vocab).eval()
    ids = torch.randint(2, vocab, (batch, inputs))

    def generate():
        with torch.no_grad():
            return net.generate(input_ids=ids, max_new_tokens=targets, min_new_tokens=targets,
                                do_sample=False, num_beams=1, use_cache=True)

    generate()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate()
        best = min(best, time.perf_counter() - start)
    return batch * (out.shape[1] - 1) / best


def _mtf_bench(command: str, model: str, vocab: int, batch: int, inputs: int, targets: int,
               *extra: str) -> dict:
    """The last JSON line of `python -m mtf.bench <command>` with these shapes."""
    out = subprocess.run(
        [sys.executable, "-m", "mtf.bench", command, "--model", model, "--vocab", str(vocab),
         "--batch", str(batch), "--inputs", str(inputs), "--targets", str(targets), *extra],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def mtf_decode_result(model: str, vocab: int, batch: int, inputs: int, targets: int,
                      repeats: int) -> dict:
    return _mtf_bench("decode", model, vocab, batch, inputs, targets, "--repeats",
                      str(repeats))


def mtf_result(model: str, vocab: int, batch: int, inputs: int, targets: int, steps: int,
               dtype: str) -> dict:
    return _mtf_bench("train", model, vocab, batch, inputs, targets, "--steps", str(steps),
                      "--dtype", dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=sorted(SHAPES))
    parser.add_argument("--vocab", type=int, nargs="+", default=[32128, 250112])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--decode", action="store_true",
                        help="compare greedy generation instead of the train step")
    parser.add_argument("--lora", type=int, default=0, metavar="RANK",
                        help="compare LoRA training (HF PEFT) at this rank")
    args = parser.parse_args()
    import torch

    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "processor": platform.processor() or platform.machine(),
               "python": platform.python_version()}
    for vocab in args.vocab:
        shapes = (args.model, vocab, args.batch, args.inputs, args.targets, args.steps)
        if args.decode:
            hf = hf_generated_tokens_per_s(*shapes)
            mtf = mtf_decode_result(*shapes)
            print(json.dumps({"bench": "decode", "model": args.model, "vocab": vocab,
                              "batch": args.batch, "inputs": args.inputs,
                              "targets": args.targets,
                              "hf_generated_tokens_per_s": round(hf, 1),
                              "mtf_generated_tokens_per_s": round(
                                  mtf["generated_tokens_per_s"], 1),
                              "mtf_over_hf": round(mtf["generated_tokens_per_s"] / hf, 3),
                              "mtf_score_speedup_vs_separate": round(mtf["score_speedup"], 2),
                              "machine": machine}), flush=True)
            continue
        if args.lora:
            hf = hf_peft_result(*shapes, args.lora)
            mtf = _mtf_bench("train", *shapes[:5], "--steps", str(args.steps), "--dtype",
                             args.dtype, "--lora_rank", str(args.lora), "--optimizer", "adamw")
            print(json.dumps({
                "bench": "lora", "model": args.model, "vocab": vocab, "batch": args.batch,
                "inputs": args.inputs, "targets": args.targets, "rank": args.lora,
                "hf_peft_tokens_per_s": round(hf["tokens_per_s"], 1),
                "mtf_lora_tokens_per_s": round(mtf["tokens_per_s"], 1),
                "mtf_over_hf_peft": round(mtf["tokens_per_s"] / hf["tokens_per_s"], 3),
                "mtf_full_tokens_per_s": round(mtf["full_tokens_per_s"], 1),
                "hf_trainable": hf["trainable_parameters"],
                "mtf_trainable": mtf["trainable_parameters"],
                "hf_optimizer_state_bytes": hf["optimizer_state_bytes"],
                "mtf_optimizer_state_bytes": mtf["optimizer_state_bytes"],
                "mtf_full_optimizer_state_bytes": mtf["full_optimizer_state_bytes"],
                "mtf_temp_bytes": mtf["temp_bytes"], "mtf_full_temp_bytes":
                mtf["full_temp_bytes"], "machine": machine}), flush=True)
            continue
        hf = hf_tokens_per_s(*shapes)
        mtf = mtf_result(*shapes, args.dtype)
        print(json.dumps({"model": args.model, "vocab": vocab, "batch": args.batch,
                          "inputs": args.inputs, "targets": args.targets,
                          "hf_tokens_per_s": round(hf, 1),
                          "mtf_tokens_per_s": round(mtf["tokens_per_s"], 1),
                          "mtf_over_hf": round(mtf["tokens_per_s"] / hf, 3),
                          "mtf_mfu": round(mtf["mfu"], 3), "machine": machine}), flush=True)


if __name__ == "__main__":
    main()
