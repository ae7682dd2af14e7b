"""The README's TPU plan tables, produced with `python -m mtf.plan` (libtpu, compile-only).

    python bench/plan_table.py [--table sizes|before_after|both] [--only TEXT] [--out FILE.md]

`sizes`: every mT0 config with its gin defaults on the slice its model card names (and
mt0-xxl on v4-64): fits or not, peak memory, FLOPs, HBM and interconnect traffic, the
three roofline terms, step time and MFU ceiling (overlapped; in brackets, not), and any
Pallas kernel the count leaves out.
`before_after`: mt0_small on v4-64 and mt0_xxl on v4-256, first with the published
settings as mtf ran them before the memory work (whole logits, no remat, unscanned, one
microbatch, XLA attention and loss), then each change in turn, to show what each did to
temporaries, HBM traffic and the MFU ceiling. Every row is one `python -m mtf.plan` run
(minutes each on 2 CPUs); `--only mt0-xxl` makes just the rows whose label contains that
text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
XLA_KERNELS = ["--gin.LOSS_KERNEL='xla'", "--gin.ATTENTION_KERNEL='xla'"]
BEFORE = ["--gin.LOSS_CHUNKS=1", "--gin.REMAT_POLICY='none'", "--gin.SCAN_LAYERS=False",
          "--gin.NUM_MICROBATCHES=1"] + XLA_KERNELS
TENSOR_PARALLEL = ["--gin.MESH_SHAPE=(1, -1, 8)"]  # mt0_xxl.gin's mesh before FSDP-only
SIZES = [
    ("mt0-small", "gin/mt0_small.gin", "v4-64", []),
    ("mt0-base", "gin/mt0_base.gin", "v4-64", []),
    ("mt0-large", "gin/mt0_large.gin", "v4-64", []),
    ("mt0-xl", "gin/mt0_xl.gin", "v4-256", []),
    ("mt0-xxl", "gin/mt0_xxl.gin", "v4-256", []),
    ("mt0-xxl (gin/mt0_xxl_v4_64.gin)", "gin/mt0_xxl_v4_64.gin", "v4-64", []),
]
BEFORE_AFTER = [
    ("mt0-small, before", "gin/mt0_small.gin", "v4-64", BEFORE),
    ("mt0-small, + chunked loss", "gin/mt0_small.gin", "v4-64", XLA_KERNELS),
    ("mt0-small, + flash attention", "gin/mt0_small.gin", "v4-64", XLA_KERNELS[:1]),
    ("mt0-small, + fused loss kernel alone", "gin/mt0_small.gin", "v4-64", XLA_KERNELS[1:]),
    ("mt0-small, + both TPU kernels (gin default)", "gin/mt0_small.gin", "v4-64", []),
    ("mt0-xxl, before", "gin/mt0_xxl.gin", "v4-256", BEFORE + TENSOR_PARALLEL),
    ("mt0-xxl, + chunked loss", "gin/mt0_xxl.gin", "v4-256", BEFORE[1:] + TENSOR_PARALLEL),
    ("mt0-xxl, + scanned layers, full remat", "gin/mt0_xxl.gin", "v4-256", TENSOR_PARALLEL),
    ("mt0-xxl, + fully sharded, no tensor parallelism", "gin/mt0_xxl.gin", "v4-256",
     ["--gin.REMAT_POLICY='full'"]),
    ("mt0-xxl, + projections saved (gin default)", "gin/mt0_xxl.gin", "v4-256", []),
]


_DONE: dict[tuple, dict] = {}


def plan(gin_file: str, topology: str, extra: list[str]) -> dict:
    key = (gin_file, topology, tuple(extra))
    if key not in _DONE:  # both tables share rows
        _DONE[key] = _run_plan(gin_file, topology, extra)
    return _DONE[key]


def _run_plan(gin_file: str, topology: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", "mtf.plan", f"--gin_file={gin_file}",
               f"--topology={topology}", "--json", str(out), *extra]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if not out.exists():
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.1f}"


def row(label: str, topology: str, r: dict) -> str:
    spare = f"{100 * r['headroom']:.0f}%" if r.get("headroom") is not None else "-"
    fits = "yes" if r["fits"] else "**no**"
    mesh = "x".join(str(v) for v in r["mesh"].values())
    kernels = [f"{name} {r[key]}" for name, key in (("attention", "attention_kernel"),
                                                    ("loss", "loss_kernel"))
               if r.get(key, "xla") != "xla"]
    setting = ", ".join([f"mesh {mesh}, k={r['microbatches']}, remat {r['remat']}",
                         "scan" if r["scan_layers"] else "unscanned",
                         *([] if r.get("loss_kernel", "xla") != "xla"
                           else [f"chunks {r['loss_chunks']}"])] + kernels)
    head = (f"| {label} | {topology} | {setting} | {fits} | {gib(r.get('temp_bytes'))} | "
            f"{gib(r['peak_bytes'])} | {spare} | ")
    if "step_s" not in r:  # no step time for what does not fit (or whose probe did not)
        return head + "- | - | - | - | - | - | - |"
    uncounted = ", ".join(sorted(set(r.get("uncounted_kernels") or []))) or "none"
    return (head + f"{r['xla_flops_per_device'] / 1e12:.1f} | "
            f"{r['xla_bytes_per_device'] / 1e9:.0f} | {r['ici_bytes_per_device'] / 1e9:.1f} | "
            f"{r['compute_s']:.3f} / {r['memory_s']:.3f} / {r['ici_s']:.3f} | "
            f"{r['step_s']:.3f} | {100 * r['mfu_ceiling']:.0f}% "
            f"({100 * r['mfu_ceiling_no_overlap']:.0f}%) | {uncounted} |")


HEADER = ("| config | slice | setting | fits | temporaries GiB | peak GiB | spare | "
          "XLA TFLOP/device | HBM GB/device | ICI GB/device | compute / HBM / ICI s | "
          "roofline s/step | MFU ceiling (no overlap) | kernels not counted |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="both", choices=["sizes", "before_after", "both"])
    parser.add_argument("--only", help="only the rows whose label contains this text")
    parser.add_argument("--out", help="also write the markdown here")
    args = parser.parse_args()
    tables = {"sizes": SIZES, "before_after": BEFORE_AFTER}
    chosen = list(tables) if args.table == "both" else [args.table]
    text = []
    for name in chosen:
        text += [f"### {name}", "", HEADER]
        for label, gin_file, topology, extra in tables[name]:
            if args.only and args.only not in label:
                continue
            text.append(row(label, topology, plan(gin_file, topology, extra)))
            print(text[-1], flush=True)
        text.append("")
    if args.out:
        Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
