"""Position-encoding ablation on Tiny Shakespeare: encodings x seeds x sizes.

  python -m experiments.ablation --config=configs/ablation_tiny_shakespeare.py \
      --root=runs/ablation --config.data.manual_dir=DIR

Every run trains the same small causal model with the same data order and
initialisation seed, changing only the position encoding. Each trained model
is then evaluated at 1, 2, 4 and 8 times the training length and on passkey
retrieval. RoPE is also evaluated with each context-extension rescaling
switched on, at 2 to 16 times the training length. The runner writes CSV,
Markdown and PNG files under `--root`.

Variants: `:smoke` shrinks everything to seconds for tests.

Measured: the full grid (17 labels x 3 seeds) took 55 minutes on a 2-core
CPU machine. docs/ablation/README.md has the command, results and summary.
"""

import ml_collections

from configs import tiny_shakespeare

ENCODINGS = [
    "none",
    "learned",
    "sinusoidal",
    "shaw",
    "transformer_xl",
    "t5",
    "deberta",
    "alibi",
    "xpos",
    "kerple_log",
    "fire",
    "rope",
    "rope_half",
    "rope_partial",
    "rope_learned",
    "rope_learned_per_head",
    "rope_2d",
]


def _encoding_overrides() -> ml_collections.ConfigDict:
    """Labels of the grid that are a registered encoding plus options."""
    overrides = ml_collections.ConfigDict()
    overrides.rope_half = dict(position_encoding="rope", rotary_layout="half")
    overrides.rope_partial = dict(position_encoding="rope", rotary_fraction=0.5)
    overrides.rope_learned_per_head = dict(
        position_encoding="rope_learned", rotary_learned_per_head=True
    )
    # Text positions read as a grid of 16 per row; a baseline for image use.
    overrides.rope_2d = dict(position_encoding="rope_2d", rotary_grid_width=16)
    return overrides


def _sizes() -> ml_collections.ConfigDict:
    sizes = ml_collections.ConfigDict()
    # Model overrides per size name.
    sizes.tiny = ml_collections.ConfigDict(
        dict(hidden_size=128, num_layers=2, num_heads=2, mlp_dim=512)
    )
    return sizes


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = tiny_shakespeare.get_config()
    with config.unlocked():
        config.train.num_train_steps = 300
        config.train.eval_every_steps = 50
        config.train.checkpoint_every_steps = 150
        config.train.log_every_steps = 50
        config.train.tensorboard = False
        config.optim.warmup_steps = 30
        config.data.global_batch_size = 16  # 300 x 16 x 128 = 0.6 passes over train.
        config.data.eval_batch_size = 16
        config.train.peak_flops_per_second = 1e11  # Fixed, so MFU compares across runs.
        config.mesh.data = 1  # One device per run; runs go in sequence.

        config.grid = ml_collections.ConfigDict()
        config.grid.position_encodings = tuple(ENCODINGS)
        config.grid.seeds = (0, 1, 2)
        # Labels without an entry in encoding_overrides name an encoding.
        config.grid.encoding_overrides = _encoding_overrides()
        config.grid.sizes = ("tiny",)  # Names of entries in grid.size_overrides.
        config.grid.size_overrides = _sizes()

        config.extrapolation = ml_collections.ConfigDict()
        config.extrapolation.length_multipliers = (1, 2, 4, 8)  # Of data.seq_len.
        config.extrapolation.rope_rescalings = (
            "linear",
            "ntk",
            "dynamic_ntk",
            "yarn",
            "llama3",
        )
        # RoPE rescalings, with scale factor = multiplier; beyond plain lengths.
        config.extrapolation.rescaled_length_multipliers = (2, 4, 8, 16)
        # Grid labels whose runs are also evaluated with each RoPE rescaling.
        config.extrapolation.rescaled_labels = ("rope",)
        config.extrapolation.max_eval_tokens = 8193  # Validation prefix, for speed.
        config.extrapolation.eval_batch_size = 8
        config.extrapolation.passkey_trials = 10
        config.extrapolation.passkey_digits = 3

        if arg == "smoke":
            config.grid.position_encodings = ("rope", "alibi", "learned")
            config.grid.seeds = (0, 1)
            config.grid.size_overrides.tiny = ml_collections.ConfigDict(
                dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)
            )
            config.data.seq_len = 32
            config.data.global_batch_size = 8
            config.data.eval_batch_size = 8
            config.model.max_position_embeddings = 64
            config.train.num_train_steps = 4
            config.train.eval_every_steps = 2
            config.train.checkpoint_every_steps = 2
            config.train.log_every_steps = 2
            config.train.eval_max_batches = 2
            config.optim.warmup_steps = 1
            config.extrapolation.length_multipliers = (1, 2, 4)
            config.extrapolation.rope_rescalings = ("linear", "yarn")
            config.extrapolation.rescaled_length_multipliers = (2, 8)
            config.extrapolation.max_eval_tokens = 1025
            config.extrapolation.passkey_trials = 2
        elif arg:
            raise ValueError(f"Unknown config variant {arg!r}; use 'smoke' or nothing.")
    config.lock()
    return config
