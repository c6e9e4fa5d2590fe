"""Move RoFormer models between roformer_jax and other ecosystems.

- `load_huggingface` and `save_huggingface`: Hugging Face model directories
  of transformers' RoFormer, read and written without torch or transformers.
- `load_tf_checkpoint`: the TensorFlow checkpoints of the original RoFormer
  release (needs TensorFlow).
- `read_torch_state_dict`: `torch.save` archives as numpy arrays, without
  torch.
"""

from roformer_jax.interop.huggingface import (
    HEADS,
    CheckpointFormatError,
    Imported,
    UnrepresentableConfigError,
    UnsupportedArchitectureError,
    WeightMismatchError,
    build_model,
    load_huggingface,
    save_huggingface,
)
from roformer_jax.interop.tf_checkpoint import load_tf_checkpoint
from roformer_jax.interop.torch_pickle import (
    TorchCheckpointError,
    read_torch_state_dict,
)

__all__ = [
    "HEADS",
    "CheckpointFormatError",
    "Imported",
    "TorchCheckpointError",
    "UnrepresentableConfigError",
    "UnsupportedArchitectureError",
    "WeightMismatchError",
    "build_model",
    "load_huggingface",
    "load_tf_checkpoint",
    "read_torch_state_dict",
    "save_huggingface",
]
