"""Multi-process training: per-process batch shards, `distributed.initialize`,
and a 2-process run on this machine checked against a 1-process run.

The 2-process run starts `python -m roformer_jax.main` twice, with 2 fake CPU
devices each, CPU collectives (Gloo) and the coordinator on 127.0.0.1.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from configs import tiny_shakespeare
from roformer_jax.data.mlm import MaskedLMBatches, masked_eval_batches, pack_documents
from roformer_jax.data.sequence_batches import (
    EncodedExamples,
    ShuffledBatches,
    ordered_batches,
)
from roformer_jax.data.windows import RandomWindows, eval_batches, shard_rows
from roformer_jax.train import distributed
from roformer_jax.train import metrics as metrics_lib
from roformer_jax.train.text_inputs import GatheredPredictions
from roformer_jax.train.trainer import setup, train_and_evaluate
from roformer_jax.train.validation import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_COPY = ROOT / ".." / "shared" / "data" / "tiny_shakespeare"

# Seconds a launched training process may take before the test fails; far
# above the tens of seconds a run takes on a loaded 2-core machine.
PROCESS_TIMEOUT_SECONDS = 300

CLS, SEP, MASK = 1, 2, 3
REPLACEMENT_IDS = np.arange(100, 200)
GLOBAL_BATCH = 8
STEPS = (0, 1, 5)  # Step 5 crosses an epoch boundary of the small datasets.


# --- Per-process shards of every batch source ---------------------------------


def _tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50, size=300).astype(np.int32)


def _packed(whole_word: bool = False):
    """37 packed rows, so the last evaluation batch of 8 has 5 real rows."""
    documents = [np.arange(10 + 5 * i, 15 + 5 * i) for i in range(37)]
    starts = None
    if whole_word:
        rng = np.random.default_rng(1)
        starts = [rng.random(len(document)) < 0.5 for document in documents]
    return pack_documents(
        documents, seq_len=8, cls_id=CLS, sep_id=SEP, word_starts=starts
    )


def _examples(count: int = 21, seq_len: int = 6) -> EncodedExamples:
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 90, size=(count, seq_len)).astype(np.int32)
    return EncodedExamples(
        tokens=tokens,
        token_types=np.zeros_like(tokens),
        lengths=rng.integers(2, seq_len + 1, size=count).astype(np.int32),
        labels=np.arange(count, dtype=np.int32),
    )


def _masked_lm(num_shards, shard_index, *, whole_word=False):
    return MaskedLMBatches(
        _packed(whole_word),
        batch_size=GLOBAL_BATCH,
        seed=3,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
        whole_word=whole_word,
        num_shards=num_shards,
        shard_index=shard_index,
    )


TRAIN_SOURCES = {
    "random_windows": lambda n, i: RandomWindows(
        _tokens(),
        seq_len=8,
        batch_size=GLOBAL_BATCH,
        seed=3,
        num_shards=n,
        shard_index=i,
    ),
    "masked_lm": _masked_lm,
    "masked_lm_whole_word": lambda n, i: _masked_lm(n, i, whole_word=True),
    "gathered_predictions": lambda n, i: GatheredPredictions(_masked_lm(n, i), 3),
    "shuffled_examples": lambda n, i: ShuffledBatches(
        _examples(), batch_size=GLOBAL_BATCH, seed=1, num_shards=n, shard_index=i
    ),
}

EVAL_SOURCES = {
    "windows": lambda n, i: eval_batches(
        _tokens()[:150],
        seq_len=8,
        batch_size=GLOBAL_BATCH,
        num_shards=n,
        shard_index=i,
    ),
    "masked_lm": lambda n, i: masked_eval_batches(
        _packed(),
        batch_size=GLOBAL_BATCH,
        seed=3,
        mask_id=MASK,
        replacement_ids=REPLACEMENT_IDS,
        num_shards=n,
        shard_index=i,
    ),
    "ordered_examples": lambda n, i: ordered_batches(
        _examples(), batch_size=GLOBAL_BATCH, num_shards=n, shard_index=i
    ),
}


def assert_shards_join_to(full: list[dict], shards: list[list[dict]]) -> None:
    """Check that shard i of batch k contains rows [i * B / n, (i + 1) * B / n)
    of the unsharded batch k."""
    for index, shard in enumerate(shards):
        assert len(shard) == len(full), f"shard {index} has another batch count"
    for batch_index, batch in enumerate(full):
        for key, value in batch.items():
            joined = np.concatenate([shard[batch_index][key] for shard in shards])
            assert joined.dtype == value.dtype, (batch_index, key)
            np.testing.assert_array_equal(
                joined, value, err_msg=f"batch {batch_index}, key {key}"
            )


@pytest.mark.parametrize("num_shards", [2, 4])
@pytest.mark.parametrize("name", sorted(TRAIN_SOURCES))
def test_train_shards_join_to_batch(name, num_shards):
    make = TRAIN_SOURCES[name]
    whole = make(1, 0)
    full = [whole.batch(step) for step in STEPS]
    shards = [
        [make(num_shards, index).batch(step) for step in STEPS]
        for index in range(num_shards)
    ]
    assert_shards_join_to(full, shards)


@pytest.mark.parametrize("num_shards", [2, 4])
@pytest.mark.parametrize("name", sorted(EVAL_SOURCES))
def test_eval_shards_join_to_batch(name, num_shards):
    make = EVAL_SOURCES[name]
    full = list(make(1, 0))
    shards = [list(make(num_shards, index)) for index in range(num_shards)]
    assert_shards_join_to(full, shards)


def test_eval_shard_of_padding_only():
    """With 37 rows in batches of 8, the last batch's shard 3 of 4 (rows 6
    and 7) is padding, with the dtypes of real rows."""
    last = list(EVAL_SOURCES["masked_lm"](4, 3))[-1]
    real = list(EVAL_SOURCES["masked_lm"](4, 0))[-1]
    assert last["weights"].shape == (2, 8)
    assert not np.any(last["weights"])
    assert not np.any(last["segment_ids"])
    for key, value in last.items():
        assert value.dtype == real[key].dtype, key


@pytest.mark.parametrize(
    ("batch_size", "num_shards", "shard_index", "message"),
    [
        (6, 4, 0, "batch_size=6 is not divisible by num_shards=4"),
        (8, 4, 4, r"shard_index=4 is outside \[0, 4\)"),
        (8, 4, -1, r"shard_index=-1 is outside \[0, 4\)"),
        (8, 0, 0, "num_shards must be at least 1"),
    ],
)
def test_shard_rows_rejects_invalid(batch_size, num_shards, shard_index, message):
    with pytest.raises(ValueError, match=message):
        shard_rows(batch_size, num_shards=num_shards, shard_index=shard_index)


def test_source_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        RandomWindows(_tokens(), seq_len=8, batch_size=6, seed=0, num_shards=4)


def test_batch_sizes_checked_against_shards():
    config = ml_collections.ConfigDict(
        {"data": {"global_batch_size": 8, "eval_batch_size": 6}}
    )
    with pytest.raises(ConfigError, match="data.eval_batch_size=6 is not divisible"):
        distributed.check_batch_sizes(config, distributed.BatchShard(0, 4))


def test_single_process_holds_whole_batch():
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
    assert distributed.process_batch_shard(mesh) == distributed.WHOLE_BATCH


# --- distributed.initialize -----------------------------------------------------


@pytest.fixture
def fake_initialize(monkeypatch):
    """Record `jax.distributed.initialize` calls in a cluster-free environment."""
    calls = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs)
    )
    for variables in distributed.CLUSTER_ENVIRONMENT_VARIABLES.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(distributed, "_running_on_cloud_tpu_vm", lambda: False)
    return calls


def test_initialize_explicit_flags(fake_initialize):
    path = distributed.initialize("127.0.0.1:1234", 2, 1)
    assert path == "explicit"
    assert fake_initialize == [
        {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    ]


def test_initialize_single_process(fake_initialize):
    assert distributed.initialize() == "single"
    assert fake_initialize == []


def test_initialize_detects_slurm(fake_initialize, monkeypatch):
    for variable in distributed.CLUSTER_ENVIRONMENT_VARIABLES["Slurm"]:
        monkeypatch.setenv(variable, "0")
    assert distributed.initialize() == "cluster"
    assert fake_initialize == [{}]


def test_initialize_ignores_partial_slurm(fake_initialize, monkeypatch):
    """srun sets all five variables; SLURM_JOB_ID alone is an sbatch shell."""
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert distributed.initialize() == "single"
    assert fake_initialize == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000"}, "Open MPI"),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "Cloud TPU on GKE"),
        ({"TPU_PROCESS_ADDRESSES": "t0:8476,t1:8476"}, "Cloud TPU on GKE"),
        (
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"},
            "Kubernetes",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
        ({"HOME": "/root"}, None),
    ],
)
def test_detect_cluster(environ, expected, fake_initialize):
    assert distributed.detect_cluster(environ) == expected


def test_initialize_kubernetes_needs_package(fake_initialize, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setattr(distributed, "_kubernetes_installed", lambda: False)
    with pytest.raises(distributed.DistributedConfigError, match="jax\\[k8s\\]"):
        distributed.initialize()
    assert fake_initialize == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("127.0.0.1:1234", None, None), "without --num_processes and --process_id"),
        ((None, 2, 0), "without --coordinator_address"),
        (("127.0.0.1:1234", 2, 2), r"--process_id=2 is outside \[0, 2\)"),
        (("127.0.0.1:1234", 2, -1), r"--process_id=-1 is outside \[0, 2\)"),
        (("127.0.0.1:1234", 0, 0), "--num_processes=0 is invalid"),
        (("127.0.0.1", 2, 0), "is not HOST:PORT"),
        (("127.0.0.1:http", 2, 0), "is not HOST:PORT"),
        ((":1234", 2, 0), "is not HOST:PORT"),
        (("127.0.0.1:70000", 2, 0), "is not HOST:PORT"),
    ],
)
def test_initialize_rejects_flags(fake_initialize, arguments, message):
    with pytest.raises(distributed.DistributedConfigError, match=message):
        distributed.initialize(*arguments)
    assert fake_initialize == []


def test_initialize_selects_gloo(fake_initialize):
    option = "jax_cpu_collectives_implementation"
    previous = getattr(jax.config, option)
    jax.config.update(option, None)
    try:
        distributed.initialize("127.0.0.1:1234", 2, 0)
        assert getattr(jax.config, option) == "gloo"
    finally:
        jax.config.update(option, previous)


# --- A 2-process run against a 1-process run ----------------------------------

RUN_OVERRIDES = {
    "mesh.data": 4,  # 2 processes x 2 devices, or 4 of this process's 8.
    "train.log_every_steps": 1,
    "train.tensorboard": False,
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_two_processes(workdir, tfds_dir) -> list[subprocess.Popen]:
    port = _free_port()
    environment = dict(os.environ)
    environment["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    environment["JAX_PLATFORMS"] = "cpu"
    command = [
        sys.executable,
        "-m",
        "roformer_jax.main",
        "--config=configs/tiny_shakespeare.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.manual_dir={SHARED_COPY}",
        f"--config.data.data_dir={tfds_dir}",
        *(f"--config.{name}={value}" for name, value in RUN_OVERRIDES.items()),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
    ]
    return [
        subprocess.Popen(
            [*command, f"--process_id={index}"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]


def _wait(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Return (exit code, stderr) of each process; kill all on a timeout."""
    results = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
            results.append((process.returncode, stderr))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(
            f"A training process ran longer than {PROCESS_TIMEOUT_SECONDS} s; the "
            "processes may wait on each other."
        )
    return results


def _config(tfds_dir: str):
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.data.data_dir = tfds_dir
        config.data.manual_dir = str(SHARED_COPY)
        for dotted, value in RUN_OVERRIDES.items():
            group, name = dotted.split(".")
            config[group][name] = value
    return config


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Run the smoke config as 2 processes and, meanwhile, as 1 process over
    4 devices in this process; each run prepares its own TFDS dir."""
    root = tmp_path_factory.mktemp("multihost")
    processes = _launch_two_processes(root / "two", root / "tfds_two")
    try:
        config = _config(str(root / "tfds_one"))
        train_and_evaluate(config, str(root / "one"))
    finally:
        results = _wait(processes)
    return {"root": root, "config": config, "results": results}


def _rows(workdir, prefix: str) -> dict[int, dict]:
    return {
        row["step"]: row
        for row in metrics_lib.read_metrics(str(workdir))
        if f"{prefix}/loss" in row
    }


def test_two_processes_exit_cleanly(two_process_run):
    for index, (code, stderr) in enumerate(two_process_run["results"]):
        assert code == 0, f"process {index} failed:\n{stderr[-3000:]}"


def test_two_processes_match_one_process(two_process_run):
    root = two_process_run["root"]
    for prefix in ("train", "eval"):
        two_process = _rows(root / "two", prefix)
        one_process = _rows(root / "one", prefix)
        assert sorted(two_process) == sorted(one_process), prefix
        np.testing.assert_allclose(
            [two_process[step][f"{prefix}/loss"] for step in sorted(two_process)],
            [one_process[step][f"{prefix}/loss"] for step in sorted(one_process)],
            rtol=1e-5,
            err_msg=prefix,
        )


def test_only_process_zero_writes(two_process_run):
    root = two_process_run["root"]
    (_, first), (_, second) = two_process_run["results"]
    lines = (root / "two" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "train/loss" in line]
    assert steps == [1, 2, 3, 4]
    assert "step 4/4" in first
    assert "eval at step 4" in first
    assert "step 4/4" not in second
    assert "eval at step" not in second
    assert "Config:" not in second


def test_each_process_logs_its_start(two_process_run):
    for index, (_, stderr) in enumerate(two_process_run["results"]):
        expected = f"Started jax.distributed from flags: process {index} of 2"
        assert expected in stderr, stderr[-2000:]


def test_two_process_checkpoint_restores_alone(two_process_run):
    """One process restores the checkpoint that 2 processes wrote, and its
    parameters are those of the 1-process run."""
    root, config = two_process_run["root"], two_process_run["config"]
    restored = {}
    for name in ("two", "one"):
        run = setup(config, str(root / name))
        restored[name] = (run.start_step, jax.device_get(run.state.params))
        run.checkpointer.close()
        run.writer.close()
    assert restored["two"][0] == 4
    two_leaves = jax.tree.leaves(restored["two"][1])
    one_leaves = jax.tree.leaves(restored["one"][1])
    for two_leaf, one_leaf in zip(two_leaves, one_leaves, strict=True):
        np.testing.assert_allclose(two_leaf, one_leaf, rtol=1e-5, atol=1e-6)
