"""`python -m mtf.vocab report|extend`: what a vocabulary costs each language, and a
checkpoint whose vocabulary has pieces for a language it served badly.

  report --corpus FILES [--vocabulary V ...]
        pieces per character and per word, and the shares of unknown and byte-fallback
        pieces, per language (FILES: `LANG=PATH` or PATH named after its language, `sw.txt`;
        one text per line), one column group per vocabulary (default $MTF_VOCABULARY).
  extend --checkpoint CKPT --corpus FILES --new_pieces N --output DIR [--vocabulary V]
        up to N SentencePiece pieces trained on the corpus and missing from the checkpoint's
        vocabulary (the one stored with it, else --vocabulary / $MTF_VOCABULARY) appended
        after every old id (`mtf.vocabulary.pieces`); the embedding and output rows grown to
        match, each new row the mean of its old pieces' rows (`mtf.vocabulary.embeddings`).
        DIR is an mtf parameter folder with DIR/vocabulary.model: INITIAL_CHECKPOINT_PATH
        of a run (with MTF_VOCABULARY=DIR/vocabulary.model), --checkpoint of mtf.infer and
        mtf.convert (export to HF writes the new tokenizer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from mtf import cli, storage
from mtf.convert import native
from mtf.convert.loading import load_checkpoint
from mtf.errors import SettingError, UserError
from mtf.vocabulary import embeddings, fertility, pieces


def _base_vocabulary(given: str | None, stored: str | None, checkpoint: str) -> str:
    path = given or stored or os.environ.get("MTF_VOCABULARY")
    if not path:
        raise SettingError(f"no vocabulary stored with {checkpoint}: pass --vocabulary (its "
                           "SentencePiece model) or set MTF_VOCABULARY")
    if path.endswith(".json"):
        raise UserError(f"{path} is a byte-level BPE tokenizer (tokenizers); extend builds on "
                        "SentencePiece models (mT5's, LLaMA 2's)")
    return path


def cmd_report(args: argparse.Namespace) -> None:
    paths = args.vocabulary or [os.environ.get("MTF_VOCABULARY")]
    if not paths[0]:
        raise SettingError("pass --vocabulary (one or more) or set MTF_VOCABULARY")
    tokenizers = [fertility.Tokenizer(p) for p in paths]
    print(fertility.table(fertility.read_corpus(args.corpus), tokenizers))


def cmd_extend(args: argparse.Namespace) -> None:
    loaded = load_checkpoint(args.checkpoint, setting="--checkpoint")
    base_path = _base_vocabulary(args.vocabulary, loaded.vocabulary, args.checkpoint)
    base = storage.read_bytes(base_path)
    corpus = fertility.read_corpus(args.corpus)
    base_pieces = len(pieces.load(base).pieces)
    # mT5's sentinels are ids its embedding has rows for: they keep their ids; LLaMA's
    # 32000 rows have none, and seqio appends them after the new pieces as before
    sentinels = pieces.SENTINELS if loaded.config.vocab_size >= (
        base_pieces + pieces.SENTINELS) or pieces.holds_sentinels(base) else 0
    extension = pieces.extend(base, [t for lines in corpus.values() for t in lines],
                              args.new_pieces, sentinels)
    config, params = embeddings.grow(loaded.config, loaded.params, extension.first_new_id,
                                     pieces.base_ids(base, extension.added))
    with tempfile.TemporaryDirectory() as tmp:
        model_file = os.path.join(tmp, "vocabulary.model")
        with open(model_file, "wb") as f:
            f.write(extension.model)
        native.save_params(args.output, config, params, model_file)
        print(fertility.table(corpus, [fertility.Tokenizer(base_path),
                                       fertility.Tokenizer(model_file)],
                              ["base", "extended"]))
    print(f"added {len(extension.added)} pieces (ids {extension.first_new_id}-"
          f"{extension.size - 1}; the embedding now has {config.vocab_size} rows); wrote "
          f"{args.output} and {storage.join(args.output, 'vocabulary.model')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.vocab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="pieces per character and word, per language")
    p.add_argument("--corpus", nargs="+", required=True, help="LANG=PATH or LANG.txt")
    p.add_argument("--vocabulary", action="append",
                   help="a SentencePiece .model or tokenizers .json (repeat to compare)")
    p = sub.add_parser("extend", help="new pieces for a corpus, the model grown to match")
    p.add_argument("--checkpoint", required=True, help="an mtf, T5X or HF checkpoint")
    p.add_argument("--corpus", nargs="+", required=True, help="LANG=PATH or LANG.txt")
    p.add_argument("--new_pieces", type=int, required=True)
    p.add_argument("--output", required=True, help="the extended checkpoint's folder")
    p.add_argument("--vocabulary", default=None,
                   help="the base SentencePiece model, when none is stored with CKPT")
    cli.add_verbose(parser)
    args = parser.parse_args(argv)
    verbs = {"report": cmd_report, "extend": cmd_extend}
    return cli.run(args.verbose, lambda: verbs[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
