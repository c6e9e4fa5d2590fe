"""Tests for roformer_jax.data.text_classification: CAIL triplets and labelled files."""

import json
import logging
from pathlib import Path

import pytest

from roformer_jax.data.text_classification import (
    DataFileError,
    TextExample,
    TripletExample,
    cail_examples,
    read_cail_triplets,
    read_labelled_file,
    split_examples,
)

CAIL_FILE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "cail2019_scm"
    / "input.txt"
)
SKIP_FIX = "data.skip_invalid_rows=True"
LOGGER_NAME = "roformer_jax.data.text_classification"

# Texts that must come back unchanged: CJK with full-width punctuation, a
# character outside the BMP, a decomposed accent (NFD) and inner spaces.
CHINESE = "原告李某1诉称，2015年3月6日，被告夏某1向丰辉借款70000元。"
RARE = "𠀀𪚥 (CJK Extension B) and café with e\u0301 kept as NFD  "
ENGLISH = 'He said "no", then left.'


def _write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _write_lines(tmp_path: Path, name: str, lines: list[str]) -> Path:
    return _write_bytes(tmp_path, name, ("\n".join(lines) + "\n").encode("utf-8"))


def _triplet_line(a="甲文书", b="乙文书", c="丙文书", **extra) -> str:
    return json.dumps({"A": a, "B": b, "C": c, **extra}, ensure_ascii=False)


def _assert_names(error: DataFileError, path: Path, line: int | None) -> None:
    message = str(error)
    assert str(path) in message
    assert error.path == str(path)
    if line is not None:
        assert f"line {line}:" in message
        assert error.line == line


# --- read_cail_triplets --------------------------------------------------------


@pytest.fixture(scope="module")
def cail_rows() -> list[dict]:
    """The shared CAIL file parsed here with json, independent of the reader."""
    rows = []
    for raw in CAIL_FILE.read_bytes().split(b"\n"):
        if raw.strip():
            rows.append(json.loads(raw.decode("utf-8")))
    return rows


@pytest.fixture(scope="module")
def cail_triplets():
    return read_cail_triplets(str(CAIL_FILE))


def test_cail_count_matches_file(cail_triplets, cail_rows):
    assert len(cail_rows) == 500
    assert len(cail_triplets) == len(cail_rows)


def test_cail_texts_match_json(cail_triplets, cail_rows):
    expected = [(row["A"], row["B"], row["C"]) for row in cail_rows]

    assert cail_triplets == expected


def test_cail_texts_are_chinese(cail_triplets):
    anchor = cail_triplets[0][0]

    assert anchor.startswith("原告")
    assert "\n" in anchor


def test_cail_text_survives_bytewise(tmp_path):
    texts = (CHINESE, RARE, "（一）判决如下：\n驳回原告的诉讼请求。")
    path = _write_lines(tmp_path, "cail.jsonl", [_triplet_line(*texts)])

    [triplet] = read_cail_triplets(str(path))

    for got, expected in zip(triplet, texts, strict=True):
        assert got.encode("utf-8") == expected.encode("utf-8")


def test_cail_extra_keys_ignored(tmp_path):
    path = _write_lines(tmp_path, "cail.jsonl", [_triplet_line(label="B", id=7)])

    assert read_cail_triplets(str(path)) == [("甲文书", "乙文书", "丙文书")]


def test_cail_blank_lines_bom_crlf(tmp_path):
    data = (
        b"\xef\xbb\xbf"
        + _triplet_line("一", "二", "三").encode()
        + b"\r\n\r\n"
        + _triplet_line("四", "五", "六").encode()
        + b"\r\n"
    )
    path = _write_bytes(tmp_path, "cail.jsonl", data)

    assert read_cail_triplets(str(path)) == [("一", "二", "三"), ("四", "五", "六")]


CAIL_BAD_ROWS = {
    "invalid_json": ('{"A": "甲", "B": "乙", "C": ', "invalid JSON"),
    "not_object": ('["甲", "乙", "丙"]', "JSON object"),
    "missing_key": ('{"A": "甲", "B": "乙"}', "'C'"),
    "non_string": ('{"A": "甲", "B": 3, "C": "丙"}', "'B' must be a string"),
    "empty_text": ('{"A": "甲", "B": "乙", "C": "  "}', "'C' has empty text"),
}


@pytest.mark.parametrize("case", sorted(CAIL_BAD_ROWS))
def test_cail_bad_row_names_line(tmp_path, case):
    bad_line, expected_text = CAIL_BAD_ROWS[case]
    path = _write_lines(tmp_path, "bad.jsonl", [_triplet_line(), "", bad_line])

    with pytest.raises(DataFileError) as raised:
        read_cail_triplets(str(path))

    _assert_names(raised.value, path, 3)
    assert expected_text in str(raised.value)
    assert SKIP_FIX in str(raised.value)


def test_cail_invalid_utf8_names_line(tmp_path):
    data = (
        _triplet_line() + "\n"
    ).encode() + b'{"A": "\xe5\x8e", "B": "b", "C": "c"}\n'
    path = _write_bytes(tmp_path, "bad.jsonl", data)

    with pytest.raises(DataFileError) as raised:
        read_cail_triplets(str(path))

    _assert_names(raised.value, path, 2)
    assert "invalid UTF-8" in str(raised.value)
    assert r"b'\xe5\x8e'" in str(raised.value)
    assert SKIP_FIX in str(raised.value)


def test_cail_skip_mode_counts(tmp_path, caplog):
    lines = [
        _triplet_line("一", "二", "三"),
        CAIL_BAD_ROWS["invalid_json"][0],
        CAIL_BAD_ROWS["missing_key"][0],
        _triplet_line("四", "五", "六"),
        CAIL_BAD_ROWS["empty_text"][0],
    ]
    path = _write_lines(tmp_path, "mixed.jsonl", lines)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        triplets = read_cail_triplets(str(path), skip_invalid_rows=True)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert triplets == [("一", "二", "三"), ("四", "五", "六")]
    assert len(warnings) == 1
    assert "Skipped 3 invalid rows" in warnings[0].getMessage()
    assert "lines 2, 3, 5" in warnings[0].getMessage()


def test_cail_no_valid_rows(tmp_path):
    path = _write_lines(tmp_path, "bad.jsonl", ["{}", "[]"])

    with pytest.raises(DataFileError) as raised:
        read_cail_triplets(str(path), skip_invalid_rows=True)

    _assert_names(raised.value, path, None)
    assert "no valid data rows" in str(raised.value)


def test_cail_empty_file(tmp_path):
    path = _write_bytes(tmp_path, "empty.jsonl", b"")

    with pytest.raises(DataFileError, match="no data rows"):
        read_cail_triplets(str(path))


# --- cail_examples and split_examples ------------------------------------------


def test_cail_examples_balanced(cail_triplets):
    examples = cail_examples(cail_triplets, seed=0)

    assert len(examples) == len(cail_triplets)
    assert sum(example.label for example in examples) == len(cail_triplets) // 2


def test_cail_examples_balanced_odd():
    triplets = [(f"a{i}", f"b{i}", f"c{i}") for i in range(7)]

    examples = cail_examples(triplets, seed=3)

    assert sum(example.label for example in examples) == 3


def test_cail_examples_label_means_swap(cail_triplets):
    examples = cail_examples(cail_triplets, seed=1)

    for (a, b, c), example in zip(cail_triplets, examples, strict=True):
        assert isinstance(example, TripletExample)
        assert example.anchor == a
        if example.label == 1:
            assert (example.first, example.second) == (c, b)
        else:
            assert example.label == 0
            assert (example.first, example.second) == (b, c)


def test_cail_examples_deterministic(cail_triplets):
    first = cail_examples(cail_triplets, seed=5)
    second = cail_examples(cail_triplets, seed=5)
    other_seed = cail_examples(cail_triplets, seed=6)

    assert first == second
    assert [e.label for e in first] != [e.label for e in other_seed]


def test_split_examples_partition():
    examples = list(range(100))

    train, validation = split_examples(examples, validation_fraction=0.2, seed=0)

    assert len(validation) == 20
    assert len(train) == 80
    assert sorted(train + validation) == examples


def test_split_examples_deterministic():
    examples = [f"example {i}" for i in range(50)]

    first = split_examples(examples, validation_fraction=0.1, seed=4)
    second = split_examples(examples, validation_fraction=0.1, seed=4)
    other_seed = split_examples(examples, validation_fraction=0.1, seed=5)

    assert first == second
    assert first[1] != other_seed[1]


def test_split_examples_shuffles():
    examples = list(range(100))

    train, _ = split_examples(examples, validation_fraction=0.5, seed=0)

    assert train != sorted(train)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_split_examples_bad_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        split_examples(list(range(10)), validation_fraction=fraction, seed=0)


# --- read_labelled_file: formats ----------------------------------------------


def test_tsv_pair_chinese_english(tmp_path):
    path = _write_lines(
        tmp_path,
        "data.tsv",
        [
            "id\tquery\tdocument\tlabel",
            f"1\t{CHINESE}\t{ENGLISH}\tsimilar",
            f"2\t{ENGLISH}\t{RARE}\tdifferent",
        ],
    )

    examples, names = read_labelled_file(
        str(path),
        file_format=None,
        text_columns=["query", "document"],
        label_column="label",
    )

    assert names == ["different", "similar"]
    assert examples == [
        TextExample(CHINESE, ENGLISH, 1),
        TextExample(ENGLISH, RARE, 0),
    ]
    assert examples[1].text_b.encode("utf-8") == RARE.encode("utf-8")


def test_csv_quoted_commas_newlines(tmp_path):
    text = 'First line, with a comma\nsecond line with "quotes"'
    content = (
        "text,label\n"
        '"First line, with a comma\nsecond line with ""quotes""",pos\n'
        f"{CHINESE},neg\n"
    )
    path = _write_bytes(tmp_path, "data.csv", content.encode("utf-8"))

    examples, names = read_labelled_file(
        str(path), file_format=None, text_columns=["text"], label_column="label"
    )

    assert names == ["neg", "pos"]
    assert examples == [TextExample(text, None, 1), TextExample(CHINESE, None, 0)]


def test_csv_line_after_multiline_row(tmp_path):
    content = 'text,label\n"one\ntwo\nthree",pos\n"",neg\n'
    path = _write_bytes(tmp_path, "data.csv", content.encode("utf-8"))

    with pytest.raises(DataFileError) as raised:
        read_labelled_file(
            str(path), file_format="csv", text_columns=["text"], label_column="label"
        )

    # The header is line 1 and the quoted row spans lines 2-4.
    _assert_names(raised.value, path, 5)


def test_jsonl_pair_with_label_names(tmp_path):
    rows = [
        {"a": CHINESE, "b": ENGLISH, "y": "entailment"},
        {"a": ENGLISH, "b": CHINESE, "y": "contradiction", "extra": 1},
        {"a": RARE, "b": ENGLISH, "y": "neutral"},
    ]
    path = _write_lines(
        tmp_path, "data.jsonl", [json.dumps(row, ensure_ascii=False) for row in rows]
    )
    label_names = ["entailment", "neutral", "contradiction"]

    examples, names = read_labelled_file(
        str(path),
        file_format=None,
        text_columns=["a", "b"],
        label_column="y",
        label_names=label_names,
    )

    assert names == label_names
    assert [example.label for example in examples] == [0, 2, 1]
    assert [example.text_a for example in examples] == [CHINESE, ENGLISH, RARE]


def test_jsonl_integer_labels(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    path = _write_lines(tmp_path, "data.json", [json.dumps(row) for row in rows])

    examples, names = read_labelled_file(
        str(path), file_format=None, text_columns=["text"], label_column="label"
    )

    assert names == ["0", "1"]
    assert [example.label for example in examples] == [1, 0]


def test_regression_labels(tmp_path):
    path = _write_lines(
        tmp_path, "scores.tsv", ["s1\ts2\tscore", "a\tb\t4.25", "c\td\t-1e-3"]
    )

    examples, names = read_labelled_file(
        str(path),
        file_format="tsv",
        text_columns=["s1", "s2"],
        label_column="score",
        regression=True,
    )

    assert names == []
    assert examples == [TextExample("a", "b", 4.25), TextExample("c", "d", -0.001)]
    assert all(isinstance(example.label, float) for example in examples)


def test_explicit_format_overrides_extension(tmp_path):
    path = _write_lines(tmp_path, "data.txt", ["text\tlabel", "hello\tx"])

    examples, _ = read_labelled_file(
        str(path), file_format="TSV", text_columns=["text"], label_column="label"
    )

    assert examples == [TextExample("hello", None, 0)]


def test_tsv_keeps_quotes_bom_crlf(tmp_path):
    data = b'\xef\xbb\xbftext\tlabel\r\n"quoted" text\tx\r\n\r\n'
    path = _write_bytes(tmp_path, "data.tsv", data)

    examples, _ = read_labelled_file(
        str(path), file_format=None, text_columns=["text"], label_column="label"
    )

    assert examples == [TextExample('"quoted" text', None, 0)]


# --- read_labelled_file: errors ------------------------------------------------


def _read_text_label(path: Path, **kwargs):
    kwargs.setdefault("file_format", None)
    kwargs.setdefault("text_columns", ["text"])
    kwargs.setdefault("label_column", "label")
    return read_labelled_file(str(path), **kwargs)


# Per case: file name, lines, extra arguments, expected line, expected text.
ROW_ERRORS = {
    "tsv_column_count": (
        "data.tsv",
        ["text\tlabel", "good\tx", "too\tmany\tfields"],
        {},
        3,
        "expected 2 columns",
    ),
    "csv_column_count": (
        "data.csv",
        ["text,label", "good,x", "missing label"],
        {},
        3,
        "found 1",
    ),
    "tsv_empty_text": ("data.tsv", ["text\tlabel", " \tx"], {}, 2, "empty text"),
    "csv_empty_label": ("data.csv", ["text,label", "hello,"], {}, 2, "empty label"),
    "unknown_label": (
        "data.tsv",
        ["text\tlabel", "good\tpos", "bad\tmaybe"],
        {"label_names": ["neg", "pos"]},
        3,
        "unknown label 'maybe'",
    ),
    "regression_not_number": (
        "data.tsv",
        ["text\tlabel", "good\t1.5", "bad\thigh"],
        {"regression": True},
        3,
        "'high'",
    ),
    "regression_nan": (
        "data.csv",
        ["text,label", "bad,nan"],
        {"regression": True},
        2,
        "not a finite number",
    ),
    "jsonl_missing_key": (
        "data.jsonl",
        ['{"text": "a", "label": "x"}', '{"text": "b"}'],
        {},
        2,
        "missing key 'label'",
    ),
    "jsonl_invalid_json": (
        "data.jsonl",
        ['{"text": "a", "label": "x"}', "", '{"text": "b", '],
        {},
        3,
        "invalid JSON",
    ),
    "jsonl_not_object": ("data.jsonl", ['"just a string"'], {}, 1, "JSON object"),
    "jsonl_non_string_text": (
        "data.jsonl",
        ['{"text": 5, "label": "x"}'],
        {},
        1,
        "must be a string",
    ),
    "jsonl_float_class_label": (
        "data.jsonl",
        ['{"text": "a", "label": 0.5}'],
        {},
        1,
        "string or an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(ROW_ERRORS))
def test_row_error_names_line_and_fix(tmp_path, case):
    name, lines, kwargs, line, expected_text = ROW_ERRORS[case]
    path = _write_lines(tmp_path, name, lines)

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path, **kwargs)

    _assert_names(raised.value, path, line)
    assert expected_text in str(raised.value)
    assert SKIP_FIX in str(raised.value)


@pytest.mark.parametrize("name", ["data.tsv", "data.csv", "data.jsonl"])
def test_invalid_utf8_names_line(tmp_path, name):
    separator = b"\t" if name.endswith(".tsv") else b","
    if name.endswith(".jsonl"):
        lines = [b'{"text": "ok", "label": "x"}', b'{"text": "\xff", "label": "x"}']
    else:
        lines = [b"text" + separator + b"label", b"bad \xff" + separator + b"x"]
    path = _write_bytes(tmp_path, name, b"\n".join(lines) + b"\n")

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, 2)
    assert r"invalid UTF-8 bytes b'\xff'" in str(raised.value)


def test_csv_invalid_utf8_inside_multiline_row(tmp_path):
    data = b'text,label\n"first line\nbad \xfe line",x\n'
    path = _write_bytes(tmp_path, "data.csv", data)

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, 3)


def test_header_missing_column(tmp_path):
    path = _write_lines(tmp_path, "data.tsv", ["sentence\tlabel", "a\tx"])

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path, skip_invalid_rows=True)

    _assert_names(raised.value, path, 1)
    assert "no column 'text'" in str(raised.value)
    assert "text_columns" in str(raised.value)


def test_header_duplicate_column(tmp_path):
    path = _write_lines(tmp_path, "data.csv", ["text,text,label", "a,b,x"])

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, 1)
    assert "'text' 2 times" in str(raised.value)


def test_invalid_utf8_header_not_skipped(tmp_path):
    path = _write_bytes(tmp_path, "data.tsv", b"te\xffxt\tlabel\na\tx\n")

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path, skip_invalid_rows=True)

    _assert_names(raised.value, path, 1)
    assert "invalid header" in str(raised.value)


@pytest.mark.parametrize("name", ["empty.tsv", "empty.csv"])
def test_empty_table_file(tmp_path, name):
    path = _write_bytes(tmp_path, name, b"\n\n")

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, None)
    assert "is empty" in str(raised.value)
    assert "header row" in str(raised.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("header.tsv", b"text\tlabel\n"),
        ("header.csv", b"text,label\n"),
        ("e.jsonl", b""),
    ],
)
def test_no_data_rows(tmp_path, name, content):
    path = _write_bytes(tmp_path, name, content)

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, None)
    assert "no data rows" in str(raised.value)


def test_unknown_extension(tmp_path):
    path = _write_lines(tmp_path, "data.xlsx", ["text\tlabel", "a\tx"])

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path)

    _assert_names(raised.value, path, None)
    assert "'.xlsx'" in str(raised.value)
    assert "file_format" in str(raised.value)


def test_unknown_format_argument(tmp_path):
    path = _write_lines(tmp_path, "data.tsv", ["text\tlabel", "a\tx"])

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path, file_format="parquet")

    _assert_names(raised.value, path, None)
    assert "'parquet'" in str(raised.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text_columns": []},
        {"text_columns": ["a", "b", "c"]},
        {"text_columns": "text"},
        {"text_columns": ["label"]},
        {"label_names": ["x", "x"]},
        {"label_names": ["x"], "regression": True},
    ],
)
def test_bad_arguments_rejected(tmp_path, kwargs):
    path = _write_lines(tmp_path, "data.tsv", ["text\tlabel", "a\tx"])

    with pytest.raises(ValueError):
        _read_text_label(path, **kwargs)


# --- read_labelled_file: skip mode ---------------------------------------------


def test_skip_mode_counts_rows(tmp_path, caplog):
    lines = [
        "text\tlabel",
        "good one\tpos",
        "too\tmany\tfields",
        " \tneg",
        "good two\tneg",
        "unknown\tmaybe",
        "good three\tpos",
    ]
    path = _write_lines(tmp_path, "data.tsv", lines)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        examples, names = _read_text_label(
            path, label_names=["neg", "pos"], skip_invalid_rows=True
        )

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [example.text_a for example in examples] == [
        "good one",
        "good two",
        "good three",
    ]
    assert [example.label for example in examples] == [1, 0, 1]
    assert names == ["neg", "pos"]
    assert len(warnings) == 1
    assert "Skipped 3 invalid rows" in warnings[0].getMessage()
    assert "lines 3, 4, 6" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_skip_mode_lists_first_lines_only(tmp_path, caplog):
    lines = ['{"text": "ok", "label": "x"}'] + ["not json"] * 8
    path = _write_lines(tmp_path, "data.jsonl", lines)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        examples, _ = _read_text_label(path, skip_invalid_rows=True)

    message = caplog.records[-1].getMessage()
    assert len(examples) == 1
    assert "Skipped 8 invalid rows" in message
    assert "lines 2, 3, 4, 5, 6, ...)" in message


def test_skip_mode_labels_from_kept_rows(tmp_path):
    path = _write_lines(
        tmp_path, "data.csv", ["text,label", "a,b_label", ",a_label", "c,c_label"]
    )

    examples, names = _read_text_label(path, skip_invalid_rows=True)

    assert names == ["b_label", "c_label"]
    assert [example.label for example in examples] == [0, 1]


def test_skip_mode_all_rows_invalid(tmp_path):
    path = _write_lines(tmp_path, "data.tsv", ["text\tlabel", "\tx", "a\t"])

    with pytest.raises(DataFileError) as raised:
        _read_text_label(path, skip_invalid_rows=True)

    _assert_names(raised.value, path, None)
    assert "all 2 rows were invalid" in str(raised.value)
