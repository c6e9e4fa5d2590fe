"""Fine-tuning from a Hugging Face RoFormer directory (`hf_dir=` variant)."""

import json
import pathlib

import jax
import numpy as np
import pytest
import transformers

from configs import finetune as finetune_config
from roformer_jax.interop import load_huggingface
from roformer_jax.train.pretrained import PretrainedMismatchError
from roformer_jax.train.trainer import setup
from roformer_jax.train.validation import ConfigError

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CAIL = DATA / "cail2019_scm" / "input.txt"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
    """A random transformers RoFormerForMaskedLM whose vocabulary contains the
    characters of the CAIL file, saved with its tokenizer."""
    directory = tmp_path_factory.mktemp("hf_mlm")
    text = CAIL.read_text(encoding="utf-8")
    chars = sorted({char for char in text if "\u4e00" <= char <= "\u9fff"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    vocab_path = directory / "vocab.txt"
    vocab_path.write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    config = transformers.RoFormerConfig(
        vocab_size=len(vocab),
        embedding_size=24,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    transformers.set_seed(0)
    transformers.RoFormerForMaskedLM(config).save_pretrained(directory)
    transformers.RoFormerTokenizer(str(vocab_path)).save_pretrained(directory)
    return directory


def hf_finetune_config(hf_dir, **finetune):
    config = finetune_config.get_config(f"task=cail2019_scm,hf_dir={hf_dir},smoke")
    with config.unlocked():
        config.data.corpus_path = str(CAIL)
        config.train.tensorboard = False
        config.finetune.update(finetune)
    return config


def test_variant_copies_the_checkpoint_config(hf_dir):
    config = hf_finetune_config(hf_dir)
    assert config.finetune.init_hf_dir == str(hf_dir)
    assert config.model.embedding_size == 24
    assert config.model.hidden_size == 32
    assert config.model.num_heads == 4
    assert config.model.mlp_dim == 48
    assert config.model.max_position_embeddings == 128
    assert config.model.position_encoding == "rope"


def test_run_starts_from_the_checkpoint_encoder(hf_dir, tmp_path):
    """The fine-tuning state's encoder is the checkpoint's, leaf for leaf,
    and the tokenizer is the checkpoint's vocabulary."""
    run = setup(hf_finetune_config(hf_dir), str(tmp_path))
    expected = load_huggingface(hf_dir, head="encoder")
    ours = jax.tree_util.tree_leaves_with_path(run.state.params["transformer"])
    reference = dict(jax.tree_util.tree_leaves_with_path(expected.params))
    assert len(ours) == len(reference)
    for path, leaf in ours:
        np.testing.assert_array_equal(np.asarray(leaf), reference[path])
    assert run.data.tokenizer.vocab == expected.vocab
    run.checkpointer.close()


def test_changed_model_field_is_named(hf_dir, tmp_path):
    config = hf_finetune_config(hf_dir)
    with config.unlocked():
        config.model.mlp_dim = 64
    with pytest.raises(PretrainedMismatchError, match="model.mlp_dim: checkpoint 48"):
        setup(config, str(tmp_path))


def test_both_sources_are_refused(hf_dir, tmp_path):
    config = hf_finetune_config(hf_dir, init_workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="finetune.init_hf_dir"):
        setup(config, str(tmp_path / "run"))


def test_missing_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        finetune_config.get_config(f"task=cail2019_scm,hf_dir={tmp_path}")


def test_rejected_activation_is_named(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    config["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        finetune_config.get_config(f"task=cail2019_scm,hf_dir={tmp_path}")
