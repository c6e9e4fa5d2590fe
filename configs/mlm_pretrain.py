"""Masked-language-model pre-training of a bidirectional RoFormer encoder.

  python -m roformer_jax.main --config=configs/mlm_pretrain.py:corpus=wikipedia \
      --workdir=runs/mlm_wiki \
      --config.data.corpus_path=../shared/data/enwiki_excerpt/FILE.bz2

Variants, comma-separated after the colon:

- `size=small` (default; trains on a 2-core CPU in minutes), `size=bert_base`
  (12 layers, 768 hidden, 12 heads, 512 tokens: BERT-base as the RoFormer
  paper pre-trains it) or `size=roformer_chinese_base` (the same size with
  1,536 positions and a jieba word-level vocabulary of 50,000, as the
  released Chinese RoFormer base).
- `corpus=wikipedia` (a MediaWiki XML dump, plain or .bz2; English
  WordPiece) or `corpus=cail2019_scm` (the CAIL2019-SCM JSON lines; Chinese
  characters).
- `posenc=NAME`: any registered position encoding, e.g. `learned`.
- `smoke`: a few steps of a tiny model, for tests.

The tokenizer is trained on the training documents when
`tokenizer.vocab_file` is not set, and stored in WORKDIR/tokenizer.
"""

import ml_collections

from configs import tiny_shakespeare

SIZES = {
    "small": dict(
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        mlp_dim=512,
        max_position_embeddings=512,
    ),
    "bert_base": dict(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        max_position_embeddings=512,
    ),
    "roformer_chinese_base": dict(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        max_position_embeddings=1536,
    ),
}


def model_group(size: str = "small") -> ml_collections.ConfigDict:
    """The encoder of a given size, shared by pre-training and fine-tuning."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; use one of {sorted(SIZES)}.")
    model = tiny_shakespeare.model_group()
    model.causal = False  # A bidirectional encoder.
    model.pre_layer_norm = False  # Post-LN, as BERT and RoFormer.
    model.layer_norm_epsilon = 1e-12
    model.type_vocab_size = 2  # Sentence A and B of a pair.
    model.dropout_rate = 0.1  # The BERT and RoFormer default.
    model.attention_dropout_rate = 0.0  # 0 keeps the fused attention kernel.
    model.rope_original_max_length = 512
    model.update(SIZES[size])
    return model


def tokenizer_group(corpus: str) -> ml_collections.ConfigDict:
    tokenizer = ml_collections.ConfigDict()
    # wordpiece (BERT), chinese_char, or chinese_word (jieba words, then
    # WordPiece for words missing from the vocabulary).
    tokenizer.kind = "chinese_char" if corpus == "cail2019_scm" else "wordpiece"
    tokenizer.lowercase = True
    tokenizer.vocab_size = 8000  # When a vocabulary is trained.
    tokenizer.min_frequency = 2  # Rarer tokens are left out of a trained one.
    # An existing BERT or RoFormer vocab.txt; None trains one on the corpus.
    tokenizer.vocab_file = ml_collections.config_dict.placeholder(str)
    return tokenizer


def data_group(corpus: str) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.dataset = corpus  # wikipedia or cail2019_scm.
    data.corpus_path = ml_collections.config_dict.placeholder(str)
    data.validation_fraction = 0.05  # Share of documents held out.
    data.seq_len = 128  # T, tokens per packed row.
    data.global_batch_size = 32  # B, summed over all devices.
    data.eval_batch_size = 32
    data.prefetch_batches = 2
    data.mask_rate = 0.15  # Share of tokens predicted; 80/10/10 replacement.
    data.whole_word_masking = False  # Mask every piece of a chosen word.
    return data


def _apply_variant(config: ml_collections.ConfigDict, arg: str) -> None:
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key in ("size", "corpus"):
            continue  # Read before the groups are built.
        if key == "posenc":
            config.model.position_encoding = value
        elif key == "smoke":
            config.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
            config.tokenizer.vocab_size = 400
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
                f"Unknown config variant {item!r}; use size=, corpus=, posenc= or "
                "smoke."
            )


def parse_variants(arg: str) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in filter(None, arg.split(",")))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = parse_variants(arg)
    size = variants.get("size", "small")
    corpus = variants.get("corpus", "wikipedia")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "masked_lm"
    config.model = model_group(size)
    config.tokenizer = tokenizer_group(corpus)
    if size == "roformer_chinese_base":
        config.tokenizer.kind = "chinese_word"
        config.tokenizer.vocab_size = 50000
    config.data = data_group(corpus)
    config.optim = tiny_shakespeare.optim_group()
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.beta2 = 0.999
    config.optim.weight_decay = 0.01
    config.train = tiny_shakespeare.train_group()
    config.train.num_train_steps = 1500
    config.train.eval_every_steps = 500
    config.train.checkpoint_every_steps = 500
    config.train.eval_max_batches = 20
    config.mesh = tiny_shakespeare.mesh_group()
    _apply_variant(config, arg)
    config.lock()
    return config
