"""Tests for roformer_jax.data.tokenizers.

Expected tokens come from a reference implementation in this file that
follows transformers' BasicTokenizer and WordpieceTokenizer step by step,
character by character, independently of the product's translate tables.
"""

import gzip
import itertools
import json
import logging
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import jieba
import numpy as np
import pytest

from roformer_jax.data.tokenizers import (
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    TokenizerSpec,
    train_wordpiece,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]

# --- Reference implementation ---------------------------------------------------------

REFERENCE_CJK_BLOCKS = [
    range(0x4E00, 0x9FFF + 1),
    range(0x3400, 0x4DBF + 1),
    range(0x20000, 0x2A6DF + 1),
    range(0x2A700, 0x2B73F + 1),
    range(0x2B740, 0x2B81F + 1),
    range(0x2B820, 0x2CEAF + 1),
    range(0xF900, 0xFAFF + 1),
    range(0x2F800, 0x2FA1F + 1),
]
ASCII_PUNCTUATION = {
    chr(code_point)
    for block in (range(33, 48), range(58, 65), range(91, 97), range(123, 127))
    for code_point in block
}


def reference_is_cjk(char):
    return any(ord(char) in block for block in REFERENCE_CJK_BLOCKS)


def reference_is_punctuation(char):
    return char in ASCII_PUNCTUATION or unicodedata.category(char)[0] == "P"


def reference_words(text, lowercase, strip_accents):
    """Basic-tokenizer words, in the order of transformers' code."""
    if lowercase:
        text = "".join(char.lower() for char in text)

    cleaned = []
    for char in text:
        category = unicodedata.category(char)
        if char in ("\x00", "\ufffd"):
            continue
        if category[0] == "C" and char not in ("\t", "\n", "\r"):
            continue
        if char in ("\t", "\n", "\r", " ") or category == "Zs":
            cleaned.append(" ")
        elif reference_is_cjk(char):
            cleaned.append(" " + char + " ")
        else:
            cleaned.append(char)
    text = unicodedata.normalize("NFC", "".join(cleaned))

    words = []
    for token in text.split():
        if strip_accents:
            decomposed = unicodedata.normalize("NFD", token)
            token = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
        current = ""
        for char in token:
            if reference_is_punctuation(char):
                if current:
                    words.append(current)
                current = ""
                words.append(char)
            else:
                current += char
        if current:
            words.append(current)
    return words


def reference_wordpiece(word, vocab, max_chars=100):
    if len(word) > max_chars:
        return ["[UNK]"]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        match = None
        while end > start:
            candidate = word[start:end]
            if start > 0:
                candidate = "##" + candidate
            if candidate in vocab:
                match = candidate
                break
            end -= 1
        if match is None:
            return ["[UNK]"]
        pieces.append(match)
        start = end
    return pieces


def reference_split_special(text):
    """Return (chunk, is_special) pairs: the special tokens written in `text`
    (case-sensitive, leftmost first) and the plain text between them."""
    chunks = []
    plain_start = 0
    position = 0
    while position < len(text):
        special = next(
            (token for token in SPECIAL_TOKENS if text.startswith(token, position)),
            None,
        )
        if special is None:
            position += 1
            continue
        chunks.append((text[plain_start:position], False))
        chunks.append((special, True))
        position += len(special)
        plain_start = position
    chunks.append((text[plain_start:], False))
    return chunks


def reference_tokens(text, vocab, lowercase=True, strip_accents=None, max_chars=100):
    if strip_accents is None:
        strip_accents = lowercase
    tokens = []
    for chunk, is_special in reference_split_special(text):
        if is_special:
            tokens.append(chunk)
            continue
        for word in reference_words(chunk, lowercase, strip_accents):
            tokens.extend(reference_wordpiece(word, vocab, max_chars))
    return tokens


def reference_word_tokens(text, vocab, lowercase=True):
    """RoFormer's jieba tokenizer: whole segments if known, else wordpieces."""
    tokens = []
    for chunk, is_special in reference_split_special(text):
        if is_special:
            tokens.append(chunk)
            continue
        if lowercase:
            chunk = "".join(char.lower() for char in chunk)
        for segment in jieba.cut(chunk, HMM=False):
            if segment in vocab:
                tokens.append(segment)
            else:
                tokens.extend(reference_tokens(segment, vocab, lowercase))
    return tokens


# --- Fixtures -------------------------------------------------------------------------

HANDWRITTEN_VOCAB = [
    *SPECIAL_TOKENS,
    "un",
    "##aff",
    "##able",
    "play",
    "##ing",
    "##ed",
    "i",
    "love",
    "bei",
    "##jing",
    "beijing",
    ",",
    "!",
    ".",
    "我",
    "爱",
    "北",
    "京",
    "天",
    "安",
    "门",
    "北京",
    "，",
    "。",
]


@pytest.fixture(scope="module")
def corpus_vocab():
    """A vocabulary built here from Multi30k English and German words.

    It contains every character of those sentences with its "##" form, the
    most common words in cased and lowercase form, some suffixes and a few
    CJK characters, so most test texts split into real pieces.
    """
    lines = []
    for name in ("train.en.gz", "train.de.gz"):
        with gzip.open(DATA_DIR / "multi30k" / name, "rt", encoding="utf-8") as file:
            lines.extend(file.read().splitlines()[:3000])
    word_counts = Counter()
    for line in lines:
        word_counts.update(reference_words(line, lowercase=False, strip_accents=False))
        word_counts.update(reference_words(line, lowercase=True, strip_accents=True))
    chars = sorted({char for word in word_counts for char in word})
    common = [word for word, _ in word_counts.most_common(3000)]
    extra = ["##ing", "##ed", "##s", "##er", "un", "##aff", "##able", "😀", "北京"]
    vocab = list(SPECIAL_TOKENS)
    for token in chars + ["##" + char for char in chars] + common + extra:
        if token not in vocab:
            vocab.append(token)
    vocab.extend(char for char in "我爱北京天安门中文" if char not in vocab)
    return vocab


@pytest.fixture(scope="module")
def cail_texts():
    """Documents A, B and C of the first 20 CAIL2019-SCM lines (60 texts)."""
    texts = []
    with open(DATA_DIR / "cail2019_scm" / "input.txt", encoding="utf-8") as file:
        for line in itertools.islice(file, 20):
            row = json.loads(line)
            texts.extend([row["A"], row["B"], row["C"]])
    return texts


VARIED_TEXTS = [
    "Hello, World! This is a test.",
    "The quick brown fox's 3.14 jumps... (over) [the] {lazy} dog?",
    "café naïve résumé Ångström ÉCOLE Straße",
    "cafe\u0301 decomposed e\u0301 and A\u030a",
    "我爱北京天安门, I love Beijing!",
    "全角标点：你好！（测试）「引号」、。",
    "emoji 😀👍🏽 and 👨‍👩‍👧 family 🥰",
    "a" * 150,
    "b" * 100 + " " + "c" * 101,
    "",
    "   \t\n  ",
    "control\x00chars\x07here\u200bzero\ufffdwidth\x1fend\x85",
    "ΟΔΟΣ Σ ΣΑΣ. όσος",
    "\u03aa\u0301 \u1fbc\u0301",
    "İstanbul ǅemal ﬁne",
    "tab\tnew\nline\r\nend\u3000ideographic\u00a0nbsp\u2028separator",
    "numbers 1,234.56 and 2019年3月6日",
    "unaffable playing ##ing [MASK] [CLS]",
    "Zwei junge Männer stehen vor einem Gebäude.",
    "𠀀 extension B, 豈 compatibility, ひらがなカタカナ kana",
    "हिन्दी العربية עִבְרִית",
    "a\u1fefb Kelvin\u212a Ohm\u2126",
]

SPECS = [
    pytest.param(True, None, id="uncased"),
    pytest.param(False, None, id="cased"),
    pytest.param(True, False, id="lowercase-keep-accents"),
    pytest.param(False, True, id="cased-strip-accents"),
]


# --- wordpiece and chinese_char -------------------------------------------------------


@pytest.mark.parametrize("lowercase, strip_accents", SPECS)
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_wordpiece_matches_reference(corpus_vocab, text, lowercase, strip_accents):
    spec = TokenizerSpec("wordpiece", lowercase=lowercase, strip_accents=strip_accents)
    tokenizer = Tokenizer(corpus_vocab, spec)
    expected = reference_tokens(text, set(corpus_vocab), lowercase, strip_accents)

    assert tokenizer.tokenize(text) == expected


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_encode_ids_match_vocab_positions(corpus_vocab, text):
    tokenizer = Tokenizer(corpus_vocab, TokenizerSpec("wordpiece"))
    expected = [
        corpus_vocab.index(token) for token in reference_tokens(text, corpus_vocab)
    ]

    assert tokenizer.encode(text) == expected


# Samples outside the Basic Multilingual Plane: the edges of the CJK blocks,
# the first block after them (not CJK for BERT), emoji, and tag characters
# (category Cf).
ASTRAL_SAMPLES = [
    *range(0x10000, 0x10100),
    *range(0x1F300, 0x1F700),
    *range(0x1F900, 0x1FB00),
    *range(0x1FFF0, 0x20010),
    *range(0x2A6D0, 0x2A710),
    *range(0x2B730, 0x2B750),
    *range(0x2B810, 0x2B830),
    *range(0x2CEA0, 0x2CEC0),
    *range(0x2F7F0, 0x2F810),
    *range(0x2FA10, 0x2FA30),
    *range(0x30000, 0x30010),
    *range(0xE0000, 0xE0080),
]


@pytest.mark.parametrize("lowercase, strip_accents", SPECS)
def test_unicode_sweep_matches_reference(lowercase, strip_accents):
    """Every character of the Basic Multilingual Plane, and astral samples.

    Each character is tested inside a word, at the end of a word (where a
    capital sigma is final) and before a combining acute accent.
    """
    code_points = [
        code_point
        for code_point in [*range(0x10000), *ASTRAL_SAMPLES]
        if not 0xD800 <= code_point <= 0xDFFF and chr(code_point) not in "\n\r"
    ]
    chars = [chr(code_point) for code_point in code_points]
    # NFC maps a few compatibility ideographs to ideographs outside the plane.
    images = {image for char in chars for image in unicodedata.normalize("NFC", char)}
    # With every character and its "##" form in the vocabulary, each word
    # splits into its characters, so the tokens show the words exactly.
    vocab_chars = chars + sorted(images - set(chars))
    vocab = [*SPECIAL_TOKENS, *vocab_chars, *("##" + char for char in vocab_chars)]
    spec = TokenizerSpec("wordpiece", lowercase=lowercase, strip_accents=strip_accents)
    tokenizer = Tokenizer(vocab, spec)

    mismatched_chunks = []
    for start in range(0, len(chars), 512):
        for pattern in ("x{}y ", "x{} ", "{}\u0301 "):
            text = "".join(pattern.format(char) for char in chars[start : start + 512])
            expected = []
            for word in reference_words(text, lowercase, spec.removes_accents):
                expected.extend([word[0], *("##" + char for char in word[1:])])
            if tokenizer.tokenize(text) != expected:
                mismatched_chunks.append((hex(code_points[start]), pattern))

    assert mismatched_chunks == []


def test_lowercase_ignores_final_sigma():
    greek = "ΟΔΣοδσς"
    vocab = [*SPECIAL_TOKENS, *greek, *("##" + char for char in greek)]
    tokenizer = Tokenizer(vocab, TokenizerSpec("wordpiece"))

    # transformers lowercases character by character, so no final "ς".
    assert tokenizer.tokenize("ΟΔΟΣ ΣΣ") == ["ο", "##δ", "##ο", "##σ", "σ", "##σ"]
    assert tokenizer.tokenize("οδος") == ["ο", "##δ", "##ο", "##ς"]


def test_long_word_limit_is_configurable():
    vocab = [*SPECIAL_TOKENS, "a", "##a"]
    tokenizer = Tokenizer(vocab, TokenizerSpec("wordpiece", max_chars_per_word=5))

    assert tokenizer.tokenize("aaaaa aaaaaa") == ["a"] + ["##a"] * 4 + ["[UNK]"]


def test_unmatchable_word_is_one_unk():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))

    assert tokenizer.tokenize("unaffablez play") == ["[UNK]", "play"]


def test_chinese_char_splits_every_ideograph():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_char"))

    assert tokenizer.tokenize("我爱北京天安门") == list("我爱北京天安门")


def test_chinese_char_wordpieces_english():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_char"))
    text = "我爱Unaffable Beijing，playing!"

    assert tokenizer.tokenize(text) == reference_tokens(text, HANDWRITTEN_VOCAB)
    assert tokenizer.tokenize(text) == [
        "我",
        "爱",
        "un",
        "##aff",
        "##able",
        "beijing",
        "，",
        "play",
        "##ing",
        "!",
    ]


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_chinese_char_matches_reference(corpus_vocab, text):
    tokenizer = Tokenizer(corpus_vocab, TokenizerSpec("chinese_char"))

    assert tokenizer.tokenize(text) == reference_tokens(text, set(corpus_vocab))


# --- chinese_word ---------------------------------------------------------------------


def test_chinese_word_keeps_known_words():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word"))
    segments = list(jieba.cut("我爱北京天安门", HMM=False))
    tokens = tokenizer.tokenize("我爱北京天安门, I love Beijing!")

    # The test relies on jieba cutting both words out of the sentence.
    assert "北京" in segments
    assert "天安门" in segments
    assert "北京" in tokens
    assert "天安门" not in tokens
    assert tokens[tokens.index("北京") + 1 : tokens.index("北京") + 4] == list("天安门")


@pytest.mark.parametrize(
    "text",
    [*VARIED_TEXTS, "我爱北京天安门, I love Beijing!", "北京欢迎你。Unaffable北京人"],
)
def test_chinese_word_matches_jieba_reference(text):
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word"))

    assert tokenizer.tokenize(text) == reference_word_tokens(text, HANDWRITTEN_VOCAB)


def test_chinese_word_lowercases_before_lookup():
    vocab = [*SPECIAL_TOKENS, "beijing", "bei", "##jing"]
    cased = Tokenizer(vocab, TokenizerSpec("chinese_word", lowercase=False))
    uncased = Tokenizer(vocab, TokenizerSpec("chinese_word"))

    assert uncased.tokenize("Beijing") == ["beijing"]
    assert cased.tokenize("Beijing") == ["[UNK]"]


def test_chinese_word_silences_jieba():
    script = (
        "from roformer_jax.data.tokenizers import SPECIAL_TOKENS, Tokenizer, "
        "TokenizerSpec\n"
        "vocab = [*SPECIAL_TOKENS, '北京']\n"
        "print(Tokenizer(vocab, TokenizerSpec('chinese_word')).tokenize('我爱北京'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert result.stdout.strip() == "['[UNK]', '[UNK]', '北京']"
    assert result.stderr == ""


def test_chinese_word_sets_jieba_log_level():
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word")).tokenize("我爱北京")

    assert logging.getLogger("jieba").level >= logging.WARNING


# --- encode_words ---------------------------------------------------------------------


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_word_starts_skip_continuations(corpus_vocab, text):
    tokenizer = Tokenizer(corpus_vocab, TokenizerSpec("wordpiece"))
    ids, word_starts = tokenizer.encode_words(text)
    tokens = [corpus_vocab[token_id] for token_id in ids]

    assert ids == tokenizer.encode(text)
    assert word_starts == [not token.startswith("##") for token in tokens]


def test_word_starts_wordpiece_example():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))
    ids, word_starts = tokenizer.encode_words("unaffable playing, i")

    assert [HANDWRITTEN_VOCAB[i] for i in ids] == [
        "un",
        "##aff",
        "##able",
        "play",
        "##ing",
        ",",
        "i",
    ]
    assert word_starts == [True, False, False, True, False, True, True]


def test_word_starts_char_mode_each_ideograph():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_char"))
    ids, word_starts = tokenizer.encode_words("我爱北京天安门")

    assert len(ids) == 7
    assert word_starts == [True] * 7


def test_word_starts_word_mode_jieba_words():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word"))
    ids, word_starts = tokenizer.encode_words("我爱北京天安门")
    tokens = [HANDWRITTEN_VOCAB[i] for i in ids]

    # jieba cuts 我 / 爱 / 北京 / 天安门. 北京 is one token and the unknown
    # word 天安门 splits into three characters that form one word.
    assert tokens == ["我", "爱", "北京", "天", "安", "门"]
    assert word_starts == [True, True, True, True, False, False]


def test_word_starts_word_mode_english_fallback():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word"))
    ids, word_starts = tokenizer.encode_words("我爱unaffable")
    tokens = [HANDWRITTEN_VOCAB[i] for i in ids]

    assert tokens == ["我", "爱", "un", "##aff", "##able"]
    assert word_starts == [True, True, True, False, False]


# --- decode ---------------------------------------------------------------------------


def test_decode_joins_wordpieces():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))

    assert (
        tokenizer.decode(tokenizer.encode("Unaffable playing!"))
        == "unaffable playing !"
    )


def test_decode_joins_ideographs():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_word"))

    assert tokenizer.decode(tokenizer.encode("我爱北京天安门。")) == "我爱北京天安门。"


def test_decode_skips_special_tokens():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))
    ids = [tokenizer.cls_id, *tokenizer.encode("i love beijing"), tokenizer.sep_id]

    assert tokenizer.decode(ids) == "[CLS] i love beijing [SEP]"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "i love beijing"


def test_decode_accepts_numpy_ids():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))
    ids = np.array(tokenizer.encode("i love beijing"), dtype=np.int32)

    assert tokenizer.decode(ids) == "i love beijing"


def test_decode_rejects_out_of_range_id():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))

    with pytest.raises(TokenizerError, match=str(len(HANDWRITTEN_VOCAB))):
        tokenizer.decode([5, len(HANDWRITTEN_VOCAB)])


# --- Vocabulary checks and properties -------------------------------------------------


def test_special_ids_follow_vocab_positions():
    vocab = ["hello", *reversed(SPECIAL_TOKENS), "world"]
    tokenizer = Tokenizer(vocab, TokenizerSpec("wordpiece"))

    assert tokenizer.pad_id == vocab.index("[PAD]")
    assert tokenizer.unk_id == vocab.index("[UNK]")
    assert tokenizer.cls_id == vocab.index("[CLS]")
    assert tokenizer.sep_id == vocab.index("[SEP]")
    assert tokenizer.mask_id == vocab.index("[MASK]")
    assert tokenizer.special_ids == frozenset({1, 2, 3, 4, 5})
    assert tokenizer.vocab_size == 7


def test_missing_special_token_rejected():
    vocab = [token for token in HANDWRITTEN_VOCAB if token != "[MASK]"]

    with pytest.raises(TokenizerError, match=r"\[MASK\]"):
        Tokenizer(vocab, TokenizerSpec("wordpiece"))


def test_repeated_token_rejected():
    vocab = [*HANDWRITTEN_VOCAB, "play"]
    message = f"'play' at ids {vocab.index('play')}, {len(vocab) - 1}"

    with pytest.raises(TokenizerError, match=message):
        Tokenizer(vocab, TokenizerSpec("wordpiece"))


def test_token_with_line_break_rejected():
    with pytest.raises(TokenizerError, match="line break"):
        Tokenizer([*SPECIAL_TOKENS, "a\nb"], TokenizerSpec("wordpiece"))


def test_unknown_kind_rejected():
    with pytest.raises(TokenizerError, match="'bpe'.*'wordpiece'"):
        TokenizerSpec("bpe")


def test_strip_accents_follows_lowercase():
    assert TokenizerSpec("wordpiece").removes_accents is True
    assert TokenizerSpec("wordpiece", lowercase=False).removes_accents is False
    assert TokenizerSpec("wordpiece", strip_accents=False).removes_accents is False


def test_equality_compares_vocab_and_spec():
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece"))

    assert tokenizer == Tokenizer(list(HANDWRITTEN_VOCAB), TokenizerSpec("wordpiece"))
    assert tokenizer != Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_char"))
    assert tokenizer != Tokenizer([*HANDWRITTEN_VOCAB, "x"], TokenizerSpec("wordpiece"))


# --- Files ----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    vocab = [*HANDWRITTEN_VOCAB, " ", "", "é", "##😀"]
    spec = TokenizerSpec(
        "chinese_word", lowercase=False, strip_accents=True, max_chars_per_word=7
    )
    tokenizer = Tokenizer(vocab, spec)
    directory = tmp_path / "workdir" / "tokenizer"

    tokenizer.save(str(directory))
    loaded = Tokenizer.load(str(directory))

    assert loaded == tokenizer
    assert loaded.spec == spec
    assert loaded.vocab == tuple(vocab)


def test_save_writes_readable_files(tmp_path):
    tokenizer = Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("chinese_char"))

    tokenizer.save(tmp_path)
    vocab_text = (tmp_path / "vocab.txt").read_text(encoding="utf-8")
    config = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))

    assert vocab_text == "".join(token + "\n" for token in HANDWRITTEN_VOCAB)
    assert config["kind"] == "chinese_char"
    assert config["lowercase"] is True
    assert config["strip_accents"] is None
    assert config["max_chars_per_word"] == 100
    assert config["vocab_size"] == len(HANDWRITTEN_VOCAB)


def test_from_vocab_file_uses_line_numbers(tmp_path):
    path = tmp_path / "vocab.txt"
    # A BERT-style file: a byte order mark, Windows line ends on two lines and
    # a token that is a single space.
    lines = [
        "[PAD]",
        "[unused0]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        " ",
        "北京",
        "##s",
    ]
    text = "\r\n".join(lines[:3]) + "\r\n" + "\n".join(lines[3:]) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    tokenizer = Tokenizer.from_vocab_file(str(path), TokenizerSpec("chinese_word"))

    assert tokenizer.vocab == tuple(lines)
    assert tokenizer.unk_id == 2
    assert tokenizer.encode("北京") == [7]


def test_from_vocab_file_missing(tmp_path):
    path = tmp_path / "absent.txt"

    with pytest.raises(TokenizerError, match="absent.txt not found"):
        Tokenizer.from_vocab_file(str(path), TokenizerSpec("wordpiece"))


def test_from_vocab_file_invalid_utf8(tmp_path):
    path = tmp_path / "vocab.txt"
    data = "\n".join(SPECIAL_TOKENS[:2]).encode("utf-8") + b"\ncaf\xe9\n[SEP]\n"
    path.write_bytes(data)

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_vocab_file(str(path), TokenizerSpec("wordpiece"))

    assert str(path) in str(raised.value)
    assert "line 3" in str(raised.value)
    assert "UTF-8" in str(raised.value)


def test_from_vocab_file_missing_special(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_vocab_file(str(path), TokenizerSpec("wordpiece"))

    assert str(path) in str(raised.value)
    assert "[MASK]" in str(raised.value)


def test_load_missing_directory(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json not found"):
        Tokenizer.load(str(tmp_path / "absent"))


def test_load_missing_vocab(tmp_path):
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece")).save(tmp_path)
    (tmp_path / "vocab.txt").unlink()

    with pytest.raises(TokenizerError, match="vocab.txt not found"):
        Tokenizer.load(tmp_path)


def test_load_malformed_json(tmp_path):
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece")).save(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": ', encoding="utf-8")

    with pytest.raises(TokenizerError, match="tokenizer.json: not UTF-8 JSON"):
        Tokenizer.load(tmp_path)


def test_load_unknown_kind(tmp_path):
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece")).save(tmp_path)
    config_path = tmp_path / "tokenizer.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["kind"] = "sentencepiece"
    config_path.write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.load(tmp_path)

    assert str(config_path) in str(raised.value)
    assert "'sentencepiece'" in str(raised.value)


def test_load_size_mismatch(tmp_path):
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece")).save(tmp_path)
    with open(tmp_path / "vocab.txt", "a", encoding="utf-8") as file:
        file.write("extra\n")

    with pytest.raises(TokenizerError, match="different saves"):
        Tokenizer.load(tmp_path)


def test_load_invalid_utf8_vocab(tmp_path):
    Tokenizer(HANDWRITTEN_VOCAB, TokenizerSpec("wordpiece")).save(tmp_path)
    vocab_path = tmp_path / "vocab.txt"
    vocab_path.write_bytes(vocab_path.read_bytes().replace("北".encode(), b"\xff\xfe"))

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.load(tmp_path)

    assert str(vocab_path) in str(raised.value)
    assert f"line {HANDWRITTEN_VOCAB.index('北') + 1}" in str(raised.value)


# --- train_wordpiece ------------------------------------------------------------------

ENGLISH_SENTENCES = [
    "The cat sat on the mat while the dog slept by the door.",
    "A quick brown fox jumps over the lazy dog near the river.",
    "Children were playing football in the park after school.",
    "She reads books about history, science and travelling.",
    "The weather was sunny, so they walked to the market.",
    "Playing music together makes the evenings shorter and happier.",
    "He cooked dinner for his friends and they played cards.",
    "The river flows quietly past the old mill and the bridge.",
]


def unk_fraction(tokenizer, texts):
    ids = [token_id for text in texts for token_id in tokenizer.encode(text)]
    return ids.count(tokenizer.unk_id) / len(ids)


def test_train_english_specials_first():
    tokenizer = train_wordpiece(ENGLISH_SENTENCES * 5, 120, TokenizerSpec("wordpiece"))

    assert tokenizer.vocab[:5] == SPECIAL_TOKENS
    assert tokenizer.vocab_size <= 120
    assert unk_fraction(tokenizer, ENGLISH_SENTENCES) == 0.0


def test_train_english_learns_words():
    tokenizer = train_wordpiece(ENGLISH_SENTENCES * 5, 400, TokenizerSpec("wordpiece"))
    tokens = tokenizer.tokenize("The river")

    assert "the" in tokenizer.vocab
    assert tokens == ["the", "river"]


def test_train_respects_tight_vocab_size():
    distinct_chars = {char for text in ENGLISH_SENTENCES for char in text.lower()}
    # Fewer tokens than the characters and their "##" forms need.
    vocab_size = len(distinct_chars)
    tokenizer = train_wordpiece(
        ENGLISH_SENTENCES, vocab_size, TokenizerSpec("wordpiece")
    )

    assert tokenizer.vocab_size <= vocab_size
    assert tokenizer.vocab[:5] == SPECIAL_TOKENS


def test_train_rejects_tiny_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(ENGLISH_SENTENCES, 5, TokenizerSpec("wordpiece"))


def test_train_chinese_char_collects_characters(cail_texts):
    counts = Counter(
        char for text in cail_texts for char in text if reference_is_cjk(char)
    )
    frequent = {char for char, count in counts.items() if count >= 2}
    rare = {char for char, count in counts.items() if count == 1}
    tokenizer = train_wordpiece(cail_texts, 5000, TokenizerSpec("chinese_char"))

    assert tokenizer.vocab[:5] == SPECIAL_TOKENS
    assert tokenizer.vocab_size <= 5000
    assert frequent <= set(tokenizer.vocab)
    assert rare.isdisjoint(tokenizer.vocab)
    assert unk_fraction(tokenizer, cail_texts) < 0.01


def test_train_chinese_char_respects_vocab_size(cail_texts):
    tokenizer = train_wordpiece(cail_texts, 300, TokenizerSpec("chinese_char"))

    assert tokenizer.vocab_size == 300
    assert tokenizer.vocab[:5] == SPECIAL_TOKENS


def test_train_chinese_word_adds_jieba_words(cail_texts):
    segment_counts = Counter(
        segment
        for text in cail_texts
        for segment in jieba.cut(text.lower(), HMM=False)
        if len(segment) > 1 and all(reference_is_cjk(char) for char in segment)
    )
    frequent_words = {word for word, count in segment_counts.items() if count >= 2}
    tokenizer = train_wordpiece(cail_texts, 8000, TokenizerSpec("chinese_word"))
    tokens = [token for text in cail_texts[:5] for token in tokenizer.tokenize(text)]

    assert tokenizer.vocab[:5] == SPECIAL_TOKENS
    assert tokenizer.vocab_size <= 8000
    assert frequent_words <= set(tokenizer.vocab)
    assert any(len(token) > 1 and reference_is_cjk(token[0]) for token in tokens)
    assert unk_fraction(tokenizer, cail_texts) < 0.01


def test_train_wordpiece_on_mixed_text(cail_texts):
    texts = cail_texts[:10] + ENGLISH_SENTENCES
    tokenizer = train_wordpiece(texts, 3000, TokenizerSpec("wordpiece"))

    assert tokenizer.vocab[:5] == SPECIAL_TOKENS
    assert tokenizer.vocab_size <= 3000
    assert unk_fraction(tokenizer, texts) == 0.0
