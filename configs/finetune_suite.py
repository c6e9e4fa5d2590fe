"""Pre-train once per position encoding, then fine-tune every task x seed.

  python -m experiments.finetune_suite --config=configs/finetune_suite.py:glue \
      --root=runs/glue_suite \
      --config.paths.corpus=../shared/data/enwiki_excerpt/FILE.bz2 \
      --config.paths.glue_dir=../shared/data/glue

  python -m experiments.finetune_suite --config=configs/finetune_suite.py:cail \
      --root=runs/cail_suite \
      --config.paths.corpus=../shared/data/cail2019_scm/input.txt

`glue` pre-trains the small English encoder on a Wikipedia dump and
fine-tunes the six GLUE tasks with offline copies; `cail` pre-trains on the
CAIL2019-SCM documents and fine-tunes the triplet matching task at 512 and
1,024 tokens. Add `,smoke` for a seconds-long version used by tests.
"""

import ml_collections

GLUE_TASKS = ("sst2", "cola", "mrpc", "stsb", "rte", "wnli")


def _glue(config: ml_collections.ConfigDict) -> None:
    config.pretrain_arg = "corpus=wikipedia"
    config.pretrain_overrides = {
        "train": {"num_train_steps": 800, "eval_every_steps": 400},
    }
    config.runs = {
        task: {"arg": f"task=glue/{task}", "overrides": {}} for task in GLUE_TASKS
    }


def _cail(config: ml_collections.ConfigDict) -> None:
    config.pretrain_arg = "corpus=cail2019_scm"
    # Pre-training at 512 tokens, as the RoFormer paper does before it
    # fine-tunes at 1,024.
    config.pretrain_overrides = {
        "data": {"seq_len": 512, "global_batch_size": 8},
        "train": {"num_train_steps": 200, "eval_every_steps": 100},
    }
    config.runs = {
        "cail_512": {"arg": "task=cail2019_scm,seq_len=512", "overrides": {}},
        "cail_1024": {"arg": "task=cail2019_scm,seq_len=1024", "overrides": {}},
    }


def _smoke(config: ml_collections.ConfigDict) -> None:
    config.pretrain_arg += ",smoke"
    config.pretrain_overrides = {}
    for run in config.runs.values():
        run["arg"] = run["arg"].split(",seq_len=")[0] + ",smoke"
    config.seeds = (0, 1)


def get_config(arg: str = "glue") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.encodings = ("rope", "learned")  # position_encoding values compared.
    config.seeds = (0, 1, 2)  # Fine-tuning seeds: head init, data order, dropout.
    config.size = "small"  # A size of configs/mlm_pretrain.py.
    # A learned position table shorter than a fine-tuning length is tiled;
    # without this such runs fail with an error that says so.
    config.extend_learned_positions = True
    config.paths = ml_collections.ConfigDict()
    config.paths.corpus = ml_collections.config_dict.placeholder(str)
    config.paths.glue_dir = ml_collections.config_dict.placeholder(str)
    config.paths.tfds_dir = ml_collections.config_dict.placeholder(str)
    variants = [item for item in arg.split(",") if item]
    if not variants or variants[0] not in ("glue", "cail"):
        raise ValueError(
            f"Unknown suite {arg!r}; use 'glue' or 'cail' (plus ',smoke')."
        )
    config.suite = variants[0]
    (_glue if config.suite == "glue" else _cail)(config)
    for variant in variants[1:]:
        if variant != "smoke":
            raise ValueError(f"Unknown variant {variant!r}; only 'smoke' exists.")
        _smoke(config)
    return config
