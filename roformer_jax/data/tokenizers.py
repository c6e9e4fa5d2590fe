"""WordPiece and Chinese tokenizers for masked-LM pre-training and fine-tuning.

`TokenizerSpec.kind` selects one of three behaviours:

- "wordpiece": BERT's basic tokenizer, then greedy longest-match-first
  WordPiece with "##" marking a piece that continues a word.
- "chinese_char": the same rules. The basic tokenizer isolates every CJK
  ideograph, so Chinese BERT vocabularies are character-level. The kind is
  separate so that a config names the vocabulary type it expects.
- "chinese_word": the word-level tokenizer of the original RoFormer. jieba
  segments the text (`cut(text, HMM=False)`). A segment found in the vocabulary
  is one token, and any other segment goes through the "wordpiece" rules.
  This is the segment rule of transformers' RoFormerTokenizer.

Every kind first splits the text at the SPECIAL_TOKENS written in it, as
transformers' tokenizers do, and each occurrence becomes that token's id. The
match is case-sensitive and precedes lowercasing, so "[MASK]" is one token
and "[mask]" is the text "[", "mask", "]". The text between two special
tokens is tokenized on its own, so a special token also ends a word.

The basic tokenizer follows transformers' `BasicTokenizer` (used by its
BertTokenizer and RoFormerTokenizer), so ids can be compared with theirs:

1. Drop U+0000, U+FFFD and control characters (Unicode category C*, except
   tab, newline and carriage return). Map those three and category Zs to a space.
2. Put spaces around CJK ideographs (the code point ranges of BERT's
   `_is_chinese_char`).
3. Apply NFC. transformers added this step in 2023 (pull request #22280).
   The original BERT code and the tokenizers library's BertNormalizer omit it.
4. If accents are stripped, apply NFD and drop category Mn (nonspacing marks).
5. Split on whitespace and on punctuation: ASCII 33-47, 58-64, 91-96, 123-126
   and Unicode category P*.

If `lowercase`, each character is lowercased on its own before step 1, as
transformers does before tokenizing. So a final capital sigma becomes "σ",
not "ς" as in the original BERT code.

Character classes come from Python's `unicodedata`, so characters added in a
newer Unicode version can tokenize differently under another Python version.

Encoding is plain Python: `str.translate` tables filled on first use and a
cache of each word's WordPiece split. On the 29,000 Multi30k training
sentences on a 2-core CPU it took 0.18 s, against 0.44 s for `encode_batch`
of the tokenizers library (0.23.3) with the same vocabulary. That library's
BertNormalizer also keeps unassigned code points and classifies characters of
recent Unicode versions differently from `unicodedata`, so it serves only to
train vocabularies here.

A tokenizer is saved as two UTF-8 files in one directory: `vocab.txt`, with the
token of id i on line i + 1 (the format of BERT and RoFormer checkpoints), and
`tokenizer.json`, with the `TokenizerSpec` fields. `save_huggingface` and
`from_huggingface` write and read the directory layout of transformers'
RoFormerTokenizer and BertTokenizer instead (vocab.txt and
tokenizer_config.json).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import operator
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
KINDS = ("wordpiece", "chinese_char", "chinese_word")
VOCAB_FILENAME = "vocab.txt"
CONFIG_FILENAME = "tokenizer.json"
CONFIG_FORMAT = "roformer_jax.tokenizer"
CONFIG_VERSION = 1
CONTINUATION_PREFIX = "##"
HUGGINGFACE_CONFIG_FILENAME = "tokenizer_config.json"
HUGGINGFACE_SPECIAL_TOKENS_FILENAME = "special_tokens_map.json"
# transformers' tokenizer classes that read a vocab.txt, and the kind that
# gives the ids of the slow class.
HUGGINGFACE_CLASS_KINDS = {
    "RoFormerTokenizer": "chinese_word",
    "RoFormerTokenizerFast": "chinese_word",
    "BertTokenizer": "wordpiece",
    "BertTokenizerFast": "wordpiece",
}

# The WordPiece split of each word is cached. Distinct words in a corpus
# follow a long tail, so the cache is emptied when it reaches this many words.
_WORD_CACHE_SIZE = 1 << 18

# Code point ranges of BERT's `_is_chinese_char` (CJK Unified Ideographs, its
# Extensions A to E, and the two CJK Compatibility Ideographs blocks).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_UTF8_BOM = b"\xef\xbb\xbf"

# `re.split` with this pattern puts the text between special tokens at even
# indices and the special tokens themselves at odd indices. No special token
# is a prefix of another, so the order of the alternatives does not matter.
_SPECIAL_TOKEN_PATTERN = re.compile(
    "(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")"
)


class TokenizerError(ValueError):
    """Invalid tokenizer settings, vocabulary or tokenizer files."""


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Settings that, together with the vocabulary, fix the ids of a text.

    Attributes:
      kind: "wordpiece", "chinese_char" or "chinese_word" (see the module
        docstring).
      lowercase: lowercase the text, for uncased vocabularies.
      strip_accents: remove nonspacing marks after NFD. None follows
        `lowercase`, as in BERT.
      max_chars_per_word: words longer than this many characters become [UNK].
    """

    kind: str
    lowercase: bool = True
    strip_accents: bool | None = None
    max_chars_per_word: int = 100

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TokenizerError(
                f"Unknown tokenizer kind {self.kind!r}. Use one of "
                f"{', '.join(repr(kind) for kind in KINDS)}."
            )
        if not isinstance(self.lowercase, bool):
            raise TokenizerError(
                f"lowercase must be True or False, got {self.lowercase!r}."
            )
        if self.strip_accents is not None and not isinstance(self.strip_accents, bool):
            raise TokenizerError(
                f"strip_accents must be True, False or None, got {self.strip_accents!r}."
            )
        if (
            isinstance(self.max_chars_per_word, bool)
            or not isinstance(self.max_chars_per_word, int)
            or self.max_chars_per_word < 1
        ):
            raise TokenizerError(
                "max_chars_per_word must be a positive integer, got "
                f"{self.max_chars_per_word!r}."
            )

    @property
    def removes_accents(self) -> bool:
        """Whether tokenization strips accents: `strip_accents`, or `lowercase` if None."""
        if self.strip_accents is None:
            return self.lowercase
        return self.strip_accents


# --- Character classes and the basic tokenizer --------------------------------


def _is_cjk(char: str) -> bool:
    code_point = ord(char)
    return any(first <= code_point <= last for first, last in _CJK_RANGES)


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punctuation(char: str) -> bool:
    code_point = ord(char)
    if 33 <= code_point <= 47 or 58 <= code_point <= 64:
        return True
    if 91 <= code_point <= 96 or 123 <= code_point <= 126:
        return True
    return unicodedata.category(char).startswith("P")


class _LazyTranslation(dict):
    """`str.translate` table that computes a character's entry on first use.

    `rule` returns the replacement of one character: a string, or None to
    delete it. `str.translate` looks entries up in C, so after the first text
    each character costs a dict lookup.
    """

    def __init__(self, rule: Callable[[str], str | None]):
        super().__init__()
        self._rule = rule

    def __missing__(self, code_point: int) -> str | None:
        replacement = self._rule(chr(code_point))
        self[code_point] = replacement
        return replacement


def _clean_and_space_cjk(char: str) -> str | None:
    if char in "\x00\ufffd" or _is_control(char):
        return None
    if _is_whitespace(char):
        return " "
    if _is_cjk(char):
        return f" {char} "
    return char


def _drop_nonspacing_mark(char: str) -> str | None:
    return None if unicodedata.category(char) == "Mn" else char


def _space_punctuation(char: str) -> str:
    return f" {char} " if _is_punctuation(char) else char


_CLEAN_TABLE = _LazyTranslation(_clean_and_space_cjk)
_ACCENT_TABLE = _LazyTranslation(_drop_nonspacing_mark)
_PUNCTUATION_TABLE = _LazyTranslation(_space_punctuation)


def _lowercase_each_char(text: str) -> str:
    # `str.lower` maps a capital sigma at the end of a word to "ς". That is
    # its only context-dependent mapping, so replacing the capital sigma
    # first gives each character's own lowercase form.
    return text.replace("\u03a3", "\u03c3").lower()


def _basic_tokenize(text: str, lowercase: bool, strip_accents: bool) -> list[str]:
    """Split `text` into words by the rules in the module docstring."""
    # Lowercasing before NFC, as transformers does, matters for a few Greek
    # letters: "\u03aa\u0301" (Ϊ́) lowercases and composes to "\u0390", but
    # composing first leaves "\u03ca\u0301".
    if lowercase:
        text = _lowercase_each_char(text)
    text = text.translate(_CLEAN_TABLE)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if strip_accents and not text.isascii():
        text = unicodedata.normalize("NFD", text).translate(_ACCENT_TABLE)
    return text.translate(_PUNCTUATION_TABLE).split()


@functools.cache
def _jieba():
    """Import jieba and silence the dictionary messages it logs on first use."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def _segment(text: str) -> Iterator[str]:
    return _jieba().cut(text, HMM=False)


def _is_cjk_word(segment: str) -> bool:
    return len(segment) >= 2 and all(_is_cjk(char) for char in segment)


# --- Tokenizer -----------------------------------------------------------------


class Tokenizer:
    """Text to token ids and back, for one vocabulary and `TokenizerSpec`.

    Ids are positions in the vocabulary. `encode` adds no special tokens, so
    callers add [CLS] and [SEP] where the model expects them.
    """

    def __init__(self, vocab: Sequence[str], spec: TokenizerSpec):
        if not isinstance(spec, TokenizerSpec):
            raise TypeError(f"spec must be a TokenizerSpec, got {type(spec).__name__}.")
        vocab = tuple(vocab)
        _check_tokens(vocab)
        self._vocab = vocab
        self._spec = spec
        self._ids = _index_tokens(vocab)
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # --- Vocabulary ---

    @property
    def spec(self) -> TokenizerSpec:
        """Settings of this tokenizer."""
        return self._spec

    @property
    def vocab(self) -> tuple[str, ...]:
        """Tokens in id order."""
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of tokens, which is one more than the largest id."""
        return len(self._vocab)

    @property
    def pad_id(self) -> int:
        """Id of [PAD]."""
        return self._ids["[PAD]"]

    @property
    def unk_id(self) -> int:
        """Id of [UNK], the token for words that the vocabulary cannot spell."""
        return self._ids["[UNK]"]

    @property
    def cls_id(self) -> int:
        """Id of [CLS]."""
        return self._ids["[CLS]"]

    @property
    def sep_id(self) -> int:
        """Id of [SEP]."""
        return self._ids["[SEP]"]

    @property
    def mask_id(self) -> int:
        """Id of [MASK]."""
        return self._ids["[MASK]"]

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the SPECIAL_TOKENS."""
        return frozenset(self._ids[token] for token in SPECIAL_TOKENS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._spec == other._spec and self._vocab == other._vocab

    def __hash__(self) -> int:
        return hash((self._spec, self._vocab))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, spec={self._spec!r})"

    # --- Encoding ---

    def tokenize(self, text: str) -> list[str]:
        """Return the tokens of `text`, without adding [CLS] or [SEP].

        A special token written in the text, such as "[MASK]", is one token.
        """
        return [self._vocab[token_id] for token_id in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Return the ids of the tokens of `text`, without adding [CLS] or [SEP].

        A special token written in the text, such as "[MASK]", is one id.
        """
        ids, _ = self.encode_words(text)
        return ids

    def encode_words(self, text: str) -> tuple[list[int], list[bool]]:
        """Return the ids of `text` and, per id, whether it starts a whole word.

        Whole-word masking masks all tokens of a word together. A word is a
        basic-tokenizer word, whose "##" continuations are not word starts. So
        every CJK character and every punctuation character is its own word.
        In "chinese_word" mode a jieba segment is one word, even when it is
        not in the vocabulary and splits into several tokens. A special token
        written in the text is a word of its own.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}.")
        ids: list[int] = []
        word_starts: list[bool] = []
        for index, chunk in enumerate(_SPECIAL_TOKEN_PATTERN.split(text)):
            if index % 2 == 1:
                ids.append(self._ids[chunk])
                word_starts.append(True)
            elif self._spec.kind == "chinese_word":
                self._encode_segments(chunk, ids, word_starts)
            else:
                self._encode_basic_words(chunk, ids, word_starts)
        return ids, word_starts

    def _encode_basic_words(
        self, text: str, ids: list[int], word_starts: list[bool]
    ) -> None:
        """Append the WordPiece ids of each basic-tokenizer word of `text`."""
        spec = self._spec
        for word in _basic_tokenize(text, spec.lowercase, spec.removes_accents):
            pieces = self._wordpiece(word)
            ids.extend(pieces)
            word_starts.append(True)
            word_starts.extend([False] * (len(pieces) - 1))

    def _encode_segments(
        self, text: str, ids: list[int], word_starts: list[bool]
    ) -> None:
        """Append the ids of the jieba segments of `text` ("chinese_word")."""
        spec = self._spec
        # RoFormerTokenizer in transformers lowercases the text before jieba
        # segments it, so segments are looked up in lowercase.
        # NOTE: transformers segments with rjieba 0.2.2, a Rust port of jieba.
        # jieba 0.42.1 cut the same segments on all 1,500 CAIL2019-SCM
        # documents, 11,882 English Wikipedia lines and 25,000 random mixed
        # strings, but other text may still segment differently.
        if spec.lowercase:
            text = _lowercase_each_char(text)
        for segment in _segment(text):
            # A whitespace segment is a token if the vocabulary has it, as in
            # RoFormerTokenizer. Otherwise the basic tokenizer drops it.
            token_id = self._ids.get(segment)
            if token_id is not None:
                ids.append(token_id)
                word_starts.append(True)
                continue
            if segment.isspace():
                continue
            start = len(ids)
            for word in _basic_tokenize(segment, spec.lowercase, spec.removes_accents):
                ids.extend(self._wordpiece(word))
            word_starts.extend([False] * (len(ids) - start))
            if len(ids) > start:
                word_starts[start] = True

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        pieces = self._split_word(word)
        if len(self._word_cache) >= _WORD_CACHE_SIZE:
            self._word_cache.clear()
        self._word_cache[word] = pieces
        return pieces

    def _split_word(self, word: str) -> tuple[int, ...]:
        """Split one word greedily into the longest vocabulary pieces.

        The word becomes a single [UNK] when it is longer than
        `max_chars_per_word` or when some position matches no piece.
        """
        if len(word) > self._spec.max_chars_per_word:
            return (self.unk_id,)
        pieces = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end]
                if start > 0:
                    piece = CONTINUATION_PREFIX + piece
                piece_id = self._ids.get(piece)
                if piece_id is not None:
                    break
            else:
                return (self.unk_id,)
            pieces.append(piece_id)
            start = end
        return tuple(pieces)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Return readable text for `ids`.

        Tokens are joined with spaces. A "##" continuation joins the previous
        token, and no space separates two CJK ideographs or full-width
        punctuation marks. Case, accents and the original spacing are not
        restored.

        Raises:
          TokenizerError: an id is outside [0, vocab_size).
        """
        special_ids = self.special_ids
        parts: list[str] = []
        previous = ""
        for token_id in ids:
            token_id = operator.index(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise TokenizerError(
                    f"Token id {token_id} is outside the vocabulary range "
                    f"[0, {self.vocab_size})."
                )
            if skip_special_tokens and token_id in special_ids:
                continue
            token = self._vocab[token_id]
            if not token:
                continue
            if previous and token.startswith(CONTINUATION_PREFIX) and len(token) > 2:
                token = token[len(CONTINUATION_PREFIX) :]
            elif previous and not (_is_wide(previous[-1]) and _is_wide(token[0])):
                parts.append(" ")
            parts.append(token)
            previous = token
        return "".join(parts)

    # --- Files ---

    def save(self, directory: str | os.PathLike) -> None:
        """Write `vocab.txt` and `tokenizer.json` into `directory`, creating it.

        Each file is written under a temporary name and renamed, so a crash
        leaves whole files. `load` detects a vocab.txt and tokenizer.json from
        different saves when their vocabulary sizes differ.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._write_vocab(directory)
        config = {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            **dataclasses.asdict(self._spec),
            "vocab_size": self.vocab_size,
        }
        config_text = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
        _write_atomically(directory / CONFIG_FILENAME, config_text.encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer that `save` wrote into `directory`.

        Raises:
          TokenizerError: a file is missing, unreadable or invalid. The message
            names the file.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILENAME
        vocab_path = directory / VOCAB_FILENAME
        spec, vocab_size = _read_config(config_path)
        vocab = _read_vocab_file(vocab_path, _SAVED_DIRECTORY_HINT)
        if len(vocab) != vocab_size:
            raise TokenizerError(
                f"{vocab_path} has {len(vocab)} tokens, but {config_path} records "
                f"vocab_size {vocab_size}. The two files come from different saves "
                "or one was edited. Save the tokenizer again with Tokenizer.save."
            )
        return cls._from_file_tokens(vocab, spec, vocab_path)

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, spec: TokenizerSpec) -> Tokenizer:
        """Build a tokenizer from a BERT or RoFormer `vocab.txt`.

        Line n of the file is the token of id n - 1. Only the line break
        ("\\n" or "\\r\\n") is removed, so a line of spaces is a token. A UTF-8
        byte order mark at the start is ignored.

        Raises:
          TokenizerError: the file is missing, not UTF-8, repeats a token or
            lacks a special token.
        """
        path = Path(path)
        vocab = _read_vocab_file(path, _VOCAB_PATH_HINT)
        return cls._from_file_tokens(vocab, spec, path)

    @classmethod
    def _from_file_tokens(cls, vocab: list[str], spec: TokenizerSpec, path: Path):
        try:
            return cls(vocab, spec)
        except TokenizerError as error:
            raise TokenizerError(
                f"Invalid vocabulary file {path} (line n is id n - 1): {error}"
            ) from error

    def _write_vocab(self, directory: Path) -> None:
        vocab_text = "".join(f"{token}\n" for token in self._vocab)
        _write_atomically(directory / VOCAB_FILENAME, vocab_text.encode("utf-8"))

    # --- transformers tokenizer directories ---

    def save_huggingface(self, directory: str | os.PathLike) -> None:
        """Write a tokenizer directory that transformers' `from_pretrained` reads.

        Writes vocab.txt, tokenizer_config.json and special_tokens_map.json,
        creating `directory`. RoFormerTokenizer (kind "chinese_word") or
        BertTokenizer ("wordpiece" and "chinese_char") loaded from it gives
        this tokenizer's ids, and AutoTokenizer selects that class from
        tokenizer_config.json. `from_huggingface` reads a "chinese_char"
        tokenizer back as "wordpiece", which gives the same ids.

        NOTE: AutoTokenizer returns RoFormerTokenizerFast unless called with
        use_fast=False, and in transformers 4.57.6 the fast class gives other
        ids than the slow one on some text. It strips accents before jieba
        segments the text, not after, and it does not split a segment such as
        "c++" at punctuation. With the vocabulary of the parity tests
        (tests/test_tokenizer_parity.py), the two classes agreed on 300
        CAIL2019-SCM documents but differed on 42 of 200 English Wikipedia
        lines (uncased).

        Raises:
          TokenizerError: `max_chars_per_word` is not 100, the limit built into
            transformers' WordpieceTokenizer, or `directory` already contains a
            tokenizer.json, which AutoTokenizer would read in place of the
            files written here.
        """
        spec = self._spec
        if spec.max_chars_per_word != _HUGGINGFACE_MAX_CHARS_PER_WORD:
            raise TokenizerError(
                f"max_chars_per_word is {spec.max_chars_per_word}, but transformers' "
                f"tokenizers split words of up to {_HUGGINGFACE_MAX_CHARS_PER_WORD} "
                "characters and have no setting for it. Use a TokenizerSpec with "
                f"max_chars_per_word={_HUGGINGFACE_MAX_CHARS_PER_WORD}."
            )
        directory = Path(directory)
        fast_tokenizer_path = directory / _HUGGINGFACE_FAST_TOKENIZER_FILENAME
        if fast_tokenizer_path.exists():
            raise TokenizerError(
                f"{fast_tokenizer_path} exists. AutoTokenizer would read it in place "
                "of vocab.txt and tokenizer_config.json. Save into a directory "
                "without tokenizer.json."
            )

        if spec.kind == "chinese_word":
            class_name = "RoFormerTokenizer"
        else:
            class_name = "BertTokenizer"
        config = {
            "tokenizer_class": class_name,
            "do_lower_case": spec.lowercase,
            "strip_accents": spec.strip_accents,
            "tokenize_chinese_chars": True,
            "do_basic_tokenize": True,
            "never_split": None,
            **_HUGGINGFACE_SPECIAL_TOKEN_KEYS,
        }
        directory.mkdir(parents=True, exist_ok=True)
        self._write_vocab(directory)
        _write_atomically(directory / HUGGINGFACE_CONFIG_FILENAME, _json_bytes(config))
        _write_atomically(
            directory / HUGGINGFACE_SPECIAL_TOKENS_FILENAME,
            _json_bytes(_HUGGINGFACE_SPECIAL_TOKEN_KEYS),
        )

    @classmethod
    def from_huggingface(cls, directory: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer directory of transformers' RoFormerTokenizer or BertTokenizer.

        Reads vocab.txt and, where present, tokenizer_config.json,
        special_tokens_map.json and added_tokens.json, as transformers'
        `save_pretrained` and `save_huggingface` write them. The
        `tokenizer_class` in tokenizer_config.json selects the kind (see
        HUGGINGFACE_CLASS_KINDS). Without it, the `model_type` "roformer" or
        "bert" in config.json selects RoFormerTokenizer or BertTokenizer, as
        AutoTokenizer does. `do_lower_case` (default true) and `strip_accents`
        (default null) become the spec's `lowercase` and `strip_accents`. The
        fast tokenizer's tokenizer.json is not read.

        Raises:
          TokenizerError: vocab.txt is missing or invalid, a JSON file is
            invalid, the tokenizer class is not supported, or a setting changes
            ids in a way this tokenizer cannot reproduce (other special tokens,
            added tokens, `never_split`, `tokenize_chinese_chars` false). The
            message names the file and the setting.
        """
        directory = Path(directory)
        vocab_path = directory / VOCAB_FILENAME
        vocab = _read_vocab_file(vocab_path, _HUGGINGFACE_DIRECTORY_HINT)
        config_path = directory / HUGGINGFACE_CONFIG_FILENAME
        config = _read_json_object(config_path)
        kind = HUGGINGFACE_CLASS_KINDS[_huggingface_class(config, config_path)]
        spec = _huggingface_spec(config or {}, config_path, kind)
        tokenizer = cls._from_file_tokens(vocab, spec, vocab_path)

        special_tokens_path = directory / HUGGINGFACE_SPECIAL_TOKENS_FILENAME
        for path, settings in (
            (config_path, config),
            (special_tokens_path, _read_json_object(special_tokens_path)),
        ):
            if settings is not None:
                _check_huggingface_special_tokens(settings, path, tokenizer)
        added_tokens_path = directory / "added_tokens.json"
        added_tokens = _read_json_object(added_tokens_path)
        if added_tokens is not None:
            _check_added_tokens(
                [(token_id, token) for token, token_id in added_tokens.items()],
                added_tokens_path,
                tokenizer,
            )
        return tokenizer


def _is_wide(char: str) -> bool:
    """Return True for characters that `decode` writes without spaces around.

    These are CJK ideographs and non-ASCII punctuation such as "，" and "。".
    """
    return _is_cjk(char) or (not char.isascii() and _is_punctuation(char))


def _check_tokens(vocab: tuple[str, ...]) -> None:
    for token_id, token in enumerate(vocab):
        if not isinstance(token, str):
            raise TokenizerError(
                f"Vocabulary entry {token_id} is {token!r}, not a str."
            )
        if "\n" in token or token.endswith("\r"):
            raise TokenizerError(
                f"Token {token_id} ({token!r}) contains a line break, which "
                "vocab.txt cannot store. Remove the line break from the token."
            )
        try:
            token.encode("utf-8")
        except UnicodeEncodeError as error:
            raise TokenizerError(
                f"Token {token_id} ({token!r}) is not valid Unicode text "
                f"({error.reason}). Replace the lone surrogate."
            ) from error


def _index_tokens(vocab: tuple[str, ...]) -> dict[str, int]:
    """Map each token to its id, checking uniqueness and the special tokens."""
    ids: dict[str, int] = {}
    repeats: dict[str, list[int]] = {}
    for token_id, token in enumerate(vocab):
        if token in ids:
            repeats.setdefault(token, [ids[token]]).append(token_id)
        else:
            ids[token] = token_id
    if repeats:
        examples = "; ".join(
            f"{token!r} at ids {', '.join(map(str, token_ids))}"
            for token, token_ids in list(repeats.items())[:5]
        )
        raise TokenizerError(
            f"The vocabulary repeats {len(repeats)} token(s): {examples}. "
            "Each token must appear once. Remove the repeats."
        )
    missing = [token for token in SPECIAL_TOKENS if token not in ids]
    if missing:
        raise TokenizerError(
            f"The vocabulary lacks the special token(s) {', '.join(missing)}. "
            f"Add them, for example as the first tokens in the order "
            f"{', '.join(SPECIAL_TOKENS)}."
        )
    return ids


def _write_atomically(path: Path, data: bytes) -> None:
    temporary_path = path.with_name(f"{path.name}.tmp")
    temporary_path.write_bytes(data)
    os.replace(temporary_path, path)


_SAVED_DIRECTORY_HINT = "Pass a directory that Tokenizer.save wrote."
_VOCAB_PATH_HINT = "Pass the path of an existing vocab.txt."


def _read_bytes(path: Path, description: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise TokenizerError(f"{description} {path} not found. {hint}") from error
    except OSError as error:
        raise TokenizerError(
            f"Reading {description.lower()} {path} failed: {error}. {hint}"
        ) from error


def _read_vocab_file(path: Path, hint: str) -> list[str]:
    """Return the tokens of a vocab.txt, one per line."""
    data = _read_bytes(path, "Vocabulary file", hint)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise TokenizerError(
            f"{path}, line {line}: invalid UTF-8 (byte {data[error.start]:#04x} "
            f"at byte column {column}). Convert the file to UTF-8, for example "
            "with iconv -f <its encoding> -t utf-8."
        ) from error

    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix("\r") for line in lines]


def _read_config(path: Path) -> tuple[TokenizerSpec, int]:
    """Return the spec and vocabulary size stored in a tokenizer.json."""
    fix = "Save the tokenizer again with Tokenizer.save."
    data = _read_bytes(path, "Tokenizer file", _SAVED_DIRECTORY_HINT)
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and integers
        # of more than sys.get_int_max_str_digits() digits, and json raises
        # RecursionError for deeply nested arrays or objects.
        raise TokenizerError(
            f"Invalid tokenizer file {path}: not UTF-8 JSON ({error}). {fix}"
        ) from error
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise TokenizerError(
            f'Invalid tokenizer file {path}: expected a JSON object with "format": '
            f'"{CONFIG_FORMAT}". {fix}'
        )
    if config.get("version") != CONFIG_VERSION:
        raise TokenizerError(
            f"Invalid tokenizer file {path}: version {config.get('version')!r} is "
            f"not supported (expected {CONFIG_VERSION}). {fix}"
        )

    spec_fields = {field.name for field in dataclasses.fields(TokenizerSpec)}
    expected = spec_fields | {"format", "version", "vocab_size"}
    unknown = sorted(set(config) - expected)
    if unknown:
        raise TokenizerError(
            f"Invalid tokenizer file {path}: unknown keys {unknown}. {fix}"
        )
    missing = sorted({"kind", "vocab_size"} - set(config))
    if missing:
        raise TokenizerError(
            f"Invalid tokenizer file {path}: missing keys {missing}. {fix}"
        )
    vocab_size = config["vocab_size"]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(
            f"Invalid tokenizer file {path}: vocab_size must be an integer, got "
            f"{vocab_size!r}. {fix}"
        )
    try:
        spec = TokenizerSpec(**{key: config[key] for key in spec_fields & set(config)})
    except TokenizerError as error:
        raise TokenizerError(f"Invalid tokenizer file {path}: {error}") from error
    return spec, vocab_size


# --- transformers tokenizer directories ----------------------------------------

# transformers' fast tokenizer file. It has the name of this module's own
# CONFIG_FILENAME, so a directory cannot hold both formats.
_HUGGINGFACE_FAST_TOKENIZER_FILENAME = "tokenizer.json"
# Values of the special token settings of a transformers tokenizer directory.
_HUGGINGFACE_SPECIAL_TOKEN_KEYS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# AutoTokenizer's class for a config.json model_type, used when
# tokenizer_config.json names no tokenizer_class.
_HUGGINGFACE_MODEL_TYPES = {"roformer": "RoFormerTokenizer", "bert": "BertTokenizer"}
# transformers' WordpieceTokenizer turns longer words into [UNK], and neither
# RoFormerTokenizer nor BertTokenizer has a setting to change this limit.
_HUGGINGFACE_MAX_CHARS_PER_WORD = 100
_HUGGINGFACE_DIRECTORY_HINT = (
    "Pass a directory that transformers' save_pretrained or "
    "Tokenizer.save_huggingface wrote."
)


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _read_json_object(path: Path) -> dict | None:
    """Return the JSON object in `path`, or None if the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise TokenizerError(
            f"Reading {path} failed: {error}. {_HUGGINGFACE_DIRECTORY_HINT}"
        ) from error
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        # The same errors as in _read_config.
        raise TokenizerError(
            f"Invalid JSON file {path}: {error}. {_HUGGINGFACE_DIRECTORY_HINT}"
        ) from error
    if not isinstance(value, dict):
        raise TokenizerError(
            f"Invalid JSON file {path}: expected an object, got "
            f"{type(value).__name__}. {_HUGGINGFACE_DIRECTORY_HINT}"
        )
    return value


def _huggingface_class(config: dict | None, config_path: Path) -> str:
    """Return the transformers tokenizer class that a directory names."""
    supported = ", ".join(HUGGINGFACE_CLASS_KINDS)
    class_name = None if config is None else config.get("tokenizer_class")
    if class_name is None:
        model_config_path = config_path.with_name("config.json")
        model_config = _read_json_object(model_config_path) or {}
        model_type = model_config.get("model_type")
        if isinstance(model_type, str) and model_type in _HUGGINGFACE_MODEL_TYPES:
            return _HUGGINGFACE_MODEL_TYPES[model_type]
        state = "is missing" if config is None else "names no tokenizer_class"
        raise TokenizerError(
            f"{config_path} {state}, and {model_config_path} has no model_type "
            f"'roformer' or 'bert' (found {model_type!r}). Add a tokenizer_class "
            f"({supported}) to {config_path.name}, or build the tokenizer with "
            "Tokenizer.from_vocab_file and a TokenizerSpec."
        )
    if not isinstance(class_name, str) or class_name not in HUGGINGFACE_CLASS_KINDS:
        raise TokenizerError(
            f"{config_path}: tokenizer_class {class_name!r} is not supported. "
            f"Supported classes: {supported}."
        )
    return class_name


def _huggingface_spec(config: dict, config_path: Path, kind: str) -> TokenizerSpec:
    """Return the spec for the settings of a tokenizer_config.json."""
    lowercase = config.get("do_lower_case", True)
    if not isinstance(lowercase, bool):
        raise TokenizerError(
            f"{config_path}: do_lower_case must be true or false, got {lowercase!r}."
        )
    strip_accents = config.get("strip_accents")
    if strip_accents is not None and not isinstance(strip_accents, bool):
        raise TokenizerError(
            f"{config_path}: strip_accents must be true, false or null, got "
            f"{strip_accents!r}."
        )
    # Settings whose other values give ids that this tokenizer cannot produce.
    required = {
        "tokenize_chinese_chars": True,
        "do_basic_tokenize": True,
        "split_special_tokens": False,
    }
    for key, supported_value in required.items():
        value = config.get(key, supported_value)
        if value is not supported_value:
            raise TokenizerError(
                f"{config_path}: {key} is {json.dumps(value)}, but Tokenizer "
                f"supports only {json.dumps(supported_value)}, so its ids would "
                "differ from transformers'. Use transformers' tokenizer for this "
                "directory."
            )
    never_split = config.get("never_split")
    if never_split:
        raise TokenizerError(
            f"{config_path}: never_split is {never_split!r}, but Tokenizer has no "
            "words exempt from lowercasing and punctuation splitting, so its ids "
            "would differ from transformers'. Use transformers' tokenizer for "
            "this directory."
        )
    return TokenizerSpec(kind, lowercase=lowercase, strip_accents=strip_accents)


def _check_huggingface_special_tokens(
    settings: dict, path: Path, tokenizer: Tokenizer
) -> None:
    """Check that the special and added tokens of `settings` are SPECIAL_TOKENS."""
    supported = ", ".join(SPECIAL_TOKENS)
    for key, expected in _HUGGINGFACE_SPECIAL_TOKEN_KEYS.items():
        if key not in settings:
            continue
        content = _added_token_content(settings[key], path, key)
        if content != expected:
            raise TokenizerError(
                f"{path}: {key} is {content!r}, but Tokenizer uses {expected!r}. "
                f"Only the special tokens {supported} are supported."
            )
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if settings.get(key):
            raise TokenizerError(
                f"{path}: {key} is {settings[key]!r}, but Tokenizer supports no "
                f"special tokens beyond {supported}. transformers matches them in "
                "the text, so the ids would differ."
            )
    added_tokens = settings.get("added_tokens_decoder") or {}
    if not isinstance(added_tokens, dict):
        raise TokenizerError(
            f"{path}: added_tokens_decoder must be an object that maps ids to "
            f"tokens, got {type(added_tokens).__name__}."
        )
    _check_added_tokens(list(added_tokens.items()), path, tokenizer)


def _check_added_tokens(
    added_tokens: list[tuple[object, object]], path: Path, tokenizer: Tokenizer
) -> None:
    """Check that each (id, token) pair is a special token at its vocab.txt id."""
    for token_id, value in added_tokens:
        content = _added_token_content(value, path, f"added token {token_id}")
        vocab_id = tokenizer._ids.get(content)
        if content not in SPECIAL_TOKENS or str(vocab_id) != str(token_id):
            raise TokenizerError(
                f"{path}: added token {content!r} has id {token_id}, but only the "
                f"special tokens {', '.join(SPECIAL_TOKENS)} at their vocab.txt "
                f"ids are supported (vocab.txt id of {content!r}: {vocab_id}). "
                "transformers would match other added tokens in the text, so the "
                "ids would differ."
            )


def _added_token_content(value: object, path: Path, key: str) -> str:
    """Return the token text of a special token setting (a str or an AddedToken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = [
            flag for flag in ("lstrip", "rstrip", "single_word") if value.get(flag)
        ]
        if flags:
            raise TokenizerError(
                f"{path}: {key} sets {', '.join(flags)}, which changes how "
                "transformers matches the token in the text. Tokenizer supports "
                "special tokens only without these flags."
            )
        return value["content"]
    raise TokenizerError(
        f"{path}: {key} must be a token string or an object with a content "
        f"string, got {value!r}."
    )


# --- Training ----------------------------------------------------------------


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    spec: TokenizerSpec,
    min_frequency: int = 2,
) -> Tokenizer:
    """Learn a vocabulary of at most `vocab_size` tokens from `texts`.

    The SPECIAL_TOKENS come first, with ids 0 to 4. The rest depends on
    `spec.kind`:

    - "wordpiece": the WordPiece trainer of the tokenizers library learns from
      the basic-tokenizer words. Its alphabet keeps every character, but when
      the characters and their "##" forms exceed the budget it keeps only the
      (budget / 2) most frequent ones. `min_frequency` is the minimum count of
      a pair of pieces to merge.
    - "chinese_char": each CJK ideograph that occurs at least `min_frequency`
      times, most frequent first, then WordPiece tokens learned from the other
      words in the remaining room.
    - "chinese_word": the "chinese_char" vocabulary, then jieba words of two
      or more CJK ideographs that occur at least `min_frequency` times, most
      frequent first. The words only fill the room that the characters and
      WordPiece tokens leave below `vocab_size`.

    `texts` is read once, so it may be a generator.

    NOTE: the trainer of the tokenizers library breaks ties between equally
    frequent merges in hash order, so two trainings on the same texts can
    give different vocabularies. Save the tokenizer to reuse one vocabulary.
    """
    if not isinstance(spec, TokenizerSpec):
        raise TypeError(f"spec must be a TokenizerSpec, got {type(spec).__name__}.")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, "
            f"got {vocab_size}."
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}.")

    word_counts, char_counts, segment_counts = _count_words(texts, spec)

    vocab = list(SPECIAL_TOKENS)
    if spec.kind != "wordpiece":
        chars = [
            char for char, count in _by_frequency(char_counts) if count >= min_frequency
        ]
        vocab.extend(chars[: vocab_size - len(vocab)])
    known = set(vocab)
    subwords = _train_subwords(word_counts, vocab_size - len(vocab), min_frequency)
    vocab.extend(token for token in subwords if token not in known)
    known.update(vocab)

    if spec.kind == "chinese_word":
        words = [
            word
            for word, count in _by_frequency(segment_counts)
            if count >= min_frequency and word not in known
        ]
        vocab.extend(words[: max(0, vocab_size - len(vocab))])
    return Tokenizer(vocab[:vocab_size], spec)


def _count_words(
    texts: Iterable[str], spec: TokenizerSpec
) -> tuple[Counter, Counter, Counter]:
    """Count the words for `train_wordpiece`.

    Returns the counts of the words that WordPiece learns from, of the CJK
    ideographs (empty for "wordpiece", where they count as words), and of the
    multi-character jieba words (only for "chinese_word").
    """
    word_counts: Counter = Counter()
    char_counts: Counter = Counter()
    segment_counts: Counter = Counter()
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}.")
        words = _basic_tokenize(text, spec.lowercase, spec.removes_accents)
        if spec.kind == "wordpiece":
            word_counts.update(words)
        else:
            for word in words:
                if len(word) == 1 and _is_cjk(word):
                    char_counts[word] += 1
                else:
                    word_counts[word] += 1
        if spec.kind == "chinese_word":
            # Segment the text as Tokenizer.encode_words does.
            segments = _segment(_lowercase_each_char(text) if spec.lowercase else text)
            segment_counts.update(
                segment for segment in segments if _is_cjk_word(segment)
            )
    return word_counts, char_counts, segment_counts


def _by_frequency(counts: Counter) -> list[tuple[str, int]]:
    """Return the items of `counts`, most frequent first and ties in string order."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _train_subwords(
    word_counts: Counter, max_tokens: int, min_frequency: int
) -> list[str]:
    """Learn at most `max_tokens` WordPiece tokens (special tokens excluded)."""
    if max_tokens <= 0 or not word_counts:
        return []
    from tokenizers import Tokenizer as LibraryTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    # The trainer adds every character of the alphabet and its "##" form even
    # past vocab_size. When they do not fit, keep the most frequent characters
    # so that the alphabet and its "##" forms take at most max_tokens.
    initial_chars = {word[0] for word in word_counts}
    continuation_chars = {char for word in word_counts for char in word[1:]}
    base_size = len(initial_chars | continuation_chars) + len(continuation_chars)
    alphabet_options = {}
    if base_size > max_tokens:
        alphabet_options["limit_alphabet"] = max(1, max_tokens // 2)

    trainer = trainers.WordPieceTrainer(
        vocab_size=max_tokens + len(SPECIAL_TOKENS),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
        **alphabet_options,
    )
    library_tokenizer = LibraryTokenizer(models.WordPiece(unk_token="[UNK]"))
    # The words are already basic-tokenized and contain no whitespace, so a
    # whitespace split gives them back unchanged.
    library_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    library_tokenizer.train_from_iterator(_repeat_words(word_counts), trainer=trainer)

    learned_ids = library_tokenizer.get_vocab()
    learned = sorted(learned_ids, key=learned_ids.__getitem__)
    learned = [token for token in learned if token not in SPECIAL_TOKENS]

    # The trainer lists the "##" characters in hash order, which changes from
    # run to run. Sorting fixes the ids of the alphabet, but the merged tokens
    # can still differ between runs (see the NOTE in train_wordpiece).
    def is_continuation_char(token: str) -> bool:
        return len(token) == 3 and token.startswith(CONTINUATION_PREFIX)

    initial = sorted(token for token in learned if len(token) == 1)
    continuation = sorted(token for token in learned if is_continuation_char(token))
    merged = [
        token for token in learned if len(token) > 1 and not is_continuation_char(token)
    ]
    return (initial + continuation + merged)[:max_tokens]


def _repeat_words(word_counts: Counter, max_repeats: int = 10_000) -> Iterator[str]:
    """Yield texts that contain each word as often as it was counted."""
    for word, count in word_counts.items():
        while count > 0:
            repeats = min(count, max_repeats)
            yield f"{word} " * repeats
            count -= repeats
