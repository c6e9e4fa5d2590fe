"""GLUE tasks through the TFDS `glue` builder, with an offline option.

`Glue` subclasses the builder that TFDS ships and keeps its name and version,
so prepared data lands in `<data_dir>/glue/<task>/<version>/` as with
`tfds.load("glue/<task>")`, and either one reuses what the other prepared. The
only change is where the source files come from. When
`DownloadConfig(manual_dir=...)` is set, the builder reads the folder that the
standard GLUE download script writes (`SST-2/train.tsv`, `CoLA/dev.tsv`, ...,
and for MRPC the original Microsoft files). Otherwise it downloads them as
upstream does. Both paths run the upstream `_split_generators` and
`_generate_examples`, so the examples are the ones TFDS produces.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from roformer_jax.data.offline import (
    MANUAL_DIR_FLAG,
    FailFastDownloadManager,
)
from roformer_jax.data.text_classification import TextExample

SPLITS = ("train", "validation")

# Files of the MRPC folder that the TFDS builder reads, by the key it requests
# them under: the original Microsoft files and the GLUE list of dev-set ids.
MRPC_FILES = {
    "train": "msr_paraphrase_train.txt",
    "test": "msr_paraphrase_test.txt",
    "dev_ids": "dev_ids.tsv",
}
# Files of the other task folders that the TFDS builder reads.
TSV_FILES = ("train.tsv", "dev.tsv", "test.tsv")

_UpstreamGlue = tfds.builder_cls("glue")


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """A GLUE task: its TFDS config, offline folder, features and metrics."""

    # TFDS config name, as in "glue/<name>".
    name: str
    tfds_name: str
    # Folder of the task in the GLUE download script's output.
    offline_dir: str
    # TFDS feature names of the first and (for pair tasks) second text.
    text_keys: tuple[str, ...]
    # Number of classes, or 0 for regression.
    num_classes: int
    # Class names by label index, as in the TFDS ClassLabel feature.
    label_names: tuple[str, ...]
    # Names of functions in roformer_jax.metrics.
    metrics: tuple[str, ...]
    main_metric: str


# GLUE reports two scores for MRPC (accuracy, F1) and STS-B (Pearson, Spearman).
# `main_metric` picks F1 and Spearman's correlation for checkpoint selection.
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        name="cola",
        tfds_name="glue/cola",
        offline_dir="CoLA",
        text_keys=("sentence",),
        num_classes=2,
        label_names=("unacceptable", "acceptable"),
        metrics=("matthews_corrcoef",),
        main_metric="matthews_corrcoef",
    ),
    "sst2": GlueTask(
        name="sst2",
        tfds_name="glue/sst2",
        offline_dir="SST-2",
        text_keys=("sentence",),
        num_classes=2,
        label_names=("negative", "positive"),
        metrics=("accuracy",),
        main_metric="accuracy",
    ),
    "mrpc": GlueTask(
        name="mrpc",
        tfds_name="glue/mrpc",
        offline_dir="MRPC",
        text_keys=("sentence1", "sentence2"),
        num_classes=2,
        label_names=("not_equivalent", "equivalent"),
        metrics=("accuracy", "f1"),
        main_metric="f1",
    ),
    "stsb": GlueTask(
        name="stsb",
        tfds_name="glue/stsb",
        offline_dir="STS-B",
        text_keys=("sentence1", "sentence2"),
        num_classes=0,
        label_names=(),
        metrics=("pearson", "spearman"),
        main_metric="spearman",
    ),
    "rte": GlueTask(
        name="rte",
        tfds_name="glue/rte",
        offline_dir="RTE",
        text_keys=("sentence1", "sentence2"),
        num_classes=2,
        label_names=("entailment", "not_entailment"),
        metrics=("accuracy",),
        main_metric="accuracy",
    ),
    "wnli": GlueTask(
        name="wnli",
        tfds_name="glue/wnli",
        offline_dir="WNLI",
        text_keys=("sentence1", "sentence2"),
        num_classes=2,
        label_names=("not_entailment", "entailment"),
        metrics=("accuracy",),
        main_metric="accuracy",
    ),
}


def _manual_dir_hint(config_name: str) -> str:
    if config_name not in GLUE_TASKS:
        return (
            f"Only the GLUE tasks {sorted(GLUE_TASKS)} can be read from local files "
            f"({MANUAL_DIR_FLAG}=DIR)."
        )
    task = GLUE_TASKS[config_name]
    files = MRPC_FILES.values() if task.name == "mrpc" else TSV_FILES
    return (
        f"Pass {MANUAL_DIR_FLAG}=DIR (data.manual_dir) where DIR contains "
        f"{task.offline_dir}/ as the standard GLUE download script writes it "
        f"(with {', '.join(files)})."
    )


class _LocalGlueFiles:
    """Stand-in download manager that returns files of a local GLUE folder.

    The TFDS builder calls `download_and_extract(url)` for most tasks and joins
    the task folder name to the result, so this returns the GLUE root. For
    MRPC it calls `download({key: url})`, which returns the paths in `MRPC_FILES`.
    """

    def __init__(self, root: Path, config_name: str):
        if config_name not in GLUE_TASKS:
            raise ValueError(
                f"GLUE task {config_name!r} cannot be read from a manual dir. "
                f"{_manual_dir_hint(config_name)}"
            )
        self._root = root
        self._task = GLUE_TASKS[config_name]

    def _require(self, paths: list[Path]) -> None:
        missing = [os.fspath(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"GLUE {self._task.name} files not found: {missing}. "
                f"{_manual_dir_hint(self._task.name)}"
            )

    def download_and_extract(self, url: str) -> str:
        del url  # The local folder replaces the archive that the builder requests.
        folder = self._root / self._task.offline_dir
        self._require([folder / name for name in TSV_FILES])
        return os.fspath(self._root)

    def download(self, urls: Mapping[str, str]) -> dict[str, str]:
        folder = self._root / self._task.offline_dir
        unknown = sorted(set(urls) - set(MRPC_FILES))
        if unknown:
            raise ValueError(
                f"The TFDS glue/{self._task.name} builder requested files {unknown}, "
                f"which have no local copy here (known: {sorted(MRPC_FILES)}). "
                f"tensorflow-datasets {tfds.__version__} may read other files than "
                "this loader expects."
            )
        paths = {key: folder / MRPC_FILES[key] for key in urls}
        self._require(list(paths.values()))
        return {key: os.fspath(path) for key, path in paths.items()}


class Glue(_UpstreamGlue, skip_registration=True):
    """The TFDS `glue` builder, reading a local GLUE folder when a manual dir is set.

    Registration is skipped because the upstream class is registered under this
    name. Only the tasks in GLUE_TASKS have a local layout. Without a manual
    dir, `download_and_prepare` downloads as upstream does, but raises
    DatasetUnavailableError within seconds when a host cannot be reached.
    """

    name = "glue"

    # `manual_dir` of the last `download_and_prepare` call, None when unset.
    _requested_manual_dir: Path | None = None

    def download_and_prepare(self, *, download_config=None, **kwargs):
        # The download manager always has a manual dir (by default
        # `<download_dir>/manual`), so the explicit choice is read here.
        manual_dir = download_config.manual_dir if download_config else None
        self._requested_manual_dir = (
            Path(manual_dir) if manual_dir is not None else None
        )
        return super().download_and_prepare(download_config=download_config, **kwargs)

    def _split_generators(self, dl_manager):
        config_name = self.builder_config.name
        if self._requested_manual_dir is None:
            return super()._split_generators(
                FailFastDownloadManager(
                    dl_manager,
                    dataset=f"The GLUE {config_name} data",
                    hint=_manual_dir_hint(config_name),
                )
            )
        return super()._split_generators(
            _LocalGlueFiles(self._requested_manual_dir, config_name)
        )


def load_glue(
    task: str,
    split: str,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> list[TextExample]:
    """Prepare a GLUE task with TFDS if needed and return one split's examples.

    Args:
      task: a key of GLUE_TASKS (the TFDS config name, e.g. "sst2").
      split: "train" or "validation". Test labels are not public: TFDS marks
        them -1, and examples with label -1 are dropped, so no test split is
        offered.
      data_dir: TFDS data directory. None means the TFDS default
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      manual_dir: folder containing the task folders (`SST-2/`, `CoLA/`,
        `MRPC/`, ...) as the standard GLUE download script writes them, read
        instead of the download when the dataset is not yet prepared. MRPC needs
        `msr_paraphrase_train.txt`, `msr_paraphrase_test.txt` and `dev_ids.tsv`
        in `MRPC/`. An already prepared dataset is reused without reading it.

    Returns:
      The examples in source-file order (TFDS shuffles on write, so they are
      sorted by the `idx` feature, the row number in the source file).
      `text_b` is set for pair tasks. Labels are class indices, or float scores
      for stsb (float32 values as TFDS stores them).

    Raises:
      ValueError: unknown task or split.
      DatasetUnavailableError: not prepared, no manual dir, and the download failed.
      FileNotFoundError: not prepared and `manual_dir` lacks a file the task needs.
    """
    if task not in GLUE_TASKS:
        raise ValueError(
            f"Unknown GLUE task {task!r}. Use one of {sorted(GLUE_TASKS)}."
        )
    if split not in SPLITS:
        raise ValueError(f"Unknown GLUE split {split!r}. Use one of {list(SPLITS)}.")
    spec = GLUE_TASKS[task]

    builder = Glue(config=spec.name, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False
    )
    builder.download_and_prepare(download_config=download_config)

    # Each split of these tasks fits in memory (SST-2 train, the largest, has
    # 67,349 sentences), so one batch contains the whole split.
    dataset = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    columns = tfds.as_numpy(dataset)
    order = np.argsort(columns["idx"], kind="stable")
    labels = columns["label"]

    examples = []
    for i in order:
        if labels[i] == -1:
            continue
        texts = [columns[key][i].decode("utf-8") for key in spec.text_keys]
        label = float(labels[i]) if spec.num_classes == 0 else int(labels[i])
        text_b = texts[1] if len(texts) == 2 else None
        examples.append(TextExample(texts[0], text_b, label))
    return examples
