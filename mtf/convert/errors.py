"""One error type for unusable checkpoints, and the tree check every converter runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mtf.errors import CheckpointError

__all__ = ["CheckpointError", "check_names_and_shapes"]


def check_names_and_shapes(found: Mapping[str, tuple[int, ...]],
                           expected: Mapping[str, tuple[int, ...]], source: str,
                           ignored: Iterable[str] = ()) -> None:
    """Raises one CheckpointError listing every missing, unknown and mis-shaped entry."""
    ignored = set(ignored)
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected) - ignored)
    wrong = [f"  {name}: expected shape {tuple(expected[name])}, found {tuple(found[name])}"
             for name in sorted(set(found) & set(expected))
             if tuple(found[name]) != tuple(expected[name])]
    problems = []
    if wrong:
        problems.append("shape mismatches (is the model config the checkpoint's?):\n"
                        + "\n".join(wrong))
    if missing:
        problems.append("missing from the checkpoint:\n" + "\n".join(f"  {m}" for m in missing))
    if unknown:
        problems.append("in the checkpoint but not in the model:\n"
                        + "\n".join(f"  {u}" for u in unknown))
    if problems:
        raise CheckpointError(f"{source} does not match the model config:\n"
                              + "\n".join(problems))
