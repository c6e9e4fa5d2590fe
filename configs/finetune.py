"""Fine-tune a pre-trained encoder on classification, regression or matching.

  python -m roformer_jax.main --config=configs/finetune.py:task=glue/sst2 \
      --workdir=runs/sst2 --config.finetune.init_workdir=runs/mlm_wiki \
      --config.data.manual_dir=../shared/data/glue

Variants, comma-separated after the colon:

- `task=glue/NAME` for NAME in cola, sst2, mrpc, stsb, rte, wnli (TFDS
  `glue/*`, or the files of the GLUE download script in data.manual_dir);
  `task=cail2019_scm` (which of B and C is closer to A; data.corpus_path is
  the JSON lines file); `task=text_file` (your own TSV, CSV or JSON lines
  files in data.corpus_path and data.validation_path, with the columns named
  in data.text_columns and data.label_column).
- `size=NAME` and `posenc=NAME`: as in configs/mlm_pretrain.py; they must
  match the pre-training run.
- `seq_len=N`: the fine-tuning length. RoPE runs at any length; a learned
  position table also needs model.max_position_embeddings=N and
  finetune.extend_position_embeddings=True.
- `hf_dir=PATH`: start from a Hugging Face RoFormer directory (any head;
  its encoder is used): model.* is read from its config.json, the tokenizer
  from its vocab.txt and tokenizer_config.json.
- `smoke`: a few steps of a tiny model, for tests.

Without finetune.init_workdir or finetune.init_hf_dir the encoder starts
from random weights and a vocabulary is trained on the task's training texts.
"""

import dataclasses
import json
import os

import ml_collections

from configs import mlm_pretrain, tiny_shakespeare
from roformer_jax.interop.huggingface import model_config_from_hf

# Per task: sequence length, training steps and batch size for the small
# encoder on a CPU, sized so that a GLUE suite of 2 encodings x 3 seeds fits
# in about an hour on 2 cores. Larger models want more steps and a learning
# rate nearer 2e-5.
TASK_DEFAULTS = {
    "glue/cola": dict(seq_len=64, steps=250, batch_size=32),
    "glue/sst2": dict(seq_len=64, steps=1000, batch_size=32),
    "glue/mrpc": dict(seq_len=96, steps=200, batch_size=32),
    "glue/stsb": dict(seq_len=96, steps=250, batch_size=32),
    "glue/rte": dict(seq_len=128, steps=150, batch_size=32),
    "glue/wnli": dict(seq_len=128, steps=40, batch_size=32),
    # 400 training triplets: 50 steps of 8 would be one epoch. 15 steps keep
    # a 1,024-token run to about 2 minutes on 2 cores.
    "cail2019_scm": dict(seq_len=512, steps=15, batch_size=8),
    "text_file": dict(seq_len=512, steps=1000, batch_size=32),
}


def data_group(task: str) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.dataset = task
    data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data dir.
    # Offline GLUE: the folder with CoLA/, SST-2/, ... as the GLUE script writes.
    data.manual_dir = ml_collections.config_dict.placeholder(str)
    # cail2019_scm: the JSON lines file; text_file: the training file.
    data.corpus_path = ml_collections.config_dict.placeholder(str)
    data.validation_path = ml_collections.config_dict.placeholder(str)  # text_file.
    data.validation_fraction = 0.2  # cail2019_scm: share of triplets held out.
    data.split_seed = 0  # cail2019_scm: fixes the split and B/C swaps.
    data.skip_invalid_rows = False  # Skip and count bad rows instead of failing.
    # text_file columns: one text column, or two for a sentence pair.
    data.file_format = ml_collections.config_dict.placeholder(str)  # None: suffix.
    data.text_columns = ("text",)
    data.label_column = "label"
    data.label_names = ml_collections.config_dict.placeholder(tuple)  # None: found.
    data.regression = False  # text_file: the label is a number to regress.
    data.seq_len = TASK_DEFAULTS[task]["seq_len"]  # T, tokens per sequence.
    data.global_batch_size = TASK_DEFAULTS[task]["batch_size"]
    data.eval_batch_size = 32
    data.prefetch_batches = 2
    return data


def finetune_group() -> ml_collections.ConfigDict:
    finetune = ml_collections.ConfigDict()
    # The --workdir of a masked-LM pre-training run: its latest checkpoint's
    # encoder and its tokenizer are loaded. None trains from scratch.
    finetune.init_workdir = ml_collections.config_dict.placeholder(str)
    # Or a Hugging Face RoFormer directory; set it with the hf_dir= variant.
    finetune.init_hf_dir = ml_collections.config_dict.placeholder(str)
    # Tile a learned position table that is shorter than the model's.
    finetune.extend_position_embeddings = False
    return finetune


def _apply_variant(config: ml_collections.ConfigDict, variants: dict) -> None:
    for key, value in variants.items():
        if key in ("task", "size", "corpus", "smoke"):
            continue  # Read before the groups are built, or applied last.
        if key == "hf_dir":
            _copy_huggingface_config(config, value)
            continue
        if key == "posenc":
            config.model.position_encoding = value
        elif key == "seq_len":
            config.data.seq_len = int(value)
        else:
            raise ValueError(
                f"Unknown config variant {key!r}; use task=, size=, posenc=, "
                "seq_len=, hf_dir= or smoke."
            )
    if "smoke" in variants:
        if "hf_dir" not in variants:
            config.model.update(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
        config.tokenizer.vocab_size = 400
        config.data.seq_len = min(config.data.seq_len, 64)
        config.data.global_batch_size = 8
        config.data.eval_batch_size = 8
        config.train.num_train_steps = 4
        config.train.log_every_steps = 2
        config.train.eval_every_steps = 2
        config.train.eval_max_batches = 2
        config.train.checkpoint_every_steps = 2
        config.train.peak_flops_per_second = 1e11
        config.optim.warmup_steps = 1


def _copy_huggingface_config(config: ml_collections.ConfigDict, directory: str):
    """Set model.* to the encoder of a Hugging Face RoFormer directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise ValueError(
            f"hf_dir={directory!r} has no config.json; point it at a Hugging "
            "Face RoFormer model directory."
        )
    with open(path, encoding="utf-8") as file:
        hf_config = json.load(file)
    model = model_config_from_hf(hf_config, causal=False, source=path)
    for field in dataclasses.fields(model):
        if field.name in config.model and field.name != "vocab_size":
            config.model[field.name] = getattr(model, field.name)
    config.finetune.init_hf_dir = directory


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    variants = mlm_pretrain.parse_variants(arg)
    task = variants.get("task", "glue/sst2")
    if task not in TASK_DEFAULTS:
        raise ValueError(f"Unknown task {task!r}; use one of {sorted(TASK_DEFAULTS)}.")
    defaults = TASK_DEFAULTS[task]
    corpus = "cail2019_scm" if task == "cail2019_scm" else "wikipedia"
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "classification"
    config.model = mlm_pretrain.model_group(variants.get("size", "small"))
    config.tokenizer = mlm_pretrain.tokenizer_group(corpus)
    config.data = data_group(task)
    config.finetune = finetune_group()
    config.optim = tiny_shakespeare.optim_group()
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = max(defaults["steps"] // 10, 1)
    config.optim.decay = "linear"
    config.optim.end_learning_rate_ratio = 0.0
    config.optim.beta2 = 0.999
    config.optim.weight_decay = 0.01
    config.train = tiny_shakespeare.train_group()
    config.train.num_train_steps = defaults["steps"]
    config.train.log_every_steps = 50
    config.train.eval_every_steps = defaults["steps"]
    config.train.checkpoint_every_steps = defaults["steps"]
    config.train.max_checkpoints_to_keep = 1
    config.mesh = tiny_shakespeare.mesh_group()
    _apply_variant(config, variants)
    config.lock()
    return config
