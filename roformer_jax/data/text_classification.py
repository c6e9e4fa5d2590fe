"""Examples for sentence(-pair) classification and regression from local files.

Readers here return plain Python examples, and tokenization and batching happen
elsewhere. Two sources are covered:

* CAIL2019-SCM similar-case matching: JSON lines with documents "A", "B" and
  "C", where B is always the document closer to A. `cail_examples` turns each
  triplet into a labelled example by swapping B and C at random.
* Labelled files a user supplies (`read_labelled_file`): TSV, CSV or JSON lines
  with one or two text columns and a label column.

Files are read as bytes and decoded line by line, so every problem in a file's
content raises DataFileError naming the file, the 1-based line number, the bad
value and the fix. With `skip_invalid_rows=True`, invalid rows are skipped
instead and summarised in one warning.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

SKIP_INVALID_ROWS_FLAG = "data.skip_invalid_rows"
CAIL_KEYS = ("A", "B", "C")

# File extensions that `read_labelled_file` maps to a format.
FORMAT_BY_EXTENSION = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
FILE_FORMATS = ("tsv", "csv", "jsonl")

_ROW_FIX = (
    f"Fix or remove the row, or set {SKIP_INVALID_ROWS_FLAG}=True to skip such rows."
)
_UTF8_BOM = b"\xef\xbb\xbf"
_MAX_SHOWN_CHARS = 60  # Longer bad values are cut in error messages.
_MAX_LOGGED_LINES = 5  # Line numbers listed in the warning about skipped rows.

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TextExample:
    """One classification or regression example.

    `label` is a class index (int) for classification and a float target for
    regression. `text_b` is None for single-sentence tasks.
    """

    text_a: str
    text_b: str | None
    label: float | int


@dataclasses.dataclass(frozen=True)
class TripletExample:
    """One similar-case matching example: which of two documents is closer to the anchor.

    `label` is 0 when `first` is closer to `anchor` and 1 when `second` is.
    """

    anchor: str
    first: str
    second: str
    label: int


class DataFileError(ValueError):
    """Invalid content in a data file.

    The message names the file, the 1-based line number (for row problems), the
    bad value and the fix. The `path` and `line` attributes are the file and the
    line number, and `line` is None for problems with the whole file.
    """

    def __init__(self, message: str, *, path: str, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line


class _RowProblem(Exception):
    """A problem with one row, without the file, line and fix that the caller adds."""


@dataclasses.dataclass(frozen=True)
class _Line:
    """One physical line of a file, with its terminator."""

    number: int
    # Invalid bytes are decoded as surrogate escapes so that a CSV reader can
    # still find the end of the row. `decode_error` then describes them.
    text: str
    decode_error: str | None


@dataclasses.dataclass(frozen=True)
class _Record:
    """One row of a file: its first line number and its fields or a problem."""

    line: int
    fields: Any
    problem: str | None = None


def _shorten(value: object) -> str:
    """Return `repr(value)`, cut to about _MAX_SHOWN_CHARS characters."""
    text = repr(value)
    if len(text) <= _MAX_SHOWN_CHARS:
        return text
    return text[:_MAX_SHOWN_CHARS] + "..."


def _read_lines(path: str) -> list[_Line]:
    """Read `path` as bytes and decode each line as UTF-8, keeping line numbers.

    A UTF-8 byte-order mark at the start of the file is dropped.
    """
    with open(path, "rb") as file:
        data = file.read()
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]

    lines = []
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append(_Line(number, raw.decode("utf-8"), None))
        except UnicodeDecodeError as error:
            bad_bytes = raw[error.start : error.end]
            lines.append(
                _Line(
                    number,
                    raw.decode("utf-8", errors="surrogateescape"),
                    f"invalid UTF-8 bytes {bad_bytes!r} at byte {error.start} of "
                    "the line (save the file as UTF-8)",
                )
            )
    return lines


class _InvalidRows:
    """Raise DataFileError for an invalid row, or count and skip it in skip mode."""

    def __init__(self, path: str, skip: bool):
        self.path = path
        self.skip = skip
        self.lines: list[int] = []
        self.first_problem: str | None = None

    def report(self, line: int, problem: str) -> None:
        if not self.skip:
            raise DataFileError(
                f"{self.path}, line {line}: {problem}. {_ROW_FIX}",
                path=self.path,
                line=line,
            )
        if self.first_problem is None:
            self.first_problem = f"line {line}: {problem}"
        self.lines.append(line)

    def log_summary(self) -> None:
        """Log one warning with the number of skipped rows, if any."""
        if not self.lines:
            return
        listed_lines = ", ".join(str(n) for n in self.lines[:_MAX_LOGGED_LINES])
        if len(self.lines) > _MAX_LOGGED_LINES:
            listed_lines += ", ..."
        logger.warning(
            "Skipped %d invalid %s in %s (lines %s). First error at %s",
            len(self.lines),
            "row" if len(self.lines) == 1 else "rows",
            self.path,
            listed_lines,
            self.first_problem,
        )

    def no_rows_error(self) -> DataFileError:
        """Return the error for a file that has no valid data rows."""
        if self.lines:
            message = (
                f"{self.path} has no valid data rows: all {len(self.lines)} rows "
                f"were invalid and skipped. First error at {self.first_problem}"
            )
        else:
            message = f"{self.path} contains no data rows. Add at least one row."
        return DataFileError(message, path=self.path)


# --- CAIL2019-SCM ------------------------------------------------------------


def _invalid_json_problem(error: ValueError | RecursionError, text: str) -> str:
    if isinstance(error, json.JSONDecodeError):
        detail = f"{error.msg} at column {error.colno}"
    else:
        # json raises ValueError for an integer of more than
        # sys.get_int_max_str_digits() digits and RecursionError for deeply
        # nested arrays or objects.
        detail = str(error)
    return f"invalid JSON ({detail}) in {_shorten(text.rstrip())}"


def _parse_triplet(text: str) -> tuple[str, str, str]:
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _RowProblem(_invalid_json_problem(error, text)) from error
    if not isinstance(row, dict):
        raise _RowProblem(
            f"expected a JSON object with keys {list(CAIL_KEYS)}, found "
            f"{type(row).__name__} {_shorten(row)}"
        )

    documents = []
    for key in CAIL_KEYS:
        if key not in row:
            raise _RowProblem(f"missing key {key!r} (keys present: {sorted(row)})")
        value = row[key]
        if not isinstance(value, str):
            raise _RowProblem(
                f"key {key!r} must be a string, found {type(value).__name__} "
                f"{_shorten(value)}"
            )
        if not value.strip():
            raise _RowProblem(f"key {key!r} has empty text {_shorten(value)}")
        documents.append(value)
    return documents[0], documents[1], documents[2]


def read_cail_triplets(
    path: str, *, skip_invalid_rows: bool = False
) -> list[tuple[str, str, str]]:
    """Read CAIL2019-SCM JSON lines and return the (A, B, C) document triplets.

    Each non-blank line must be a JSON object whose keys "A", "B" and "C" hold
    non-empty strings. Other keys (such as "label") are ignored. Blank lines are
    skipped. Texts are returned exactly as decoded, without stripping.

    Raises:
      DataFileError: a line is not valid UTF-8 or JSON, lacks a key, or has a
        non-string or empty text (unless `skip_invalid_rows`), or the file has
        no valid rows.
    """
    invalid = _InvalidRows(path, skip_invalid_rows)
    triplets = []
    for line in _read_lines(path):
        if line.decode_error is not None:
            invalid.report(line.number, line.decode_error)
            continue
        if not line.text.strip():
            continue
        try:
            triplets.append(_parse_triplet(line.text))
        except _RowProblem as problem:
            invalid.report(line.number, str(problem))

    invalid.log_summary()
    if not triplets:
        raise invalid.no_rows_error()
    return triplets


def cail_examples(
    triplets: Sequence[tuple[str, str, str]], *, seed: int
) -> list[TripletExample]:
    """Label CAIL triplets by swapping B and C in a random half of them.

    In the source data B is always closer to A than C is. Exactly
    `len(triplets) // 2` triplets, chosen by a NumPy generator seeded with
    `seed`, become (A, C, B) with label 1. The others stay (A, B, C) with label
    0. The same seed always swaps the same triplets.
    """
    rng = np.random.default_rng(seed)
    swapped = np.zeros(len(triplets), dtype=bool)
    swapped[rng.permutation(len(triplets))[: len(triplets) // 2]] = True

    examples = []
    for (anchor, closer, farther), swap in zip(triplets, swapped, strict=True):
        if swap:
            examples.append(TripletExample(anchor, farther, closer, label=1))
        else:
            examples.append(TripletExample(anchor, closer, farther, label=0))
    return examples


def split_examples(
    examples: Sequence[T], *, validation_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Shuffle `examples` with `seed` and split them into (train, validation).

    The validation part has `round(len(examples) * validation_fraction)`
    examples and both parts must be non-empty. Both lists are in shuffled
    order, and the same seed gives the same split.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be between 0 and 1 (exclusive), got "
            f"{validation_fraction!r}."
        )
    validation_size = round(len(examples) * validation_fraction)
    if not 0 < validation_size < len(examples):
        raise ValueError(
            f"validation_fraction={validation_fraction} of {len(examples)} examples "
            f"gives {validation_size} validation examples, but both parts must be "
            "non-empty. Pass more examples or another fraction."
        )

    order = np.random.default_rng(seed).permutation(len(examples))
    validation = [examples[i] for i in order[:validation_size]]
    train = [examples[i] for i in order[validation_size:]]
    return train, validation


# --- Labelled files (TSV, CSV, JSON lines) ------------------------------------


def _resolve_format(path: str, file_format: str | None) -> str:
    if file_format is not None:
        normalized = file_format.lower()
        if normalized == "json":
            normalized = "jsonl"
        if normalized not in FILE_FORMATS:
            raise DataFileError(
                f"{path}: unknown file format {file_format!r}. Pass file_format "
                f"as one of {list(FILE_FORMATS)}.",
                path=path,
            )
        return normalized

    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMAT_BY_EXTENSION:
        raise DataFileError(
            f"{path}: cannot infer the file format from the extension "
            f"{extension!r}. Use one of {sorted(FORMAT_BY_EXTENSION)} or pass "
            f"file_format as one of {list(FILE_FORMATS)}.",
            path=path,
        )
    return FORMAT_BY_EXTENSION[extension]


def _tsv_records(lines: Iterable[_Line]) -> Iterator[_Record]:
    """Yield one record per line, fields split on tabs without quoting."""
    for line in lines:
        content = line.text.rstrip("\r\n")
        if not content.strip() and "\t" not in content:
            continue
        yield _Record(line.number, content.split("\t"), line.decode_error)


def _csv_records(path: str, lines: Sequence[_Line]) -> Iterator[_Record]:
    """Yield CSV records (standard quoting) with the line number they start on.

    A quoted field may span lines, so a record covers lines `start..end`. An
    invalid UTF-8 line in that range makes the record invalid, and the record
    then carries that line's number.
    """
    decode_errors = {
        line.number: line.decode_error for line in lines if line.decode_error
    }
    reader = csv.reader(line.text for line in lines)
    previous_end = 0
    try:
        for fields in reader:
            start, end = previous_end + 1, reader.line_num
            previous_end = end
            if not fields:
                continue
            bad_lines = [n for n in range(start, end + 1) if n in decode_errors]
            if bad_lines:
                yield _Record(bad_lines[0], fields, decode_errors[bad_lines[0]])
            else:
                yield _Record(start, fields)
    except csv.Error as error:
        # NOTE: the csv module's field size limit (csv.field_size_limit(),
        # 131072 characters by default) also ends up here for very long fields.
        line = reader.line_num
        raise DataFileError(
            f"{path}, line {line}: invalid CSV ({error}). Fix the quoting, or save "
            "long documents as TSV or JSON lines.",
            path=path,
            line=line,
        ) from error


def _table_rows(
    path: str,
    records: Iterator[_Record],
    required_columns: Sequence[str],
) -> Iterator[_Record]:
    """Read the header record, then yield each data record as a column dict.

    Header problems raise DataFileError, because no row can be read without a
    valid header. Row problems are yielded in `_Record.problem`.
    """
    header_record = next(records, None)
    if header_record is None:
        raise DataFileError(
            f"{path} is empty. Expected a header row naming the columns "
            f"{list(required_columns)}, followed by data rows.",
            path=path,
        )
    header_line = header_record.line
    if header_record.problem is not None:
        raise DataFileError(
            f"{path}, line {header_line}: invalid header, {header_record.problem}.",
            path=path,
            line=header_line,
        )

    header = header_record.fields
    for column in required_columns:
        count = header.count(column)
        if count == 0:
            raise DataFileError(
                f"{path}, line {header_line}: the header {_shorten(header)} has no "
                f"column {column!r}. Name the columns in the header row, or pass "
                "text_columns and label_column that the header contains.",
                path=path,
                line=header_line,
            )
        if count > 1:
            raise DataFileError(
                f"{path}, line {header_line}: the header names column {column!r} "
                f"{count} times. Rename the duplicate columns.",
                path=path,
                line=header_line,
            )

    for record in records:
        if record.problem is not None:
            yield record
        elif len(record.fields) != len(header):
            yield _Record(
                record.line,
                None,
                f"expected {len(header)} columns as in the header, found "
                f"{len(record.fields)}: {_shorten(record.fields)}",
            )
        else:
            yield _Record(record.line, dict(zip(header, record.fields, strict=True)))


def _jsonl_rows(lines: Iterable[_Line]) -> Iterator[_Record]:
    """Yield one JSON object per non-blank line."""
    for line in lines:
        if line.decode_error is not None:
            yield _Record(line.number, None, line.decode_error)
            continue
        if not line.text.strip():
            continue
        try:
            row = json.loads(line.text)
        except (ValueError, RecursionError) as error:
            problem = _invalid_json_problem(error, line.text)
            yield _Record(line.number, None, problem)
            continue
        if not isinstance(row, dict):
            problem = (
                f"expected a JSON object, found {type(row).__name__} {_shorten(row)}"
            )
            yield _Record(line.number, None, problem)
            continue
        yield _Record(line.number, row)


def _row_texts(
    row: dict[str, Any], text_columns: Sequence[str], field: str
) -> list[str]:
    texts = []
    for column in text_columns:
        if column not in row:
            raise _RowProblem(f"missing {field} {column!r} (found {sorted(row)})")
        value = row[column]
        if not isinstance(value, str):
            raise _RowProblem(
                f"text {field} {column!r} must be a string, found "
                f"{type(value).__name__} {_shorten(value)}"
            )
        if not value.strip():
            raise _RowProblem(f"empty text {_shorten(value)} in {field} {column!r}")
        texts.append(value)
    return texts


def _regression_label(value: Any, column: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _RowProblem(
            f"label {field} {column!r} must be a number, found "
            f"{type(value).__name__} {_shorten(value)}"
        )
    try:
        label = float(value)
    except ValueError:
        raise _RowProblem(
            f"label {_shorten(value)} in {field} {column!r} is not a number"
        ) from None
    if not math.isfinite(label):
        raise _RowProblem(
            f"label {_shorten(value)} in {field} {column!r} is not a finite number"
        )
    return label


def _class_label(value: Any, column: str, field: str) -> str:
    """Return a class label as a string, converting JSON integers to decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _RowProblem(
            f"label {field} {column!r} must be a string or an integer, found "
            f"{type(value).__name__} {_shorten(value)}"
        )
    label = value.strip()
    if not label:
        raise _RowProblem(f"empty label {_shorten(value)} in {field} {column!r}")
    return label


def _check_columns(
    text_columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str] | None,
    regression: bool,
) -> None:
    if isinstance(text_columns, str) or not 1 <= len(text_columns) <= 2:
        raise ValueError(
            f"text_columns must name one or two columns, got {text_columns!r}."
        )
    columns = [*text_columns, label_column]
    if len(set(columns)) != len(columns):
        raise ValueError(
            f"text_columns {list(text_columns)} and label_column {label_column!r} "
            "must name different columns."
        )
    if label_names is None:
        return
    if regression:
        raise ValueError(
            "label_names apply to classification only. Pass label_names=None "
            "with regression=True."
        )
    names = list(label_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(
            f"label_names must be a non-empty list of distinct names, got {names!r}."
        )


def read_labelled_file(
    path: str,
    *,
    file_format: str | None,
    text_columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    skip_invalid_rows: bool = False,
) -> tuple[list[TextExample], list[str]]:
    """Read labelled examples from a TSV, CSV or JSON lines file.

    Formats (`file_format`, or from the extension .tsv, .csv, .jsonl or .json
    when it is None):
      tsv: header row, then one row per line. Fields are split on tabs without
        quoting, so texts may contain quotes but no tabs or newlines.
      csv: header row, then rows in Python `csv` module's default dialect
        (double-quoted fields may contain commas, quotes and newlines).
      jsonl: one JSON object per line with the columns as keys.

    One text column gives `text_b=None`, two give a sentence pair. Texts are
    returned exactly as decoded. Class labels are whitespace-stripped strings
    (JSON integers count as their decimal text). A label's index is its
    position in `label_names` when given. Otherwise the label names are the
    distinct labels found, sorted as strings. With `regression=True` labels are
    floats and the returned names are empty. Blank lines are skipped, and
    line numbers are 1-based lines of the file (the first line of a CSV row
    that spans lines).

    Returns:
      The examples in file order and the label names that the indices refer to.

    Raises:
      DataFileError: the format is unknown, the header is missing or lacks a
        column, or the file has no data rows. Also for an invalid row: wrong
        column count, missing key, invalid UTF-8 or JSON, empty text, unknown
        or empty label, or a non-numeric regression label. With
        `skip_invalid_rows=True`, invalid rows are skipped and logged once,
        but the file-level errors are still raised.
      ValueError: the column arguments or `label_names` are inconsistent.
    """
    _check_columns(text_columns, label_column, label_names, regression)
    resolved_format = _resolve_format(path, file_format)
    lines = _read_lines(path)
    required_columns = [*text_columns, label_column]

    if resolved_format == "jsonl":
        field = "key"
        rows = _jsonl_rows(lines)
    else:
        field = "column"
        if resolved_format == "tsv":
            records = _tsv_records(lines)
        else:
            records = _csv_records(path, lines)
        rows = _table_rows(path, records, required_columns)

    label_index = None
    if label_names is not None:
        label_index = {name: index for index, name in enumerate(label_names)}

    invalid = _InvalidRows(path, skip_invalid_rows)
    parsed: list[tuple[list[str], float | str]] = []
    for record in rows:
        if record.problem is not None:
            invalid.report(record.line, record.problem)
            continue
        try:
            texts = _row_texts(record.fields, text_columns, field)
            if label_column not in record.fields:
                raise _RowProblem(
                    f"missing {field} {label_column!r} (found {sorted(record.fields)})"
                )
            raw_label = record.fields[label_column]
            if regression:
                label = _regression_label(raw_label, label_column, field)
            else:
                label = _class_label(raw_label, label_column, field)
                if label_index is not None and label not in label_index:
                    raise _RowProblem(
                        f"unknown label {label!r} in {field} {label_column!r}, "
                        f"which is not in label_names {list(label_index)} (add the "
                        "label to label_names if it is valid)"
                    )
        except _RowProblem as problem:
            invalid.report(record.line, str(problem))
            continue
        parsed.append((texts, label))

    invalid.log_summary()
    if not parsed:
        raise invalid.no_rows_error()

    if regression:
        names: list[str] = []
    elif label_names is not None:
        names = list(label_names)
    else:
        names = sorted({label for _, label in parsed})
        label_index = {name: index for index, name in enumerate(names)}

    examples = []
    for texts, label in parsed:
        text_b = texts[1] if len(texts) == 2 else None
        target = label if regression else label_index[label]
        examples.append(TextExample(texts[0], text_b, target))
    return examples, names
