"""Fuzz tests of the readers of user files: damaged input raises the project's errors.

Every reader of a file that a user points the project at gets damaged files.
They are random bytes, prefixes of a valid file, a valid file with a few bytes
replaced, an empty file, invalid UTF-8 and one line of 1 to 5 MiB. JSON files
also get values of the wrong type. Each call must either return the documented
type or raise the module's own error class (a ValueError subclass) with the
file's path in the message. Any other exception fails the test with its
traceback.

Hypothesis runs derandomized, so every run draws the same examples. Because
random draws can miss a case, the hard cases (empty file, long lines, invalid
UTF-8) also run as plain parametrized tests for every file of every reader.
Example-based regression tests for the leaks that the fuzzing found follow.
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import io
import json
import tempfile
import xml.sax.saxutils
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roformer_jax.data.corpora import (
    CorpusError,
    read_cail_documents,
    read_wikipedia_documents,
)
from roformer_jax.data.enwik8 import load_byte_splits
from roformer_jax.data.text_classification import (
    DataFileError,
    TextExample,
    read_cail_triplets,
    read_labelled_file,
)
from roformer_jax.data.tiny_shakespeare import SourceFileError, load_text_splits
from roformer_jax.data.tokenizers import (
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    TokenizerSpec,
)
from roformer_jax.data.vocab import CharVocab, VocabFileError
from roformer_jax.interop.huggingface import (
    CheckpointFormatError,
    Imported,
    UnsupportedArchitectureError,
    WeightMismatchError,
    expected_param_shapes,
    load_huggingface,
    read_safetensors,
    save_huggingface,
)
from roformer_jax.interop.torch_pickle import (
    TorchCheckpointError,
    read_torch_state_dict,
)
from roformer_jax.model_config import ModelConfig

# Each example writes its files into a fresh directory under pytest's tmp_path.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# TFDS prepares a dataset for every example that it reads, in about 0.5 s.
FUZZ_TFDS = settings(FUZZ, max_examples=10)

MIB = 1 << 20
# Bytes that fill the long lines, by name. Brackets and braces make deeply
# nested JSON, digits an integer of millions of digits, and tabs and commas
# empty TSV and CSV fields.
LONG_LINE_FILLS = {
    "letters": b"a",
    "invalid_utf8": b"\xff",
    "brackets": b"[",
    "braces": b"{",
    "digits": b"1",
    "quotes": b'"',
    "tabs": b"\t",
    "commas": b",",
    "nul": b"\x00",
}
# Byte sequences that are not valid UTF-8, by name.
INVALID_UTF8 = {
    "continuation_byte": b"\x80",
    "truncated_sequence": b"\xc3",
    "surrogate": b"\xed\xa0\x80",
    "overlong": b"\xc0\xaf",
    "bytes_ff_fe": b"\xff\xfe",
}


# --- Valid files ----------------------------------------------------------------


def _wikipedia_dump(article_text: str) -> bytes:
    """Return a MediaWiki XML dump with one article and one talk page."""
    escaped = xml.sax.saxutils.escape(article_text)
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n'
        "  <page>\n    <title>Alpha</title>\n    <ns>0</ns>\n    <id>1</id>\n"
        f"    <revision>\n      <text>{escaped}</text>\n    </revision>\n"
        "  </page>\n"
        "  <page>\n    <title>Talk:Alpha</title>\n    <ns>1</ns>\n    <id>2</id>\n"
        "    <revision>\n      <text>Talk about '''Alpha'''.</text>\n"
        "    </revision>\n  </page>\n"
        "</mediawiki>\n"
    ).encode()


WIKI_DUMP = _wikipedia_dump(
    "'''Alpha''' is the first letter of the [[Greek alphabet|Greek]] alphabet."
    "{{Infobox letter|name=Alpha}}\n== History ==\nIt comes from aleph.<ref>A "
    "source.</ref> &amp; more [http://example.org text].\n[[Category:Letters]]"
)
CAIL_LINES = (
    json.dumps(
        {"A": "原告李某诉称，被告借款。", "B": "被告夏某借款。", "C": "合同纠纷。"}
    )
    + "\n"
    + json.dumps({"A": 'He said "no".', "B": "𠀀𪚥 café", "C": "e\u0301", "label": 1})
    + "\n"
).encode("utf-8")
TSV_FILE = 'sentence\tlabel\nA "good" film .\t1\ncafé au lait\t0\n'.encode()
CSV_FILE = b'sentence,label\n"Hello, world",1\n"two\nlines ""quoted""",0\n'
JSONL_FILE = (
    json.dumps({"sentence": "A good film .", "label": 1})
    + "\n"
    + json.dumps({"sentence": "中文", "label": "0"})
    + "\n"
).encode("utf-8")
SHAKESPEARE_TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
TOKENS = [*SPECIAL_TOKENS, "a", "b", "##b", "hello", "中"]
SHARD_NAME = "model-00001-of-00001.safetensors"


def _zip_archive(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return buffer.getvalue()


def _files_written_by(write: Callable[[Path], None]) -> dict[str, bytes]:
    """Return the files that `write(directory)` creates in an empty directory."""
    with tempfile.TemporaryDirectory() as directory:
        write(Path(directory))
        return {path.name: path.read_bytes() for path in Path(directory).iterdir()}


def _saved_tokenizer() -> dict[str, bytes]:
    tokenizer = Tokenizer(TOKENS, TokenizerSpec("wordpiece"))
    return _files_written_by(tokenizer.save)


def _huggingface_tokenizer() -> dict[str, bytes]:
    tokenizer = Tokenizer(TOKENS, TokenizerSpec("wordpiece"))
    return {
        **_files_written_by(tokenizer.save_huggingface),
        "added_tokens.json": json.dumps({"[MASK]": 4}).encode("utf-8"),
        "config.json": json.dumps({"model_type": "bert"}).encode("utf-8"),
    }


def _char_vocab() -> dict[str, bytes]:
    vocab = CharVocab.from_text("hello, world 中")
    return _files_written_by(lambda directory: vocab.save(directory / "vocab.json"))


def _torch_archive() -> dict[str, bytes]:
    state = {
        "weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "bias": torch.ones(3, dtype=torch.bfloat16),
        "steps": torch.tensor([7], dtype=torch.int64),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {"pytorch_model.bin": buffer.getvalue()}


@functools.cache
def _huggingface_model() -> dict[str, bytes]:
    """Return the files of a tiny RoFormer encoder that save_huggingface wrote."""
    config = ModelConfig(
        vocab_size=16,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        mlp_dim=16,
        type_vocab_size=2,
        max_position_embeddings=16,
    )
    rng = np.random.default_rng(0)
    params: dict[str, Any] = {}
    for param_path, shape in expected_param_shapes(config, "encoder").items():
        node = params
        for key in param_path[:-1]:
            node = node.setdefault(key, {})
        node[param_path[-1]] = rng.normal(size=shape).astype(np.float32)

    vocab = [*SPECIAL_TOKENS, *(f"token{i}" for i in range(11))]
    return _files_written_by(
        lambda directory: save_huggingface(
            directory, config, params, "encoder", vocab=vocab
        )
    )


def _sharded_huggingface_model() -> dict[str, bytes]:
    """Return the tiny model with its weights in one shard that an index lists."""
    files = dict(_huggingface_model())
    weights = files.pop("model.safetensors")
    header_size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8 : 8 + header_size])
    names = [name for name in header if name != "__metadata__"]
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, SHARD_NAME)}
    files[SHARD_NAME] = weights
    files["model.safetensors.index.json"] = json.dumps(index).encode("utf-8")
    return files


# --- Readers ----------------------------------------------------------------------


def _is_list_of_str(result: Any) -> bool:
    return isinstance(result, list) and all(isinstance(item, str) for item in result)


def _is_labelled_examples(result: Any) -> bool:
    examples, label_names = result
    return all(isinstance(example, TextExample) for example in examples) and all(
        isinstance(name, str) for name in label_names
    )


def _is_triplet_list(result: Any) -> bool:
    return isinstance(result, list) and all(
        isinstance(triplet, tuple) and len(triplet) == 3 for triplet in result
    )


def _is_split_dict(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == {"train", "validation", "test"}


def _labelled_reader(
    name: str, *, regression: bool, skip: bool
) -> Callable[[Path], Any]:
    return lambda directory: read_labelled_file(
        str(directory / name),
        file_format=None,
        text_columns=["sentence"],
        label_column="label",
        regression=regression,
        skip_invalid_rows=skip,
    )


@dataclasses.dataclass(frozen=True)
class Reader:
    """A reader under test and the directory of valid files that it reads.

    Attributes:
      files: returns the valid files, by path relative to the directory.
      targets: the files to damage, one per example.
      read: reads the directory.
      error: the error class the reader documents.
      check: returns whether a result has the documented type.
      names_directory: accept a message that names the directory instead of
        the damaged file. A model directory reports weights that disagree with
        config.json by naming the directory, whichever of the two files was
        damaged.
    """

    files: Callable[[], dict[str, bytes]]
    targets: tuple[str, ...]
    read: Callable[[Path], Any]
    error: type[ValueError]
    check: Callable[[Any], bool]
    names_directory: bool = False


READERS = {
    "wikipedia_xml": Reader(
        lambda: {"dump.xml": WIKI_DUMP},
        ("dump.xml",),
        lambda directory: read_wikipedia_documents(directory / "dump.xml", min_chars=0),
        CorpusError,
        _is_list_of_str,
    ),
    "wikipedia_bz2": Reader(
        lambda: {"dump.xml.bz2": bz2.compress(WIKI_DUMP)},
        ("dump.xml.bz2",),
        lambda directory: read_wikipedia_documents(
            directory / "dump.xml.bz2", min_chars=0
        ),
        CorpusError,
        _is_list_of_str,
    ),
    "cail_documents": Reader(
        lambda: {"input.jsonl": CAIL_LINES},
        ("input.jsonl",),
        lambda directory: read_cail_documents(directory / "input.jsonl"),
        CorpusError,
        _is_list_of_str,
    ),
    "cail_triplets": Reader(
        lambda: {"input.jsonl": CAIL_LINES},
        ("input.jsonl",),
        lambda directory: read_cail_triplets(str(directory / "input.jsonl")),
        DataFileError,
        _is_triplet_list,
    ),
    "cail_triplets_skipping": Reader(
        lambda: {"input.jsonl": CAIL_LINES},
        ("input.jsonl",),
        lambda directory: read_cail_triplets(
            str(directory / "input.jsonl"), skip_invalid_rows=True
        ),
        DataFileError,
        _is_triplet_list,
    ),
    # Each format reads classification labels with invalid rows raising and
    # regression labels with invalid rows skipped.
    **{
        f"labelled_{name.split('.')[1]}_{mode}": Reader(
            functools.partial(dict, {name: valid}),
            (name,),
            _labelled_reader(name, regression=mode == "regression", skip=skip),
            DataFileError,
            _is_labelled_examples,
        )
        for name, valid in (
            ("train.tsv", TSV_FILE),
            ("train.csv", CSV_FILE),
            ("train.jsonl", JSONL_FILE),
        )
        for mode, skip in (("classification", False), ("regression", True))
    },
    "tokenizer_load": Reader(
        _saved_tokenizer,
        ("vocab.txt", "tokenizer.json"),
        Tokenizer.load,
        TokenizerError,
        lambda result: isinstance(result, Tokenizer),
    ),
    "tokenizer_vocab_file": Reader(
        _saved_tokenizer,
        ("vocab.txt",),
        lambda directory: Tokenizer.from_vocab_file(
            directory / "vocab.txt", TokenizerSpec("chinese_char")
        ),
        TokenizerError,
        lambda result: isinstance(result, Tokenizer),
    ),
    "tokenizer_huggingface": Reader(
        _huggingface_tokenizer,
        (
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "config.json",
        ),
        Tokenizer.from_huggingface,
        TokenizerError,
        lambda result: isinstance(result, Tokenizer),
    ),
    "char_vocab": Reader(
        _char_vocab,
        ("vocab.json",),
        lambda directory: CharVocab.load(directory / "vocab.json"),
        VocabFileError,
        lambda result: isinstance(result, CharVocab),
    ),
    "torch_state_dict": Reader(
        _torch_archive,
        ("pytorch_model.bin",),
        lambda directory: read_torch_state_dict(directory / "pytorch_model.bin"),
        TorchCheckpointError,
        lambda result: isinstance(result, dict),
    ),
    "safetensors": Reader(
        lambda: {"model.safetensors": _huggingface_model()["model.safetensors"]},
        ("model.safetensors",),
        lambda directory: read_safetensors(directory / "model.safetensors"),
        CheckpointFormatError,
        lambda result: isinstance(result, dict),
    ),
    "huggingface_model": Reader(
        _huggingface_model,
        ("config.json", "model.safetensors", "vocab.txt"),
        load_huggingface,
        CheckpointFormatError,
        lambda result: isinstance(result, Imported),
        names_directory=True,
    ),
    "huggingface_sharded_model": Reader(
        _sharded_huggingface_model,
        ("model.safetensors.index.json", SHARD_NAME),
        load_huggingface,
        CheckpointFormatError,
        lambda result: isinstance(result, Imported),
        names_directory=True,
    ),
}
# Readers that prepare a TFDS dataset, each example in its own data dir.
TFDS_READERS = {
    "tiny_shakespeare": Reader(
        lambda: {"manual/input.txt": SHAKESPEARE_TEXT},
        ("manual/input.txt",),
        lambda directory: load_text_splits(
            data_dir=str(directory / "tfds"), manual_dir=str(directory / "manual")
        ),
        SourceFileError,
        _is_split_dict,
    ),
    # The archive contains fewer than 10^8 bytes, so every call raises.
    "enwik8_zip": Reader(
        lambda: {"manual/enwik8.zip": _zip_archive("enwik8", WIKI_DUMP)},
        ("manual/enwik8.zip",),
        lambda directory: load_byte_splits(
            data_dir=str(directory / "tfds"), manual_dir=str(directory / "manual")
        ),
        SourceFileError,
        lambda result: False,
    ),
    "enwik8_excerpt_bz2": Reader(
        lambda: {"manual/dump.xml.bz2": bz2.compress(WIKI_DUMP)},
        ("manual/dump.xml.bz2",),
        lambda directory: load_byte_splits(
            data_dir=str(directory / "tfds"),
            manual_dir=str(directory / "manual"),
            source_file="dump.xml.bz2",
        ),
        SourceFileError,
        _is_split_dict,
    ),
}
ALL_READERS = {**READERS, **TFDS_READERS}


# --- Strategies -------------------------------------------------------------------


def _replace_bytes(valid: bytes, replacements: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid)
    for index, value in replacements:
        data[index % len(data)] = value
    return bytes(data)


def _insert(valid: bytes, index: int, inserted: bytes) -> bytes:
    index = min(index, len(valid))
    return valid[:index] + inserted + valid[index:]


def _long_line(fill: bytes, size: int) -> bytes:
    return (fill * (size // len(fill) + 1))[:size]


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Damaged versions of the file contents `valid`, and `valid` itself."""
    return st.one_of(
        st.just(b""),
        st.binary(max_size=512),
        st.integers(0, len(valid)).map(lambda size: valid[:size]),
        st.lists(
            st.tuples(st.integers(0, len(valid)), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        ).map(lambda replacements: _replace_bytes(valid, replacements)),
        st.builds(
            lambda index, inserted: _insert(valid, index, inserted),
            st.integers(0, len(valid)),
            st.sampled_from(list(INVALID_UTF8.values())),
        ),
        st.builds(
            _long_line,
            st.sampled_from(list(LONG_LINE_FILLS.values())),
            st.integers(MIB, 5 * MIB),
        ),
    )


# JSON values of every type, with small integers so that a wrong value in a
# size field does not ask for a model of billions of parameters.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def wrong_types(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """JSON documents: `valid` with some values of other types, or another value."""
    fields = {
        key: st.one_of(st.just(value), json_values) for key, value in valid.items()
    }
    documents = st.one_of(
        st.fixed_dictionaries(fields),
        json_values,
        st.fixed_dictionaries(fields).map(lambda document: [document]),
    )
    return documents.map(lambda document: json.dumps(document).encode("utf-8"))


def file_contents(name: str, valid: bytes) -> st.SearchStrategy[bytes]:
    """Contents for the file `name`: damaged bytes, and wrong types for JSON."""
    if name.endswith(".json"):
        return st.one_of(damaged(valid), wrong_types(json.loads(valid)))
    if name.endswith(".jsonl"):
        first_record = json.loads(valid.split(b"\n")[0])
        extra_lines = st.lists(wrong_types(first_record), min_size=1, max_size=3)
        return st.one_of(
            damaged(valid),
            extra_lines.map(lambda lines: valid + b"\n".join(lines) + b"\n"),
        )
    return damaged(valid)


def hard_case_contents(case: str, valid: bytes) -> bytes:
    """Return the contents of the hard case named `case` for the valid file `valid`.

    The cases are an empty file, a line of 1 MiB of each LONG_LINE_FILLS
    entry, and `valid` with an INVALID_UTF8 sequence inserted in the middle.
    """
    if case == "empty":
        return b""
    kind, _, name = case.partition(":")
    if kind == "long_line":
        return _long_line(LONG_LINE_FILLS[name], MIB)
    return _insert(valid, len(valid) // 2, INVALID_UTF8[name])


HARD_CASES = [
    "empty",
    *(f"long_line:{name}" for name in LONG_LINE_FILLS),
    *(f"invalid_utf8:{name}" for name in ("surrogate", "overlong", "bytes_ff_fe")),
]


# --- Outcome check ------------------------------------------------------------------


def check_reader(reader: Reader, directory: Path, target: str, content: bytes) -> None:
    """Write the valid files with `target` replaced by `content`, then read them.

    The read must return a result that `reader.check` accepts, or raise
    `reader.error` with the target's path (or the directory's, for readers
    with `names_directory`) in the message. Other exceptions propagate.
    """
    for name, data in {**reader.files(), target: content}.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected_path = directory if reader.names_directory else directory / target

    try:
        result = reader.read(directory)
    except reader.error as error:
        message = str(error)
        assert str(expected_path) in message, (
            f"{type(error).__name__} does not name {expected_path}: {message}"
        )
        return
    assert reader.check(result), f"unexpected result {result!r:.200}"


def _draw_file(data: st.DataObject, reader: Reader) -> tuple[str, bytes]:
    target = data.draw(st.sampled_from(reader.targets), label="target")
    valid = reader.files()[target]
    return target, data.draw(file_contents(target, valid), label="content")


# --- Fuzz tests ---------------------------------------------------------------------


@pytest.mark.parametrize("reader_name", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_reader_fuzzed(tmp_path, reader_name, data):
    reader = READERS[reader_name]
    target, content = _draw_file(data, reader)

    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        check_reader(reader, Path(directory), target, content)


@pytest.mark.parametrize("reader_name", sorted(TFDS_READERS))
@FUZZ_TFDS
@given(data=st.data())
def test_tfds_reader_fuzzed(tmp_path, reader_name, data):
    reader = TFDS_READERS[reader_name]
    target, content = _draw_file(data, reader)

    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        check_reader(reader, Path(directory), target, content)


@pytest.mark.parametrize(
    "reader_name, target, case",
    [
        (reader_name, target, case)
        for reader_name, reader in sorted(ALL_READERS.items())
        for target in reader.targets
        for case in HARD_CASES
    ],
)
def test_reader_hard_case(tmp_path, reader_name, target, case):
    reader = ALL_READERS[reader_name]
    content = hard_case_contents(case, reader.files()[target])

    check_reader(reader, tmp_path, target, content)


@FUZZ
@given(content=damaged(WIKI_DUMP))
def test_wikipedia_bz2_of_damaged_xml(tmp_path, content):
    reader = READERS["wikipedia_bz2"]

    check_reader(reader, tmp_path, "dump.xml.bz2", bz2.compress(content))


# Article texts for the markup stripper: random text, text of markup
# characters, and one line of 1 to 5 MiB. The long line avoids "{{", "{|" and
# "<ref>", because wikitext_to_text takes time quadratic in their number (see
# the NOTE there).
wiki_articles = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="[]{}|<>/='#*:&;!- \nabc", max_size=300),
    st.builds(
        lambda fill, size: fill * (size // len(fill.encode("utf-8"))),
        st.sampled_from(["a", "word ", "\u00e9\u4e2d "]),
        st.integers(MIB, 5 * MIB),
    ),
)


@settings(FUZZ, max_examples=20)
@given(article=wiki_articles)
def test_wikipedia_article_text(tmp_path, article):
    reader = READERS["wikipedia_xml"]

    check_reader(reader, tmp_path, "dump.xml", _wikipedia_dump(article))


# --- Regression tests for the leaks that the fuzzing found --------------------------

# JSON that the json module rejects with RecursionError and with a plain
# ValueError (more than sys.get_int_max_str_digits() digits), not with
# JSONDecodeError.
DEEP_JSON = b"[" * 100_000
HUGE_INTEGER = b"1" * 5_000


@pytest.mark.parametrize("content", [DEEP_JSON, HUGE_INTEGER], ids=["deep", "huge"])
@pytest.mark.parametrize(
    "reader_name, target",
    [
        ("cail_documents", "input.jsonl"),
        ("cail_triplets", "input.jsonl"),
        ("labelled_jsonl_classification", "train.jsonl"),
        ("tokenizer_load", "tokenizer.json"),
        ("tokenizer_huggingface", "tokenizer_config.json"),
        ("char_vocab", "vocab.json"),
        ("huggingface_model", "config.json"),
    ],
)
def test_json_reader_rejects_unparsable_json(tmp_path, reader_name, target, content):
    reader = READERS[reader_name]
    for name, valid in {**reader.files(), target: content}.items():
        (tmp_path / name).write_bytes(valid)

    with pytest.raises(reader.error) as raised:
        reader.read(tmp_path)

    assert str(tmp_path / target) in str(raised.value)


def _safetensors_file(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header).encode("utf-8")
    return len(header).to_bytes(8, "little") + header + data


@pytest.mark.parametrize(
    "header",
    [
        DEEP_JSON,
        HUGE_INTEGER,
        {"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
        {"w": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 4]}},
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
        {"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}},
        {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [4, 0]}},
        {"w": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}},
    ],
    ids=[
        "deep_json",
        "huge_integer",
        "list_dtype",
        "string_shape",
        "one_offset",
        "negative_shape",
        "negative_range",
        "overflowing_shape",
    ],
)
def test_safetensors_invalid_header_entry(tmp_path, header):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_file(header, data=bytes(16)))

    with pytest.raises(CheckpointFormatError) as raised:
        read_safetensors(path)

    assert str(path) in str(raised.value)


def test_char_vocab_invalid_utf8(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"format": "\xff"}')

    with pytest.raises(VocabFileError) as raised:
        CharVocab.load(path)

    assert str(path) in str(raised.value)
    assert "UTF-8" in str(raised.value)


def test_char_vocab_error_is_value_error():
    assert issubclass(VocabFileError, ValueError)


def test_tiny_shakespeare_invalid_utf8_line(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    path = manual_dir / "input.txt"
    path.write_bytes(b"First Citizen:\nBefore we \xff proceed\n")

    with pytest.raises(SourceFileError) as raised:
        load_text_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    assert f"{path}, line 2" in str(raised.value)


@pytest.mark.parametrize(
    "content",
    [b"not bz2 data", bz2.compress(WIKI_DUMP)[:-10]],
    ids=["not_bz2", "truncated"],
)
def test_enwik8_excerpt_damaged_bz2(tmp_path, content):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    path = manual_dir / "dump.xml.bz2"
    path.write_bytes(content)

    with pytest.raises(SourceFileError) as raised:
        load_byte_splits(
            data_dir=str(tmp_path / "tfds"),
            manual_dir=str(manual_dir),
            source_file=path.name,
        )

    assert str(path) in str(raised.value)


def _corrupt_deflate_stream(archive: bytes) -> bytes:
    """Overwrite the compressed bytes of the first member with 0xFF bytes."""
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    end = start + info.compress_size
    return archive[:start] + b"\xff" * info.compress_size + archive[end:]


def test_enwik8_zip_corrupt_member(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    path = manual_dir / "enwik8.zip"
    path.write_bytes(_corrupt_deflate_stream(_zip_archive("enwik8", WIKI_DUMP)))

    with pytest.raises(SourceFileError) as raised:
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    assert str(path) in str(raised.value)
    assert "damaged zip archive" in str(raised.value)


def test_enwik8_short_file_names_path(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    path = manual_dir / "enwik8"
    path.write_bytes(WIKI_DUMP)

    with pytest.raises(SourceFileError) as raised:
        load_byte_splits(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))

    assert f"{path} contains {len(WIKI_DUMP)} bytes" in str(raised.value)


def _torch_archive_with_pickle(pickle_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
    return buffer.getvalue()


def test_torch_damaged_member_header(tmp_path):
    archive = _torch_archive()["pytorch_model.bin"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zip_file:
        names = zip_file.namelist()
        pickle_name = next(name for name in names if name.endswith("/data.pkl"))
        offset = zip_file.getinfo(pickle_name).header_offset
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(archive[:offset] + b"\x00" * 4 + archive[offset + 4 :])

    with pytest.raises(TorchCheckpointError) as raised:
        read_torch_state_dict(path)

    assert str(path) in str(raised.value)


def test_torch_pickle_calling_global_wrongly(tmp_path):
    # Protocol 2 opcodes for collections.OrderedDict(5), which raises TypeError.
    pickle_bytes = b"\x80\x02ccollections\nOrderedDict\nK\x05\x85R."
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(_torch_archive_with_pickle(pickle_bytes))

    with pytest.raises(TorchCheckpointError) as raised:
        read_torch_state_dict(path)

    assert str(path) in str(raised.value)
    assert "TypeError" in str(raised.value)


def _write_huggingface_model(directory: Path, **config_changes: Any) -> Path:
    """Write the tiny model with `config_changes` applied to config.json."""
    for name, data in _huggingface_model().items():
        (directory / name).write_bytes(data)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_bytes())
    config.update(config_changes)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    return config_path


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_size": "eight"},
        {"num_attention_heads": 0},
        {"max_position_embeddings": None},
        {"layer_norm_eps": [1e-12]},
        {"architectures": 5},
        {"architectures": [["RoFormerModel"]]},
        {"architectures": ["RoFormerForSequenceClassification"], "id2label": 3},
        {"architectures": ["RoFormerForSequenceClassification"], "num_labels": "x"},
    ],
    ids=[
        "string_size",
        "zero_heads",
        "null_positions",
        "list_epsilon",
        "integer_architectures",
        "nested_architectures",
        "integer_id2label",
        "string_num_labels",
    ],
)
def test_huggingface_invalid_config_value(tmp_path, changes):
    config_path = _write_huggingface_model(tmp_path, **changes)

    with pytest.raises(CheckpointFormatError) as raised:
        load_huggingface(tmp_path)

    assert str(config_path) in str(raised.value)


def test_huggingface_vocab_invalid_utf8(tmp_path):
    _write_huggingface_model(tmp_path)
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n\xff\n")

    with pytest.raises(CheckpointFormatError) as raised:
        load_huggingface(tmp_path)

    assert str(path) in str(raised.value)


@pytest.mark.parametrize("shard_name", [5, ["model.safetensors"]], ids=str)
def test_huggingface_index_non_string_shard(tmp_path, shard_name):
    for name, data in _sharded_huggingface_model().items():
        (tmp_path / name).write_bytes(data)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_bytes())
    index["weight_map"]["embeddings.LayerNorm.bias"] = shard_name
    index_path.write_text(json.dumps(index), encoding="utf-8")

    with pytest.raises(CheckpointFormatError) as raised:
        load_huggingface(tmp_path)

    assert str(index_path) in str(raised.value)


def _write_huggingface_weights(
    directory: Path,
    edit: Callable[[dict[str, np.ndarray]], None],
    **config_changes: Any,
) -> None:
    """Write the tiny model with its weights changed by `edit`."""
    _write_huggingface_model(directory, **config_changes)
    weights_path = directory / "model.safetensors"
    arrays = {
        name: np.array(array) for name, array in read_safetensors(weights_path).items()
    }
    edit(arrays)
    weights_path.unlink()
    safetensors_numpy.save_file(arrays, str(weights_path))


def test_huggingface_scalar_token_type_table(tmp_path):
    def make_scalar(arrays):
        arrays["embeddings.token_type_embeddings.weight"] = np.zeros((), np.float32)

    _write_huggingface_weights(tmp_path, make_scalar, type_vocab_size=1)

    with pytest.raises(WeightMismatchError) as raised:
        load_huggingface(tmp_path)

    assert "embeddings.token_type_embeddings.weight" in str(raised.value)


def test_huggingface_nan_position_table(tmp_path):
    def add_nan(arrays):
        arrays["encoder.embed_positions.weight"][3, 1] = np.nan

    _write_huggingface_weights(tmp_path, add_nan)

    with pytest.raises(UnsupportedArchitectureError) as raised:
        load_huggingface(tmp_path)

    assert "encoder.embed_positions.weight" in str(raised.value)
