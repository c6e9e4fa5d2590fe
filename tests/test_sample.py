"""`python -m roformer_jax.sample` on workdirs the trainer wrote: a
character LM generates, cached and uncached, and a masked LM fills masks."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from configs import mlm_pretrain, tiny_shakespeare
from roformer_jax import generate
from roformer_jax.train import inference
from roformer_jax.train.checkpoint import MissingCheckpointError
from roformer_jax.train.trainer import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def char_lm_workdir(tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("char_lm")
    config = tiny_shakespeare.get_config("smoke")
    with config.unlocked():
        config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
        config.data.manual_dir = str(DATA / "tiny_shakespeare")
        config.train.tensorboard = False
    train_and_evaluate(config, str(workdir))
    return str(workdir)


@pytest.fixture(scope="module")
def masked_lm_workdir(tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("masked_lm")
    config = mlm_pretrain.get_config("corpus=wikipedia,smoke")
    with config.unlocked():
        config.data.corpus_path = str(next((DATA / "enwiki_excerpt").glob("*.bz2")))
        config.train.tensorboard = False
    train_and_evaluate(config, str(workdir))
    return str(workdir)


def run_sample(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "roformer_jax.sample", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_char_lm_samples_from_the_command_line(char_lm_workdir):
    """Greedy output is the prompt and 30 more characters of the corpus's
    vocabulary, and decoding without the cache prints the same text."""
    flags = (
        f"--workdir={char_lm_workdir}",
        "--prompt=ROMEO:",
        "--prompt=O",
        "--max_new_tokens=30",
        "--temperature=0",
    )
    cached = run_sample(*flags)
    assert cached.returncode == 0, cached.stderr
    uncached = run_sample(*flags, "--nouse_cache")
    assert uncached.returncode == 0, uncached.stderr
    assert cached.stdout == uncached.stdout
    samples = cached.stdout.split("-" * 40 + "\n")
    assert samples[0].startswith("ROMEO:")
    assert len(samples[0]) == len("ROMEO:") + 30 + 1  # The text and a newline.
    assert samples[1].startswith("O")


def test_loaded_char_lm_matches_generate(char_lm_workdir):
    """`load_workdir` and `generate_text` decode the ids `generate` returns."""
    loaded = inference.load_workdir(char_lm_workdir)
    assert loaded.task == "causal_lm"
    sampling = generate.SamplingConfig(max_new_tokens=12, temperature=0.0)
    rng = jax.random.PRNGKey(0)
    texts = generate.generate_text(
        loaded.model, loaded.params, loaded.codec, ["KING"], rng, sampling
    )
    ids = generate.generate(
        loaded.model,
        loaded.params,
        generate.left_pad([list(loaded.codec.encode("KING"))]),
        rng,
        sampling,
    ).tokens[0]
    assert texts == [loaded.codec.decode(np.asarray(ids).tolist())]


def test_stop_text_must_be_one_token(char_lm_workdir):
    codec = inference.load_workdir(char_lm_workdir).codec
    assert codec.single_token("\n") == int(codec.encode("\n")[0])
    with pytest.raises(ValueError, match="'no such token' encodes to 13 tokens"):
        codec.single_token("no such token")


def test_stop_text_outside_the_vocabulary_is_refused(char_lm_workdir):
    codec = inference.load_workdir(char_lm_workdir).codec
    with pytest.raises(ValueError, match="'你' is not in the vocabulary"):
        codec.single_token("你")


def test_unknown_prompt_characters_are_counted(char_lm_workdir):
    codec = inference.load_workdir(char_lm_workdir).codec
    assert codec.unknown_pieces("ROMEO") == 0
    assert codec.unknown_pieces("RO你好MEO é") == 3


def test_masked_lm_fills_masks_from_the_command_line(masked_lm_workdir):
    """Two masks give two lines of 3 candidates, none a special token."""
    result = run_sample(
        f"--workdir={masked_lm_workdir}",
        "--prompt=the city is the [MASK] of the [MASK] .",
        "--fill_top_k=3",
    )
    assert result.returncode == 0, result.stderr
    assert "mask 0" not in result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "the city is the [MASK] of the [MASK] ."
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["mask 0", "mask 1"]
    for line in lines[1:]:
        candidates = line.split(":", 1)[1].split(",")
        assert len(candidates) == 3
        assert "[" not in line.split(":", 1)[1]


def test_workdir_without_checkpoint_is_named(tmp_path, char_lm_workdir):
    (tmp_path / "config.json").write_text(
        pathlib.Path(char_lm_workdir, "config.json").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    (tmp_path / "vocab.json").write_text(
        pathlib.Path(char_lm_workdir, "vocab.json").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    with pytest.raises(MissingCheckpointError, match="checkpoints/"):
        inference.load_workdir(str(tmp_path))


def test_classification_workdir_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"task": "glue/sst2"}', encoding="utf-8")
    with pytest.raises(ValueError, match="task='glue/sst2'"):
        inference.load_workdir(str(tmp_path))


# Hugging Face directories.

HF_WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *"天气很好我们去公园散步今明后吧",
    "今天", "公园", "散步", "hello", "world", ",", ".",
]  # fmt: skip


@pytest.fixture(scope="module")
def hf_causal_dir(tmp_path_factory):
    """A random transformers RoFormerForCausalLM and its tokenizer files."""
    directory = tmp_path_factory.mktemp("hf_causal")
    vocab_path = directory / "vocab.txt"
    vocab_path.write_text("".join(f"{word}\n" for word in HF_WORDS), encoding="utf-8")
    config = transformers.RoFormerConfig(
        vocab_size=len(HF_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        is_decoder=True,
        initializer_range=0.3,
    )
    transformers.set_seed(0)
    model = transformers.RoFormerForCausalLM(config).eval()
    model.save_pretrained(directory)
    tokenizer = transformers.RoFormerTokenizer(str(vocab_path))
    tokenizer.save_pretrained(directory)
    return directory, model, tokenizer


def test_hf_causal_lm_generates_like_transformers(hf_causal_dir):
    """Greedy text from `sample --hf_dir` equals transformers' own greedy
    `generate` (with its cache) on the same checkpoint."""
    directory, model, tokenizer = hf_causal_dir
    prompt = "[CLS]今天天气"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model.generate(
            ids, max_new_tokens=10, do_sample=False, pad_token_id=0
        )[0, ids.shape[1] :].tolist()
    result = run_sample(
        f"--hf_dir={directory}",
        f"--prompt={prompt}",
        "--max_new_tokens=10",
        "--temperature=0",
    )
    assert result.returncode == 0, result.stderr
    loaded = inference.load_huggingface_model(str(directory))
    expected_text = prompt + loaded.codec.decode(reference)
    assert result.stdout.split("\n" + "-" * 40)[0] == expected_text


def test_hf_encoder_is_refused(tmp_path):
    config = transformers.RoFormerConfig(
        vocab_size=len(HF_WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.RoFormerModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="with the 'encoder' head"):
        inference.load_huggingface_model(str(tmp_path))
