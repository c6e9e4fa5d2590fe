r"""Generate text from a trained causal LM, or fill masks with a masked LM.

Usage (from the repository root):

  python -m roformer_jax.sample --workdir=/tmp/shakespeare --prompt="ROMEO:" \
      --max_new_tokens=200 --temperature=0.8 --top_k=40

The latest checkpoint of `--workdir` is loaded; `--hf_dir` loads a Hugging
Face RoFormerForCausalLM or RoFormerForMaskedLM directory instead. A causal model continues
each `--prompt`; a masked LM predicts every mask token ([MASK]) in it.
`--stop` texts must be single tokens; `\n` and `\t` in flags are read as
newline and tab.
"""

import sys
import time

import jax
from absl import app, flags, logging

from roformer_jax import generate
from roformer_jax.train import inference

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Directory of a training run.")
    flags.DEFINE_string(
        "hf_dir", None, "A Hugging Face RoFormer LM directory, instead of --workdir."
    )
    flags.DEFINE_multi_string("prompt", [], "Prompt text; repeat for a batch.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 is greedy.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens; 0: all.")
    flags.DEFINE_float("top_p", 1.0, "Sample within this probability mass; 1: all.")
    flags.DEFINE_multi_string("stop", [], "A one-token text that ends generation.")
    flags.DEFINE_integer("seed", 0, "Random seed of the sampler.")
    flags.DEFINE_bool(
        "use_cache", True, "Decode with the key/value cache (--nouse_cache recomputes)."
    )
    flags.DEFINE_integer(
        "fill_top_k", 5, "Masked LM: candidates shown per mask.", lower_bound=1
    )
    flags.mark_flags_as_mutual_exclusive(["workdir", "hf_dir"], required=True)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _print_fill_mask(loaded: inference.InferenceModel, prompt: str) -> None:
    predictions = generate.fill_mask(
        loaded.model, loaded.params, loaded.codec, prompt, top_k=FLAGS.fill_top_k
    )
    print(f"{prompt}")
    for prediction in predictions:
        candidates = ", ".join(
            f"{token!r} {probability:.3f}"
            for token, probability in zip(
                prediction.tokens, prediction.probabilities, strict=True
            )
        )
        print(f"  mask {prediction.index}: {candidates}")


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs each restore step.
    try:
        _sample()
    except (ValueError, FileNotFoundError) as error:
        # The messages name the bad value and the fix; a traceback adds noise.
        sys.exit(f"{type(error).__name__}: {error}")


def _sample() -> None:
    """Load the model, then fill masks or generate for each --prompt."""
    if not FLAGS.prompt:
        sys.exit("Give at least one --prompt.")
    if FLAGS.hf_dir:
        loaded = inference.load_huggingface_model(FLAGS.hf_dir)
    else:
        loaded = inference.load_workdir(FLAGS.workdir)

    prompts = [_unescape(prompt) for prompt in FLAGS.prompt]
    for index, prompt in enumerate(prompts):
        unknown = loaded.codec.unknown_pieces(prompt)
        if unknown:
            logging.warning(
                "Prompt %d has %d tokens outside the vocabulary; the model sees "
                "them as the unknown token: %r",
                index,
                unknown,
                prompt,
            )

    if loaded.task == "masked_lm":
        for prompt in prompts:
            _print_fill_mask(loaded, prompt)
        return

    sampling = generate.SamplingConfig(
        max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        stop_tokens=tuple(
            loaded.codec.single_token(_unescape(text)) for text in FLAGS.stop
        ),
        pad_id=loaded.codec.pad_id,
    )

    longest = max(len(loaded.codec.encode(prompt)) for prompt in prompts)
    total = longest + sampling.max_new_tokens
    if loaded.trained_length and total > loaded.trained_length:
        logging.warning(
            "Prompt and new tokens reach %d tokens, beyond the %d the model was "
            "trained on; quality past that length is untested.",
            total,
            loaded.trained_length,
        )

    started = time.perf_counter()
    texts = generate.generate_text(
        loaded.model,
        loaded.params,
        loaded.codec,
        prompts,
        jax.random.PRNGKey(FLAGS.seed),
        sampling,
        use_cache=FLAGS.use_cache,
    )
    elapsed = time.perf_counter() - started

    for prompt, text in zip(prompts, texts, strict=True):
        print(prompt + text)
        print("-" * 40)
    source = (
        FLAGS.hf_dir if FLAGS.hf_dir else f"checkpoint {loaded.step} of {FLAGS.workdir}"
    )
    print(
        f"{source}: {len(texts)} samples of up to {sampling.max_new_tokens} tokens "
        f"in {elapsed:.1f} s (compile included).",
        file=sys.stderr,
    )


def run() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
