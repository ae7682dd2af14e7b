"""`python -m mtf.plan --gin_file=gin/mt0_xxl.gin --topology=v4-256 [--gin.NAME=VALUE ...]`:
will this run fit, and how fast can it be, before a pod is booked.

Compiles the real train step (`run_setup.setup`: the same code, shardings, microbatches,
loss chunks and remat as `python -m mtf.launch`) for a TPU slice with libtpu's compile-only
client on any machine, nothing executed. Prints per device: parameters, optimizer state,
batch, temporaries and the compiler's peak against the chip's HBM; XLA's FLOPs and HBM
traffic next to mtf's analytic model FLOPs; the bytes its collectives move and their time on
the slice's interconnect (`mtf.interconnect`); a roofline step time and MFU ceiling, with the
three terms overlapped and not; the sharding of the largest arrays; and advice when it does
not fit (exit 1, no cost compiles).

Without libtpu (`pip install -e '.[tpu]'`), or for GPU slices (h100-8, a100-16), it compiles
for simulated CPU devices and says so: memory is then the CPU compiler's, not the TPU's.

Two traps, handled: XLA's cost analysis counts a loop body once (scanned layers, the
microbatch loop, the loss chunks), so FLOPs and traffic come from loop-free compiles of
one microbatch (layers unscanned, chunks unrolled) at 1-2 layers per stack, extended to the
full depth and the microbatch count (`loop_free_cost`); and the compiler's temporaries can
exceed HBM while the program fits, so fit is judged by its peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from mtf import cli, config, hardware, interconnect, quiet
from mtf.config import split_gin_flags

GIB = hardware.GIB


def _environment(slice_: hardware.Slice) -> str:
    """Sets up, before jax is imported, the devices to compile for; says which they are."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["JAX_PLATFORMS"] = "cpu"  # compile-only: never claim a local accelerator
    # the report reads the compiler's own analyses of a fresh compile, never a cached one
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    if slice_.topology is not None:
        try:
            import libtpu  # noqa: F401
        except ImportError:
            pass
        else:
            os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # nothing runs on it
            os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.name)
            return "libtpu"
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={slice_.devices}").strip()
    return "simulated"


def _devices(slice_: hardware.Slice, how: str) -> list[Any]:
    import jax

    if how == "libtpu":
        from jax.experimental import topologies

        chip_config = "megacore" if slice_.chip.cores_per_chip_in_name == 2 else "default"
        return list(topologies.get_topology_desc(
            platform="tpu", topology_name=slice_.topology, chip_config_name=chip_config).devices)
    devices = jax.devices("cpu")
    if len(devices) != slice_.devices:
        raise RuntimeError(f"expected {slice_.devices} simulated devices, got {len(devices)}: "
                           "run mtf.plan in a fresh process (XLA_FLAGS is read at import)")
    return devices


def run_config() -> Any:
    """The `RunConfig` the parsed gin files bind (the run `mtf.launch` would train)."""
    from mtf import run_config as run_config_lib  # jax: after _environment chose the devices

    return run_config_lib.from_gin()


def _shard_bytes(leaf: Any, sharding: Any) -> float:
    """Bytes of one device's shard of an array (global shape / its sharding)."""
    import numpy as np

    return float(np.prod(sharding.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize


def _bytes_per_device(tree: Any, shardings: Any) -> float:
    import jax

    return float(sum(jax.tree.leaves(jax.tree.map(_shard_bytes, tree, shardings))))


def _largest_arrays(program, count: int = 6) -> list[dict[str, Any]]:
    import jax
    import numpy as np

    rows = []
    for part in ("params", "opt_state", "frozen"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(program.abstract_state, part))
        for path, leaf in leaves:
            nbytes = float(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
            shard = _shard_bytes(leaf, leaf.sharding)
            rows.append({"name": f"{part}/{jax.tree_util.keystr(path, simple=True, separator='/')}",
                         "shape": list(leaf.shape), "spec": str(leaf.sharding.spec),
                         "bytes": nbytes, "bytes_per_device": shard})
    return sorted(rows, key=lambda r: -r["bytes"])[:count]


def _out_of_memory(error: Exception) -> dict[str, Any] | None:
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    needed = re.search(r"required[^(]*\(([\d.]+)([KMGT])\)", text)
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    first = next((ln for ln in text.splitlines() if "memory" in ln.lower()), text[:300])
    return {"needed_bytes": float(needed.group(1)) * units[needed.group(2)] if needed else None,
            "message": first.strip(), "vmem": "memory space vmem" in text}


def _cost(compiled: Any, slice_: hardware.Slice | None = None,
          devices: list[Any] | None = None) -> dict[str, Any]:
    """XLA's FLOPs and bytes, plus mtf's count of the Pallas kernels XLA cannot see into
    (also reported apart, as kernel_flops / kernel_bytes); given the slice and the program's
    devices, also what its collectives move and their time on the links (`interconnect`)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    hlo = compiled.as_text() or ""
    kernels = kernel_costs(hlo)
    links = ({} if slice_ is None or devices is None
             else interconnect.interconnect_cost(hlo, devices, slice_))
    return {"flops": float(analysis.get("flops", 0.0)) + kernels["flops"],
            "bytes": float(analysis.get("bytes accessed", 0.0)) + kernels["bytes"],
            "kernel_flops": kernels["flops"], "kernel_bytes": kernels["bytes"],
            "uncounted_kernels": kernels["uncounted"]} | links


_ESTIMATE = re.compile(r'\\?"(flops|bytes_accessed)\\?":\\?"(\d+)')


def _braced(text: str, start: int) -> str:
    """The {...} group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    return text[start + 1:]


def kernel_costs(hlo: str) -> dict[str, Any]:
    """What XLA's cost analysis leaves out of a compiled program's Pallas TPU calls: the
    flash-attention kernels modelled by `mtf.model.flash.kernel_cost` (less the estimate
    XLA did count), and the names of any other kernel without a cost estimate."""
    from mtf.model import flash  # jax: after _environment chose the slice's devices

    flops = moved = 0.0
    uncounted = []
    for line in hlo.splitlines():
        if 'custom_call_target="tpu_custom_call"' not in line:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else line.split("=")[0].strip()
        kernel = next((k for k in flash.KERNELS if k in op_name), None)
        estimate = dict(_ESTIMATE.findall(line))
        if kernel is None:
            if not estimate:
                uncounted.append(op_name)
            continue
        head, operands = line.split(" custom-call(", 1)
        constraints = operands.find("operand_layout_constraints={")
        if constraints < 0:
            uncounted.append(op_name)
            continue
        layouts = _braced(operands, operands.index("{", constraints))
        cost = flash.kernel_cost(kernel, interconnect.array_shapes(layouts),
                                 interconnect.array_shapes(head.split(" = ", 1)[1]))
        flops += cost["flops"] - float(estimate.get("flops", 0))
        moved += cost["bytes"] - float(estimate.get("bytes_accessed", 0))
    return {"flops": flops, "bytes": moved, "uncounted": uncounted}


def _depth_probe_costs(config: Any, mesh: Any, slice_: hardware.Slice, depths: dict[str, int],
                       optimizer_only: bool) -> dict[str, Any]:
    """Cost of one microbatch's step (or the optimizer update alone) at a reduced depth,
    compiled without loops: layers unscanned, loss chunks and microbatches unrolled."""
    import jax
    import optax

    from mtf import run_setup  # jax: after _environment chose the slice's devices

    model = config.at_depths(depths).model_config.replace(scan_layers=False)
    probe_config = config.replace(
        model_config=model, num_microbatches=1,
        batch_size=config.batch_size // config.num_microbatches,
        loss=dataclasses.replace(config.loss, unroll_loops=True))
    devices = list(mesh.devices.flat)
    probe_setup = run_setup.setup(probe_config, devices)
    probe, tx = probe_setup.program, probe_setup.optimizer
    if not optimizer_only:
        return _cost(probe.compile(), slice_, devices)
    params, shardings = probe.abstract_state.params, probe.shardings
    update = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]),
                     in_shardings=(shardings.params, shardings.opt_state, shardings.params))
    return _cost(update.lower(params, probe.abstract_state.opt_state, params).compile(),
                 slice_, devices)


def loop_free_cost(config: Any, mesh: Any, slice_: hardware.Slice) -> dict[str, Any]:
    """Per-device FLOPs, HBM bytes and collective bytes / link time of one step as if
    nothing were a loop.

    XLA counts a loop body once, so the step is compiled without loops with one layer in
    every stack of the model's family (mT5: encoder, decoder; decoder-only: one), then
    with two in each stack in turn, and the cost extended linearly to the full depth
    (every layer is the same program; `test_plan` checks the extension against a full
    unscanned compile). k microbatches cost k one-microbatch steps less k - 1 optimizer
    updates (extended the same way; `test_plan` checks both against a compile with the
    microbatches unrolled).
    """
    depth = config.layer_stacks
    ones = dict.fromkeys(depth, 1)

    def extended(optimizer_only: bool) -> dict[str, float]:
        base = _depth_probe_costs(config, mesh, slice_, ones, optimizer_only)
        out = {key: base[key] for key in base if key != "uncounted_kernels"}
        for stack, layers in depth.items():
            deeper = _depth_probe_costs(config, mesh, slice_, {**ones, stack: 2},
                                        optimizer_only)
            for key in out:
                out[key] += (layers - 1) * (deeper[key] - base[key])
        return out | {"uncounted_kernels": sorted(set(base["uncounted_kernels"]))}

    step_cost = extended(False)
    k = config.num_microbatches
    if k == 1:
        return step_cost
    update_cost = extended(True)
    return {key: k * step_cost[key] - (k - 1) * update_cost[key]
            for key in step_cost if key != "uncounted_kernels"} | {
                "uncounted_kernels": step_cost["uncounted_kernels"]}


def _advice(config: Any, mesh_shape: dict[str, int], state_bytes: float,
            hbm: float, needed: float | None = None) -> list[str]:
    """What to change when the step does not fit; `needed`: the compiler's figure."""
    model, loss = config.model_config, config.loss
    k, batch = config.num_microbatches, config.batch_size
    batch_shards = mesh_shape["data"] * mesh_shape["fsdp"]
    tips = []
    if state_bytes > 0.5 * hbm:
        tips.append(f"parameters + optimizer state (+ a LoRA base) alone take "
                    f"{state_bytes / GIB:.1f} GiB per device: shard them over more devices "
                    "(a larger fsdp or model axis in MESH_SHAPE) or use a larger slice")
    if model.remat_policy in ("none", "dots"):
        tips.append("recompute activations in the backward pass: "
                    "--gin.REMAT_POLICY=dots_with_no_batch_dims (or 'full', the least memory)")
    if loss.chunks == 1 and loss.kernel == "xla" and model.vocab_size >= 32768:
        tips.append("project the vocabulary in pieces: --gin.LOSS_CHUNKS=8 (or more)")
    # activations shrink with the microbatch: split by what the compiler asked for over
    # what the state leaves (a power of two that still divides the batch)
    factor = 2.0 if not needed or hbm <= state_bytes else needed / (hbm - state_bytes)
    split = 2 ** max(1, math.ceil(math.log2(max(factor, 2.0))))
    while split > 2 and batch % (split * k * batch_shards):
        split //= 2
    if batch % (split * k * batch_shards) == 0:
        tips.append(f"split the batch: --gin.NUM_MICROBATCHES={split * k} (same result, "
                    "exact; each microbatch still spread over all data-parallel devices)")
    if mesh_shape["model"] == 1 and model.emb_dim >= 2048:
        tips.append("add tensor parallelism: e.g. --gin.MESH_SHAPE='(1, -1, 8)'")
    return tips


def _links(slice_: hardware.Slice) -> str:
    chip = slice_.chip
    if slice_.topology is None:
        return (f"NVLink at {chip.ici_link_bandwidth / 1e9:g} GB/s one way inside a node of "
                f"{chip.devices_per_node}, the network at {chip.network_bandwidth / 1e9:g} "
                "GB/s across nodes")
    return (f"{chip.name} ICI links at {chip.ici_link_bandwidth / 1e9:g} GB/s one way over "
            f"the {slice_.topology} torus, the dimensions each collective's group spans")


def plan(slice_: hardware.Slice, how: str, cost: bool = True, verbose: bool = True
         ) -> dict[str, Any]:
    """The report of the train step that the parsed gin configuration compiles to
    (`verbose`=False drops libtpu's start-up lines)."""
    import jax

    from mtf import flops, run_setup  # jax: after _environment chose the devices

    config = run_config()
    with quiet.native_stderr_silenced(not verbose):  # libtpu's notes on worker hostnames
        devices = _devices(slice_, how)
    run = run_setup.setup(config, devices)
    mesh, program = run.mesh, run.program
    model = config.model_config
    lengths = run.lengths
    chip = slice_.chip
    report: dict[str, Any] = {
        "topology": slice_.name, "chip": chip.name, "devices": len(devices),
        "compiled_by": ("the TPU compiler (libtpu, compile-only)" if how == "libtpu" else
                        f"the CPU compiler on {len(devices)} simulated devices (not "
                        f"{chip.name}'s: install the tpu extra for TPU memory figures)"),
        "mesh": dict(mesh.shape), "batch": config.batch_size,
        "lengths": {k: lengths[k] for k in ("inputs", "targets")},
        "microbatches": config.num_microbatches, "remat": model.remat_policy,
        "scan_layers": model.scan_layers, "loss_chunks": config.loss.chunks,
        "attention_kernel": model.attention_kernel, "loss_kernel": config.loss.kernel,
        "dtype": model.dtype, "hbm_bytes": chip.hbm_bytes,
        "params_bytes": _bytes_per_device(program.abstract_state.params,
                                          program.shardings.params),
        "opt_state_bytes": _bytes_per_device(program.abstract_state.opt_state,
                                             program.shardings.opt_state),
        "frozen_bytes": (0.0 if program.abstract_state.frozen is None else _bytes_per_device(
            program.abstract_state.frozen, program.shardings.frozen)),
        "batch_bytes": _bytes_per_device(program.abstract_batch,
                                         {k: program.batch_sharding
                                          for k in program.abstract_batch}),
        "largest_arrays": _largest_arrays(program),
    }
    try:
        compiled = program.compile()
    except Exception as e:  # the compiler says RESOURCE_EXHAUSTED when it cannot fit
        oom = _out_of_memory(e)
        if oom is None:
            raise
        report.update(fits=False, peak_bytes=oom["needed_bytes"], compiler=oom["message"])
        if oom["vmem"]:  # a Pallas kernel's tiles, not the arrays in HBM
            report.update(peak_bytes=None, vmem=True)
    else:
        mem = compiled.memory_analysis()
        peak = getattr(mem, "peak_memory_in_bytes", 0) or (
            mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
        report.update(fits=peak <= chip.hbm_bytes, peak_bytes=float(peak),
                      temp_bytes=float(mem.temp_size_in_bytes),
                      argument_bytes=float(mem.argument_size_in_bytes),
                      output_bytes=float(mem.output_size_in_bytes),
                      alias_bytes=float(mem.alias_size_in_bytes))
    if report["peak_bytes"]:
        report["headroom"] = 1.0 - report["peak_bytes"] / chip.hbm_bytes
    analytic = flops.model_flops_per_step(model, config.batch_size, lengths["inputs"],
                                          lengths["targets"]) / len(devices)
    report["model_flops_per_device"] = analytic
    counted = None
    if cost and report["fits"]:  # what does not fit has no step time to estimate
        try:
            counted = loop_free_cost(config, mesh, slice_)
        except Exception as e:  # a loop-free probe can need more HBM than the run itself
            oom = _out_of_memory(e)
            if oom is None:
                raise
            report["cost_error"] = (
                "not estimated: a loop-free cost compile (one microbatch, 1-2 layers, the "
                f"loss chunks unrolled) does not fit: {oom['message']}")
    if counted is not None:
        terms = {"compute": counted["flops"] / chip.peak_bf16_flops,
                 "memory": counted["bytes"] / chip.hbm_bandwidth,
                 "interconnect": counted["ici_s"]}
        step_s, no_overlap_s = max(terms.values()), sum(terms.values())
        ideal_s = analytic / chip.peak_bf16_flops
        report.update(xla_flops_per_device=counted["flops"],
                      xla_bytes_per_device=counted["bytes"], compute_s=terms["compute"],
                      memory_s=terms["memory"], ici_s=terms["interconnect"],
                      ici_bytes_per_device=counted["ici_bytes"],
                      ici_bytes_by_kind={kind: counted[f"ici_bytes_{kind}"]
                                         for kind in interconnect.KINDS},
                      step_s=step_s, step_no_overlap_s=no_overlap_s,
                      bound=max(terms, key=terms.get),
                      mfu_ceiling=ideal_s / step_s,
                      mfu_ceiling_no_overlap=ideal_s / no_overlap_s,
                      kernel_flops_per_device=counted["kernel_flops"],
                      kernel_bytes_per_device=counted["kernel_bytes"],
                      uncounted_kernels=counted["uncounted_kernels"],
                      cost_from="loop-free compiles of one microbatch at depths 1-2, "
                                "extended to the full depth, x microbatches",
                      ici_from=_links(slice_))
    if report.get("vmem"):
        kernels = [f"--gin.{name}='xla'" for name, value in (
            ("ATTENTION_KERNEL", model.attention_kernel), ("LOSS_KERNEL", config.loss.kernel))
            if value != "xla"]
        report["advice"] = [
            "a Pallas kernel's tiles need more VMEM (the TensorCore's 16 MiB scratchpad) "
            f"than there is at these shapes: {' or '.join(kernels)} (the XLA path of the same "
            "computation)"]
    elif not report["fits"]:
        report["advice"] = _advice(config, report["mesh"],
                                   report["params_bytes"] + report["opt_state_bytes"]
                                   + report["frozen_bytes"],
                                   chip.hbm_bytes, report.get("peak_bytes"))
    jax.clear_caches()
    return report


def format_report(r: dict[str, Any]) -> str:
    def gib(x: float | None) -> str:
        return "?" if x is None else f"{x / GIB:.2f} GiB"

    lines = [
        f"plan: {r['topology']} ({r['devices']} x {r['chip']}), compiled by {r['compiled_by']}",
        f"  mesh {r['mesh']}, batch {r['batch']} x {r['lengths']}, microbatches "
        f"{r['microbatches']}, remat {r['remat']}, scan_layers {r['scan_layers']}, loss chunks "
        f"{r['loss_chunks']}, activations {r['dtype']}, attention {r['attention_kernel']}, "
        f"loss {r['loss_kernel']}",
        "  per device:",
        f"    parameters       {gib(r['params_bytes'])}",
        f"    optimizer state  {gib(r['opt_state_bytes'])}",
    ] + ([f"    frozen base      {gib(r['frozen_bytes'])} (LoRA: no gradients, no optimizer "
          "state)"] if r.get("frozen_bytes") else []) + [
        f"    batch            {gib(r['batch_bytes'])}",
    ]
    if "temp_bytes" in r:
        lines += [f"    temporaries      {gib(r['temp_bytes'])}",
                  f"    outputs          {gib(r['output_bytes'])} "
                  f"({gib(r['alias_bytes'])} of them reuse donated inputs)"]
    verdict = ("fits" if r["fits"] else "DOES NOT FIT in VMEM (a kernel's tiles, not HBM)"
               if r.get("vmem") else "DOES NOT FIT")
    spare = f", {100 * r['headroom']:.1f}% spare" if r.get("headroom") is not None else ""
    lines.append(f"    peak             {gib(r['peak_bytes'])} of {gib(r['hbm_bytes'])} HBM: "
                 f"{verdict}{spare}")
    if r.get("compiler"):
        lines.append(f"    compiler: {r['compiler']}")
    lines.append(f"  model FLOPs (analytic) {r['model_flops_per_device'] / 1e12:.2f} TFLOP "
                 "per device per step")
    if "xla_flops_per_device" in r:
        lines += [
            f"  XLA counted ({r['cost_from']}): {r['xla_flops_per_device'] / 1e12:.2f} TFLOP, "
            f"{r['xla_bytes_per_device'] / 1e9:.1f} GB of HBM traffic per device",
        ] + ([
            f"    including what XLA cannot see inside the flash-attention kernels, from "
            f"their tiling (mtf.model.flash.kernel_cost): "
            f"+{r['kernel_flops_per_device'] / 1e12:.2f} TFLOP, "
            f"+{r['kernel_bytes_per_device'] / 1e9:.1f} GB"]
            if r.get("kernel_bytes_per_device") else []) + ([
            f"    NOT counted: Pallas kernels without a cost estimate: "
            f"{', '.join(r['uncounted_kernels'])}"] if r.get("uncounted_kernels") else []) + [
            f"  collectives: {r['ici_bytes_per_device'] / 1e9:.1f} GB per device ("
            + ", ".join(f"{kind} {moved / 1e9:.1f}" for kind, moved
                        in r["ici_bytes_by_kind"].items() if moved)
            + f"), over {r['ici_from']}",
            f"  roofline: {r['compute_s']:.3f} s of arithmetic, {r['memory_s']:.3f} s of "
            f"memory traffic, {r['ici_s']:.3f} s on the interconnect -> {r['step_s']:.3f} "
            f"s/step if they overlap ({r['bound']}-bound), {r['step_no_overlap_s']:.3f} s if "
            f"not; MFU ceiling {100 * r['mfu_ceiling']:.1f}% "
            f"({100 * r['mfu_ceiling_no_overlap']:.1f}% without overlap)"]
    if r.get("cost_error"):
        lines.append(f"  FLOPs and traffic {r['cost_error']}")
    lines.append("  largest arrays (global shape, sharding, per device):")
    for a in r["largest_arrays"]:
        lines.append(f"    {a['name']} {a['shape']} {a['spec']} {gib(a['bytes_per_device'])}")
    for tip in r.get("advice", []):
        lines.append(f"  advice: {tip}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[], required=True)
    parser.add_argument("--topology", required=True,
                        help="slice: v4-64, v4-256, v5e-16, v5p-128, v6e-64, h100-8, a100-16")
    parser.add_argument("--no_cost", action="store_true",
                        help="skip the loop-free compile behind the FLOPs/traffic figures")
    parser.add_argument("--min_headroom", type=float, default=0.0,
                        help="exit 1 unless this fraction of HBM is left (0.15: 15%%)")
    parser.add_argument("--json", help="also write the report to this file")
    cli.add_verbose(parser)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    bindings, unknown = split_gin_flags(rest)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        slice_ = hardware.parse_slice(args.topology)
    except ValueError as e:
        parser.error(str(e))
    how = _environment(slice_)
    return cli.run(args.verbose, lambda: _plan_command(args, slice_, how, bindings))


def _plan_command(args: argparse.Namespace, slice_: hardware.Slice, how: str,
                  bindings: list[str]) -> int:
    try:
        # nothing is written: a run directory is not needed to plan
        config.parse(args.gin_file, ["MODEL_DIR=/nonexistent/mtf-plan"] + bindings)
    except config.ConfigError as e:
        return cli.fail(e, 2)
    report = plan(slice_, how, cost=not args.no_cost, verbose=args.verbose)
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if not report["fits"]:
        return 1
    if report.get("headroom", 0.0) < args.min_headroom:
        print(f"error: {100 * report['headroom']:.1f}% of HBM spare, below --min_headroom "
              f"{100 * args.min_headroom:.0f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
