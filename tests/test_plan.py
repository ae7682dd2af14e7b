"""`python -m mtf.plan`: the real train step compiled for TPU slices by libtpu (compile-only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtf import hardware

REPO = Path(__file__).resolve().parents[1]


def plan(tmp_path, *args, python_prefix=None, timeout=1500):
    out = tmp_path / "plan.json"
    argv = ["--json", str(out), *args]
    if python_prefix:  # run main() after some set-up code, in a fresh interpreter
        cmd = [sys.executable, "-c", f"{python_prefix}; import sys; from mtf import plan; "
               f"sys.exit(plan.main({argv!r}))"]
    else:
        cmd = [sys.executable, "-m", "mtf.plan", *argv]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    done = subprocess.run(cmd, cwd=REPO, env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else None
    return done, report


def check_memory_figures(report):
    """Per-device figures agree with the arrays' sizes / shards and with the compiler's."""
    mesh = report["mesh"]
    for array in report["largest_arrays"]:
        axes = [a for a in array["spec"][2:-1].replace("'", "").replace(" ", "").split(",")
                if a and a != "None"]
        shards = int(np.prod([mesh[a] for a in axes])) if axes else 1
        assert array["bytes_per_device"] == pytest.approx(array["bytes"] / shards, rel=1e-6)
    state = (report["params_bytes"] + report["opt_state_bytes"] + report["batch_bytes"]
             + report["frozen_bytes"])
    if "argument_bytes" in report:  # the compiler's own count of the step's inputs
        assert report["argument_bytes"] == pytest.approx(state, rel=0.02)


def test_slice_names():
    v4 = hardware.parse_slice("v4-64")
    assert (v4.devices, v4.topology, v4.chip.hbm_bytes) == (32, "v4:2x4x4", 30.75 * 2 ** 30)
    assert hardware.parse_slice("v4-256").topology == "v4:4x4x8"
    assert hardware.parse_slice("v5litepod-16").topology == "v5e:4x4"
    assert hardware.parse_slice("v5p-128").devices == 64
    gpu = hardware.parse_slice("h100-8")
    assert (gpu.devices, gpu.topology) == (8, None)
    for bad in ("v4-63", "v9-8", "v4"):
        with pytest.raises(ValueError, match="--topology"):
            hardware.parse_slice(bad)
    assert hardware.chip_of("TPU v5 lite").name == "TPU v5e"
    assert hardware.chip_of("TPU v5").name == "TPU v5p"
    assert hardware.chip_of("cpu") is None


def test_gpu_slices_and_missing_libtpu_fall_back_to_simulated_devices(tmp_path):
    done, report = plan(tmp_path, "--gin_file=gin/mt0_tiny.gin", "--topology=h100-8",
                        "--gin.MESH_SHAPE=(2, 2, 2)", "--gin.BATCH_SIZE=16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "simulated devices" in done.stdout and report["devices"] == 8
    assert report["mesh"] == {"data": 2, "fsdp": 2, "model": 2} and report["fits"]
    assert report["mfu_ceiling"] > 0 and report["xla_flops_per_device"] > 0
    assert report["ici_bytes_per_device"] > 0 and "NVLink at 450 GB/s" in report["ici_from"]
    check_memory_figures(report)
    # a TPU slice without libtpu installed: simulated CPU devices, and it says so
    done, report = plan(tmp_path, "--gin_file=gin/mt0_tiny.gin", "--topology=v4-8",
                        "--no_cost", python_prefix="sys_modules = __import__('sys').modules; "
                        "sys_modules['libtpu'] = None")
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["devices"] == 4 and "simulated devices" in report["compiled_by"]
    assert "install the tpu extra" in done.stdout


@pytest.mark.slow
def test_mt0_xxl_on_one_v4_8_host_does_not_fit_and_says_what_to_change(tmp_path):
    """The 13B model's batch of 512 on 4 chips, the plan's cost compiles left at their
    default: the report with the compiler's figure and advice, exit 1, no traceback
    (the loop-free cost compiles, which would need more still, are not tried)."""
    done, report = plan(tmp_path, "--gin_file=gin/mt0_xxl.gin", "--topology=v4-8")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert report["compiled_by"].startswith("the TPU compiler") and not report["fits"]
    assert report["peak_bytes"] > report["hbm_bytes"]
    assert "RESOURCE_EXHAUSTED" in report["compiler"] or "memory" in report["compiler"]
    assert "DOES NOT FIT" in done.stdout and "advice: " in done.stdout
    assert "step_s" not in report and "cost_error" not in report
    tips = " ".join(report["advice"])
    # 641 GiB of temporaries beside 13 GiB of state: 128 sequences a chip split 64 ways
    assert "NUM_MICROBATCHES=64" in tips and "tensor parallelism" in tips
    check_memory_figures(report)
    # Quiet: neither TensorFlow's nor libtpu's start-up lines (issue 12).
    assert not any(n in done.stderr for n in ("oneDNN", "absl::InitializeLog",
                                              "TPU_WORKER_HOSTNAMES")), done.stderr[-2000:]


def test_a_kernel_that_exceeds_vmem_is_told_apart_from_hbm(tmp_path):
    """The fused loss kernel at emb 2048 (the VMEM model of its tiles does not hold there):
    the compiler's VMEM error is reported as the kernel's, with the setting that avoids it,
    not as HBM advice about microbatches."""
    done, report = plan(tmp_path, "--gin_file=gin/mt0_tiny.gin", "--topology=v4-8",
                        "--gin.model.T5Config.emb_dim=2048", "--gin.LOSS_KERNEL='pallas'",
                        "--gin.BATCH_SIZE=16", "--no_cost",
                        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 1024}")
    assert done.returncode == 1, done.stderr[-3000:]
    assert report["vmem"] and not report["fits"] and "vmem" in report["compiler"]
    assert report["advice"] == [
        "a Pallas kernel's tiles need more VMEM (the TensorCore's 16 MiB scratchpad) than "
        "there is at these shapes: --gin.LOSS_KERNEL='xla' (the XLA path of the same "
        "computation)"]
    assert "DOES NOT FIT in VMEM" in done.stdout


def test_the_advice_names_each_setting_that_would_help():
    """Advice from the run config alone: what a plan that does not fit prints (no compile)."""
    import gin

    from mtf import config
    from mtf import plan as plan_lib
    try:
        config.parse(["gin/mt0_small.gin"], ["MODEL_DIR=/nonexistent", "NUM_MICROBATCHES=1",
                                             "LOSS_CHUNKS=1", "LOSS_KERNEL='xla'",
                                             "MESH_SHAPE=(4, 1, 1)"])
        run = plan_lib.run_config()
    finally:
        gin.clear_config()
    tips = plan_lib._advice(run, {"data": 4, "fsdp": 1, "model": 1}, 20 * 2 ** 30,
                            30.75 * 2 ** 30)
    text = " ".join(tips)
    for setting in ("shard them over more devices", "REMAT_POLICY", "LOSS_CHUNKS=8",
                    "NUM_MICROBATCHES=2"):
        assert setting in text, (setting, tips)
    assert "tensor parallelism" not in text  # d_model 512: not worth a model axis


def test_a_batch_that_does_not_split_over_the_mesh_is_one_line(tmp_path):
    done, report = plan(tmp_path, "--gin_file=gin/mt0_tiny.gin", "--topology=v4-8",
                        "--gin.BATCH_SIZE=7")
    assert done.returncode == 1 and report is None
    assert done.stderr.strip() == (
        "error: BATCH_SIZE=7 does not split over the 4 devices the batch is sharded on (data "
        "x fsdp of the mesh {'data': 4, 'fsdp': 1, 'model': 1}); choose a multiple of 4, or "
        "change MESH_SHAPE")


def test_loop_free_cost_extends_to_the_full_depth_exactly(tmp_path):
    """FLOPs, HBM traffic and collectives extended from depths 1-2 equal the TPU compiler's
    count of the whole step compiled with every loop unrolled (layers, chunks, microbatches);
    a looping compile undercounts them all."""
    code = """
import json, sys, dataclasses
from mtf import config, hardware, plan
slice_ = hardware.parse_slice("v4-8")
how = plan._environment(slice_)
from mtf import partitioning, run_setup
config.parse(["gin/mt0_tiny.gin"], ["MESH_SHAPE=(2, 2, 1)", "LOSS_CHUNKS=2",
                                    "SCAN_LAYERS=True", "model.T5Config.num_encoder_layers=3"])
out = {}
for k in (1, 2):
    run = plan.run_config().replace(num_microbatches=k)
    mesh = partitioning.make_mesh(run.mesh_shape, plan._devices(slice_, how))
    devices = list(mesh.devices.flat)
    full = run.replace(model_config=run.model_config.replace(scan_layers=False),
                       loss=dataclasses.replace(run.loss, unroll_loops=True))
    out[k] = {"extended": plan.loop_free_cost(run, mesh, slice_),
              "full": plan._cost(run_setup.setup(full, devices).program.compile(), slice_,
                                 devices),
              "scanned": plan._cost(run_setup.setup(run, devices).program.compile(), slice_,
                                    devices)}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    costs = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = costs["1"], costs["2"]
    for key in ("flops", "bytes", "ici_bytes", "ici_s", "ici_bytes_all-gather",
                "ici_bytes_reduce-scatter", "ici_bytes_all-reduce"):
        assert one["extended"][key] == pytest.approx(one["full"][key], rel=0.01), key
    assert one["full"]["ici_bytes_all-gather"] > 0 and one["full"]["ici_bytes_reduce-scatter"] > 0
    # 2 microbatches: the same FLOPs as one unrolled compile. Its collectives are fewer: it
    # gathers the weights and reduce-scatters the gradients once for both, while the step's
    # microbatch loop does both in every iteration, as the extension counts them.
    assert two["extended"]["flops"] == pytest.approx(two["full"]["flops"], rel=0.01)
    assert two["extended"]["ici_bytes"] > 1.5 * one["extended"]["ici_bytes"]
    # ... and a scanned, looping compile undercounts: the trap this guards against
    for k in (one, two):
        assert k["scanned"]["flops"] < 0.7 * k["full"]["flops"]
        assert k["scanned"]["ici_bytes"] < 0.7 * k["full"]["ici_bytes"]
        assert k["scanned"]["bytes"] < 0.8 * k["full"]["bytes"]


def test_a_ceiling_computed_end_to_end_equals_the_hand_calculation(tmp_path):
    """mt0-tiny data parallel on a v4-8 (2x2x1 chips, no wrap-around): the gradients'
    all-reduce moves 2 x 3/4 of the float32 parameters per chip over one link along each of
    the 2 dimensions at 45 GB/s; the ceiling is the analytic FLOPs' time at 275 TFLOP/s over
    the slowest of the three terms."""
    done, r = plan(tmp_path, "--gin_file=gin/mt0_tiny.gin", "--topology=v4-8",
                   "--gin.BATCH_SIZE=16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert r["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
    gradients = 2 * 3 / 4 * r["params_bytes"]  # replicated: a device holds all of them
    assert r["ici_bytes_by_kind"]["all-reduce"] == pytest.approx(gradients, rel=0.01)
    assert r["ici_s"] == pytest.approx(gradients / (2 * 45e9), rel=0.01)
    assert r["compute_s"] == pytest.approx(r["xla_flops_per_device"] / 275e12)
    assert r["memory_s"] == pytest.approx(r["xla_bytes_per_device"] / 1228e9)
    terms = (r["compute_s"], r["memory_s"], r["ici_s"])
    ideal = r["model_flops_per_device"] / 275e12
    assert r["mfu_ceiling"] == pytest.approx(ideal / max(terms))
    assert r["mfu_ceiling_no_overlap"] == pytest.approx(ideal / sum(terms))
    assert "on the interconnect" in done.stdout and "without overlap" in done.stdout


def test_the_plan_counts_what_xla_cannot_see_inside_pallas_kernels(tmp_path):
    """XLA's cost analysis counts a Pallas call without a cost estimate as nothing (the
    flash-attention backward kernels); the plan adds mtf's model of the flash kernels and
    names any other such kernel."""
    code = """
import json
from mtf import hardware, plan
slice_ = hardware.parse_slice("v4-8")
how = plan._environment(slice_)
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mtf.model import flash, masks
mesh = Mesh(np.array(plan._devices(slice_, how)[:1]), ("d",))
b, L, h, d = 2, 256, 2, 64
def loss(q, k, v, bias):
    ids = jnp.ones((b, L), jnp.int32)
    out = flash.attention(q, k, v, bias, masks.SegmentMask(ids, ids), None, 0.0, jnp.bfloat16)
    return jnp.sum(out.astype(jnp.float32) ** 2)
spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype,
                                                               sharding=NamedSharding(mesh, P()))
qkv = spec((b, L, h, d))
compiled = jax.jit(jax.grad(loss, (0, 1, 2, 3))).lower(qkv, qkv, qkv, spec((1, h, L, L))).compile()
def copy(x_ref, o_ref):
    o_ref[...] = x_ref[...]
bare = pl.pallas_call(copy, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32))
bare_compiled = jax.jit(bare).lower(spec((8, 128), jnp.float32)).compile()
print(json.dumps({"flash": plan.kernel_costs(compiled.as_text()),
                  "cost": plan._cost(compiled),
                  "bare": plan.kernel_costs(bare_compiled.as_text()),
                  "bare_xla": plan._cost(bare_compiled)}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    costs = json.loads(done.stdout.strip().splitlines()[-1])
    unit = 2.0 * 2 * 2 * 256 * 256 * 64  # one [q, k] x d product over batch 2, heads 2
    # forward 2 units (XLA counted its estimate), dk/dv 4 and dq 3 units (XLA counted 0)
    assert costs["flash"]["flops"] == pytest.approx(7 * unit, rel=0.01)
    assert costs["flash"]["uncounted"] == []
    bias = 2 * 2 * 256 * 256 * 2  # the bias broadcast to the batch, read by all three kernels
    assert costs["flash"]["bytes"] > 2 * bias
    assert costs["cost"]["flops"] >= 9 * unit and costs["cost"]["kernel_bytes"] > 0
    assert costs["bare_xla"]["bytes"] == 0  # the trap itself: XLA saw nothing
    assert len(costs["bare"]["uncounted"]) == 1 and costs["bare"]["bytes"] == 0
