"""Tests for roformer_jax.data.glue on the offline GLUE copies.

Each task is prepared once through the TFDS builder into a module-scoped temp
dir, and its examples are compared with rows parsed here straight from the TSV
files, without TFDS.
"""

import csv
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from roformer_jax.data.glue import GLUE_TASKS, Glue, load_glue
from roformer_jax.data.text_classification import TextExample
from roformer_jax.data.tiny_shakespeare import DatasetUnavailableError
from roformer_jax.metrics import METRICS

GLUE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}

# Per task: folder, text columns and label column in the TSV header, or column
# indices for CoLA, whose train and dev files have no header.
FILE_LAYOUT = {
    "cola": ("CoLA", (3,), 1),
    "sst2": ("SST-2", ("sentence",), "label"),
    "mrpc": ("MRPC", ("#1 String", "#2 String"), "Quality"),
    "stsb": ("STS-B", ("sentence1", "sentence2"), "score"),
    "rte": ("RTE", ("sentence1", "sentence2"), "label"),
    "wnli": ("WNLI", ("sentence1", "sentence2"), "label"),
}
# RTE writes class names; the other classification files write 0 and 1.
RTE_CLASSES = {"entailment": 0, "not_entailment": 1}
CASES = [(task, split) for task in FILE_LAYOUT for split in SPLIT_FILES]


def _read_file_rows(task: str, split: str) -> list[tuple[list[str], str]]:
    """Return (texts, raw label) per row of the GLUE TSV file, quoting off."""
    folder, text_columns, label_column = FILE_LAYOUT[task]
    path = GLUE_DIR / folder / SPLIT_FILES[split]
    # utf-8-sig drops the byte-order mark that starts the MRPC files.
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    if task != "cola":
        header, rows = rows[0], rows[1:]
        text_columns = tuple(header.index(name) for name in text_columns)
        label_column = header.index(label_column)
    return [([row[i] for i in text_columns], row[label_column]) for row in rows]


def _expected_label(task: str, raw: str) -> float | int:
    if task == "stsb":
        # TFDS stores scores as float32.
        return float(np.float32(raw))
    if task == "rte":
        return RTE_CLASSES[raw]
    return int(raw)


def _expected_examples(task: str, split: str) -> list[TextExample]:
    examples = []
    for texts, raw_label in _read_file_rows(task, split):
        text_b = texts[1] if len(texts) == 2 else None
        examples.append(TextExample(texts[0], text_b, _expected_label(task, raw_label)))
    return examples


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def loaded(data_dir):
    """Examples per (task, split), each task prepared once from the local copy."""
    cache = {}

    def load(task: str, split: str) -> list[TextExample]:
        if (task, split) not in cache:
            cache[task, split] = load_glue(
                task, split, data_dir=str(data_dir), manual_dir=str(GLUE_DIR)
            )
        return cache[task, split]

    return load


def _closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_proxy(monkeypatch, port: int) -> None:
    """Route HTTP(S) through 127.0.0.1:port so no test reaches another host."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


@pytest.fixture
def offline(monkeypatch):
    """Make any download fail at once: the proxy is a closed loopback port."""
    _use_proxy(monkeypatch, _closed_loopback_port())


# --- examples against the TSV files ------------------------------------------


@pytest.mark.parametrize(("task", "split"), CASES)
def test_count_matches_file(loaded, task, split):
    assert len(loaded(task, split)) == len(_read_file_rows(task, split))


@pytest.mark.parametrize(("task", "split"), CASES)
def test_first_example_matches_file(loaded, task, split):
    first = loaded(task, split)[0]
    texts, raw_label = _read_file_rows(task, split)[0]

    assert first.text_a == texts[0]
    assert first.text_b == (texts[1] if len(texts) == 2 else None)
    assert first.label == _expected_label(task, raw_label)


@pytest.mark.parametrize(("task", "split"), CASES)
def test_all_examples_match_file(loaded, task, split):
    assert loaded(task, split) == _expected_examples(task, split)


@pytest.mark.parametrize(("task", "split"), CASES)
def test_label_range(loaded, task, split):
    spec = GLUE_TASKS[task]
    labels = [example.label for example in loaded(task, split)]

    if spec.num_classes == 0:
        assert all(isinstance(label, float) for label in labels)
        assert min(labels) >= 0.0
        assert max(labels) <= 5.0
    else:
        assert all(isinstance(label, int) for label in labels)
        assert set(labels) == set(range(spec.num_classes))


@pytest.mark.parametrize(("task", "split"), CASES)
def test_pair_tasks_have_text_b(loaded, task, split):
    is_pair = len(GLUE_TASKS[task].text_keys) == 2
    examples = loaded(task, split)

    if is_pair:
        assert all(isinstance(example.text_b, str) for example in examples)
    else:
        assert all(example.text_b is None for example in examples)


def test_prepared_readable_by_tfds_load(loaded, data_dir, offline):
    examples = loaded("wnli", "train")
    version = tfds.builder_cls("glue").builder_configs["wnli"].version

    dataset = tfds.load("glue/wnli", split="train", data_dir=str(data_dir))

    assert (data_dir / "glue" / "wnli" / str(version) / "dataset_info.json").is_file()
    assert len(list(dataset)) == len(examples)


def test_prepared_reused_offline(loaded, data_dir, offline):
    expected = loaded("rte", "validation")

    reloaded = load_glue("rte", "validation", data_dir=str(data_dir))

    assert reloaded == expected


# --- task specs ---------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_task_spec_matches_tfds(task):
    spec = GLUE_TASKS[task]
    config = tfds.builder_cls("glue").builder_configs[task]

    assert spec.name == task
    assert spec.tfds_name == f"glue/{task}"
    assert spec.offline_dir == config.data_dir
    assert spec.text_keys == tuple(config.text_features)
    assert spec.label_names == tuple(config.label_classes or ())
    assert spec.num_classes == len(spec.label_names)


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_task_metrics_exist(task):
    spec = GLUE_TASKS[task]

    assert set(spec.metrics) <= set(METRICS)
    assert spec.main_metric in spec.metrics


def test_task_metric_choices():
    assert GLUE_TASKS["cola"].metrics == ("matthews_corrcoef",)
    assert GLUE_TASKS["mrpc"].metrics == ("accuracy", "f1")
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearman")
    for task in ("sst2", "rte", "wnli"):
        assert GLUE_TASKS[task].metrics == ("accuracy",), task


# --- errors -------------------------------------------------------------------


def test_offline_without_manual_dir_fails_fast(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as raised:
        load_glue("sst2", "train", data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start

    assert "data.manual_dir" in str(raised.value)
    assert "SST-2" in str(raised.value)
    assert elapsed < 10.0
    assert not list((tmp_path / "glue" / "sst2").glob("*/dataset_info.json"))


def test_offline_mrpc_fails_fast(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as raised:
        load_glue("mrpc", "validation", data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start

    assert "data.manual_dir" in str(raised.value)
    assert elapsed < 10.0


def test_download_error_converted(tmp_path, monkeypatch):
    def fail_download(self, url):
        raise requests.exceptions.ConnectionError(f"cannot reach {url}")

    # A listening loopback proxy lets the reachability probe pass, so the
    # error comes from the (patched) TFDS download itself.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _use_proxy(monkeypatch, listener.getsockname()[1])
        monkeypatch.setattr(
            tfds.download.DownloadManager, "download_and_extract", fail_download
        )

        with pytest.raises(DatasetUnavailableError) as raised:
            load_glue("cola", "train", data_dir=str(tmp_path))

    assert "ConnectionError" in str(raised.value)
    assert "data.manual_dir" in str(raised.value)
    assert isinstance(raised.value.__cause__, requests.exceptions.ConnectionError)


def test_manual_dir_unsupported_task(tmp_path):
    builder = Glue(config="mnli", data_dir=str(tmp_path))
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(GLUE_DIR), try_download_gcs=False
    )

    with pytest.raises(ValueError) as raised:
        builder.download_and_prepare(download_config=download_config)

    assert "'mnli'" in str(raised.value)
    assert "sst2" in str(raised.value)


def test_manual_dir_missing_file(tmp_path, offline):
    manual_dir = tmp_path / "glue"
    (manual_dir / "WNLI").mkdir(parents=True)
    (manual_dir / "WNLI" / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n"
    )

    with pytest.raises(FileNotFoundError) as raised:
        load_glue(
            "wnli", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir)
        )

    assert str(manual_dir / "WNLI" / "dev.tsv") in str(raised.value)


def test_manual_dir_missing_mrpc_ids(tmp_path, offline):
    manual_dir = tmp_path / "glue"
    (manual_dir / "MRPC").mkdir(parents=True)
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        (manual_dir / "MRPC" / name).write_bytes(
            (GLUE_DIR / "MRPC" / name).read_bytes()
        )

    with pytest.raises(FileNotFoundError) as raised:
        load_glue(
            "mrpc", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir)
        )

    assert str(manual_dir / "MRPC" / "dev_ids.tsv") in str(raised.value)


def test_unknown_task_rejected(tmp_path):
    with pytest.raises(ValueError, match="'mnli'"):
        load_glue("mnli", "train", data_dir=str(tmp_path))


def test_test_split_rejected(tmp_path):
    with pytest.raises(ValueError, match="'test'"):
        load_glue("sst2", "test", data_dir=str(tmp_path))
