"""`python -m mtf.bench train|decode|input ...`: throughput of the real train step and of
decoding / scoring, on synthetic batches, and of the input stream a run reads.

    python -m mtf.bench train --model small --vocab 250112 --batch 8 --inputs 128 \
        --targets 32 --steps 10 [--dtype float32|bfloat16] [--mesh -1,1,1] [--microbatches 1]

Same step, optimizer (Adafactor, T5X settings) and loss (z-loss 1e-4) as training; the
model shapes come from gin/models/mt5_<model>.gin (or gin/models/<model>.gin for the
decoder-only `llama_*` and `bloom_*`: one sequence of --inputs + --targets tokens, the
loss on the last --targets). After warm-up (compile + one step) it
times `--steps` steps and prints a final JSON line: tokens_per_s (batch x (inputs +
targets) per second), step_s, peak_flops_per_s (a dense matmul measured in the same run on
the same devices), model_flops_per_step, mfu, trainable_parameters, optimizer_state_bytes
and the compiled step's argument/temp bytes. `--lora_rank 8` trains LoRA adapters on a
frozen base and adds the same numbers for full finetuning (`full_*`) of the same shapes.

    python -m mtf.bench decode --model small --vocab 250112 --batch 8 --inputs 128 \
        --targets 32 [--repeats 3]

Greedy decoding on the cache (EOS held off, so every row generates exactly --targets
tokens): generated tokens/s. Also rank classification of --choices answers per prompt
(length --targets) in one batch (the prompt encoded once) against --choices separate
forward passes (the prompt encoded each time): score_s, separate_s and their ratio.

    python -m mtf.bench input --gin_file=gin/mt0_small.gin --gin.XP3_DIR=... \
        [--gin.BATCH_SIZE=64] [--gin.DATA_CACHE_DIR=...] [--resume_step 30000] \
        [--process_index i --process_count n] [--batches 30] [--step_s 0.106]

The stream the trainer reads for that recipe (same tasks, lengths, packing, cache, this
process's share), on the CPU, no model: first_batch_s (from the command's start, imports
included, to the first batch), then examples_per_s and tokens_per_s (non-padding tokens)
over --batches batches; resume_s: the command's start-up plus building a stream at
--resume_step and reading its first batch, as a restarted run would (a packed stream
resumes from the packer state after the timed batches, as a checkpoint holds it);
cache_build_s: the manifest's build time when DATA_CACHE_DIR is set. --step_s (the step
time `mtf.plan` gives) adds need_examples_per_s (this process's batch per step) and the
ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import gin
import jax
import numpy as np

from mtf import cli, config, flops, partitioning, state, step
from mtf.config import split_gin_flags
from mtf.errors import SettingError
from mtf.eval import decoding, scoring
from mtf.model import BatchSpec, LoraConfig, init_params
from mtf.model.config import REMAT_POLICIES


def train_bench(args: argparse.Namespace) -> dict:
    """The train step's speed and memory; with --lora_rank, LoRA's beside full finetuning
    of the same shapes (same optimizer and batches)."""
    model_config = _model_config(args).replace(remat_policy=args.remat)
    if not args.lora_rank:
        return _train_run(args, model_config)
    adapted = model_config.replace(lora=LoraConfig(rank=args.lora_rank,
                                                   alpha=2.0 * args.lora_rank))
    result = _train_run(args, adapted)
    full = _train_run(args, model_config)
    result.update({f"full_{k}": full[k] for k in (
        "tokens_per_s", "step_s", "mfu", "trainable_parameters", "optimizer_state_bytes",
        "argument_bytes", "temp_bytes", "compile_s")})
    result["speedup_over_full"] = result["tokens_per_s"] / full["tokens_per_s"]
    return result


def _train_run(args: argparse.Namespace, model_config) -> dict:
    """The step `run_setup.setup` builds for a run of these shapes, on synthetic batches."""
    from mtf import run_config, run_setup  # TensorFlow (the data config): after the quiet start
    from mtf.data import batches  # (the same)

    learning_rate = 1e-3 if args.optimizer == "adafactor" else 1e-4
    run = run_setup.setup(run_config.RunConfig(
        model_config=model_config, model_dir="(mtf.bench saves nothing)", train_steps=args.steps,
        batch_size=args.batch, mesh_shape=tuple(int(x) for x in args.mesh.split(",")),
        data=batches.DataConfig(task_feature_lengths={"inputs": args.inputs,
                                                      "targets": args.targets}, pack=False),
        optimizer=run_config.OptimizerConfig(name=args.optimizer, learning_rate=learning_rate),
        loss=step.LossConfig(chunks=args.loss_chunks), num_microbatches=args.microbatches))
    compiled_step, mesh, tx = run.program, run.mesh, run.optimizer
    train_state = state.init_state(model_config, tx, mesh, jax.random.key(0))
    rng = np.random.default_rng(0)

    def batch():
        host = _synthetic_batch(model_config.batch_spec, rng, args)
        return {k: jax.device_put(v, compiled_step.batch_sharding) for k, v in host.items()}

    start = time.perf_counter()
    compiled = compiled_step.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    batches = [batch() for _ in range(2)]
    train_state, metrics = compiled(train_state, batches[0], None)  # warm-up step
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for i in range(args.steps):
        train_state, metrics = compiled(train_state, batches[i % 2], None)
    jax.block_until_ready((train_state, metrics["loss"]))
    step_s = (time.perf_counter() - start) / args.steps
    peak = flops.measure_peak_flops(args.dtype) * jax.device_count()
    model_flops = flops.model_flops_per_step(model_config, args.batch, args.inputs, args.targets)
    return {
        "bench": "train", "model": args.model, "vocab": args.vocab, "dtype": args.dtype,
        "batch": args.batch, "inputs": args.inputs, "targets": args.targets,
        "steps": args.steps, "loss_chunks": args.loss_chunks, "remat": args.remat,
        "optimizer": args.optimizer, "lora_rank": args.lora_rank if model_config.lora else 0,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind, "compile_s": round(compile_s, 2),
        "loss": float(metrics["loss"]), "step_s": step_s,
        "tokens_per_s": args.batch * (args.inputs + args.targets) / step_s,
        "peak_flops_per_s": peak, "model_flops_per_step": model_flops,
        "mfu": model_flops / step_s / peak,
        "trainable_parameters": sum(x.size for x in jax.tree.leaves(train_state.params)),
        "optimizer_state_bytes": sum(x.nbytes for x in jax.tree.leaves(train_state.opt_state)),
        "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
    }


def _synthetic_batch(spec: BatchSpec, rng: np.random.Generator, args: argparse.Namespace
                     ) -> dict[str, np.ndarray]:
    """Random tokens of the family's batch: --inputs encoder tokens and --targets decoder
    tokens, or (decoder-only) one sequence of both with the loss on the --targets last."""
    if spec.concatenated:
        sequence = rng.integers(2, args.vocab, (args.batch, args.inputs + args.targets + 1),
                                dtype=np.int32)
        weights = np.zeros((args.batch, args.inputs + args.targets), np.int32)
        weights[:, args.inputs:] = 1
        inputs, targets = spec.tokens
        return {inputs: sequence[:, :-1], targets: sequence[:, 1:], spec.loss_weights: weights}
    targets = rng.integers(2, args.vocab, (args.batch, args.targets), dtype=np.int32)
    encoder_inputs, decoder_inputs, _ = spec.tokens
    return {
        encoder_inputs: rng.integers(2, args.vocab, (args.batch, args.inputs), dtype=np.int32),
        decoder_inputs: np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        spec.targets: targets,
        spec.loss_weights: np.ones_like(targets),
    }


def _model_config(args: argparse.Namespace):
    """The model gin file --model names (mT5 sizes: gin/models/mt5_<model>.gin; decoder-only
    LLMs by their file's name, e.g. llama_small, bloom_small) with --vocab and --dtype,
    without dropout (a benchmark must not depend on it)."""
    name = args.model if args.model.startswith(("llama", "bloom")) else f"mt5_{args.model}"
    config.parse([f"models/{name}.gin"],
                 [f"NUM_EMBEDDINGS={args.vocab}", f"ACTIVATION_DTYPE='{args.dtype}'"])
    model_config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    gin.clear_config()
    return model_config.without_dropout


def _best_seconds(fn, repeats: int) -> float:
    fn()  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_bench(args: argparse.Namespace) -> dict:
    """Greedy decoding and rank classification of one batch (see the module doc)."""
    model_config = _model_config(args)
    mesh = partitioning.make_mesh((-1, 1, 1))
    params = jax.jit(init_params, static_argnums=0,
                     out_shardings=partitioning.params_shardings(model_config, mesh))(
        model_config, jax.random.key(0))
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, args.vocab, (args.batch, args.inputs), dtype=np.int32)
    inputs[:, -1] = 1
    decoder = decoding.Decoder(model_config, decoding.DecodeConfig(
        max_decode_length=args.targets, min_decode_length=args.targets), mesh)
    result = {}

    def run_decode():
        result["tokens"] = decoder(params, inputs).tokens

    decode_s = _best_seconds(run_decode, args.repeats)
    generated = int((result["tokens"] > 0).sum())
    choices = [[list(rng.integers(2, args.vocab, args.targets - 1)) + [1]
                for _ in range(args.choices)] for _ in range(args.batch)]
    prompts = [list(row) for row in inputs]
    together = scoring.Scorer(model_config, mesh, args.batch, args.inputs, args.targets,
                            args.batch * args.choices)
    alone = scoring.Scorer(model_config, mesh, args.batch, args.inputs, args.targets, args.batch)
    score_s = _best_seconds(lambda: together.score(params, prompts, choices), args.repeats)
    separate_s = _best_seconds(lambda: [alone.score(params, prompts, [[c[k]] for c in choices])
                                        for k in range(args.choices)], args.repeats)
    return {
        "bench": "decode", "model": args.model, "vocab": args.vocab, "dtype": args.dtype,
        "batch": args.batch, "inputs": args.inputs, "targets": args.targets,
        "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
        "generated_tokens": generated, "decode_s": decode_s,
        "generated_tokens_per_s": generated / decode_s,
        "choices": args.choices, "score_s": score_s, "separate_s": separate_s,
        "score_speedup": separate_s / score_s,
    }


def input_bench(args: argparse.Namespace, bindings: Sequence[str], started: float) -> dict:
    """The trainer's stream for a gin recipe: first batch, rate, resume (see the doc)."""
    from mtf import run_config  # the trainer's stream (TensorFlow): after the quiet start
    from mtf.data import batches  # (the same)

    config.parse(args.gin_file, ["MODEL_DIR=/nonexistent/mtf-bench"] + list(bindings))
    config.register_xp3_from_gin()
    run = run_config.from_gin()
    spec, data, batch_size = run.model_config.batch_spec, run.data, run.batch_size
    if not 0 <= args.process_index < args.process_count:
        raise SettingError(f"--process_index {args.process_index} is not in "
                           f"0..{args.process_count - 1}")
    if args.resume_step and data.pack:
        raise SettingError("--resume_step measures unpacked streams; a packed stream "
                           "resumes from the packer state a checkpoint holds, and resume_s "
                           "is measured from the state after the timed batches")
    share = (args.process_index, args.process_count)
    startup_s = time.perf_counter() - started
    stream = batches.batches(data, batch_size, 0, *share)
    next(stream)
    first_batch_s = time.perf_counter() - started
    examples, tokens = 0, 0
    timed = time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
        examples += _examples_in(batch, spec)
        tokens += int((batch[spec.tokens[0]] > 0).sum() + (batch[spec.targets] > 0).sum())
    seconds = time.perf_counter() - timed
    state, done = stream.state(), args.batches + 1
    resume_step = args.resume_step or done
    resumed = time.perf_counter()
    next(batches.batches(data, batch_size, resume_step, *share,
                         state=None if args.resume_step else state))
    resume_s = startup_s + time.perf_counter() - resumed
    cache = batches.token_cache_of(data)
    result = {
        "bench": "input", "gin_file": args.gin_file, "mixture": data.mixture_or_task_name,
        "lengths": dict(data.task_feature_lengths), "pack": data.pack,
        "batch_size": batch_size, "process_index": args.process_index,
        "process_count": args.process_count, "cache": data.cache_dir,
        "batches": args.batches, "examples_per_s": examples / seconds,
        "tokens_per_s": tokens / seconds, "examples_per_batch": examples / args.batches,
        "startup_s": startup_s, "first_batch_s": first_batch_s,
        "resume_step": resume_step, "resume_s": resume_s,
        "cache_build_s": cache.manifest.get("build_s") if cache else None,
    }
    if args.step_s:
        need = examples / args.batches / args.step_s
        result.update(step_s=args.step_s, need_examples_per_s=need,
                      input_over_need=result["examples_per_s"] / need)
    return result


def _examples_in(batch, spec: BatchSpec) -> int:
    """Examples in a batch: rows, or packed segments (each segment id once per row)."""
    segments = batch.get(spec.target_segments)
    if segments is None:
        return len(batch[spec.targets])
    return int(segments.max(axis=1).sum())


def _shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and batch shapes both benchmarks take."""
    parser.add_argument("--model", default="small",
                        choices=["tiny", "small", "base", "large", "xl", "xxl", "llama_tiny",
                                 "llama_small", "bloom_tiny", "bloom_small"],
                        help="an mT5 size, or a decoder-only model gin file (LLaMA, BLOOM)")
    parser.add_argument("--vocab", type=int, default=250112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m mtf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train-step throughput")
    _shape_arguments(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,model sizes")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--remat", default="none", choices=list(REMAT_POLICIES))
    p.add_argument("--loss_chunks", type=int, default=1,
                   help="pieces of the target length the fused loss projects at a time")
    p.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
    p.add_argument("--lora_rank", type=int, default=0,
                   help="train LoRA adapters of this rank (alpha 2 x rank, PEFT's default "
                   "targets) on a frozen base, and report full finetuning beside it")
    cli.add_verbose(p)
    d = sub.add_parser("decode", help="greedy decoding and rank-classification speed")
    _shape_arguments(d)
    d.add_argument("--choices", type=int, default=4)
    d.add_argument("--repeats", type=int, default=3)
    cli.add_verbose(d)
    i = sub.add_parser("input", help="the input stream's speed, first batch and resume time")
    i.add_argument("--gin_file", action="append", default=[], required=True)
    i.add_argument("--resume_step", type=int, default=0,
                   help="also time a stream started at this step (unpacked recipes)")
    i.add_argument("--process_index", type=int, default=0)
    i.add_argument("--process_count", type=int, default=1)
    i.add_argument("--batches", type=int, default=30, help="batches timed")
    i.add_argument("--step_s", type=float, default=0.0,
                   help="the step time (mtf.plan) to compare the input rate with")
    cli.add_verbose(i)
    args, rest = parser.parse_known_args(argv)
    bindings: list[str] = []
    if args.command == "input":
        bindings, unknown = split_gin_flags(rest)
        rest = unknown
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    def command() -> int:
        if args.command == "input":
            result = input_bench(args, bindings, started)
        else:
            result = train_bench(args) if args.command == "train" else decode_bench(args)
        print(json.dumps(result))
        return 0

    return cli.run(args.verbose, command)


if __name__ == "__main__":
    sys.exit(main())
