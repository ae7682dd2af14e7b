"""Every recipe fits the slice it names, by the TPU compiler's own peak (compile-only,
libtpu): the mT0 sizes, their LoRA recipe and x-LLaMA's 7B recipes. Kept apart from
test_plan.py so that the suite's workers share these long compiles."""

import pytest

from tests.test_plan import check_memory_figures, plan


@pytest.mark.slow
@pytest.mark.parametrize("gin_file,topology", [
    # the TPU compiler takes 16 GB of host memory for its 24 unscanned layers: alone, and
    # first (the suite's first file), before the other workers' processes have grown
    pytest.param("gin/mt0_base.gin", "v4-64", marks=pytest.mark.exclusive_host_memory),
    ("gin/mt0_small.gin", "v4-64"),
    ("gin/mt0_large.gin", "v4-64"), ("gin/mt0_xl.gin", "v4-256"),
    ("gin/mt0_xxl.gin", "v4-256"), ("gin/mt0_xxl_v4_64.gin", "v4-64")])
def test_mt0_configs_fit_their_slices_with_15_percent_spare(tmp_path, gin_file, topology):
    """The published batch (512) and lengths (1024/1024), the gin defaults, the TPU
    compiler's peak: at least 15% of HBM left."""
    done, report = plan(tmp_path, f"--gin_file={gin_file}", f"--topology={topology}",
                        "--no_cost", "--min_headroom=0.15")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["compiled_by"].startswith("the TPU compiler")
    assert report["fits"] and report["headroom"] >= 0.15
    assert (report["batch"], report["lengths"]) == (512, {"inputs": 1024, "targets": 1024})
    assert report["peak_bytes"] <= 0.85 * report["hbm_bytes"]
    check_memory_figures(report)


@pytest.mark.slow
def test_the_mt0_xxl_lora_recipe_fits_one_v4_8_host(tmp_path):
    """gin/mt0_xxl_lora.gin: the frozen 13B base in bfloat16, fully sharded over one host's
    4 chips, with rank-8 adapters (hardware-RNG dropout) fits with 15% of HBM to spare; the
    report counts the base apart from what trains."""
    done, report = plan(tmp_path, "--gin_file=gin/mt0_xxl_lora.gin", "--topology=v4-8",
                        "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/mt0-xxl'", "--no_cost",
                        "--min_headroom=0.15")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["compiled_by"].startswith("the TPU compiler") and report["fits"]
    assert report["headroom"] >= 0.15
    # 12.9B frozen parameters in bfloat16 over 4 devices; the adapters (35M in float32,
    # partly replicated: the rank axis and the model axis of size 1 shard nothing)
    assert report["frozen_bytes"] == pytest.approx(12.9e9 * 2 / 4, rel=0.02)
    assert 35e6 * 4 / 4 < report["params_bytes"] < 35.5e6 * 4
    assert report["opt_state_bytes"] == pytest.approx(2 * report["params_bytes"], rel=0.01)
    assert "frozen base" in done.stdout
    check_memory_figures(report)


@pytest.mark.slow
@pytest.mark.parametrize("gin_file,topology,frozen", [
    ("gin/xllama_7b.gin", "v4-32", False), ("gin/xllama_7b_lora.gin", "v4-8", True)])
def test_the_x_llama_7b_recipes_fit_their_slices(tmp_path, gin_file, topology, frozen):
    """x-LLaMA's CoIT on LLaMA-7B (batch 128 of 512 tokens, AdamW): full finetuning on a
    v4-32 and LoRA on one v4-8 host, each with at least 15% of HBM to spare."""
    done, report = plan(tmp_path, f"--gin_file={gin_file}", f"--topology={topology}",
                        "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/llama-7b'", "--no_cost",
                        "--min_headroom=0.15")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["compiled_by"].startswith("the TPU compiler") and report["fits"]
    assert report["headroom"] >= 0.15 and report["batch"] == 128
    parameters = 6.74e9  # LLaMA-7B
    held = report["frozen_bytes"] if frozen else report["params_bytes"]
    assert held == pytest.approx(parameters * (2 if frozen else 4) / report["devices"],
                                 rel=0.02)
    check_memory_figures(report)
