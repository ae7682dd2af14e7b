"""`mtf.interconnect`: collectives read out of compiled HLO (lines as libtpu 0.0.42 prints
them for mtf's train step) and their time on a slice's links."""

import numpy as np
import pytest

from mtf import hardware, interconnect


def test_every_replica_group_form_names_the_same_devices_xla_means():
    group = interconnect.first_group
    assert group("replica_groups={{0,2,4,6},{1,3,5,7}}, dimensions={0}") == [0, 2, 4, 6]
    assert group("replica_groups=[2,4]<=[8], dimensions={0}") == [0, 1, 2, 3]
    # iota 0..7 as [2,2,2], transposed (2,1,0): element [i,j,k] = 4k + 2j + i
    assert group("replica_groups=[4,2]<=[2,2,2]T(2,1,0), dimensions={0}") == [0, 4]
    mesh = "replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'%s'}"
    assert group(mesh % "axis_0") == [0, 1]  # ids [[0,2,4,6],[1,3,5,7]]
    assert group(mesh % "axis_1") == [0, 2, 4, 6]
    assert group("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}") == [
        0, 2, 4, 6]
    assert group("source_target_pairs={{0,0},{1,2},{2,1},{3,3}}") == [1, 2]


HLO = """\
%all-reduce-scatter.31 (input_0: bf16[1024,4096]) -> bf16[256,4096] {
  %input_0 = bf16[1024,4096]{1,0} parameter(0)
  %all-reduce.2 = bf16[1024,4096]{1,0:T(8,128)(2,1)} all-reduce(%input_0), channel_id=3, \
replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add.clone
  ROOT %dynamic-slice.5 = bf16[256,4096]{1,0} dynamic-slice(%all-reduce.2, %c, %c)
}

ENTRY %main.1 (p0: bf16[256,4096], p1: f32[64]) -> f32[64] {
  %all-gather.1 = bf16[1024,4096]{1,0:T(8,128)(2,1)S(3)} all-gather(%p0), channel_id=2, \
replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, \
dimensions={0}, use_global_device_ids=true, metadata={op_name="jit(step)/dot_general"}
  %all-reduce.1 = (f32[64]{0}, f32[64]{0}) all-reduce(%p1, %p1), channel_id=4, \
replica_groups={{0,1,2,3,4,5,6,7}}, use_global_device_ids=true, to_apply=%add.1
  %all-to-all = f32[4,1,8192]{2,1,0:T(1,128)S(3)} all-to-all(%r), channel_id=20, \
replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
  %collective-permute-start = (s32[4,64,1]{1,2,0}, s32[4,64,1]{1,2,0}, u32[]{:S(2)}, \
u32[]{:S(2)}) collective-permute-start(%b), channel_id=12, \
source_target_pairs={{0,0},{1,2},{2,4},{3,6},{4,1},{5,3},{6,5},{7,7}}
  %collective-permute-done = s32[4,64,1]{1,2,0} collective-permute-done(%collective-permute-start)
  %fusion = bf16[256,4096]{1,0} fusion(%all-gather.1), kind=kCustom, calls=%all-reduce-scatter.31
  ROOT %r = f32[64]{0} add(%p1, %p1)
}
"""


def test_bytes_per_device_follow_a_ring_of_the_group():
    found = {op["kind"]: op for op in interconnect.collectives(HLO)}
    assert set(found) == set(interconnect.KINDS)
    mib8 = 1024 * 4096 * 2  # the bf16 [1024, 4096] weight
    # TPU's fused all-reduce-scatter over 4: (n-1)/n of the input; all-gather likewise
    assert found["reduce-scatter"]["bytes"] == 3 / 4 * mib8
    assert found["all-gather"]["bytes"] == 3 / 4 * mib8
    assert found["all-gather"]["group"] == [0, 1, 2, 3]  # ids [2,4]T(1,0) as the [4,2] mesh
    # a variadic all-reduce over 8: both operands, twice (n-1)/n
    assert found["all-reduce"]["bytes"] == 2 * 7 / 8 * (2 * 64 * 4)
    assert found["all-to-all"]["bytes"] == 3 / 4 * (4 * 8192 * 4)
    assert found["collective-permute"]["bytes"] == 4 * 64 * 4  # the operand, not the tuple


def test_the_links_a_group_spans_set_its_bandwidth():
    v4_64 = hardware.parse_slice("v4-64")  # 2x4x4 chips: the 4s wrap around, the 2 not
    coords = np.array(np.unravel_index(np.arange(32), (2, 4, 4), order="F")).T
    link = 45e9
    along_x = [0, 1]                    # x, length 2: one direction
    along_y = [0, 2, 4, 6]              # y, length 4 with wrap-around: both
    everything = list(range(32))        # x, y and z
    assert interconnect.group_bandwidth(along_x, coords, v4_64) == link
    assert interconnect.group_bandwidth(along_y, coords, v4_64) == 2 * link
    assert interconnect.group_bandwidth(everything, coords, v4_64) == 5 * link
    assert [hardware.wraps(v4_64.chip, n) for n in hardware.grid(v4_64)] == [False, True, True]
    v5e = hardware.parse_slice("v5e-16")  # 4x4: 2-D chips wrap only at a full 16
    assert hardware.grid(v5e) == (4, 4) and not hardware.wraps(v5e.chip, 4)
    # GPUs: NVLink inside a node of 8, the network across nodes
    h100 = hardware.parse_slice("h100-16")
    gpu_coords = interconnect.coordinates([object()] * 16, h100)
    assert interconnect.group_bandwidth(list(range(8)), gpu_coords, h100) == 450e9
    assert interconnect.group_bandwidth([0, 8], gpu_coords, h100) == 50e9


def test_time_on_the_links_adds_each_collective_over_its_groups_bandwidth():
    v4_16 = hardware.parse_slice("v4-16")  # 2x2x2 chips, no wrap-around
    devices = [object()] * 8               # simulated: the grid filled x fastest
    cost = interconnect.interconnect_cost(HLO, devices, v4_16)
    ops = interconnect.collectives(HLO)
    assert cost["ici_bytes"] == pytest.approx(sum(op["bytes"] for op in ops))
    link = 45e9
    # groups [0,1,2,3] span x and y, [0,2,4,6] y and z, {0..7} all three; so do the
    # permute's devices
    expected = (ops[0]["bytes"] / (2 * link) + ops[1]["bytes"] / (2 * link)
                + ops[2]["bytes"] / (3 * link) + ops[3]["bytes"] / (2 * link)
                + ops[4]["bytes"] / (3 * link))
    assert [op["kind"] for op in ops] == ["reduce-scatter", "all-gather", "all-reduce",
                                         "all-to-all", "collective-permute"]
    assert cost["ici_s"] == pytest.approx(expected)
