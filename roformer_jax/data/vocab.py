"""Character vocabulary with an id reserved for unknown characters."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

UNK_ID = 0
UNK_TOKEN = "<unk>"
FILE_FORMAT = "roformer_jax.char_vocab"
FILE_VERSION = 1


class VocabFileError(ValueError):
    """A vocabulary file that is not UTF-8 JSON in the format of `CharVocab.save`."""


class CharVocab:
    """Mapping between characters (Unicode code points) and int32 ids.

    Id 0 is `<unk>`, which stands for any character outside the vocabulary, so
    text with characters unseen in training still encodes. Characters get ids
    1..n in the order given.
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(
                    f"Vocabulary entries must be single characters, got {char!r}."
                )
        duplicates = sorted(char for char, count in Counter(chars).items() if count > 1)
        if duplicates:
            raise ValueError(
                f"Vocabulary characters must be unique, but these repeat: {duplicates!r}."
            )
        self._chars = chars

        # Encoding looks code points up with a binary search over the sorted
        # code points, which is fast on million-character texts.
        code_points = _code_points("".join(chars))
        self._sort_order = np.argsort(code_points, kind="stable")
        self._sorted_code_points = code_points[self._sort_order]

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """Build the vocabulary of the distinct characters in `text`, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def chars(self) -> list[str]:
        """Characters with ids 1..n, in id order (a copy)."""
        return list(self._chars)

    @property
    def size(self) -> int:
        """Number of ids, including `<unk>`."""
        return len(self._chars) + 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CharVocab):
            return NotImplemented
        return self._chars == other._chars

    def __hash__(self) -> int:
        return hash(tuple(self._chars))

    def __repr__(self) -> str:
        return f"CharVocab(size={self.size})"

    def encode(self, text: str) -> np.ndarray:
        """Return the int32 ids of the characters of `text`, UNK_ID for unknown ones."""
        code_points = _code_points(text)
        if not self._chars:
            return np.full(code_points.shape, UNK_ID, dtype=np.int32)

        index = np.searchsorted(self._sorted_code_points, code_points)
        index = np.minimum(index, len(self._chars) - 1)
        known = self._sorted_code_points[index] == code_points
        ids = np.where(known, self._sort_order[index] + 1, UNK_ID)
        return ids.astype(np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Return the text of `ids`, writing `<unk>` for UNK_ID.

        Raises:
          ValueError: an id is outside [0, size).
        """
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(
                f"decode expects a 1-D sequence of ids, got shape {ids.shape}."
            )
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"Token ids must be integers, got dtype {ids.dtype}.")
        invalid = (ids < 0) | (ids >= self.size)
        if invalid.any():
            raise ValueError(
                f"Token id {int(ids[invalid][0])} is outside the vocabulary range [0, {self.size})."
            )
        table = [UNK_TOKEN, *self._chars]
        return "".join(table[i] for i in ids.tolist())

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary to `path` as UTF-8 JSON.

        The file is written under a temporary name and renamed, so a crash while
        writing leaves the previous file (or none) instead of a truncated one.
        """
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "unk_id": UNK_ID,
            "unk_token": UNK_TOKEN,
            "chars": self._chars,
        }
        path = os.fspath(path)
        temporary_path = f"{path}.tmp"
        with open(temporary_path, "w", encoding="utf-8") as file:
            json.dump(payload, file, ensure_ascii=False, indent=1)
            file.write("\n")
        os.replace(temporary_path, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        """Read a vocabulary written by `save`.

        Raises:
          FileNotFoundError: `path` does not exist.
          VocabFileError: the file is not a UTF-8 JSON vocabulary file of this
            format. The message names the file.
        """
        path = os.fspath(path)
        with open(path, "rb") as file:
            data = file.read()
        try:
            payload = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as error:
            # ValueError covers UnicodeDecodeError, JSONDecodeError and integers
            # of more than sys.get_int_max_str_digits() digits, and json raises
            # RecursionError for deeply nested arrays or objects.
            raise VocabFileError(
                f"Invalid vocabulary file {path}: not valid UTF-8 JSON ({error}). "
                "Write the vocabulary again with CharVocab.save."
            ) from error

        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise VocabFileError(
                f"Invalid vocabulary file {path}: expected a JSON object with "
                f'"format": "{FILE_FORMAT}".'
            )
        if payload.get("version") != FILE_VERSION:
            raise VocabFileError(
                f"Invalid vocabulary file {path}: version {payload.get('version')!r} "
                f"is not supported (expected {FILE_VERSION})."
            )
        if payload.get("unk_id") != UNK_ID:
            raise VocabFileError(
                f"Invalid vocabulary file {path}: unk_id must be {UNK_ID}, "
                f"got {payload.get('unk_id')!r}."
            )
        chars = payload.get("chars")
        if not isinstance(chars, list):
            raise VocabFileError(
                f'Invalid vocabulary file {path}: "chars" must be a list.'
            )
        try:
            return cls(chars)
        except ValueError as error:
            raise VocabFileError(f"Invalid vocabulary file {path}: {error}") from error


def _code_points(text: str) -> np.ndarray:
    """Return the Unicode code points of `text` as uint32, one per character."""
    # UTF-32 stores one code point per 4 bytes. `surrogatepass` keeps lone
    # surrogates (possible in a Python str) instead of raising.
    data = text.encode("utf-32-le", errors="surrogatepass")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


class ByteVocab:
    """The 256 byte values as ids 0..255, for byte-level corpora such as
    enwik8. Text encodes as its UTF-8 bytes; decoding replaces byte
    sequences that are not valid UTF-8 with U+FFFD."""

    size = 256

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteVocab)

    def __hash__(self) -> int:
        return hash(ByteVocab)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return bytes(np.asarray(list(ids), dtype=np.uint8)).decode(
            "utf-8", errors="replace"
        )
