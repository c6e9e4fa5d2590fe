"""The model sizes that the benchmarks compare, their inputs and FLOP counts.

Every implementation builds the same masked-LM RoFormer from a `ModelShape`:
post-LayerNorm, interleaved RoPE with base 10,000, two token types, exact
GELU, an LM head tied to the token embeddings, float32. The masked-LM work is
"predict every position": each implementation computes the full `[B, T, V]`
logits, and the loss is the mean cross-entropy over the masked 15% of
positions, because transformers' RoFormer heads cannot gather masked
positions before the vocabulary projection.
"""

import dataclasses

import numpy as np

MASK_RATE = 0.15  # Share of positions whose token is predicted.
MASK_TOKEN_ID = 4  # Any id below FIRST_TOKEN_ID works; the model has no specials.
FIRST_TOKEN_ID = 5


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The size of one benchmarked model and of its batch."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    vocab_size: int
    seq_len: int
    batch_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (
            f"{self.num_layers} layers, {self.hidden_size:,} hidden, "
            f"{self.num_heads} heads, {self.mlp_dim:,} feed-forward, vocabulary "
            f"{self.vocab_size:,}, sequence {self.seq_len:,}, batch {self.batch_size}"
        )


CONFIG_A = ModelShape("A", 4, 256, 4, 1024, 8000, 512, 8)
# The issue does not give B's vocabulary; it shares A's.
CONFIG_B = ModelShape("B", 8, 512, 8, 2048, 8000, 512, 4)
# Tiny stand-ins with the same structure, for --quick runs and tests.
QUICK_A = ModelShape("A", 2, 32, 2, 64, 128, 32, 2)
QUICK_B = ModelShape("B", 2, 64, 4, 128, 128, 32, 2)


def training_shapes(quick: bool) -> tuple[ModelShape, ...]:
    return (QUICK_A, QUICK_B) if quick else (CONFIG_A, CONFIG_B)


def shape_from_dict(values: dict) -> ModelShape:
    return ModelShape(**values)


def training_flops(shape: ModelShape, num_params: int) -> float:
    """Model FLOPs of one training step: 6 N tokens for the weights, forward
    and backward, plus 12 L D T^2 B for attention scores and weighted sums.

    This is the trainer's count (`roformer_jax.train.perf`), written out here
    so that torch workers need not import JAX. It is the same for every
    implementation (model FLOPs, not the FLOPs that a particular program
    executes), so MFU compares like with like.
    """
    attention = shape.num_layers * shape.hidden_size * shape.seq_len**2
    return (
        6.0 * num_params * shape.tokens_per_step + 12.0 * attention * shape.batch_size
    )


def inference_flops(shape: ModelShape, num_params: int) -> float:
    """Model FLOPs of one forward pass: a third of `training_flops`."""
    return training_flops(shape, num_params) / 3.0


def masked_lm_batch(shape: ModelShape, seed: int = 0) -> dict[str, np.ndarray]:
    """Build one masked-LM batch that every implementation reads.

    Tokens are uniform over the vocabulary above the mask id; MASK_RATE of
    the positions are replaced by MASK_TOKEN_ID and carry weight 1. All
    arrays are `[B, T]`: `inputs`, `targets`, `positions`, `segment_ids`,
    `token_types` (int32) and `weights` (float32).
    """
    rng = np.random.default_rng(seed)
    size = (shape.batch_size, shape.seq_len)
    if shape.vocab_size <= FIRST_TOKEN_ID:
        raise ValueError(
            f"vocab_size={shape.vocab_size} leaves no ordinary tokens; use more "
            f"than {FIRST_TOKEN_ID}."
        )
    targets = rng.integers(FIRST_TOKEN_ID, shape.vocab_size, size=size, dtype=np.int32)
    masked = rng.random(size) < MASK_RATE
    masked[:, 0] = True  # Every row predicts at least one token.
    inputs = np.where(masked, MASK_TOKEN_ID, targets).astype(np.int32)
    positions = np.broadcast_to(np.arange(shape.seq_len, dtype=np.int32), size)
    return {
        "inputs": inputs,
        "targets": targets,
        "positions": np.ascontiguousarray(positions),
        "segment_ids": np.ones(size, np.int32),
        "token_types": np.zeros(size, np.int32),
        "weights": masked.astype(np.float32),
    }
