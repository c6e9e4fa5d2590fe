"""The model hyperparameters as a frozen dataclass.

Experiment files hold an `ml_collections.ConfigDict`; the model reads this
typed, hashable copy of its `model` group so that Flax modules can take it as
a field and `jax.jit` can treat it as static.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a RoFormer encoder or causal decoder."""

    vocab_size: int
    hidden_size: int = 768  # D
    num_layers: int = 12
    num_heads: int = 12  # N; the head dimension H is hidden_size // num_heads.
    mlp_dim: int = 3072  # F
    embedding_size: int | None = None  # None means hidden_size.
    type_vocab_size: int = 0  # 0 disables token-type embeddings.
    max_position_embeddings: int = 512  # Table size of learned positions.
    position_encoding: str = "rope"
    rotary_base: float = 10000.0
    rotary_layout: str = "interleaved"
    rotary_dim: int | None = None  # None: derive from rotary_fraction.
    rotary_value: bool = False
    causal: bool = False
    pre_layer_norm: bool = False
    layer_norm_epsilon: float = 1e-12
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"  # Compute dtype; parameters stay float32.
    attention: str = "softmax"  # softmax, or linear (kernelised, O(T) memory).
    linear_feature_map: str = "favor"  # linear: favor (FAVOR+) or elu (elu + 1).
    favor_num_features: int = 128  # favor: random features M per head.
    favor_redraw_steps: int = 1000  # favor: redraw every N train steps; 0 never.
    linear_chunk_size: int = 128  # linear, causal: tokens per prefix-sum chunk.
    # Softmax kernel: auto, xla, chunked, cudnn or pallas (see SelfAttention).
    attention_impl: str = "auto"
    attention_chunk_size: int = 512  # chunked: queries and keys per block.
    remat: str = "none"  # Recompute in backward: none, block or dots_saveable.

    # Options of particular position encodings; others ignore them.
    relative_num_buckets: int = (
        32  # t5: total buckets, halved per direction unless causal.
    )
    relative_max_distance: int = 128  # t5, deberta: distances beyond share a bucket.
    relative_clip_distance: int = 16  # shaw: relative distances clipped to +-k.
    fire_mlp_width: int = 32  # fire: hidden width of the distance MLP.
    xpos_scale_base: float = 512.0  # xpos: the decay length scale.
    rotary_fraction: float = 1.0  # rope*: share of H rotated when rotary_dim is None.
    rotary_learned_per_head: bool = False  # rope_learned: one frequency set per head.
    rotary_grid_width: int = 16  # rope_2d: patches per row of the image grid.
    rope_scaling: str = "none"  # none, linear, ntk, dynamic_ntk, yarn or llama3.
    rope_scaling_factor: float = 1.0  # Target length / rope_original_max_length.
    rope_original_max_length: int = 512  # Training length the rescalings extend.
    yarn_beta_fast: float = 32.0  # yarn: rotations above which no interpolation.
    yarn_beta_slow: float = 1.0  # yarn: rotations below which full interpolation.
    llama3_low_freq_factor: float = 1.0  # llama3: wavelength band edges.
    llama3_high_freq_factor: float = 4.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @classmethod
    def from_config(cls, model_config: Any, **overrides: Any) -> "ModelConfig":
        """Build from a `config.model` group; fields it lacks keep defaults."""
        values = dict(model_config)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"Unknown model config fields {unknown}; valid fields are "
                f"{sorted(names)}."
            )
        values.update(overrides)
        return cls(**values)
