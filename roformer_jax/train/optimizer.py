"""AdamW with warmup and decay, gradient clipping and a weight-decay mask."""

import jax
import optax

# Parameter leaf names that receive weight decay: dense kernels and embedding
# tables. Biases and LayerNorm scales and offsets are left undecayed.
DECAYED_PARAMETER_NAMES = ("kernel", "embedding")


def learning_rate_schedule(optim_config, num_train_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.learning_rate`, then cosine or linear decay
    to `learning_rate * end_learning_rate_ratio` at `num_train_steps`."""
    peak = optim_config.learning_rate
    end = peak * optim_config.end_learning_rate_ratio
    warmup_steps = optim_config.warmup_steps
    decay_steps = max(num_train_steps - warmup_steps, 1)
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    if optim_config.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
    elif optim_config.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        raise ValueError(
            f"optim.decay={optim_config.decay!r} is invalid; use 'cosine' or 'linear'."
        )
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _leaf_name(path) -> str:
    names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def weight_decay_mask(params):
    """True for parameters that AdamW should decay."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) in DECAYED_PARAMETER_NAMES, params
    )


def make_optimizer(
    optim_config, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Return the optimizer and its learning-rate schedule."""
    schedule = learning_rate_schedule(optim_config, num_train_steps)
    transforms = []
    if optim_config.grad_clip_norm:
        transforms.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
    transforms.append(
        optax.adamw(
            schedule,
            b1=optim_config.beta1,
            b2=optim_config.beta2,
            eps=optim_config.epsilon,
            weight_decay=optim_config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*transforms), schedule
