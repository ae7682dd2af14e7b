"""`python -m mtf.infer generate|score --checkpoint DIR ...`: ask a checkpoint.

    python -m mtf.infer generate --checkpoint /tmp/mtf/mt0_tiny "Translate \"dog\" into Swahili."
    echo "Translate \"cat\" into French." | python -m mtf.infer generate --checkpoint DIR
    python -m mtf.infer generate --checkpoint DIR --input_file q.jsonl --output_file a.jsonl
    python -m mtf.infer score --checkpoint DIR --input_file mc.jsonl --output_file scored.jsonl

--checkpoint: an mtf MODEL_DIR (its newest step), a step or parameter folder, a T5X
checkpoint or an HF folder; --adapter DIR: LoRA adapters trained on it (a LoRA run's
MODEL_DIR, an adapter directory or a PEFT folder), merged into it first. --vocabulary
defaults to the one stored with the checkpoint (a run's step records it; an exported HF
folder has spiece.model, tokenizer.model or tokenizer.json), else $MTF_VOCABULARY.
generate prints one answer per prompt (tab-separated samples/beams); score reads lines
{"inputs", "answer_choices", "label"?} and writes them back with "scores" (summed
log-likelihood per choice) and "prediction", printing the accuracy when labels are given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

from mtf import cli, partitioning, storage
from mtf.convert.loading import load_checkpoint
from mtf.errors import SettingError
from mtf.eval import decoding, scoring
from mtf.model.family import check_vocabulary, text_ids


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtf.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "score"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--adapter", help="LoRA adapters trained on --checkpoint (a LoRA run, "
                       "an adapter directory or a PEFT folder), merged in first")
        p.add_argument("--vocabulary", help="SentencePiece .model or tokenizers .json "
                       "(default: the checkpoint's)")
        p.add_argument("--input_file", help="jsonl with an 'inputs' field per line")
        p.add_argument("--output_file", help="jsonl written back with the answers")
        p.add_argument("--batch_size", type=int, default=16)
        p.add_argument("--max_input_length", type=int, default=512)
        cli.add_verbose(p)
        if name == "generate":
            p.add_argument("--max_decode_length", type=int, default=64)
            p.add_argument("--beam_size", type=int, default=1)
            p.add_argument("--alpha", type=float, default=0.6)
            p.add_argument("--temperature", type=float, default=0.0)
            p.add_argument("--top_k", type=int, default=0)
            p.add_argument("--top_p", type=float, default=1.0)
            p.add_argument("--num_samples", type=int, default=1)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("prompts", nargs="*", help="prompts (else --input_file or stdin)")
        else:
            p.add_argument("--max_target_length", type=int, default=64)
            p.add_argument("--length_normalized", action="store_true")
    return parser


def _read_jsonl(path: str, required: Sequence[str]) -> list[dict]:
    rows = []
    with storage.open_read(path) as f:
        for number, line in enumerate(f.read().decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SettingError(f"{path}:{number}: not JSON ({e.msg})") from None
            missing = [k for k in required if k not in row]
            if missing or not isinstance(row.get("inputs"), str):
                raise SettingError(f"{path}:{number}: needs {list(required)} ('inputs' a "
                                   f"string); missing {missing}")
            rows.append(row)
    return rows


def _vocabulary(args: argparse.Namespace, stored: str | None):
    from tasks import vocabularies  # registers every task (TensorFlow): after the quiet start

    path = args.vocabulary or stored or os.environ.get("MTF_VOCABULARY")
    if not path:
        raise SettingError(f"no vocabulary stored with {args.checkpoint}: pass --vocabulary "
                           "SPM (the run's SentencePiece model) or set MTF_VOCABULARY")
    return vocabularies.mt5(path)


def _encode(vocab, texts: Sequence[str], length: int, what: str) -> tuple[list[list[int]], int]:
    from mtf.eval.evaluation import encode_with_eos  # seqio and TensorFlow: after the quiet start

    out, cut = [], 0
    for text in texts:
        tokens, was_cut = encode_with_eos(vocab, text, length)
        out.append(tokens)
        cut += was_cut
    if cut:
        print(f"warning: {cut} {what} longer than {length} tokens were cut (raise "
              f"--max_{'input' if what == 'prompts' else 'target'}_length)", file=sys.stderr)
    return out, cut


def _setup(args):
    """The checkpoint (adapters merged), the mesh, its placed parameters and the vocabulary
    (refused, naming both, when it does not fit the model)."""
    loaded = load_checkpoint(args.checkpoint, setting="--checkpoint", adapter=args.adapter)
    mesh = partitioning.make_mesh((-1, 1, 1))
    if args.batch_size % jax.device_count():
        raise SettingError(f"--batch_size {args.batch_size} must be a multiple of the "
                           f"{jax.device_count()} devices")
    vocab = _vocabulary(args, loaded.vocabulary)
    check_vocabulary(loaded.config, text_ids(vocab), vocab.eos_id,
                     getattr(vocab, "source", "given"))
    params = partitioning.place_params(loaded.params, loaded.config, mesh)
    return loaded, mesh, params, vocab


def generate(args: argparse.Namespace) -> int:

    rows = (_read_jsonl(args.input_file, ("inputs",)) if args.input_file else
            [{"inputs": p} for p in (args.prompts or [line.rstrip("\n") for line in sys.stdin
                                                      if line.strip()])])
    if not rows:
        raise SettingError("no prompts: give them as arguments, one per line on stdin, or "
                           "--input_file F.jsonl")
    cfg = decoding.DecodeConfig(args.max_decode_length, args.beam_size, args.alpha,
                              args.temperature, args.top_k, args.top_p, args.num_samples,
                              args.seed)
    loaded, mesh, params, vocab = _setup(args)
    prompts, _ = _encode(vocab, [r["inputs"] for r in rows], args.max_input_length, "prompts")
    length = max(len(p) for p in prompts)
    decoder = decoding.Decoder(loaded.config, cfg, mesh)
    answers: list[list[str]] = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start:start + args.batch_size]
        enc = np.zeros((args.batch_size, length), np.int32)
        for i, p in enumerate(chunk):
            enc[i, :len(p)] = p
        out = decoder(params, enc)
        for i in range(len(chunk)):
            answers.append([vocab.decode(decoding.until_eos(t, vocab.eos_id))
                            for t in out.tokens[i]])
    for row, texts in zip(rows, answers, strict=True):
        print("\t".join(texts))
        row["prediction"] = texts[0] if len(texts) == 1 else texts
    if args.output_file:
        _write_jsonl(args.output_file, rows)
    return 0


def score(args: argparse.Namespace) -> int:
    if not args.input_file:
        raise SettingError("score needs --input_file F.jsonl with inputs and answer_choices")
    rows = _read_jsonl(args.input_file, ("inputs", "answer_choices"))
    for number, row in enumerate(rows, 1):
        choices, label = row["answer_choices"], row.get("label")
        if not isinstance(choices, list) or not choices or not all(
                isinstance(c, str) for c in choices):
            raise SettingError(f"{args.input_file}:{number}: answer_choices must be a "
                               "non-empty list of strings")
        if label is not None and not (isinstance(label, int) and 0 <= label < len(choices)):
            raise SettingError(f"{args.input_file}:{number}: label {label!r} is not an index "
                               f"into its {len(choices)} answer choices")
    loaded, mesh, params, vocab = _setup(args)
    prompts, _ = _encode(vocab, [r["inputs"] for r in rows], args.max_input_length, "prompts")
    choices = []
    for row in rows:
        tokens, _ = _encode(vocab, row["answer_choices"], args.max_target_length,
                            "answer choices")
        choices.append(tokens)
    most = max(len(c) for c in choices)
    scorer = scoring.Scorer(loaded.config, mesh, args.batch_size,
                            max(len(p) for p in prompts), max(len(t) for c in choices for t in c),
                            args.batch_size * most)
    scored = scorer.score(params, prompts, choices, args.length_normalized)
    for row, s, p in zip(rows, scored.scores, scored.predictions, strict=True):
        row["scores"], row["prediction"] = s, p
    labelled = [r for r in rows if r.get("label") is not None]
    if labelled:
        right = sum(r["prediction"] == r["label"] for r in labelled)
        print(f"accuracy {100.0 * right / len(labelled):.2f}% ({right}/{len(labelled)})")
    if args.output_file:
        _write_jsonl(args.output_file, rows)
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    storage.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(args.verbose,
                   lambda: generate(args) if args.command == "generate" else score(args))


if __name__ == "__main__":
    sys.exit(main())
