"""A small character-level causal RoFormer on Tiny Shakespeare.

Run (offline, with the text in DIR/input.txt):

  python -m roformer_jax.main --config=configs/tiny_shakespeare.py \
      --workdir=/tmp/shakespeare --config.data.manual_dir=DIR

Variants: `--config=configs/tiny_shakespeare.py:smoke` shrinks everything
for tests; `:posenc=learned` (or sinusoidal, none) swaps the encoding.

Measured result: see docs/benchmarks.md for the validation curve, wall-clock
and throughput of this config on a 2-core CPU machine.
"""

import ml_collections


def model_group() -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.hidden_size = 192  # D
    model.num_layers = 4
    model.num_heads = 3  # N; head dim 64.
    model.mlp_dim = 768  # F
    model.embedding_size = ml_collections.config_dict.placeholder(int)  # None: D.
    model.type_vocab_size = 0  # No token types in language modelling.
    model.max_position_embeddings = 512  # Used by the `learned` encoding only.
    model.position_encoding = (
        "rope"  # Any name in roformer_jax.positions.registered_names().
    )
    model.rotary_base = 10000.0
    model.rotary_layout = "interleaved"  # RoFormer pairs (2i, 2i+1); or "half".
    model.rotary_dim = ml_collections.config_dict.placeholder(int)  # None: whole head.
    model.rotary_value = False  # Rotate values too, as RoFormer's option does.
    model.causal = True  # Decoder-only language model.
    model.pre_layer_norm = True  # Pre-LN trains faster at high learning rates.
    model.layer_norm_epsilon = 1e-6
    model.dropout_rate = (
        0.0  # A 13-minute run makes about 5 passes over the data, too few to overfit.
    )
    model.attention_dropout_rate = 0.0  # 0 lets attention use the fused kernel.
    model.initializer_range = 0.02
    model.dtype = "float32"  # Compute dtype; parameters stay float32.
    model.attention = "softmax"  # softmax, or linear (kernelised, O(T) memory).
    model.linear_feature_map = "favor"  # linear: favor (FAVOR+) or elu (elu + 1).
    model.favor_num_features = 128  # favor: random features M per head.
    model.favor_redraw_steps = 1000  # favor: redraw every N train steps; 0 never.
    model.linear_chunk_size = 128  # linear, causal: tokens per prefix-sum chunk.
    # Softmax kernel. auto takes cudnn on a GPU, pallas on a TPU, else xla.
    # chunked uses O(T) memory and rejects bias encodings and attention dropout.
    # cudnn and pallas run xla, with one warning, where they cannot run.
    model.attention_impl = "auto"
    model.attention_chunk_size = 512  # chunked: queries and keys per block.
    model.remat = "none"  # Recompute in backward: none, block or dots_saveable.
    # Options that only some position encodings read.
    model.relative_num_buckets = (
        32  # t5: total buckets, halved per direction unless causal.
    )
    model.relative_max_distance = 128  # t5, deberta: farther distances share a bucket.
    model.relative_clip_distance = 16  # shaw: distances clipped to +-k.
    model.fire_mlp_width = 32  # fire: hidden width of the distance MLP.
    model.xpos_scale_base = 512.0  # xpos: decay length scale.
    model.rotary_fraction = (
        1.0  # rope*: share of the head rotated when rotary_dim is None.
    )
    model.rotary_learned_per_head = False  # rope_learned: one frequency set per head.
    model.rotary_grid_width = 16  # rope_2d: patches per grid row.
    model.rope_scaling = "none"  # none, linear, ntk, dynamic_ntk, yarn or llama3.
    model.rope_scaling_factor = 1.0  # Target length / rope_original_max_length.
    model.rope_original_max_length = 128  # Training length that a rescaling extends.
    model.yarn_beta_fast = 32.0  # yarn: rotations above which nothing is interpolated.
    model.yarn_beta_slow = 1.0  # yarn: rotations below which all is interpolated.
    model.llama3_low_freq_factor = 1.0  # llama3: band edges, as wavelength ratios.
    model.llama3_high_freq_factor = 4.0
    return model


def data_group() -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.dataset = "tiny_shakespeare"
    data.data_dir = ml_collections.config_dict.placeholder(
        str
    )  # TFDS data dir; None: TFDS default.
    data.manual_dir = ml_collections.config_dict.placeholder(
        str
    )  # Folder with input.txt, for offline use.
    data.seq_len = 128  # T, characters per training window.
    data.global_batch_size = 32  # B, summed over all devices.
    data.eval_batch_size = 32
    data.prefetch_batches = 2  # Batches built ahead on a background thread.
    return data


def optim_group() -> ml_collections.ConfigDict:
    optim = ml_collections.ConfigDict()
    optim.learning_rate = 3e-3  # Peak, reached after warmup.
    optim.warmup_steps = 100
    optim.decay = "cosine"  # cosine or linear, to end_learning_rate_ratio.
    optim.end_learning_rate_ratio = 0.1
    optim.weight_decay = 0.1  # Decoupled (AdamW); kernels and embeddings only.
    optim.beta1 = 0.9
    optim.beta2 = 0.99
    optim.epsilon = 1e-8
    optim.grad_clip_norm = 1.0  # Global norm; 0 disables clipping.
    return optim


def train_group() -> ml_collections.ConfigDict:
    train = ml_collections.ConfigDict()
    train.num_train_steps = 1200
    train.log_every_steps = 50
    train.eval_every_steps = 200
    train.eval_max_batches = ml_collections.config_dict.placeholder(
        int
    )  # None: whole split.
    train.checkpoint_every_steps = 400
    train.max_checkpoints_to_keep = 3
    # Non-finite loss or gradients: "stop" with an error naming the step, or
    # "skip" the update, at most max_consecutive_skips steps in a row.
    train.nonfinite_policy = "stop"
    train.max_consecutive_skips = 3
    train.tensorboard = True  # Also write TensorBoard event files.
    train.peak_flops_per_second = ml_collections.config_dict.placeholder(
        float
    )  # None: measure.
    return train


def mesh_group() -> ml_collections.ConfigDict:
    mesh = ml_collections.ConfigDict()
    mesh.data = -1  # -1 takes every device the other axes leave.
    mesh.fsdp = 1
    mesh.tensor = 1
    # Logical axis -> mesh axis (None replicates).
    mesh.axis_rules = [
        ["batch", ["data", "fsdp"]],
        ["embed", "fsdp"],
        ["heads", "tensor"],
        ["mlp", "tensor"],
        ["vocab", "tensor"],
        ["kv", None],
        ["length", None],
    ]
    return mesh


def _apply_variant(config: ml_collections.ConfigDict, arg: str) -> None:
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key == "smoke":
            config.model.hidden_size = 32
            config.model.num_layers = 2
            config.model.num_heads = 2
            config.model.mlp_dim = 64
            config.model.dropout_rate = (
                0.1  # Exercises the dropout keys in resume tests.
            )
            config.data.seq_len = 32
            config.data.global_batch_size = 8
            config.data.eval_batch_size = 8
            config.train.num_train_steps = 4
            config.train.log_every_steps = 2
            config.train.eval_every_steps = 2
            config.train.eval_max_batches = 2
            config.train.checkpoint_every_steps = 2
            config.train.peak_flops_per_second = 1e11
            config.optim.warmup_steps = 1
        elif key == "posenc":
            config.model.position_encoding = value
        else:
            raise ValueError(
                f"Unknown config variant {item!r}; use 'smoke' or 'posenc=NAME'."
            )


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Parameter init, data order and dropout all derive from it.
    config.task = "causal_lm"
    config.model = model_group()
    config.data = data_group()
    config.optim = optim_group()
    config.train = train_group()
    config.mesh = mesh_group()
    _apply_variant(config, arg)
    config.lock()
    return config
