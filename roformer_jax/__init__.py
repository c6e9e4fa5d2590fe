"""RoFormer and rotary position embedding (RoPE) in JAX and Flax."""
