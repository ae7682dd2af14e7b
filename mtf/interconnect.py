"""What a compiled step sends between devices: the bytes of every collective in its HLO, and
the time they take on the slice's links.

XLA's cost analysis counts FLOPs and HBM bytes but not the interconnect, and no library reads
collectives out of a compiled program, so this parses the HLO text `compiled.as_text()` prints
(written here: the format is XLA's, and the plan needs only opcodes, shapes and groups).

Bytes are per device, as a bandwidth-optimal ring moves them for a group of n devices
("How to Scale Your Model", jax-ml/scaling-book, sharding.md): all-gather receives the output
less its own shard, (n-1)/n of it; reduce-scatter sends (n-1)/n of its input; all-reduce is
both, 2 (n-1)/n; all-to-all (n-1)/n; a collective-permute its whole operand. TPU's fused
all-reduce-scatter (an all-reduce inside an `all-reduce-scatter` computation, then a slice)
counts as the reduce-scatter it is. Time: each collective's bytes over the bandwidth of the
links its group spans (`hardware.Chip.ici_link_bandwidth`, one way, per link): along each torus
dimension the group covers, both directions of a ring when that dimension wraps around, one
when it does not; a lower bound, as the book's estimates are.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mtf import hardware

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (all-gather|all-gather-start|reduce-scatter|"
                 r"all-reduce|all-reduce-start|all-to-all|collective-permute|"
                 r"collective-permute-start)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?(\S+) \(.*\{\s*$")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\]"
                   r"(?:T\(([\d,]+)\))?\))? \{([^}]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{(\{[\d,{}]*\})\}")


def array_shapes(text: str) -> list[tuple[int, tuple[int, ...]]]:
    """(itemsize, dims) of each array shape written in HLO `text` (one, or a tuple's
    elements): what the plan's counts of collectives and of Pallas kernels read."""
    out = []
    for dtype, dims in _ARRAY.findall(text):
        bits = 8 if dtype == "pred" or dtype.startswith("f8") else int(re.sub(r"\D", "", dtype))
        out.append((max(1, bits // 8), tuple(int(d) for d in dims.split(",") if d)))
    return out


def _arrays_bytes(shape_text: str) -> list[float]:
    return [float(size * np.prod(dims)) for size, dims in array_shapes(shape_text)]


def _payload(opcode: str, shape_text: str) -> float:
    """Bytes of what the collective delivers: its output arrays (a variadic op's tuple); an
    async start's shape also holds its operands (all-gather: the first half) or, for a
    collective-permute, output and scratch after the operand."""
    sizes = _arrays_bytes(shape_text)
    if opcode == "all-gather-start":
        return sum(sizes[len(sizes) // 2:])
    if opcode == "collective-permute-start":
        return sizes[0] if sizes else 0.0
    return sum(sizes)


def _iota(dims: list[int], perm: list[int] | None) -> np.ndarray:
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    return ids.transpose(perm) if perm else ids


def first_group(attributes: str) -> list[int]:
    """The device ids of an instruction's first replica group, in any of the forms XLA
    prints: `{{0,1},{2,3}}`, iota `[2,2]<=[4]` / `[2,2]<=[2,2]T(1,0)`, or
    `mesh['axis_0'=2,...], device_ids=([..]T(..)) {'axis_0'}`."""
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    if (m := _IOTA.search(attributes)):
        groups, size, dims, perm = m.groups()
        ids = _iota(ints(dims), ints(perm) if perm else None).reshape(int(groups), int(size))
        return ids[0].tolist()
    if (m := _MESH.search(attributes)):
        axes_text, dims, perm, chosen = m.groups()
        axes = [(name.strip("' "), int(size)) for name, size in
                (a.split("=") for a in axes_text.split(","))]
        sizes = [size for _, size in axes]
        ids = (_iota(ints(dims), ints(perm) if perm else None) if dims
               else np.arange(int(np.prod(sizes)))).reshape(sizes)
        names = [name.strip("' ") for name in chosen.split(",") if name.strip()]
        index = tuple(slice(None) if name in names else 0 for name, _ in axes)
        return ids[index].ravel().tolist()
    if (m := re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)):
        return ints(m.group(1))
    if (m := _PAIRS.search(attributes)):
        pairs = re.findall(r"\{(\d+),(\d+)\}", m.group(1))
        return sorted({int(x) for pair in pairs if pair[0] != pair[1] for x in pair})
    return []


def collectives(hlo: str) -> list[dict[str, Any]]:
    """Every collective in a compiled program's HLO text: kind, the bytes its ring moves per
    device, and its first group's device ids."""
    found, computation = [], ""
    for line in hlo.splitlines():
        if (header := _COMPUTATION.match(line)):
            computation = header.group(1)
            continue
        match = _OP.match(line)
        if match is None:
            continue
        shape, opcode, rest = match.groups()
        kind = opcode.removesuffix("-start")
        if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
            kind = "reduce-scatter"  # TPU's fusion: all-reduce, then each keeps its slice
        group = first_group(rest)
        n = len(group)
        if n <= 1:
            continue
        size = _payload(opcode, shape)
        if kind == "reduce-scatter" and opcode == "reduce-scatter":
            size *= n  # the instruction's shape is the scattered output
        share = {"all-gather": (n - 1) / n, "reduce-scatter": (n - 1) / n,
                 "all-reduce": 2 * (n - 1) / n, "all-to-all": (n - 1) / n,
                 "collective-permute": 1.0}[kind]
        found.append({"kind": kind, "bytes": size * share, "group": group})
    return found


def coordinates(devices: list[Any], slice_: hardware.Slice) -> np.ndarray:
    """[device, dim] torus coordinates of the program's devices in partition order; for
    simulated devices, the slice's grid filled x fastest (as libtpu numbers its chips)."""
    coords = [getattr(d, "coords", None) for d in devices]
    if all(c is not None for c in coords):
        return np.array([list(c) for c in coords])
    grid = hardware.grid(slice_)
    if grid is None:  # GPUs: node, then position in the node
        per_node = slice_.chip.devices_per_node
        return np.array([[i // per_node, i % per_node] for i in range(len(devices))])
    return np.array(np.unravel_index(np.arange(len(devices)), grid, order="F")).T


def group_bandwidth(group: list[int], coords: np.ndarray, slice_: hardware.Slice) -> float:
    """Bytes/s one device of `group` can move: per torus dimension the group spans, its
    link's one-way bandwidth, twice over when that dimension wraps around (a ring both ways)."""
    chip = slice_.chip
    members = coords[group]
    grid = hardware.grid(slice_)
    if grid is None:  # GPUs: NVLink inside a node, the network across nodes
        across_nodes = len(set(members[:, 0].tolist())) > 1
        return chip.network_bandwidth if across_nodes else chip.ici_link_bandwidth
    total = 0.0
    for dim, length in enumerate(grid):
        if len(set(members[:, dim].tolist())) > 1:
            total += chip.ici_link_bandwidth * (2 if hardware.wraps(chip, length) else 1)
    return total or chip.ici_link_bandwidth


def interconnect_cost(hlo: str, devices: list[Any], slice_: hardware.Slice) -> dict[str, float]:
    """Per-device bytes each kind of collective moves (`ici_bytes_<kind>`), their sum
    (`ici_bytes`) and the time on the slice's links (`ici_s`)."""
    coords = coordinates(devices, slice_)
    out = {f"ici_bytes_{kind}": 0.0 for kind in KINDS} | {"ici_bytes": 0.0, "ici_s": 0.0}
    for op in collectives(hlo):
        out[f"ici_bytes_{op['kind']}"] += op["bytes"]
        out["ici_bytes"] += op["bytes"]
        out["ici_s"] += op["bytes"] / group_bandwidth(op["group"], coords, slice_)
    return out
