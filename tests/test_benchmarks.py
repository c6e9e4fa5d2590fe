"""Tests for the benchmark harness in benchmarks/: statistics, pairing,
FLOP counts, target wording, the page, and tiny sessions of each kind.

Nothing here asserts a timing. Reference values are computed by hand in the
tests (statistics, FLOPs, ratios) or in float64 numpy (rotations).
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import (
    compile_time,
    harness,
    long_context,
    op_profile,
    report,
    rotary,
    run_all,
    shapes,
    training,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def summary(values):
    return harness.summarize(values)


# --- statistics and pairing ---------------------------------------------------


def test_summarize_odd_and_even_counts():
    odd = harness.summarize([3.0, 1.0, 2.0])
    assert odd["median"] == 2.0
    assert odd["min"] == 1.0
    assert odd["max"] == 3.0
    assert odd["n"] == 3
    even = harness.summarize([4.0, 1.0, 3.0, 2.0])
    assert even["median"] == 2.5


def test_summarize_empty_raises():
    with pytest.raises(ValueError, match="no values"):
        harness.summarize([])


def test_pair_ratios_divide_within_repetition():
    assert harness.pair_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]


def test_pair_ratios_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 numerators and 1 denominators"):
        harness.pair_ratios([1.0, 2.0], [1.0])


def test_pair_ratios_zero_denominator_raises():
    with pytest.raises(ValueError, match="Denominator 1"):
        harness.pair_ratios([1.0, 2.0], [1.0, 0.0])


def test_speedups_use_faster_other_per_repetition():
    ours = [1.0, 2.0]
    others = {"flax": [3.0, 2.0], "torch": [2.0, 5.0]}
    # Repetition 0: faster other 2.0 / 1.0; repetition 1: 2.0 / 2.0.
    assert harness.speedups_over_fastest(ours, others) == [2.0, 1.0]


def test_rotated_order_cycles_every_name_first():
    names = ["a", "b", "c"]
    firsts = [harness.rotated_order(names, rep)[0] for rep in range(3)]
    assert firsts == ["a", "b", "c"]
    assert harness.rotated_order(names, 4) == ["b", "c", "a"]


class FakeWorker:
    """Stands in for `harness.Worker`: replies with scripted seconds and
    records the order of the runs."""

    def __init__(self, log: list, seconds: dict):
        self.log, self.seconds = log, seconds

    def call(self, op, session):
        self.log.append(session)
        return {"seconds": self.seconds[session].pop(0)}


def test_measure_alternating_drops_warmup_and_pairs():
    log = []
    worker = FakeWorker(log, {"x": [9.0, 1.0, 2.0], "y": [9.0, 10.0, 20.0]})
    replies = harness.measure_alternating(
        {"x": (worker, "x"), "y": (worker, "y")}, warmup=1, repeats=2
    )
    assert harness.seconds_of(replies["x"]) == [1.0, 2.0]
    assert harness.seconds_of(replies["y"]) == [10.0, 20.0]
    assert log == ["x", "y", "y", "x", "x", "y"]


def test_measure_alternating_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        harness.measure_alternating({}, warmup=0, repeats=0)


def test_resolve_cpus_rejects_too_many_threads():
    with pytest.raises(ValueError, match="--threads=999"):
        harness.resolve_cpus(999)


def test_worker_environment_sets_threads_and_one_device():
    env = harness.worker_environment([0])
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["MKL_NUM_THREADS"] == "1"
    assert "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", "")
    assert env["USE_TF"] == "0"


# --- FLOPs and inputs ---------------------------------------------------------


def test_training_flops_match_hand_count():
    shape = shapes.ModelShape("t", 2, 8, 2, 16, 50, 4, 3)
    params = 1000
    # 6 * 1000 * (4 * 3) + 12 * 2 * 8 * 4**2 * 3 = 72000 + 9216.
    assert shapes.training_flops(shape, params) == 81216.0
    assert shapes.inference_flops(shape, params) == 81216.0 / 3


def test_training_flops_match_trainer_count():
    from roformer_jax.train import perf

    shape = shapes.CONFIG_B
    expected = perf.model_flops_per_step(
        num_params=12_345_678,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        seq_len=shape.seq_len,
        batch_size=shape.batch_size,
    )
    assert shapes.training_flops(shape, 12_345_678) == pytest.approx(expected)


def test_masked_lm_batch_layout():
    shape = shapes.ModelShape("t", 1, 8, 2, 16, 50, 64, 3)
    batch = shapes.masked_lm_batch(shape)
    masked = batch["weights"] > 0
    assert batch["inputs"].shape == (3, 64)
    assert np.all(batch["inputs"][masked] == shapes.MASK_TOKEN_ID)
    assert np.all(batch["inputs"][~masked] == batch["targets"][~masked])
    assert batch["targets"].min() >= shapes.FIRST_TOKEN_ID
    assert batch["targets"].max() < 50
    assert np.all(masked.sum(axis=1) >= 1)
    assert np.array_equal(batch["positions"][2], np.arange(64))


def test_masked_lm_batch_rejects_tiny_vocabulary():
    shape = shapes.ModelShape("t", 1, 8, 2, 16, 5, 4, 1)
    with pytest.raises(ValueError, match="vocab_size=5"):
        shapes.masked_lm_batch(shape)


# --- scenario, profile, long context and compile summaries ---------------------


def fake_scenario(config="A", dropout=0.0, mode="train", times=None, fraction=None):
    shape = shapes.QUICK_A if config == "A" else shapes.QUICK_B
    shape = dataclasses.replace(shape, name=config)
    times = times or {
        "roformer_jax": [1.0, 2.0],
        "hf_flax": [2.0, 3.0],
        "hf_torch": [1.5, 5.0],
    }
    infos = {
        "roformer_jax": {
            "flops_per_step": 100.0,
            "num_params": 10,
            "hf_config": {},
            "optimizer": {
                "learning_rate": 1e-3,
                "beta1": 0.9,
                "beta2": 0.999,
                "epsilon": 1e-8,
                "weight_decay": 0.01,
                "grad_clip_norm": 1.0,
            },
        },
        "hf_flax": {"num_params": 10},
        "hf_torch": {"num_params": 10},
        training.MATMUL_NAME: {"flops_per_run": 400.0, "size": 256},
    }
    replies = {
        name: [{"seconds": s} for s in seconds] for name, seconds in times.items()
    }
    replies[training.MATMUL_NAME] = [{"seconds": 1.0}, {"seconds": 2.0}]
    memory = {
        name: {
            "max_rss_bytes": 2**30,
            "baseline_rss_bytes": 2**29,
            "rss_growth_bytes": 2**29,
        }
        for name in training.IMPLEMENTATIONS
    }
    return training.summarize_scenario(shape, mode, dropout, infos, replies, memory)


def test_summarize_scenario_ratios_and_rates():
    scenario = fake_scenario()
    ours = scenario["implementations"]["roformer_jax"]
    tokens = shapes.QUICK_A.tokens_per_step
    assert ours["tokens_per_second"]["values"] == [tokens / 1.0, tokens / 2.0]
    # Achieved 100 and 50 FLOP/s against matmul 400 and 200 FLOP/s.
    assert ours["matmul_fraction"]["values"] == [0.25, 0.25]
    ratios = scenario["ratios"]
    assert ratios["speedup_vs_hf_flax"]["values"] == [2.0, 1.5]
    assert ratios["speedup_vs_hf_torch"]["values"] == [1.5, 2.5]
    assert ratios["speedup_vs_fastest_hf"]["values"] == [1.5, 1.5]


def test_summarize_profile_shares():
    starts = {
        variant: {"info": {"flops_per_step": 10.0}}
        for variant in training.PROFILE_VARIANTS
    }
    times = {"full": [2.0, 4.0], "no_rope": [1.5, 3.0]}
    replies = {
        variant: [{"seconds": s} for s in times.get(variant, [2.0, 4.0])]
        for variant in training.PROFILE_VARIANTS
    }
    profile = training.summarize_profile(shapes.QUICK_A, 0.0, starts, replies)
    assert profile["variants"]["no_rope"]["share_removed"]["values"] == [0.25, 0.25]
    assert profile["variants"]["full"]["share_removed"]["values"] == [0.0, 0.0]


def test_growth_exponent_linear_and_quadratic():
    assert long_context.growth_exponent(1024, 3.0, 2048, 6.0) == pytest.approx(1.0)
    assert long_context.growth_exponent(1024, 3.0, 4096, 48.0) == pytest.approx(2.0)


def test_growth_exponent_rejects_equal_lengths():
    with pytest.raises(ValueError, match="two different lengths"):
        long_context.growth_exponent(8, 1.0, 8, 2.0)


def test_growth_table_skips_missing_times():
    rows = [
        {"length": 2, "impl": "xla", "seconds": {"median": 1.0}, "xla_peak_bytes": 10},
        {"length": 4, "impl": "xla", "xla_peak_bytes": 40},
        {"length": 2, "impl": "chunked", "seconds": {"median": 1.0}},
    ]
    table = long_context.growth_table(rows, "xla")
    assert len(table) == 1
    assert table[0]["time"] is None
    assert table[0]["memory"] == pytest.approx(2.0)


def test_summarize_compile_splits_cold_run():
    replies = {
        name: [
            {"seconds": 9.0, "trace_seconds": 1.0, "xla_seconds": 8.0},
            {"seconds": 4.0, "trace_seconds": 1.0, "xla_seconds": 3.0},
            {"seconds": 6.0, "trace_seconds": 2.0, "xla_seconds": 4.0},
        ]
        for name in compile_time.IMPLEMENTATIONS
    }
    row = compile_time.summarize_compile(shapes.QUICK_B, replies)
    ours = row["implementations"]["roformer_jax"]
    assert ours["cold_seconds"] == 9.0
    assert ours["seconds"]["median"] == 5.0
    assert ours["xla_seconds"]["values"] == [3.0, 4.0]


def test_summarize_rotary_copy_fraction():
    replies = {
        "roformer_jax": [{"seconds": 2.0}],
        "hf_flax": [{"seconds": 4.0}],
        "hf_torch": [{"seconds": 8.0}],
        "copy": [{"seconds": 1.0}],
    }
    result = rotary.summarize_rotary([1, 2, 3, 4], replies)
    moved = 4 * 24 * 4  # Read and write q and k, float32.
    assert result["bytes_per_call"] == moved
    ours = result["implementations"]["roformer_jax"]
    assert ours["bytes_per_second"]["median"] == moved / 2.0
    assert ours["copy_fraction"]["median"] == 0.5
    assert result["implementations"]["hf_torch"]["copy_fraction"]["median"] == 0.125


HLO = """\
%fused_computation.1 (p: f32[2,8,4,16]) -> f32[2,4,8,16] {
  %a = f32[2,8,4,16] sin(%p), metadata={op_name="jit(f)/layer_0/attention/position.transform/sin"}
}

%fused_computation.2 (p: f32[2,8,4,16]) -> f32[2,8,4,16] {
  %a = f32[2,8,4,16] mul(%p), metadata={op_name="jit(f)/layer_0/attention/position.transform/mul"}
  %b = f32[2,8,4,16] add(%a), metadata={op_name="jit(f)/layer_0/attention/key/add"}
}

%fused_computation.3 (p: f32[2,8]) -> f32[2,8,8] {
  %a = f32[2,8,8] cos(%p), metadata={op_name="jit(f)/layer_0/attention/position.transform/cos"}
}

%fused_computation.4 (p: f32[64,64]) -> f32[64,64] {
  %a = f32[64,64] add(%p), metadata={op_name="jit(f)/layer_0/attention/position.transform/add_any"}
}

%fused_computation.5 (p: f32[2,8,4,16]) -> f32[2,8,4,16] {
  %a = f32[2,8,4,16] exp(%p), metadata={op_name="jit(f)/layer_0/attention/softmax/exp"}
}

ENTRY %main (p: f32[2,8,4,16]) -> f32[2,8,4,16] {
  %f = f32[2,4,8,16] fusion(%p), calls=%fused_computation.1, metadata={op_name="jit(f)/layer_0/attention/position.transform/sin"}
}
"""


def test_rotary_fusion_report_counts_own_passes():
    report_ = rotary.rotary_fusion_report(HLO, qk_elements=2 * 8 * 4 * 16)
    assert report_["rotary_fusions"] == 4
    assert report_["with_other_ops"] == 1
    # Fusion 1 only; fusion 3 is a small table and fusion 4 has rank 2.
    assert report_["own_passes"] == 1


# --- targets and page ------------------------------------------------------------


def test_target_met_and_missed_wording():
    met = report.Target("x", 1.5, 1.3, True)
    assert met.met is True
    assert met.status() == "met: 1.50× (target ≥ 1.30×)"
    missed = report.Target("x", 1.0, 1.3, True)
    assert missed.met is False
    assert missed.status() == (
        "missed by 0.30×: 1.00× (target ≥ 1.30×); ours needs 30% more throughput"
    )
    slow = report.Target("compile", 72.5, 60.0, False, unit="s")
    assert slow.status() == "missed by 12.5 s: 72.5 s (target < 60.0 s)"
    absent = report.Target("x", None, 0.8, True, unit="%")
    assert absent.met is None
    assert absent.status() == "not measured (target ≥ 80.0%)"


def fake_peaks() -> dict:
    matmul = {
        "size": 256,
        "seconds": summary([1.0]),
        "flops_per_second": summary([1e11]),
    }
    return {
        "matmul": {n: matmul for n in ("jax_float32", "jax_bfloat16", "torch_float32")},
        "copy": {
            "bytes_per_run": 2**21,
            "seconds": summary([1e-3]),
            "bytes_per_second": summary([2e9, 1e9, 3e9]),
        },
    }


def fake_rotary() -> dict:
    """Copy 1 s and ours 4 s: ours reaches 25% of the copy rate."""
    replies = {
        "roformer_jax": [{"seconds": 4.0}],
        "hf_flax": [{"seconds": 1.5}],
        "hf_torch": [{"seconds": 3.0}],
        "copy": [{"seconds": 1.0}],
    }
    result = rotary.summarize_rotary([8, 2048, 8, 64], replies)
    result["in_model"] = {
        "config": "A",
        "with_rope": summary([1.0]),
        "without_rope": summary([0.9]),
        "rope_seconds": summary([0.1]),
        "rope_share": summary([0.1]),
        "separate_pass_bytes": 2**20,
        "rotary_fusions": {"rotary_fusions": 3, "with_other_ops": 3, "own_passes": 0},
    }
    return result


def fake_long_context() -> dict:
    """The chunked peak doubles from T = 1,024 to 2,048; xla's 2,048 row is
    too large to time."""

    def row(length, impl, peak, seconds=None, note=None):
        entry = {"length": length, "impl": impl, "note": note, "xla_peak_bytes": peak}
        if seconds is not None:
            entry["seconds"] = summary([seconds])
            entry["tokens_per_second"] = summary([length / seconds])
        return entry

    rows = [
        row(1024, "xla", 1e6, 1.0),
        row(2048, "xla", 4e6, note="not timed: needs 30 GiB"),
        row(1024, "chunked", 1e6, 1.0),
        row(2048, "chunked", 2e6, 3.0),
    ]
    return {
        "shape": long_context.QUICK_BASE_SHAPE.to_dict(),
        "rows": rows,
        "growth": {
            impl: long_context.growth_table(rows, impl) for impl in ("xla", "chunked")
        },
    }


def fake_compile() -> list:
    """Cold 80 s, then 70 and 75 s: a median of 72.5 s."""
    replies = {
        name: [
            {"seconds": s, "trace_seconds": 1.0, "xla_seconds": s - 1.0}
            for s in (80.0, 70.0, 75.0)
        ]
        for name in compile_time.IMPLEMENTATIONS
    }
    return [compile_time.summarize_compile(shapes.QUICK_B, replies)]


def fake_profile() -> dict:
    info = {
        "flops_per_step": 100.0,
        "xla_flops": 1e9,
        "xla_bytes_accessed": 1e9,
        "xla_transcendentals": 5.0,
    }
    starts = {variant: {"info": info} for variant in training.PROFILE_VARIANTS}
    replies = {
        variant: [{"seconds": 2.0}, {"seconds": 2.0}]
        for variant in training.PROFILE_VARIANTS
    }
    replies["gathered_head"] = [{"seconds": 1.0}, {"seconds": 1.0}]
    return training.summarize_profile(shapes.QUICK_B, 0.1, starts, replies)


def fake_results(tmp_path: Path) -> dict:
    """Results in which config A meets its targets and config B misses them."""
    fast = {"roformer_jax": [1.0, 1.0], "hf_flax": [2.0, 2.0], "hf_torch": [2.0, 2.0]}
    slow = {"roformer_jax": [2.0, 2.0], "hf_flax": [2.0, 2.0], "hf_torch": [2.0, 2.0]}
    meta = {
        "command": "python -m benchmarks.run_all --quick",
        "date": "2026-01-01 00:00",
        "quick": True,
        "warmup": 1,
        "repeats": 2,
        "machine": harness.machine_info([0]),
        "results_path": str(tmp_path / "benchmarks" / "results.json"),
        "page_path": str(tmp_path / "benchmarks.md"),
        "wall_seconds": 60.0,
    }
    return {
        "meta": meta,
        "gpu": None,
        "peaks": fake_peaks(),
        "training": [
            fake_scenario("A", 0.1, times=fast),
            fake_scenario("A", 0.0, times=fast),
            fake_scenario("B", 0.1, times=slow),
            fake_scenario("B", 0.0, times=fast),
        ],
        "inference": [
            fake_scenario("A", 0.1, "infer", fast),
            fake_scenario("B", 0.1, "infer", slow),
        ],
        "profiles": [fake_profile()],
        "rotary": fake_rotary(),
        "long_context": fake_long_context(),
        "compile": fake_compile(),
    }


def test_page_has_every_section(tmp_path):
    page = report.render_page(fake_results(tmp_path), tmp_path / "benchmarks.md")
    for heading in (
        "## Benchmark suite",
        "## Targets",
        "## 1. Machine peaks",
        "## 2. Training step",
        "## 3. Inference",
        "## 4. Rotary application",
        "## 5. Long context",
        "## 6. First-step compile time",
        "## Profiles by removal",
        "## GPU",
        "## Tiny Shakespeare, character-level causal RoFormer",
    ):
        assert heading in page, heading
    assert "It has not run on a GPU yet." in page
    assert "betas 0.9/0.999" in page
    assert "**Quick run" in page


def test_page_target_lines_follow_numbers(tmp_path):
    page = report.render_page(fake_results(tmp_path), tmp_path / "benchmarks.md")
    lines = {
        line.split(" | ")[0][2:]: line
        for line in page.splitlines()
        if line.startswith("| ")
    }
    # Config A: ours 1 s against 2 s for both, a speedup of 2.
    assert "met: 2.00×" in lines["Training, config A, dropout 0.1: ours / faster HF"]
    # Config B with dropout: equal times, 1.00 against 1.30.
    assert (
        "missed by 0.30×: 1.00×"
        in lines["Training, config B, dropout 0.1: ours / faster HF"]
    )
    # Rotary: copy 1 s, ours 4 s, 25% against 50%.
    rotary_line = next(
        text for name, text in lines.items() if name.startswith("Rotary on")
    )
    assert "missed by 25.0%: 25.0%" in rotary_line
    # Chunked memory doubles with T: exponent 1.00 < 1.15.
    assert (
        "met: 1.00"
        in lines[
            "Long context, chunked attention: memory growth exponent, two longest T"
        ]
    )
    assert (
        "missed by 12.5 s: 72.5 s" in lines["First train step compile, config B (ours)"]
    )
    assert "What limits the missed training targets" in page


def test_scenarios_to_profile_picks_missed(tmp_path):
    results = fake_results(tmp_path)
    # B with dropout misses the speedup; B without it reaches only 25% of
    # the matmul rate (100 against 400 FLOP/s); A meets both.
    assert report.scenarios_to_profile(results) == [("B", 0.1), ("B", 0.0)]


def test_page_includes_tiny_shakespeare_record(tmp_path):
    """The Tiny Shakespeare record kept in docs/benchmarks/ appears in the
    page whole, with its links rewritten for the page's folder."""
    page_path = REPO_ROOT / "docs" / "benchmarks.md"
    page = report.render_page(None, page_path)
    record_path = REPO_ROOT / "docs" / "benchmarks" / "tiny_shakespeare.md"
    record = report.rebase_links(
        record_path.read_text(encoding="utf-8"), record_path.parent, page_path.parent
    )
    assert "## Tiny Shakespeare" in record
    assert record.strip() in page
    assert "../tiny_shakespeare_curve.png" not in page


def test_rebase_links_keeps_urls_and_moves_paths():
    text = "![a](../x.png) [b](https://e.org/y) [c](#z) [d](sub/w.md)"
    rebased = report.rebase_links(text, Path("/r/docs/benchmarks"), Path("/r/docs"))
    assert (
        rebased == "![a](x.png) [b](https://e.org/y) [c](#z) [d](benchmarks/sub/w.md)"
    )


def test_included_sections_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        report.included_sections(tmp_path / "p.md", [tmp_path / "absent.md"])


def test_results_path_beside_page():
    assert run_all.results_path_for(Path("docs/benchmarks.md")) == Path(
        "docs/benchmarks/results.json"
    )


# --- tiny sessions, in-process -----------------------------------------------------


def reference_rotate_pairs(x, positions):
    """Rotate interleaved pairs (2i, 2i+1) by t * 10000 ** (-2i / H), float64."""
    x = np.asarray(x, np.float64)
    head_dim = x.shape[-1]
    frequencies = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = np.asarray(positions, np.float64)[:, :, None, None] * frequencies
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = odd * np.cos(angles) + even * np.sin(angles)
    return out


def test_rotary_sessions_rotate_alike():
    import torch

    from benchmarks import jax_sessions, torch_sessions

    shape = [2, 16, 2, 8]
    q, k, positions = jax_sessions.rotary_inputs(shape)
    expected = reference_rotate_pairs(q, positions)
    ours_q, _ = jax_sessions.ours_rotate(q, k, positions)
    flax_q, _ = jax_sessions.hf_flax_rotate(jax_sessions.hf_flax_table(16, 8), q, k)
    torch_q, _ = torch_sessions.hf_torch_rotate(
        torch_sessions.sinusoidal_table(16, 8),
        torch.from_numpy(np.array(q)).permute(0, 2, 1, 3),
        torch.from_numpy(np.array(k)).permute(0, 2, 1, 3),
    )
    # Angles below 16 rad; float32 rounding of sin, cos and products.
    tolerance = 1e-5
    assert np.max(np.abs(np.asarray(ours_q) - expected)) < tolerance
    assert np.max(np.abs(np.asarray(flax_q) - expected)) < tolerance
    torch_bthd = torch_q.permute(0, 2, 1, 3).numpy()
    assert np.max(np.abs(torch_bthd - expected)) < tolerance
    for session in (
        jax_sessions.OursRotary(shape),
        jax_sessions.HfFlaxRotary(shape),
        torch_sessions.TorchRotary(shape),
        jax_sessions.Copy([shape, shape]),
        jax_sessions.Matmul(64),
        torch_sessions.TorchMatmul(64),
    ):
        assert session.run()["seconds"] > 0


def test_inference_sessions_build_same_model():
    from benchmarks import jax_sessions, torch_sessions

    one_layer = dataclasses.replace(shapes.QUICK_A, num_layers=1)
    shape = one_layer.to_dict()
    ours = jax_sessions.OursLanguageModel(shape, 0.1, mode="infer")
    flax = jax_sessions.HfFlaxLanguageModel(shape, ours.info["hf_config"], mode="infer")
    torch_model = torch_sessions.TorchLanguageModel(
        shape, ours.info["hf_config"], ours.info["optimizer"], mode="infer"
    )
    assert flax.info["num_params"] == ours.info["num_params"]
    assert torch_model.info["num_params"] == ours.info["num_params"]
    assert ours.info["flops_per_step"] == shapes.inference_flops(
        one_layer, ours.info["num_params"]
    )
    assert ours.info["xla_peak_bytes"] > 0
    assert ours.info["rotary_fusions"]["rotary_fusions"] > 0
    for session in (ours, flax, torch_model):
        assert session.run()["seconds"] > 0


def test_experiment_config_attention_impl():
    from benchmarks import jax_sessions

    if jax_sessions.has_model_field("attention_impl"):
        config = jax_sessions.experiment_config(
            shapes.QUICK_A, 0.0, attention_impl="chunked"
        )
        assert config.model.attention_impl == "chunked"
    else:
        with pytest.raises(jax_sessions.SkipMeasurement, match="attention_impl"):
            jax_sessions.experiment_config(
                shapes.QUICK_A, 0.0, attention_impl="chunked"
            )


def test_experiment_config_matches_shape():
    from benchmarks import jax_sessions

    config = jax_sessions.experiment_config(shapes.CONFIG_B, 0.1)
    assert config.model.num_layers == 8
    assert config.model.hidden_size == 512
    assert config.model.attention_dropout_rate == 0.1
    assert config.data.global_batch_size == 4
    assert config.tokenizer.vocab_size == 8000


def test_worker_runs_session_and_reports_errors():
    with harness.Worker(harness.resolve_cpus(1), "test") as worker:
        start = harness.start_session(worker, "jax_sessions", "Matmul", size=32)
        assert start["info"]["flops_per_run"] == 2.0 * 32**3
        reply = worker.call("run", session=start["session"])
        assert reply["seconds"] > 0
        memory = harness.worker_memory(worker)
        assert memory["max_rss_bytes"] >= memory["baseline_rss_bytes"] > 0
        with pytest.raises(harness.WorkerError, match="Unknown worker op"):
            worker.call("bogus")
        with pytest.raises(harness.WorkerError, match="Session module"):
            harness.start_session(worker, "os", "path")


def test_gpu_quick_runs_on_cpu():
    from benchmarks import gpu

    shape = dataclasses.replace(gpu.QUICK_SHAPE, num_layers=1, matmul_size=64)
    result = gpu.run(shape, steps=1, warmup=0)
    assert result["tokens_per_second"] > 0
    assert 0 < result["mfu"]
    assert math.isfinite(result["loss"])
    assert "tokens/s, MFU" in gpu.summary_line(result)


# --- op profile -----------------------------------------------------------------

HLO_EXCERPT = """
  %ynn_fusion.3 = f32[64,8000]{1,0} fusion(%a, %b), kind=kCustom, metadata={op_name="jit(train_step)/jvp(LanguageModel)/lm_head/transformer.attend/dot_general" stack_frame_id=1}
  %bitcast_pad_fusion = f32[2,4]{1,0} fusion(%c), kind=kLoop, metadata={op_name="jit(train_step)/transpose(jvp(LanguageModel))/transformer/layer_0/attention/position.transform/pad"}
  ROOT %add.7 = f32[4]{0} add(%d, %e), metadata={op_name="jit(train_step)/add"}
  %param.1 = f32[4]{0} parameter(0)
"""


def test_op_profile_reads_instruction_names():
    ops = op_profile.instruction_ops(HLO_EXCERPT)

    assert set(ops) == {"ynn_fusion.3", "bitcast_pad_fusion", "add.7"}
    assert ops["add.7"] == "jit(train_step)/add"


@pytest.mark.parametrize(
    "op_name, expected_direction, expected_category",
    [
        (
            "jit(train_step)/transpose(jvp(LanguageModel))/transformer/layer_3/"
            "attention/position.transform/pad",
            "backward",
            "rotary position encoding",
        ),
        (
            "jit(train_step)/jvp(LanguageModel)/transformer/layer_0/attention/"
            "btnh,bsnh->bnts/dot_general",
            "forward",
            "attention matmuls (QK, weights x V)",
        ),
        (
            "jit(train_step)/jvp(LanguageModel)/transformer/layer_0/attention/"
            "query/dot_general",
            "forward",
            "q, k, v and output projections",
        ),
        (
            "jit(train_step)/jvp(LanguageModel)/transformer/layer_1/attention/"
            "jit(_bernoulli)/jit(_uniform)/add",
            "forward",
            "dropout masks (threefry random bits)",
        ),
        ("jit(train_step)/jvp()/reduce_max", "forward", "loss (softmax cross-entropy)"),
        ("jit(train_step)/mul", "optimizer", "optimizer, clipping and metrics"),
    ],
)
def test_op_profile_classifies(op_name, expected_direction, expected_category):
    assert op_profile.direction(op_name) == expected_direction
    assert op_profile.category(op_name) == expected_category


def test_op_profile_sums_by_category():
    ops = op_profile.instruction_ops(HLO_EXCERPT)
    seconds = {"ynn_fusion.3": 0.5, "bitcast_pad_fusion": 0.25, "add.7": 0.125}

    summary_ = op_profile.summarize(seconds, ops, top=2)

    assert summary_["total_seconds"] == 0.875
    assert summary_["by_category"]["LM head (tied output projection)"] == 0.5
    assert summary_["by_direction"] == {
        "forward": 0.5,
        "backward": 0.25,
        "optimizer": 0.125,
    }
    assert [row["instruction"] for row in summary_["costliest"]] == [
        "ynn_fusion.3",
        "bitcast_pad_fusion",
    ]


def test_op_profile_page_lists_every_part():
    result = {
        "config": "A",
        "dropout": 0.1,
        "step_seconds": 1.0,
        "total_seconds": 0.875,
        "by_category": {"LM head (tied output projection)": 0.5, "other": 0.375},
        "by_direction": {"forward": 0.875},
        "costliest": [
            {"instruction": "ynn_fusion.3", "seconds": 0.5, "op_name": "a|b"}
        ],
    }
    meta = {"command": "python -m benchmarks.op_profile", "machine": "m", "date": "d"}

    page = op_profile.render([result], meta)

    assert "| LM head (tied output projection) | 500.0 | 57.1% |" in page
    assert "`a\\|b`" in page
