"""Tests for roformer_jax.interop.torch_pickle against files that torch.save writes.

The reference for every tensor is torch's own `tensor.numpy()` (bfloat16
through `tensor.float()`), taken before saving.
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from roformer_jax.interop.torch_pickle import (
    TorchCheckpointError,
    bfloat16_to_float32,
    read_torch_state_dict,
)


def _reference(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().numpy()


def _save(tmp_path, state, name="weights.bin"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "dtype, numpy_dtype",
    [
        (torch.float32, np.float32),
        (torch.float16, np.float16),
        (torch.bfloat16, np.float32),
        (torch.float64, np.float64),
        (torch.int64, np.int64),
        (torch.int32, np.int32),
        (torch.int8, np.int8),
        (torch.uint8, np.uint8),
        (torch.bool, np.bool_),
    ],
)
def test_dtypes_match_torch(tmp_path, dtype, numpy_dtype):
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        tensor = torch.randn(3, 5, generator=generator).to(dtype)
    elif dtype == torch.bool:
        tensor = torch.randint(0, 2, (3, 5), generator=generator).bool()
    else:
        tensor = torch.randint(-100, 100, (3, 5), generator=generator).to(dtype)
        if dtype == torch.uint8:
            tensor = tensor.abs()
    path = _save(tmp_path, {"tensor": tensor})

    loaded = read_torch_state_dict(path)["tensor"]

    assert loaded.dtype == numpy_dtype
    assert loaded.shape == (3, 5)
    np.testing.assert_array_equal(loaded, _reference(tensor))


def test_bfloat16_widening_exact():
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-30, 3e38, float("inf")])
    bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)

    widened = bfloat16_to_float32(bits)

    np.testing.assert_array_equal(widened, values.to(torch.bfloat16).float().numpy())


def test_transposed_and_sliced_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "transposed": base.t(),
        "column_slice": base[:, 2:5],
        "row_offset": base[1:3],
        "strided": base[::2, ::3],
        "expanded": torch.ones(1, 3).expand(4, 3),
    }
    references = {name: tensor.numpy().copy() for name, tensor in state.items()}
    path = _save(tmp_path, state)

    loaded = read_torch_state_dict(path)

    for name, reference in references.items():
        assert loaded[name].shape == reference.shape, name
        np.testing.assert_array_equal(loaded[name], reference, err_msg=name)


def test_shared_storage_read_once(tmp_path):
    weight = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    path = _save(tmp_path, {"embedding": weight, "decoder": weight, "row": weight[2]})

    loaded = read_torch_state_dict(path)

    np.testing.assert_array_equal(loaded["embedding"], weight.numpy())
    np.testing.assert_array_equal(loaded["decoder"], weight.numpy())
    np.testing.assert_array_equal(loaded["row"], weight[2].numpy())
    assert np.shares_memory(loaded["embedding"], loaded["decoder"])
    assert np.shares_memory(loaded["embedding"], loaded["row"])


def test_arrays_read_only(tmp_path):
    path = _save(tmp_path, {"weight": torch.ones(2, 2)})

    loaded = read_torch_state_dict(path)

    assert not loaded["weight"].flags.writeable


def test_module_state_dict(tmp_path):
    torch.manual_seed(2)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.BatchNorm1d(4)
    )
    state = module.state_dict()
    assert isinstance(state, collections.OrderedDict)
    path = _save(tmp_path, state)

    loaded = read_torch_state_dict(path)

    assert list(loaded) == list(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(loaded[name], _reference(tensor), err_msg=name)


def test_parameters_unwrapped(tmp_path):
    parameter = torch.nn.Parameter(torch.randn(2, 3))
    path = _save(tmp_path, {"parameter": parameter})

    loaded = read_torch_state_dict(path)

    np.testing.assert_array_equal(loaded["parameter"], _reference(parameter))


def test_scalar_and_empty_tensors(tmp_path):
    state = {"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4)}
    path = _save(tmp_path, state)

    loaded = read_torch_state_dict(path)

    assert loaded["scalar"].shape == ()
    assert loaded["scalar"] == 3.5
    assert loaded["empty"].shape == (0, 4)


def test_archive_folder_name_free(tmp_path):
    # torch names the folder inside the zip after the file, so any name works.
    path = _save(tmp_path, {"weight": torch.arange(3.0)}, name="some.other-name.pt")

    loaded = read_torch_state_dict(path)

    np.testing.assert_array_equal(loaded["weight"], np.arange(3.0, dtype=np.float32))


def test_legacy_format_rejected(tmp_path):
    path = tmp_path / "legacy.bin"
    torch.save({"weight": torch.ones(2)}, path, _use_new_zipfile_serialization=False)

    with pytest.raises(TorchCheckpointError) as error:
        read_torch_state_dict(path)

    message = str(error.value)
    assert str(path) in message
    assert "torch 1.6" in message
    assert "safetensors" in message


def test_disallowed_global_rejected(tmp_path):
    class CallsGetcwd:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "evil/data.pkl", pickle.dumps({"x": CallsGetcwd()}, protocol=2)
        )

    with pytest.raises(TorchCheckpointError) as error:
        read_torch_state_dict(path)

    assert "getcwd" in str(error.value)


def test_non_dict_rejected(tmp_path):
    path = _save(tmp_path, [torch.ones(2)])

    with pytest.raises(TorchCheckpointError) as error:
        read_torch_state_dict(path)

    assert "list" in str(error.value)


def test_nested_dict_rejected(tmp_path):
    path = _save(tmp_path, {"model": {"weight": torch.ones(2)}})

    with pytest.raises(TorchCheckpointError) as error:
        read_torch_state_dict(path)

    assert "model" in str(error.value)


def test_truncated_storage_rejected(tmp_path):
    source = _save(tmp_path, {"weight": torch.ones(8)})
    path = tmp_path / "truncated.bin"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith("data/0"):
                data = data[:8]
            copy.writestr(info.filename.replace("weights/", "truncated/"), data)

    with pytest.raises(TorchCheckpointError) as error:
        read_torch_state_dict(path)

    assert "truncated" in str(error.value)
