"""Accelerator data sheets and slice names: peak bf16 FLOP/s, HBM bandwidth and usable HBM
per device, and how a slice name (`v4-64`, `v5e-16`, `h100-8`) maps to devices.

Peaks and bandwidths are the vendors' published figures; usable HBM is what the TPU
compiler reports as available (libtpu 0.0.42, e.g. 30.75 of 32 GiB on v4) and, for GPUs,
the card's memory less what the CUDA context and XLA's allocator reserve (about 6%).

Interconnect: TPU ICI bandwidth per link, one way, and which torus dimensions wrap around,
from "How to Scale Your Model" (jax-ml/scaling-book, tpus.md: v4 4.5e10 B/s, v5p 1e11, v5e
5e10, v6e 1e11; a dimension wraps on v4/v5p when its length is a multiple of 4, on v5e/v6e
only at the full 16); GPUs: NVLink per GPU one way (H100/H200 NVLink 4: 900 GB/s both ways,
A100 NVLink 3: 600 GB/s) inside a node of 8, and the network across nodes (one 400 Gb/s
NIC per H100/H200, 200 Gb/s per A100, as in DGX systems).
"""

from __future__ import annotations

import dataclasses
import re

from mtf.errors import SettingError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    device_kind: str          # jax's device_kind prefix
    peak_bf16_flops: float    # dense, per device
    hbm_bandwidth: float      # bytes/s per device
    hbm_bytes: float          # usable per device
    libtpu_name: str | None   # topology prefix for libtpu's compile-only client
    cores_per_chip_in_name: int  # v4-64 / v5p-128 count TensorCores (2 a chip); v5e/v6e chips
    grid_dims: int            # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    ici_link_bandwidth: float  # bytes/s one way: a TPU ICI link; a GPU's NVLink in total
    network_bandwidth: float = 0.0  # bytes/s one way per GPU across nodes (GPUs only)
    devices_per_node: int = 8       # GPUs a node's NVLink joins


CHIPS = {
    "v4": Chip("TPU v4", "TPU v4", 275e12, 1228e9, 30.75 * GIB, "v4", 2, 3, 4.5e10),
    "v5e": Chip("TPU v5e", "TPU v5 lite", 197e12, 819e9, 15.75 * GIB, "v5e", 1, 2, 5e10),
    "v5p": Chip("TPU v5p", "TPU v5", 459e12, 2765e9, 95.74 * GIB, "v5p", 2, 3, 1e11),
    "v6e": Chip("TPU v6e", "TPU v6 lite", 918e12, 1640e9, 31.25 * GIB, "v6e", 1, 2, 1e11),
    "h100": Chip("NVIDIA H100 SXM", "NVIDIA H100", 989e12, 3350e9, 75.0 * GIB, None, 1, 0,
                 450e9, 50e9),
    "h200": Chip("NVIDIA H200 SXM", "NVIDIA H200", 989e12, 4800e9, 131.0 * GIB, None, 1, 0,
                 450e9, 50e9),
    "a100": Chip("NVIDIA A100 80GB", "NVIDIA A100", 312e12, 2039e9, 75.0 * GIB, None, 1, 0,
                 300e9, 25e9),
}
ALIASES = {"v5litepod": "v5e", "v6": "v6e"}
# chips -> torus shape, as Cloud TPU lays out the common slice sizes
GRIDS = {
    3: {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4),
        64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
        2048: (8, 16, 16), 4096: (16, 16, 16)},
    2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
        256: (16, 16)},
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A named slice: its chip, device count and libtpu topology string (None for GPUs)."""

    name: str
    chip: Chip
    devices: int
    topology: str | None


def parse_slice(name: str) -> Slice:
    """`v4-64` (TensorCores, as Cloud TPU names it: 32 chips), `v5e-16` / `v5litepod-16`
    (chips), `v5p-128`, `v6e-64`, `h100-8`, `a100-16` (GPUs)."""
    match = re.fullmatch(r"([a-z0-9]+?)-(\d+)", name.strip().lower())
    family = ALIASES.get(match.group(1), match.group(1)) if match else None
    if not match or family not in CHIPS:
        raise SettingError(f"--topology={name!r}: use a slice name such as v4-64, v5e-16, "
                           f"v5p-128, v6e-64, h100-8 or a100-16 (families: {sorted(CHIPS)})")
    chip, count = CHIPS[family], int(match.group(2))
    devices, rest = divmod(count, chip.cores_per_chip_in_name)
    if rest or devices < 1:
        raise SettingError(f"--topology={name!r}: {family} slices are named by TensorCores "
                           f"(2 per chip), so the number must be even")
    if chip.libtpu_name is None:
        return Slice(name, chip, devices, None)
    grid = GRIDS[chip.grid_dims].get(devices)
    if grid is None:
        raise SettingError(f"--topology={name!r}: {devices} chips is not a {family} slice shape "
                           f"known here; known chip counts: {sorted(GRIDS[chip.grid_dims])}")
    return Slice(name, chip, devices, f"{chip.libtpu_name}:{'x'.join(map(str, grid))}")


def grid(slice_: Slice) -> tuple[int, ...] | None:
    """The slice's chips as a torus shape (x first), or None for GPUs."""
    if slice_.topology is None:
        return None
    return tuple(int(n) for n in slice_.topology.split(":")[1].split("x"))


def wraps(chip: Chip, length: int) -> bool:
    """Whether a torus dimension of this length has its wrap-around link."""
    return length % 4 == 0 if chip.grid_dims == 3 else length == 16


def chip_of(device_kind: str) -> Chip | None:
    """The data sheet of a jax device kind, or None (CPUs, unknown accelerators)."""
    for chip in CHIPS.values():
        if device_kind.startswith(chip.device_kind) and not (
                chip.device_kind == "TPU v5" and device_kind.startswith("TPU v5 lite")):
            return chip
    return None
