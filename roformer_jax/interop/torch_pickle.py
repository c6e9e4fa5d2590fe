"""Read `torch.save` checkpoints (`pytorch_model.bin`) into numpy without torch.

Since torch 1.6, `torch.save` writes a zip archive whose members all sit under
one folder, `<archive>/`:

- `data.pkl`: a protocol-2 pickle of the saved object. Each tensor in it is a
  call to `torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
  stride, requires_grad, backward_hooks, metadata)`, and each storage is a
  persistent id ``("storage", torch.<Type>Storage, key, location, numel)``.
- `data/<key>`: the raw bytes of storage `key`, `numel` elements of the
  storage's dtype in the byte order that the `byteorder` member names
  (little-endian when it is absent).

The unpickler here resolves only the few globals that a state dict needs,
so a checkpoint cannot run code while it loads. Tensors become read-only
numpy views of their storage, so tensors that share a storage (tied weights,
slices) share memory here too.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import lzma
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np


class TorchCheckpointError(ValueError):
    """A file is not a `torch.save` zip archive of tensors that this reader can load."""


# Errors of zipfile for a damaged archive. BadZipFile is a bad header or CRC,
# EOFError a compressed member cut short, and zlib.error, lzma.LZMAError or
# OSError (from bz2) a corrupt one. NotImplementedError is an unknown
# compression method and RuntimeError an encrypted member. OSError is also a
# seek to a negative offset, and UnicodeDecodeError (a ValueError) a member
# name flagged as UTF-8 that is not.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
# Errors of unpickling invalid data. The pickle documentation names
# UnpicklingError, AttributeError, EOFError, ImportError and IndexError, and
# the allowed globals raise the others when a pickle calls them with
# arguments of the wrong type or value.
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    AttributeError,
    EOFError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
)


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """The `torch.<Name>Storage` class that a persistent id names."""

    name: str
    dtype: np.dtype  # Little-endian dtype of the stored elements.


# Storage classes of the dtypes that model weights and buffers use. bfloat16
# elements are read as uint16 bit patterns and widened to float32.
_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, np.dtype(dtype))
    for name, dtype in {
        "FloatStorage": "<f4",
        "DoubleStorage": "<f8",
        "HalfStorage": "<f2",
        "BFloat16Storage": "<u2",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
        "ShortStorage": "<i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 values, given as their uint16 bit patterns, to float32.

    A bfloat16 value is the upper half of the float32 with the same sign,
    exponent and leading mantissa bits, so the widening is exact.
    """
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """Build the read-only strided view that a pickled tensor describes."""
    del requires_grad, backward_hooks
    if metadata:
        # Set by `torch._utils.get_tensor_metadata` for lazily conjugated or
        # negated views, whose stored values are not the tensor's values.
        raise TorchCheckpointError(
            f"a tensor carries the metadata {metadata!r} (a lazy conjugate or "
            "negative view), which this reader does not apply. Save "
            "tensor.resolve_conj().resolve_neg() instead."
        )
    size = tuple(int(n) for n in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in stride) or storage_offset < 0:
        raise TorchCheckpointError(
            f"a tensor has an invalid layout: size {size}, stride {stride}, "
            f"storage offset {storage_offset}."
        )
    if 0 not in size:
        last = storage_offset + sum(
            (n - 1) * s for n, s in zip(size, stride, strict=True)
        )
        if last >= storage.size:
            raise TorchCheckpointError(
                f"a tensor with size {size}, stride {stride} and storage offset "
                f"{storage_offset} reads past the end of its storage of "
                f"{storage.size} elements. The file is truncated or corrupt."
            )
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )


def _rebuild_parameter(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any
) -> np.ndarray:
    """Unwrap a pickled `torch.nn.Parameter` to its data."""
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): storage for name, storage in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickle `data.pkl`, resolving only the globals in `_ALLOWED_GLOBALS`."""

    def __init__(
        self, data: bytes, load_storage: Callable[[_StorageType, str, int], Any]
    ):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"the pickle references {module}.{name}, which is not a tensor, "
                "storage or OrderedDict global. Only state dicts of tensors load "
                "without torch, because resolving other globals could run code."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise pickle.UnpicklingError(
                f"invalid persistent id {pid!r}; expected "
                "('storage', torch.<Type>Storage, key, location, numel)."
            )
        _, storage_type, key, _, numel = pid
        return self._load_storage(storage_type, str(key), int(numel))


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `torch.save` zip archive of a flat ``{name: tensor}`` dict.

    bfloat16 tensors become float32 (exactly). Other dtypes keep their numpy
    equivalent. The arrays are read-only and may share memory with each other.

    Raises:
      TorchCheckpointError: for a file in the pre-zip format of torch < 1.6, a
        pickle that references anything beyond tensors, storages and
        OrderedDict, a truncated storage, or a saved object that is not a dict
        of tensors keyed by strings. Also for a damaged zip archive or
        pickle. Each message names the file.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise TorchCheckpointError(
            f"{path} is not a zip archive, so it is not in the format that "
            "torch.save writes since torch 1.6. A file from torch < 1.6 (or one "
            "saved with _use_new_zipfile_serialization=False) must be re-saved "
            "with a newer torch, torch.save(torch.load(path), path), or "
            "converted to safetensors."
        )
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as error:
        raise TorchCheckpointError(
            f"{path} is a damaged zip archive ({type(error).__name__}: {error}). "
            "Save the checkpoint again with torch.save, or download it again."
        ) from error
    with archive:
        try:
            state = _unpickle_archive(archive)
        except TorchCheckpointError as error:
            raise TorchCheckpointError(f"{path}: {error}") from error

    if not isinstance(state, dict):
        raise TorchCheckpointError(
            f"{path} contains a {type(state).__name__}, not a state dict. Save "
            "model.state_dict() (a dict of tensors) instead."
        )
    not_arrays = sorted(
        str(name)
        for name, value in state.items()
        if not (isinstance(name, str) and isinstance(value, np.ndarray))
    )
    if not_arrays:
        raise TorchCheckpointError(
            f"{path} is not a flat dict of tensors: the entries {not_arrays} "
            "have a non-string key or a value that is not a tensor."
        )
    return dict(state)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except _ZIP_ERRORS as error:
        raise TorchCheckpointError(
            f"member {name} could not be read ({type(error).__name__}: {error}). "
            "The file is truncated or corrupt."
        ) from error


def _unpickle_archive(archive: zipfile.ZipFile) -> Any:
    members = set(archive.namelist())
    pickles = [
        name
        for name in archive.namelist()
        if name.endswith("/data.pkl") and name.count("/") == 1
    ]
    if len(pickles) != 1:
        raise TorchCheckpointError(
            f"expected one <archive>/data.pkl member, found {pickles}. The zip "
            "archive was not written by torch.save."
        )
    prefix = pickles[0][: -len("data.pkl")]

    # NOTE: the "big" branch is untested, because torch on little-endian
    # machines never writes it.
    byteorder = "little"
    if f"{prefix}byteorder" in members:
        record = _read_member(archive, f"{prefix}byteorder")
        byteorder = record.decode("ascii", errors="replace").strip()
    if byteorder not in ("little", "big"):
        raise TorchCheckpointError(f"invalid byteorder record {byteorder!r}.")

    storages: dict[str, np.ndarray] = {}

    def load_storage(storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
        # Tensors that share a storage pickle the same key, so each storage
        # is read once and every such tensor is a view of that array.
        if key in storages:
            return storages[key]
        member = f"{prefix}data/{key}"
        if member not in members:
            raise TorchCheckpointError(
                f"storage {key} ({storage_type.name}) has no member {member}."
            )
        data = _read_member(archive, member)
        dtype = storage_type.dtype
        if byteorder == "big":
            dtype = dtype.newbyteorder(">")
        if len(data) < numel * dtype.itemsize:
            raise TorchCheckpointError(
                f"storage {key} ({storage_type.name}) has {len(data)} bytes but "
                f"should hold {numel} elements of {dtype.itemsize} bytes. The "
                "file is truncated or corrupt."
            )
        array = np.frombuffer(data, dtype=dtype, count=numel)
        if storage_type.name == "BFloat16Storage":
            array = bfloat16_to_float32(array)
        elif byteorder == "big":
            array = array.astype(dtype.newbyteorder("<"))
        array.flags.writeable = False
        storages[key] = array
        return array

    unpickler = _RestrictedUnpickler(_read_member(archive, pickles[0]), load_storage)
    try:
        return unpickler.load()
    except TorchCheckpointError:
        raise
    except _UNPICKLE_ERRORS as error:
        raise TorchCheckpointError(
            f"{pickles[0]} is not a valid pickle of a state dict "
            f"({type(error).__name__}: {error}). The file is truncated or corrupt."
        ) from error
