"""Execute every notebook headless on tiny settings, and check that the
committed notebooks carry no outputs.

Each notebook runs through nbclient in a fresh `python3` kernel.
jupyter_client starts that kernel with this interpreter (`sys.executable`) and
this process's environment, so the kernel imports the package under test and
runs on conftest's eight fake CPU devices. The test appends its settings to the
notebook's "parameters" cell, and a cell that raises fails the test. The
checks then compare what a notebook drew with the package's own results.
"""

import csv
import json
import pathlib
import statistics

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from roformer_jax import inspection, rotary
from roformer_jax.data import tiny_shakespeare
from roformer_jax.train import inference, length_eval

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_NAMES = ("rope_explained", "inspect_model", "ablation_report")
SHARED_COPY = REPO_ROOT / ".." / "shared" / "data" / "tiny_shakespeare"
CELL_TIMEOUT_SECONDS = 300


def read_notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def parameters_cells(notebook: nbformat.NotebookNode) -> list:
    return [
        cell
        for cell in notebook.cells
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]


def execute(name: str, parameters: dict, working_dir: pathlib.Path):
    """Run notebook `name` with `parameters` appended to its parameters cell."""
    notebook = read_notebook(name)
    (cell,) = parameters_cells(notebook)
    assignments = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell.source = f"{cell.source}\n# Set by tests/test_notebooks.py.\n{assignments}\n"
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(working_dir)}},
    )
    client.execute()
    return notebook


def count_figures(notebook: nbformat.NotebookNode) -> int:
    """Count the PNG images that the executed notebook displayed."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


# Committed notebooks.


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_committed_notebook_stripped(name):
    notebook = read_notebook(name)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]

    nbformat.validate(notebook)
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [], f"{name}: cell {cell.id} has outputs"
        assert cell.execution_count is None, f"{name}: cell {cell.id} was run"
        assert "execution" not in cell.metadata, f"{name}: cell {cell.id} timed"
    assert "widgets" not in notebook.metadata


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_parameters_cell_first(name):
    notebook = read_notebook(name)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]

    assert len(parameters_cells(notebook)) == 1
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    assert "REPO_URL = " in code_cells[0].source
    assert "pip" in code_cells[1].source


def test_every_notebook_executed_here():
    found = sorted(path.stem for path in NOTEBOOKS_DIR.glob("*.ipynb"))

    assert found == sorted(NOTEBOOK_NAMES)


# Execution.


def reference_upper_bound(distances: np.ndarray, rotary_dim: int, base: float):
    """Evaluate (1 / (d/2)) * sum_j |sum_{k<j} exp(1j r theta_k)| in float64."""
    theta = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    terms = np.exp(1j * distances.astype(np.float64)[:, None] * theta)
    return np.abs(np.cumsum(terms, axis=-1)).mean(axis=-1)


def test_rope_explained_runs_from_repo_root(tmp_path):
    # This notebook runs from the repository root, as a terminal user would
    # start it. The other notebooks run from notebooks/, as Jupyter opens them.
    notebook = execute(
        "rope_explained",
        {"OUTPUT_DIR": str(tmp_path), "ROTARY_DIM": 64, "MAX_DISTANCE": 300},
        REPO_ROOT,
    )
    record = json.loads((tmp_path / "decay_curve.json").read_text())
    distances = np.asarray(record["distances"])
    drawn = np.asarray(record["bound"])

    expected = np.asarray(rotary.relative_upper_bound(distances.astype(np.int32), 64))
    reference = reference_upper_bound(distances, 64, 10000.0)

    assert count_figures(notebook) == 5
    assert record["rotary_dim"] == 64
    np.testing.assert_array_equal(distances, np.arange(301))
    # The notebook and this test run the same function on the same inputs and
    # backend, so only XLA's fusion choices could differ, by a few float32
    # roundings of values up to d/4 + 1/2 = 16.5.
    np.testing.assert_allclose(drawn, expected, rtol=0, atol=1e-5)
    # Term k's angle error is at most 2.4 * 2**-24 * r * theta_k (rotary's
    # module docstring), about 1.7e-4 summed over k at r = 300 and d = 64. The
    # rest of atol covers the rounding of up to 32 partial sums.
    np.testing.assert_allclose(drawn, reference, rtol=0, atol=1e-3)


def test_inspect_model_trains_and_draws(tmp_path, tfds_dir):
    notebook = execute(
        "inspect_model",
        {
            "OUTPUT_DIR": str(tmp_path),
            "MANUAL_DIR": str(SHARED_COPY),
            "DATA_DIR": tfds_dir,
            "TRAIN_STEPS": 3,
            "TRAIN_OVERRIDES": {},
            "TEXT": "First Citizen:\nBefore we proceed",
            "NEW_TOKENS": 12,
            "EVAL_TOKENS": 600,
            "LENGTH_MULTIPLIERS": (1, 2),
            "RESCALINGS": ("ntk",),
        },
        NOTEBOOKS_DIR,
    )
    summary = json.loads((tmp_path / "inspect_model.json").read_text())
    drawn_maps = np.load(tmp_path / "attention_maps.npy")
    loaded = inference.load_workdir(summary["workdir"])
    config = loaded.model.config
    ids = np.asarray(summary["map_token_ids"], np.int32)[None, :]
    positions = np.arange(ids.shape[1], dtype=np.int32)[None, :]

    maps = inspection.attention_maps(
        loaded.model, loaded.params, ids, positions, np.ones_like(ids)
    )

    # The attention maps and the loss per position.
    assert count_figures(notebook) == 2
    assert summary["workdir"].startswith(str(tmp_path))
    assert summary["step"] == 3
    assert drawn_maps.shape == (config.num_layers, config.num_heads) + ids.shape[1:] * 2
    np.testing.assert_allclose(drawn_maps, np.asarray(maps)[:, 0], rtol=0, atol=1e-6)
    assert set(summary["position_loss"]) == {"plain@1x", "plain@2x", "ntk@2x"}
    assert isinstance(summary["generated"], str)
    assert summary["generated"]

    # The 1x curve equals loss_by_position on the same validation prefix.
    splits = tiny_shakespeare.load_text_splits(
        data_dir=tfds_dir, manual_dir=str(SHARED_COPY)
    )
    tokens = np.asarray(loaded.codec.encode(splits["validation"][:600]))
    seq_len = summary["train_length"]
    result = length_eval.loss_by_position(
        loaded.model, loaded.params, tokens, seq_len=seq_len, batch_size=8
    )
    np.testing.assert_allclose(
        summary["position_loss"]["plain@1x"], result.position_loss, rtol=1e-5
    )
    assert len(summary["position_loss"]["plain@2x"]) == 2 * seq_len


def test_ablation_report_reads_and_reruns(tmp_path, tfds_dir):
    notebook = execute(
        "ablation_report",
        {
            "OUTPUT_DIR": str(tmp_path),
            "MANUAL_DIR": str(SHARED_COPY),
            "DATA_DIR": tfds_dir,
            "RERUN_VARIANT": "smoke",
            "RERUN_ENCODING": "alibi",
            "RERUN_OVERRIDES": {
                "train.num_train_steps": 2,
                "extrapolation.length_multipliers": (1, 2),
                "extrapolation.rescaled_labels": (),
            },
        },
        NOTEBOOKS_DIR,
    )
    summary = json.loads((tmp_path / "ablation_report.json").read_text())
    with open(REPO_ROOT / "docs" / "ablation" / "ablation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = {}
    for row in rows:
        expected.setdefault(row["encoding"], []).append(float(row["final_eval_loss"]))
    rerun_result = json.loads(
        (tmp_path / "rerun" / "alibi-tiny-seed0" / "result.json").read_text()
    )

    # Three committed PNGs, the final-loss chart and the rerun's three PNGs.
    assert count_figures(notebook) == 7
    assert summary["results_dir"] == str(REPO_ROOT / "docs" / "ablation")
    assert set(summary["final_loss_by_label"]) == set(expected)
    for label, losses in expected.items():
        drawn = summary["final_loss_by_label"][label]
        assert drawn["mean"] == pytest.approx(statistics.mean(losses), rel=1e-12)
        assert sorted(drawn["seeds"]) == pytest.approx(sorted(losses), rel=1e-12)
    assert summary["rerun_final_eval_loss"] == rerun_result["final_eval_loss"]
    for name in ("ablation.csv", "ablation.md", "ablation_curves.png"):
        assert (tmp_path / "rerun" / name).stat().st_size > 0
