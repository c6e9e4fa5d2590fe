#!/usr/bin/env bash
# Print tokens/s and MFU of a 125M-parameter causal RoFormer at T = 2,048 in
# bfloat16 on one GPU, against that GPU's measured bfloat16 matmul rate.
#
#   benchmarks/gpu.sh [--quick] [--batch_size=8] [--steps=10] [--record]
#
# Needs a JAX build with GPU support (pip install "jax[cuda12]"). --quick runs
# tiny sizes on any device; --record writes docs/benchmarks/gpu.json for the
# benchmark page. See benchmarks/gpu.py for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu "$@"
