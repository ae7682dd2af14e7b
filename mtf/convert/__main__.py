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
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_format", required=True,
                        choices=["hf", "t5x", "mtf"])
    parser.add_argument("--to", dest="target_format", required=True, choices=["hf", "mtf"])
    parser.add_argument("--max_distance", type=int, default=128,
                        help="T5X only: relative attention max distance (not in the weights)")
    parser.add_argument("--step", type=int, default=None,
                        help="--from mtf with a MODEL_DIR: this step instead of the newest")
    parser.add_argument("--vocabulary", default=None,
                        help="--to hf: the SentencePiece model to write as the tokenizer")
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's, absl's and libtpu's start-up messages")
    args = parser.parse_args(argv)
    from mtf import quiet

    quiet.start(args.verbose)

    from mtf.convert import (
        infer_config,
        load_hf,
        load_params,
        load_t5x,
        read_t5x_tree,
        save_hf,
        save_params,
    )
    from mtf.convert.native import step_vocabulary, training_step
    from mtf.errors import UserError

    try:
        vocabulary = args.vocabulary
        if args.source_format == "hf":
            config, params = load_hf(args.source)
        elif args.source_format == "mtf":
            step_dir = training_step(args.source, args.step)
            if step_dir is not None:
                print(f"reading training step {step_dir}")
                vocabulary = vocabulary or step_vocabulary(step_dir)
            config, params = load_params(step_dir or args.source)
        else:
            target = read_t5x_tree(args.source)["optimizer"].get("target", {})
            config = infer_config(target, relative_attention_max_distance=args.max_distance)
            params = load_t5x(args.source, config)
        if args.target_format == "hf":
            vocabulary = vocabulary or os.environ.get("MTF_VOCABULARY")
            save_hf(config, params, args.target, vocabulary=vocabulary)
            if not vocabulary:
                print("no tokenizer written: pass --vocabulary PATH (the SentencePiece model "
                      "the model was trained with)")
        else:
            save_params(args.target, config, params)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.target_format} checkpoint to {args.target}")
    print(config.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
