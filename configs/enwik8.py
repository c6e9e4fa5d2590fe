"""A byte-level causal language model on enwik8, with softmax or linear
attention.

  python -m roformer_jax.main --config=configs/enwik8.py:attention=linear \
      --workdir=runs/enwik8 --config.data.manual_dir=DIR

DIR holds the official `enwik8.zip` (or the extracted `enwik8`). Offline,
`--config.data.source_file=NAME` builds the same kind of dataset from a
MediaWiki XML dump `DIR/NAME` (plain or .bz2), split 90/5/5 like enwik8.

Variants, comma-separated after the colon:

- `size=small` (default; a 2-core CPU trains it in minutes) or
  `size=paper`: 12 layers, 768 hidden, 12 heads, the character-level
  Performer of the RoFormer paper's Enwik8 experiment. `size=1b`: 24
  layers, 2048 hidden, 16 heads, 8192 feed-forward, 1.21B parameters.
  tests/test_sharding.py compiles it for a 512-device mesh, but it has
  not been trained.
- `attention=linear` (default, FAVOR+) or `attention=softmax`;
  `feature_map=elu` for the elu + 1 map.
- `posenc=rope` (default) or `posenc=none`, `learned`, `sinusoidal`.
- `smoke`: a few steps of a tiny model, for tests.

Metrics are in bits per byte.
"""

import ml_collections

from configs import tiny_shakespeare

SIZES = {
    "small": dict(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512),
    "paper": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "1b": dict(hidden_size=2048, num_layers=24, num_heads=16, mlp_dim=8192),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = dict(item.partition("=")[::2] for item in arg.split(",") if item)
    size = variants.pop("size", "small")
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; use one of {sorted(SIZES)}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "causal_lm"
    config.model = tiny_shakespeare.model_group()
    config.model.update(SIZES[size])
    config.model.attention = "linear"  # softmax or linear.
    config.model.linear_feature_map = "favor"  # favor (FAVOR+) or elu (elu + 1).
    config.model.favor_num_features = 64  # M random features per head.
    config.model.favor_redraw_steps = 100  # Redraw period; 0 never redraws.
    config.model.linear_chunk_size = 64  # Tokens per prefix-sum chunk.
    config.model.max_position_embeddings = 1024  # learned encoding only.
    config.data = tiny_shakespeare.data_group()
    config.data.dataset = "enwik8"
    # Offline: a MediaWiki dump in data.manual_dir to use in place of enwik8.
    config.data.source_file = ml_collections.config_dict.placeholder(str)
    config.data.seq_len = 256  # T, bytes per training window.
    config.data.global_batch_size = 16
    config.data.eval_batch_size = 16
    config.optim = tiny_shakespeare.optim_group()
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 30
    config.train = tiny_shakespeare.train_group()
    config.train.num_train_steps = 300
    config.train.eval_every_steps = 50
    config.train.eval_max_batches = 24  # 24 x 16 x 256 bytes of validation.
    config.train.checkpoint_every_steps = 300
    config.mesh = tiny_shakespeare.mesh_group()
    for key, value in variants.items():
        if key == "attention":
            config.model.attention = value
        elif key == "feature_map":
            config.model.linear_feature_map = value
        elif key == "posenc":
            config.model.position_encoding = value
        elif key == "smoke":
            config.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
            config.model.favor_num_features = 16
            config.model.favor_redraw_steps = 2
            config.model.linear_chunk_size = 16
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
        else:
            raise ValueError(
                f"Unknown config variant {key!r}; use size=, attention=, "
                "feature_map=, posenc= or smoke."
            )
    config.lock()
    return config
