"""Benchmark sessions that run transformers' PyTorch RoFormer on the CPU.

This module imports no JAX, so a torch worker's memory contains torch alone.
The model's config and the AdamW settings come from our session's `info`
(`jax_sessions.hf_config_dict`, `jax_sessions.optimizer_settings`), so both
sides build the same model.
"""

import os
import time

import numpy as np
import torch

from benchmarks import shapes

SEED = 0
MODES = ("train", "infer")


def configure_threads() -> int:
    """Use one intra-op thread per CPU this process may run on, and one
    inter-op thread (a single model runs one op at a time)."""
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # Already set, or parallel work already ran in this process.
    return threads


THREADS = configure_threads()


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrix and embedding weights, not biases or LayerNorm, as ours
    decays Flax `kernel` and `embedding` leaves only."""
    decayed, undecayed = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue  # The fixed sinusoid table.
        if name.endswith(".weight") and "LayerNorm" not in name:
            decayed.append(parameter)
        else:
            undecayed.append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]


class TorchLanguageModel:
    """`RoFormerForMaskedLM` in float32: one training step (forward, backward,
    gradient clipping, fused `torch.optim.AdamW`) or one forward pass under
    `torch.inference_mode()` per run.

    The loss is transformers' own: cross-entropy over the full `[B, T, V]`
    logits with label -100 on unmasked positions, the same mean over masked
    tokens that ours computes.
    """

    def __init__(self, shape: dict, hf_config: dict, optimizer: dict, mode: str):
        from transformers import RoFormerConfig, RoFormerForMaskedLM

        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid; use one of {MODES}.")
        self.shape = shapes.shape_from_dict(shape)
        torch.manual_seed(SEED)
        self.model = RoFormerForMaskedLM(RoFormerConfig(**hf_config))
        batch = shapes.masked_lm_batch(self.shape, SEED)
        self.inputs = {
            "input_ids": torch.from_numpy(batch["inputs"].astype(np.int64)),
            "attention_mask": torch.from_numpy(batch["segment_ids"].astype(np.int64)),
            "token_type_ids": torch.from_numpy(batch["token_types"].astype(np.int64)),
        }
        labels = np.where(batch["weights"] > 0, batch["targets"], -100)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self._mode = mode
        self._clip = optimizer["grad_clip_norm"]
        if mode == "train":
            self.model.train()
            self.optimizer = torch.optim.AdamW(
                _parameter_groups(self.model, optimizer["weight_decay"]),
                lr=optimizer["learning_rate"],
                betas=(optimizer["beta1"], optimizer["beta2"]),
                eps=optimizer["epsilon"],
                fused=True,
            )
        else:
            self.model.eval()
        self.info = {
            "num_params": sum(
                parameter.numel()
                for parameter in self.model.parameters()
                if parameter.requires_grad
            ),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "optimizer": "torch.optim.AdamW(fused=True)" if mode == "train" else None,
        }

    def _train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(**self.inputs, labels=self.labels).loss
        loss.backward()
        if self._clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._clip)
        self.optimizer.step()

    def _forward(self) -> None:
        with torch.inference_mode():
            self.model(**self.inputs)

    def run(self) -> dict:
        if self._mode == "train":
            return {"seconds": _time(self._train_step)}
        return {"seconds": _time(self._forward)}


class TorchMatmul:
    """One float32 `size x size` matmul; 2 size^3 FLOPs per run."""

    def __init__(self, size: int = 2048):
        generator = torch.Generator().manual_seed(SEED)
        self.a = torch.randn(size, size, generator=generator)
        self.b = torch.randn(size, size, generator=generator)
        self.info = {"flops_per_run": 2.0 * size**3, "threads": torch.get_num_threads()}

    def run(self) -> dict:
        return {"seconds": _time(lambda: torch.mm(self.a, self.b))}


def sinusoidal_table(length: int, head_dim: int) -> torch.Tensor:
    """Return the `[1, 1, T, H]` table that PyTorch RoFormer passes to
    `apply_rotary_position_embeddings`: sines of the H/2 angles, then cosines,
    with angle ``t * 10000 ** (-2j / H)``."""
    positions = np.arange(length, dtype=np.float64)[:, None]
    frequencies = 10000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions * frequencies
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    return torch.from_numpy(table.astype(np.float32))[None, None]


def hf_torch_rotate(table, q, k):
    from transformers.models.roformer.modeling_roformer import RoFormerSelfAttention

    return RoFormerSelfAttention.apply_rotary_position_embeddings(table, q, k)


class TorchRotary:
    """`RoFormerSelfAttention.apply_rotary_position_embeddings` on q and k.

    `shape` is `[B, T, N, H]`, and the tensors are laid out `[B, N, T, H]`,
    the layout in which PyTorch RoFormer passes them to the function.
    """

    def __init__(self, shape: list):
        batch, length, heads, head_dim = shape
        generator = torch.Generator().manual_seed(SEED)
        self.q = torch.randn(batch, heads, length, head_dim, generator=generator)
        self.k = torch.randn(batch, heads, length, head_dim, generator=generator)
        self.table = sinusoidal_table(length, head_dim)
        self.info = {"table_bytes": self.table.numel() * 4}

    def run(self) -> dict:
        with torch.inference_mode():
            return {
                "seconds": _time(lambda: hf_torch_rotate(self.table, self.q, self.k))
            }


SESSIONS = {
    "TorchLanguageModel": TorchLanguageModel,
    "TorchMatmul": TorchMatmul,
    "TorchRotary": TorchRotary,
}
