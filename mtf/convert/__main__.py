"""`python -m mtf.convert --from {hf,t5x,mtf} --to {hf,mtf} SRC DST`.

Examples:
  python -m mtf.convert --from t5x --to mtf \
      gs://t5-data/pretrained_models/t5x/mt5_small/checkpoint_1000000 /ckpt/mt5_small
  python -m mtf.convert --from hf --to mtf ./mt0-small /ckpt/mt0_small
  python -m mtf.convert --from mtf --to hf /ckpt/mt0_small ./mt0-small-export
  python -m mtf.convert --from mtf --to hf /tmp/mtf/mt0_tiny ./mt0-tiny-hf   # a run's newest step

`--from mtf` takes a parameter directory, a training MODEL_DIR (its newest step, or
`--step N`) or a `MODEL_DIR/checkpoints/N` folder. `--to hf` also writes the tokenizer
(spiece.model + tokenizer_config.json) from `--vocabulary`, else the vocabulary the run
recorded, else $MTF_VOCABULARY.

LoRA adapters (a LoRA run's MODEL_DIR or step, an mtf adapter directory, a PEFT folder):
  python -m mtf.convert --from mtf --to peft /tmp/run_lora ./peft-adapter     # export
  python -m mtf.convert --from peft --to mtf --base ./mt0-small ./peft-adapter /ckpt/ad
  python -m mtf.convert --from mtf --to hf /tmp/run_lora ./merged-hf          # merge
  python -m mtf.convert --from hf --to mtf ./mt0-small /ckpt/merged --adapter ./peft-adapter
A source with adapters is merged into its base (`--base`, else the base the run recorded)
for `--to hf`, and for `--to mtf` with `--merge`; without `--merge`, `--to mtf` writes the
adapters alone (config.json + adapters/ + base.json). `--adapter DIR` merges DIR's adapters
into the (base) source.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mtf import cli, storage
from mtf.checkpoint import step_vocabulary, training_step
from mtf.convert import (
    adapters,
    infer_config,
    load_hf,
    load_params,
    load_t5x,
    peft,
    read_t5x_tree,
    save_hf,
    save_params,
)
from mtf.convert.errors import CheckpointError
from mtf.convert.loading import load_checkpoint, stored_vocabulary
from mtf.model import lora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_format", required=True,
                        choices=["hf", "t5x", "mtf", "peft"])
    parser.add_argument("--to", dest="target_format", required=True,
                        choices=["hf", "mtf", "peft"])
    parser.add_argument("--base", default=None,
                        help="adapters: the base model (mtf, T5X or HF; default: the base a "
                        "LoRA run recorded)")
    parser.add_argument("--adapter", default=None,
                        help="merge these adapters (LoRA run, adapter dir or PEFT folder) "
                        "into the source model")
    parser.add_argument("--merge", action="store_true",
                        help="--to mtf from adapters: write the merged model, not adapters")
    parser.add_argument("--max_distance", type=int, default=128,
                        help="T5X only: relative attention max distance (not in the weights)")
    parser.add_argument("--step", type=int, default=None,
                        help="--from mtf with a MODEL_DIR: this step instead of the newest")
    parser.add_argument("--vocabulary", default=None,
                        help="--to hf: the SentencePiece model to write as the tokenizer")
    parser.add_argument("source")
    parser.add_argument("target")
    cli.add_verbose(parser)
    args = parser.parse_args(argv)
    return cli.run(args.verbose, lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    if args.source_format == "peft" or args.target_format == "peft" or _has_adapters(
            args.source, args.step):
        return _convert_adapters(args)
    vocabulary = args.vocabulary
    if args.source_format == "hf":
        config, params = load_hf(args.source)
        vocabulary = vocabulary or stored_vocabulary(args.source)
    elif args.source_format == "mtf":
        step_dir = training_step(args.source, args.step)
        if step_dir is not None:
            print(f"reading training step {step_dir}")
            vocabulary = vocabulary or step_vocabulary(step_dir)
        config, params = load_params(step_dir or args.source)
        vocabulary = vocabulary or (None if step_dir else stored_vocabulary(args.source))
    else:
        target = read_t5x_tree(args.source)["optimizer"].get("target", {})
        config = infer_config(target, relative_attention_max_distance=args.max_distance)
        params = load_t5x(args.source, config)
    if args.adapter:
        config, params = adapters.apply(args.source, config, params, args.adapter)
        print(f"merged the adapters of {args.adapter}")
    _write_model(args, config, params, vocabulary)
    print(config.to_json())
    return 0


def _write_model(args, config, params, vocabulary) -> None:
    if args.target_format == "hf":
        vocabulary = vocabulary or os.environ.get("MTF_VOCABULARY")
        save_hf(config, params, args.target, vocabulary=vocabulary)
        if not vocabulary:
            print("no tokenizer written: pass --vocabulary PATH (the SentencePiece model "
                  "the model was trained with)")
    else:
        save_params(args.target, config, params, vocabulary)
    print(f"wrote {args.target_format} checkpoint to {args.target}")


def _has_adapters(source: str, step: int | None) -> bool:
    """A LoRA run (or one of its steps) or an mtf adapter directory."""
    if not storage.exists(source):
        return False
    if adapters.is_adapter_dir(source):
        return True
    step_dir = training_step(source, step)
    if step_dir is None:
        return False
    config = json.loads(storage.read_bytes(storage.join(step_dir, "config", "metadata")))
    return config.get("lora") is not None


def _convert_adapters(args) -> int:
    """Export (--to peft), import (--from peft) or merge adapters; see the module doc."""
    if args.adapter:
        raise CheckpointError(f"{args.source} holds adapters itself; --adapter merges adapters "
                              "into a plain model given as the source")
    record = None
    if args.source_format == "peft":
        if not args.base:
            raise CheckpointError("--from peft needs --base BASE: the model the adapters were "
                                  "trained on (mtf, T5X or HF), for its shapes")
        base = load_checkpoint(args.base, setting="--base")
        config, ads = peft.load(args.source, base.config)
        record = adapters.base_record(args.base, base.config, base.params)
    else:
        config, ads, record = adapters.load(args.source, args.step)
    print(f"read {lora.count(ads)} adapter parameters "
          f"(rank {config.lora.rank}, alpha {config.lora.alpha}) from {args.source}")
    if args.target_format == "peft":
        peft.save(args.target, config, ads, (record or {}).get("path"))
        print(f"wrote a PEFT LoRA adapter to {args.target}")
        return 0
    if args.target_format == "mtf" and not args.merge:
        adapters.save(args.target, config, ads, record)
        print(f"wrote mtf adapters to {args.target}")
        return 0
    base_path = args.base or (record or {}).get("path")
    if not base_path:
        raise CheckpointError(f"no base model recorded with {args.source}: pass --base BASE")
    base = load_checkpoint(base_path, config.base, setting="--base")
    merged = adapters.merged(base_path, config.base, base.params, config, ads, record,
                             args.source)
    print(f"merged the adapters into {base_path}")
    _write_model(args, config.base, merged, args.vocabulary or base.vocabulary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
