"""The Markdown page of a benchmark run, and its target checks.

`render_page(results, ...)` turns the dict that `run_all` also writes as
JSON into `docs/benchmarks.md`. Every target line is computed from the
numbers in `results` by `evaluate_targets`, and the page ends with records
kept in their own files (`INCLUDED_SECTIONS`), copied in verbatim except for
relative links, which are rewritten to resolve from the page's folder.
"""

import dataclasses
import os
import re
import textwrap
from pathlib import Path

from benchmarks import harness

INTRO = """\
Every number on this page was measured, with the command, machine and date
given beside it. Times on shared machines are noisy; treat single runs as one
sample."""

# Records from earlier work, kept in files of their own and copied into the
# page by every run.
# Hand-written notes on the last suite run, then older records.
INCLUDED_SECTIONS = (
    harness.REPO_ROOT / "docs" / "benchmarks" / "notes.md",
    harness.REPO_ROOT / "docs" / "benchmarks" / "tiny_shakespeare.md",
)

NAMES = {
    "roformer_jax": "roformer_jax",
    "hf_flax": "HF Flax",
    "hf_torch": "HF PyTorch",
}

# Thresholds of the targets.
TRAIN_DROPOUT_SPEEDUP = 1.3  # Over the faster transformers implementation.
TRAIN_NO_DROPOUT_VS_TORCH = 1.0
TRAIN_NO_DROPOUT_VS_FLAX = 1.4
MFU_MATMUL_FRACTION = 0.8  # Config B, dropout off, of the paired matmul rate.
INFERENCE_SPEEDUP = 1.1
ROTARY_COPY_FRACTION = 0.5
# Peak memory counts as linear in T when doubling T multiplies it by at
# most 2 ** 1.15 (about 2.2) between the two longest lengths.
LINEAR_MEMORY_EXPONENT = 1.15
COMPILE_SECONDS = 60.0


# --- number formatting ------------------------------------------------------


def number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def summary_text(
    summary: dict, scale: float = 1.0, digits: int = 0, unit: str = ""
) -> str:
    """Format a `harness.summarize` dict as "median (min to max)", each
    value times `scale` and followed by `unit`."""

    def value(key: str) -> str:
        return f"{number(summary[key] * scale, digits)}{unit}"

    return f"{value('median')} ({value('min')} to {value('max')})"


def bytes_text(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 2**30:
        return f"{value / 2**30:,.2f} GiB"
    return f"{value / 2**20:,.1f} MiB"


# --- targets ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """One target, its measured value, and whether the value meets it."""

    name: str
    measured: float | None  # None: the figure was not measured.
    threshold: float
    at_least: bool  # True: measured >= threshold meets it; False: <.
    unit: str = "×"
    note: str = ""  # Extra context for the status line.

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.at_least:
            return self.measured >= self.threshold
        return self.measured < self.threshold

    def _value(self, value: float) -> str:
        if self.unit == "×":
            return f"{value:.2f}×"
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        if self.unit == "s":
            return f"{value:.1f} s"
        if self.unit == "count":
            return f"{value:.0f}"
        return f"{value:.2f}{self.unit}"

    def status(self) -> str:
        """Say met or missed, and by how much, computed from the numbers."""
        relation = "≥" if self.at_least else "<"
        target = f"target {relation} {self._value(self.threshold)}"
        if self.measured is None:
            text = f"not measured ({target})"
        elif self.met:
            text = f"met: {self._value(self.measured)} ({target})"
        else:
            gap = abs(self.threshold - self.measured)
            text = (
                f"missed by {self._value(gap)}: {self._value(self.measured)} ({target})"
            )
            if self.at_least and self.unit == "×" and self.measured > 0:
                needed = self.threshold / self.measured - 1
                text += f"; ours needs {100 * needed:.0f}% more throughput"
        return f"{text}. {self.note}".strip() if self.note else text


def _scenario(results: dict, kind: str, config: str, dropout: float | None):
    for scenario in results.get(kind, []):
        if scenario["config"] == config and (
            dropout is None or scenario["dropout"] == dropout
        ):
            return scenario
    return None


def _ratio(scenario, key: str) -> float | None:
    if scenario is None:
        return None
    return scenario["ratios"][key]["median"]


def evaluate_targets(results: dict) -> list[Target]:
    """Compute every target line of the page from `results`."""
    targets = []
    for config in ("A", "B"):
        with_dropout = _scenario(results, "training", config, 0.1)
        targets.append(
            Target(
                f"Training, config {config}, dropout 0.1: ours / faster HF",
                _ratio(with_dropout, "speedup_vs_fastest_hf"),
                TRAIN_DROPOUT_SPEEDUP,
                True,
            )
        )
    for config in ("A", "B"):
        no_dropout = _scenario(results, "training", config, 0.0)
        targets.append(
            Target(
                f"Training, config {config}, dropout off: ours / HF PyTorch",
                _ratio(no_dropout, "speedup_vs_hf_torch"),
                TRAIN_NO_DROPOUT_VS_TORCH,
                True,
            )
        )
        targets.append(
            Target(
                f"Training, config {config}, dropout off: ours / HF Flax",
                _ratio(no_dropout, "speedup_vs_hf_flax"),
                TRAIN_NO_DROPOUT_VS_FLAX,
                True,
            )
        )
    config_b = _scenario(results, "training", "B", 0.0)
    targets.append(
        Target(
            "Training, config B, dropout off: our model FLOP/s / float32 matmul "
            "FLOP/s (paired)",
            None
            if config_b is None
            else config_b["implementations"]["roformer_jax"]["matmul_fraction"][
                "median"
            ],
            MFU_MATMUL_FRACTION,
            True,
            unit="%",
        )
    )
    for config in ("A", "B"):
        targets.append(
            Target(
                f"Inference, config {config}: ours / faster HF",
                _ratio(
                    _scenario(results, "inference", config, None),
                    "speedup_vs_fastest_hf",
                ),
                INFERENCE_SPEEDUP,
                True,
            )
        )
    targets.extend(_rotary_targets(results.get("rotary")))
    targets.append(_long_context_target(results.get("long_context")))
    targets.append(_compile_target(results.get("compile")))
    return targets


def _rotary_targets(rotary: dict | None) -> list[Target]:
    if rotary is None:
        return [
            Target(
                "Rotary: ours / copy bandwidth", None, ROTARY_COPY_FRACTION, True, "%"
            ),
            Target(
                "Rotary fused into the attention inputs: fusions that are passes "
                "of their own over q or k",
                None,
                1,
                False,
                unit="count",
            ),
        ]
    fraction = rotary["implementations"]["roformer_jax"]["copy_fraction"]["median"]
    fusions = (rotary.get("in_model") or {}).get("rotary_fusions") or {}
    found = fusions.get("rotary_fusions", 0)
    separate = fusions.get("own_passes") if found else None
    note = (
        "The rotation was not identified in the optimized HLO."
        if not found
        else f"Config {rotary['in_model']['config']} train step: {found} fusions "
        f"rotate, {fusions['with_other_ops']} of them together with other work "
        "of the layer."
    )
    return [
        Target(
            f"Rotary on {rotary['shape']}: ours / copy over the same bytes",
            fraction,
            ROTARY_COPY_FRACTION,
            True,
            unit="%",
        ),
        Target(
            "Rotary fused into the attention inputs: fusions that are passes of "
            "their own over q or k",
            separate,
            1,
            False,
            unit="count",
            note=note,
        ),
    ]


def _long_context_target(long_context: dict | None) -> Target:
    name = "Long context, chunked attention: memory growth exponent, two longest T"
    growth = (long_context or {}).get("growth", {}).get("chunked") or []
    measured = growth[-1]["memory"] if growth else None
    note = ""
    if growth:
        note = f"(T = {growth[-1]['from']:,} to {growth[-1]['to']:,}; 1 is linear.)"
    else:
        rows = (long_context or {}).get("rows", [])
        reasons = {
            row["note"] for row in rows if row["impl"] == "chunked" and row["note"]
        }
        note = " ".join(sorted(reasons))
    return Target(name, measured, LINEAR_MEMORY_EXPONENT, False, unit="", note=note)


def _compile_target(compile_rows: list | None) -> Target:
    row = next((r for r in compile_rows or [] if r["config"] == "B"), None)
    measured = (
        None
        if row is None
        else row["implementations"]["roformer_jax"]["seconds"]["median"]
    )
    note = ""
    if row is not None:
        cold = row["implementations"]["roformer_jax"]["cold_seconds"]
        note = f"(First compile in a fresh worker: {cold:.1f} s.)"
    return Target(
        "First train step compile, config B (ours)",
        measured,
        COMPILE_SECONDS,
        False,
        unit="s",
        note=note,
    )


# --- included sections ------------------------------------------------------

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def rebase_links(text: str, source_dir: Path, page_dir: Path) -> str:
    """Rewrite relative Markdown link targets written for `source_dir` so
    that they resolve from `page_dir`. URLs, anchors and absolute paths stay."""

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        resolved = os.path.normpath(os.path.join(source_dir, target))
        relative = os.path.relpath(resolved, page_dir)
        return f"{match.group(1)}{Path(relative).as_posix()}{match.group(3)}"

    return _LINK.sub(rewrite, text)


def included_sections(page_path: Path, sources=INCLUDED_SECTIONS) -> list[str]:
    """Return each included file's text with links rebased to the page.

    Raises:
      FileNotFoundError: an included record is missing; restore it from git
        rather than let the page drop it.
    """
    page_dir = Path(page_path).resolve().parent
    texts = []
    for source in sources:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(
                f"The included benchmark record {source} is missing, so the page "
                "would lose it. Restore it (git checkout -- it) and rerun."
            )
        text = source.read_text(encoding="utf-8")
        texts.append(rebase_links(text, source.resolve().parent, page_dir).rstrip("\n"))
    return texts


def scenarios_to_profile(results: dict) -> list[tuple[str, float]]:
    """Return (config, dropout) of each training scenario that misses a target."""
    missed = []
    for scenario in results.get("training", []):
        ratios = scenario["ratios"]
        if scenario["dropout"] > 0:
            short = ratios["speedup_vs_fastest_hf"]["median"] < TRAIN_DROPOUT_SPEEDUP
        else:
            fraction = scenario["implementations"]["roformer_jax"]["matmul_fraction"]
            short = (
                ratios["speedup_vs_hf_torch"]["median"] < TRAIN_NO_DROPOUT_VS_TORCH
                or ratios["speedup_vs_hf_flax"]["median"] < TRAIN_NO_DROPOUT_VS_FLAX
                or (
                    scenario["config"] == "B"
                    and fraction["median"] < MFU_MATMUL_FRACTION
                )
            )
        if short:
            missed.append((scenario["config"], scenario["dropout"]))
    return missed


# --- page sections ----------------------------------------------------------

VARIANT_TEXT = {
    "full": "full train step",
    "gathered_head": "LM head on the masked 15% of positions only",
    "no_rope": "no position encoding (RoPE removed)",
    "gradients_only": "forward and backward, no optimizer update",
    "forward_only": "forward and loss only",
}
# The part of the full step that each variant removes.
REMOVED_PART = {
    "gathered_head": "the LM head over unmasked positions",
    "no_rope": "RoPE",
    "gradients_only": "the optimizer update (clipping, AdamW)",
    "forward_only": "the backward pass and the optimizer update",
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _float32_peak(results: dict) -> float | None:
    peaks = results.get("peaks")
    if not peaks:
        return None
    return peaks["matmul"]["jax_float32"]["flops_per_second"]["median"]


def _count(value: int, noun: str) -> str:
    return f"{value} {noun}{'' if value == 1 else 's'}"


def _paired_matmul_size(results: dict) -> int:
    for scenario in results.get("training", []) + results.get("inference", []):
        return scenario["matmul_size"]
    return 2048


def _optimizer_text(results: dict) -> str:
    """Describe the AdamW settings that our training worker reported."""
    for scenario in results.get("training", []):
        settings = scenario["implementations"]["roformer_jax"]["info"]["optimizer"]
        return (
            f" (peak learning rate {settings['learning_rate']:g}, betas "
            f"{settings['beta1']:g}/{settings['beta2']:g}, epsilon "
            f"{settings['epsilon']:g}, weight decay {settings['weight_decay']:g} "
            "on matrices and embeddings, global-norm clipping at "
            f"{settings['grad_clip_norm']:g})"
        )
    return ""


def suite_header(results: dict) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    libraries = ", ".join(
        f"{name} {version}" for name, version in machine["libraries"].items()
    )
    memory = machine.get("memory_total_bytes")
    results_link = os.path.relpath(meta["results_path"], Path(meta["page_path"]).parent)
    lines = [
        "## Benchmark suite: roformer_jax against transformers' RoFormer",
        "",
    ]
    if meta["quick"]:
        lines += [
            "**Quick run: tiny models and inputs, to check that the suite works. "
            "None of these figures is a measurement of the real configs.**",
            "",
        ]
    lines += [
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['date']} (UTC), {meta['wall_seconds'] / 60:.1f} min "
        "wall-clock for the whole command.",
        f"- **Machine:** {machine['cpu_model']}, {machine['cpus_usable']} usable "
        f"CPUs, {bytes_text(memory)} memory; {machine['platform']}, Python "
        f"{machine['python']}.",
        f"- **Libraries:** {libraries}.",
        f"- **Threads:** every worker process is pinned to CPUs "
        f"{machine['cpus_used']} ({machine['threads']} threads): torch gets "
        f"`set_num_threads({machine['threads']})` and one inter-op thread, "
        "OpenMP and MKL get the same count from the environment, and XLA sizes "
        "its CPU thread pool from the affinity. Only one worker computes at a "
        "time.",
        f"- **Method:** each figure is the median (min to max) of "
        f"{_count(meta['repeats'], 'timed run')} after "
        f"{_count(meta['warmup'], 'warm-up run')}. The implementations "
        "of a comparison live in separate processes and take turns, one run "
        "each per repetition, in an order rotated every repetition; ratios are "
        "formed per repetition and then summarised.",
        '- **Work:** masked LM, "predict every position": all three compute '
        "the full `[B, T, V]` logits, and the loss is the mean cross-entropy "
        "over the masked 15% of positions. Same config for all three (from "
        "`configs/mlm_pretrain.py`: post-LayerNorm, interleaved RoPE, two token "
        f"types, tied LM head), float32, AdamW{_optimizer_text(results)}: "
        "Optax for ours and HF Flax, fused `torch.optim.AdamW` for HF "
        "PyTorch. Dropout 0.1 applies to hidden states and attention weights "
        "in all three.",
        "- **FLOPs:** model FLOPs per training step = 6 × parameters × tokens "
        "+ 12 × layers × hidden × T² × batch (a third of it for inference), "
        "with our parameter count for all three. MFU divides achieved model "
        'FLOP/s by the JAX float32 matmul rate of section 1; "of paired '
        f'matmul" divides it by a {_paired_matmul_size(results)}² float32 '
        "matmul timed in its own worker in the same repetitions.",
        "- **Memory:** peak RSS from `getrusage` of each fresh worker "
        "(compilation included), and in brackets its growth over the RSS right "
        "after importing its libraries; "
        "for JAX programs also XLA's accounting of the compiled step "
        "(`memory_analysis()`: arguments + outputs + temporaries − donated "
        "aliases).",
        f"- **Raw timings:** [{Path(results_link).name}]"
        f"({Path(results_link).as_posix()}).",
    ]
    return "\n".join(lines)


def targets_section(results: dict) -> str:
    targets = evaluate_targets(results)
    rows = [[target.name, target.status()] for target in targets]
    gpu = results.get("gpu") or {}
    rows.append(
        [
            "GPU: 125M causal RoFormer, T = 2,048, bf16 (`benchmarks/gpu.sh`)",
            gpu.get("summary") or "not run on a GPU yet",
        ]
    )
    text = ["## Targets", "", _table(["target", "status"], rows)]
    limits = limits_text(results)
    if limits:
        text += ["", limits]
    return "\n".join(text)


def limits_text(results: dict) -> str:
    """Name the largest parts of the step in each profile of a missed target."""
    paragraphs = []
    peak = _float32_peak(results)
    for profile in results.get("profiles", []):
        scenario = _scenario(results, "training", profile["config"], profile["dropout"])
        shares = sorted(
            (
                (profile["variants"][variant]["share_removed"]["median"], part)
                for variant, part in REMOVED_PART.items()
            ),
            reverse=True,
        )
        parts = ", ".join(f"{part} {100 * share:.0f}%" for share, part in shares)
        sentence = (
            f"Config {profile['config']}, dropout {profile['dropout']:g}: our step "
        )
        if scenario is not None:
            fraction = scenario["implementations"]["roformer_jax"]["matmul_fraction"]
            sentence += (
                f"reaches {100 * fraction['median']:.0f}% of the paired float32 "
                "matmul rate. "
            )
        sentence += f"Share of the step each removed part took: {parts}."
        if peak:
            ideal = profile["flops_per_step"] / peak
            full = profile["variants"]["full"]["seconds"]["median"]
            sentence += (
                f" At the matmul rate the step's model FLOPs would take "
                f"{ideal * 1e3:,.0f} ms against {full * 1e3:,.0f} ms measured."
            )
        paragraphs.append(sentence)
    if not paragraphs:
        return ""
    return (
        "What limits the missed training targets (from the profiles by removal "
        "below):\n\n" + "\n".join(f"- {p}" for p in paragraphs)
    )


def peaks_section(results: dict) -> str:
    peaks = results["peaks"]
    rows = []
    labels = {
        "jax_float32": "JAX float32 matmul",
        "jax_bfloat16": "JAX bfloat16 matmul",
        "torch_float32": "torch float32 matmul",
    }
    for name, label in labels.items():
        entry = peaks["matmul"][name]
        rows.append(
            [
                f"{label}, {entry['size']}²",
                summary_text(entry["flops_per_second"], 1e-9, 1) + " GFLOP/s",
            ]
        )
    copy = peaks["copy"]
    rows.append(
        [
            f"JAX copy (multiply by a scalar), {bytes_text(copy['bytes_per_run'] / 2)} "
            "read + written",
            summary_text(copy["bytes_per_second"], 1e-9, 2) + " GB/s",
        ]
    )
    return "\n".join(
        [
            "## 1. Machine peaks",
            "",
            "The denominators. Matmul: 2 n³ FLOPs per call. Copy: bytes read "
            "plus bytes written.",
            "",
            _table(["measurement", "median (min to max)"], rows),
        ]
    )


def _scenario_rows(scenario: dict, peak: float | None) -> list[list[str]]:
    rows = []
    for name, entry in scenario["implementations"].items():
        memory = entry["memory"]
        mfu = "–"
        if peak:
            mfu = f"{100 * entry['flops_per_second']['median'] / peak:.1f}%"
        rss = "–"
        if memory:
            rss = (
                f"{bytes_text(memory['max_rss_bytes'])} "
                f"(+{bytes_text(memory['rss_growth_bytes'])})"
            )
        rows.append(
            [
                scenario["config"],
                f"{scenario['dropout']:g}" if scenario["mode"] == "train" else "–",
                NAMES[name],
                summary_text(entry["tokens_per_second"]),
                summary_text(entry["seconds"], 1e3),
                mfu,
                f"{100 * entry['matmul_fraction']['median']:.1f}%",
                rss,
                bytes_text(entry["info"].get("xla_peak_bytes")),
            ]
        )
    return rows


def _ratio_rows(scenarios: list[dict]) -> list[list[str]]:
    rows = []
    for scenario in scenarios:
        ratios = scenario["ratios"]
        rows.append(
            [
                scenario["config"],
                f"{scenario['dropout']:g}" if scenario["mode"] == "train" else "–",
                summary_text(ratios["speedup_vs_hf_flax"], digits=2),
                summary_text(ratios["speedup_vs_hf_torch"], digits=2),
                summary_text(ratios["speedup_vs_fastest_hf"], digits=2),
            ]
        )
    return rows


def throughput_section(results: dict, kind: str) -> str:
    scenarios = results.get(kind, [])
    title = "## 2. Training step" if kind == "training" else "## 3. Inference"
    if not scenarios:
        return f"{title}\n\nNot run."
    peak = _float32_peak(results)
    configs = []
    for scenario in scenarios:
        shape = scenario["shape"]
        line = (
            f"- Config {scenario['config']}: {shape['num_layers']} layers, "
            f"{shape['hidden_size']:,} hidden, {shape['num_heads']} heads, "
            f"{shape['mlp_dim']:,} feed-forward, vocabulary {shape['vocab_size']:,}, "
            f"sequence {shape['seq_len']:,}, batch {shape['batch_size']}; "
            f"{scenario['implementations']['roformer_jax']['info']['num_params']:,} "
            f"parameters ({NAMES['hf_flax']} "
            f"{scenario['implementations']['hf_flax']['info']['num_params']:,}, "
            f"{NAMES['hf_torch']} "
            f"{scenario['implementations']['hf_torch']['info']['num_params']:,} "
            "trainable)."
        )
        if line not in configs:
            configs.append(line)
    what = (
        "One optimizer step on a fixed batch per run."
        if kind == "training"
        else "One forward pass to the logits per run, no dropout."
    )
    rows = [row for scenario in scenarios for row in _scenario_rows(scenario, peak)]
    header = [
        "config",
        "dropout",
        "implementation",
        "tokens/s",
        "step, ms",
        "MFU",
        "of paired matmul",
        "peak RSS (growth)",
        "XLA peak",
    ]
    ratio_header = [
        "config",
        "dropout",
        "ours / HF Flax",
        "ours / HF PyTorch",
        "ours / faster HF",
    ]
    return "\n".join(
        [
            title,
            "",
            what,
            "",
            *configs,
            "",
            _table(header, rows),
            "",
            "Throughput ratios (ours over theirs, per repetition; median "
            "(min to max)):",
            "",
            _table(ratio_header, _ratio_rows(scenarios)),
        ]
    )


def rotary_section(results: dict) -> str:
    rotary = results.get("rotary")
    if not rotary:
        return "## 4. Rotary application\n\nNot run."
    rows = []
    for name, entry in rotary["implementations"].items():
        rows.append(
            [
                NAMES[name],
                summary_text(entry["seconds"], 1e3, 2),
                summary_text(entry["bytes_per_second"], 1e-9, 2),
                f"{100 * entry['copy_fraction']['median']:.0f}%",
            ]
        )
    copy = rotary["copy"]
    rows.append(
        [
            "copy (multiply by a scalar)",
            summary_text(copy["seconds"], 1e3, 2),
            summary_text(copy["bytes_per_second"], 1e-9, 2),
            "100%",
        ]
    )
    text = [
        "## 4. Rotary application",
        "",
        f"q and k of `[B, T, N, H] = {rotary['shape']}` each, float32, both "
        f"rotated per call. Bytes per call: read q and k plus write q and k, "
        f"{bytes_text(rotary['bytes_per_call'])}; the position inputs are not "
        "counted (ours reads `[B, T]` int32 positions, transformers a `[T, H]` "
        "float32 table). PyTorch gets q and k laid out `[B, N, T, H]`.",
        "",
        _table(
            ["implementation", "time, ms", "GB/s", "of copy over the same bytes"], rows
        ),
    ]
    in_model = rotary.get("in_model")
    if in_model:
        copy_rate = copy["bytes_per_second"]["median"]
        separate = in_model["separate_pass_bytes"] / copy_rate
        fusions = in_model.get("rotary_fusions") or {}
        text += [
            "",
            f"Inside our config {in_model['config']} train step (dropout off): "
            f"with RoPE {summary_text(in_model['with_rope'], 1e3)} ms, without "
            f"{summary_text(in_model['without_rope'], 1e3)} ms, so RoPE costs "
            f"{summary_text(in_model['rope_seconds'], 1e3, 1)} ms "
            f"({100 * in_model['rope_share']['median']:.1f}% of the step). A "
            "separate pass over q and k in every layer, forward and backward, "
            f"would move {bytes_text(in_model['separate_pass_bytes'])}, "
            f"{separate * 1e3:,.1f} ms at the copy rate above. In the optimized "
            f"HLO of the step, {fusions.get('rotary_fusions', 0)} fusions hold "
            f"rotary ops: {fusions.get('with_other_ops', 0)} also do other work "
            f"of the layer, and {fusions.get('own_passes', 0)} are passes of their "
            "own over q, k or their gradients (only rotary ops, q-sized output).",
        ]
    return "\n".join(text)


def long_context_section(results: dict) -> str:
    long_context = results.get("long_context")
    if not long_context:
        return "## 5. Long context\n\nNot run."
    shape = long_context["shape"]
    rows = []
    for row in long_context["rows"]:
        rows.append(
            [
                f"{row['length']:,}",
                row["impl"],
                summary_text(row["seconds"], 1.0, 3) if "seconds" in row else "–",
                summary_text(row["tokens_per_second"])
                if "tokens_per_second" in row
                else "–",
                bytes_text(row.get("xla_peak_bytes")),
                row.get("note") or "",
            ]
        )
    growth_rows = []
    xla, chunked = long_context["growth"]["xla"], long_context["growth"]["chunked"]
    by_span = {}
    for impl, table in (("xla", xla), ("chunked", chunked)):
        for entry in table:
            by_span.setdefault((entry["from"], entry["to"]), {})[impl] = entry

    def exponent(entry, key):
        value = (entry or {}).get(key)
        return "–" if value is None else f"{value:.2f}"

    for (start, end), entries in sorted(by_span.items()):
        growth_rows.append(
            [
                f"{start:,} → {end:,}",
                exponent(entries.get("xla"), "time"),
                exponent(entries.get("xla"), "memory"),
                exponent(entries.get("chunked"), "time"),
                exponent(entries.get("chunked"), "memory"),
            ]
        )
    return "\n".join(
        [
            "## 5. Long context",
            "",
            f"Our masked-LM train step, dropout off, {shape['num_layers']} layer of "
            f"{shape['hidden_size']} hidden, {shape['num_heads']} heads, "
            f"{shape['mlp_dim']:,} feed-forward, vocabulary {shape['vocab_size']:,}, "
            "batch 1. `xla`: softmax over the full T × T scores; `chunked`: the "
            "memory-efficient path. Peak memory is XLA's accounting of the "
            "compiled step, so rows too large to run still have it.",
            "",
            _table(["T", "attention", "step, s", "tokens/s", "XLA peak", "note"], rows),
            "",
            "Growth exponents, log(cost ratio) / log(T ratio): 1 is linear, 2 "
            "quadratic.",
            "",
            _table(
                ["T", "xla time", "xla memory", "chunked time", "chunked memory"],
                growth_rows,
            ),
        ]
    )


def compile_section(results: dict) -> str:
    rows = []
    for row in results.get("compile", []):
        for name, entry in row["implementations"].items():
            rows.append(
                [
                    row["config"],
                    NAMES[name],
                    summary_text(entry["seconds"], 1.0, 1),
                    summary_text(entry["trace_seconds"], 1.0, 1),
                    summary_text(entry["xla_seconds"], 1.0, 1),
                    f"{entry['cold_seconds']:.1f}",
                ]
            )
    if not rows:
        return "## 6. First-step compile time\n\nNot run."
    return "\n".join(
        [
            "## 6. First-step compile time",
            "",
            "Trace, lower and compile of the train step (dropout 0.1), JAX caches "
            "cleared and the persistent cache off before every run, in seconds. "
            '"Cold" is each worker\'s first run, which also pays one-time costs. '
            "PyTorch runs eagerly and has no compile step.",
            "",
            _table(
                [
                    "config",
                    "implementation",
                    "total",
                    "trace + lower",
                    "XLA compile",
                    "cold",
                ],
                rows,
            ),
        ]
    )


def profiles_section(results: dict) -> str:
    profiles = results.get("profiles", [])
    text = [
        "## Profiles by removal",
        "",
        "For each training scenario that misses a target, our train step is "
        "timed with one part removed at a time, all variants in turns in one "
        "worker; a part's share is (full − variant) / full per repetition. "
        "XLA's cost estimate of the full step comes with it. A per-op trace "
        "(`jax.profiler`) is not taken, to keep the run light.",
    ]
    if not profiles:
        return "\n".join([*text, "", "No training target was missed."])
    for profile in profiles:
        rows = []
        for variant, entry in profile["variants"].items():
            share = (
                "–"
                if variant == "full"
                else summary_text(entry["share_removed"], 100.0, 1, "%")
            )
            rows.append(
                [VARIANT_TEXT[variant], summary_text(entry["seconds"], 1e3), share]
            )
        xla_flops = profile.get("xla_flops") or 0.0
        bytes_accessed = profile.get("xla_bytes_accessed") or 0.0
        intensity = xla_flops / bytes_accessed if bytes_accessed else 0.0
        text += [
            "",
            f"### Config {profile['config']}, dropout {profile['dropout']:g}",
            "",
            _table(["variant", "step, ms", "share of the full step removed"], rows),
            "",
            f"XLA's estimate of the full step: {xla_flops / 1e9:,.1f} GFLOP (model "
            f"FLOPs {profile['flops_per_step'] / 1e9:,.1f} G), "
            f"{bytes_accessed / 1e9:,.2f} GB accessed ({intensity:.1f} FLOP per "
            f"byte), {profile.get('xla_transcendentals') or 0:,.0f} "
            "transcendental ops.",
        ]
    return "\n".join(text)


def gpu_section(results: dict) -> str:
    gpu = results.get("gpu")
    text = [
        "## GPU",
        "",
        "`benchmarks/gpu.sh` prints tokens/s and MFU of a 125M-parameter causal "
        "RoFormer (12 layers, 768 hidden, 12 heads, 3,072 feed-forward, "
        "vocabulary 32,000) at T = 2,048 in bfloat16 on one GPU, against that "
        "GPU's measured bfloat16 matmul rate.",
        "",
    ]
    if not gpu:
        text.append(
            "It has not run on a GPU yet. Its result, once recorded with "
            "`benchmarks/gpu.sh --record`, appears here."
        )
        return "\n".join(text)
    text.append(
        f"Recorded on {gpu['device']} on {gpu['date']} with `{gpu['command']}`: "
        f"{gpu['summary']}."
    )
    return "\n".join(text)


def wrap_markdown(text: str, width: int = 78) -> str:
    """Wrap long paragraph and list lines; leave tables, headings and code
    blocks as they are."""
    lines, in_code = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or len(line) <= width or line.startswith(("|", "#", "```")):
            lines.append(line)
            continue
        bullet = re.match(r"^(\s*(?:- |\d+\. ))", line)
        indent = " " * len(bullet.group(1)) if bullet else ""
        lines.append(
            textwrap.fill(
                line,
                width=width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def render_page(results: dict | None, page_path: Path) -> str:
    """Build the whole page. With `results` None the page states that the
    suite has not run yet. The included records follow in both cases."""
    parts = ["# Measured results", INTRO]
    if results is None:
        parts.append(
            "## Benchmark suite: roformer_jax against transformers' RoFormer\n\n"
            "Not run at full size yet. `python -m benchmarks.run_all` measures "
            "it and rewrites this page, keeping the records below."
        )
    else:
        parts += [
            suite_header(results),
            targets_section(results),
            peaks_section(results)
            if results.get("peaks")
            else "## 1. Machine peaks\n\nNot run.",
            throughput_section(results, "training"),
            throughput_section(results, "inference"),
            rotary_section(results),
            long_context_section(results),
            compile_section(results),
            profiles_section(results),
            gpu_section(results),
        ]
    generated = wrap_markdown("\n\n".join(parts))
    return "\n\n".join([generated, *included_sections(page_path)]) + "\n"
