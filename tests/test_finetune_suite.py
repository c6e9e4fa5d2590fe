"""The pre-train then fine-tune suite runner and its report."""

import json
import pathlib
import statistics

import pytest

from configs import finetune_suite as suite_configs
from experiments import finetune_suite

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def smoke_suite(tmp_path):
    config = suite_configs.get_config("glue,smoke")
    config.encodings = ("rope",)
    config.runs = {name: config.runs[name] for name in ("sst2", "stsb")}
    config.paths.corpus = str(next((DATA / "enwiki_excerpt").glob("*.bz2")))
    config.paths.glue_dir = str(DATA / "glue")
    config.paths.tfds_dir = str(tmp_path / "tfds")
    return config


def test_suite_runs_resumes_and_reports(tmp_path):
    suite = smoke_suite(tmp_path)
    root = tmp_path / "suite"
    results = finetune_suite.run_suite(suite, str(root))
    assert len(results) == 4  # 2 tasks x 1 encoding x 2 seeds.
    result_file = root / "sst2" / "rope" / "seed1" / "result.json"
    stored = json.loads(result_file.read_text("utf-8"))
    assert stored["seed"] == 1
    assert 0.0 <= stored["eval/accuracy"] <= 1.0

    modified = result_file.stat().st_mtime_ns
    again = finetune_suite.run_suite(suite, str(root))
    assert result_file.stat().st_mtime_ns == modified
    assert [r["eval/loss"] for r in again] == [r["eval/loss"] for r in results]

    rows = finetune_suite.write_report(results, suite, str(root))
    table = (root / "summary.md").read_text("utf-8")
    assert "| stsb | pearson |" in table
    assert "| sst2 | accuracy |" in table
    assert (root / "summary.png").stat().st_size > 0
    assert {row["metric"] for row in rows} >= {"accuracy", "pearson", "spearman"}


def test_learned_runs_extend_the_table_when_longer():
    suite = suite_configs.get_config("cail")
    config = finetune_suite.finetune_config(suite, "cail_1024", "learned", 0, "pre")
    assert config.model.max_position_embeddings == 1024
    assert config.finetune.extend_position_embeddings
    rope = finetune_suite.finetune_config(suite, "cail_1024", "rope", 0, "pre")
    assert not rope.finetune.extend_position_embeddings
    assert rope.data.seq_len == 1024


def test_summary_mean_and_std():
    results = [
        {"label": "sst2", "encoding": "rope", "seed": s, "eval/accuracy": value}
        for s, value in enumerate([0.8, 0.82, 0.78])
    ]
    (row,) = finetune_suite.summarize(results)
    assert row["mean"] == pytest.approx(0.8)
    assert row["std"] == pytest.approx(statistics.stdev([0.8, 0.82, 0.78]))
    table = finetune_suite.markdown_table([row], ["rope", "learned"])
    assert "80.0 ± 2.0 (n=3)" in table
    assert table.rstrip().endswith("| — |")


def test_unknown_suite_is_rejected():
    with pytest.raises(ValueError, match="'glue' or 'cail'"):
        suite_configs.get_config("mnli")


def test_bad_finetune_setting_fails_before_pretraining(tmp_path):
    suite = smoke_suite(tmp_path)
    suite.runs["sst2"]["overrides"] = {"optim": {"learning_rate": -1.0}}
    root = tmp_path / "suite"

    with pytest.raises(ValueError, match="learning_rate"):
        finetune_suite.run_suite(suite, str(root))

    assert not (root / "pretrain").exists()
