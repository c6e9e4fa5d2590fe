"""Token ids of roformer_jax tokenizers against transformers' tokenizers.

The references are transformers' RoFormerTokenizer (the slow class, which
segments with rjieba) for kind "chinese_word" and BertTokenizer for
"wordpiece" and "chinese_char". Each reads the same vocab.txt as the
tokenizer under test. The vocabulary is built here from the offline
CAIL2019-SCM and English Wikipedia copies, so every step of the tokenizers
runs on real text.
"""

import bz2
import dataclasses
import itertools
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import jieba
import pytest
import rjieba
import transformers

from roformer_jax.data.sequence_batches import encode_pair
from roformer_jax.data.tokenizers import (
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    TokenizerSpec,
    train_wordpiece,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ENWIKI_PATH = (
    DATA_DIR
    / "enwiki_excerpt"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
CAIL_LINES = 100
# Longer than any test text in tokens, so encode_pair never truncates.
NO_TRUNCATION = 100_000

CJK_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
]
FULL_WIDTH_PUNCTUATION = (
    "，。！？：；“”‘’（）【】《》〈〉、…—·「」『』％＋－／＝＠＃＆～"
)
DIGITS = "0123456789"

MIXED_TEXTS = [
    "我爱北京天安门, I love Beijing!",
    "请访问https://www.example.com/path?q=1&lang=zh获取更多信息。",
    "价格是3.14元，折扣50%，共计1,234.56元。",
    "C++和C#都是编程语言，联系邮箱foo_bar@example.org。",
    "全角标点：你好！（测试）「引号」『书名』【注】、。……——",
    "表情😀👍🏽和家庭👨‍👩‍👧都不是汉字。",
    "café naïve résumé Ångström在中文里",
    "tab\t制表符\n换行\r\n回车　全角空格\u00a0不换行空格",
    "   多个   空格   ",
    "ＡＢＣ全角字母与１２３全角数字",
    "iPhone15发布了，售价5999元",
    "2019年3月6日下午3点30分",
    "他说：“你好，World”。",
    "UPPERCASE英文ABC和MixedCase单词",
    "被告人张某某于2018年5月在上海市浦东新区盗窃iPad一台，价值人民币3000元。",
    "原告诉称：双方于2015年签订《借款合同》，约定月利率2%。",
    "The defendant 被告 failed to repay the loan of 100,000 yuan.",
    "第一条 为了规范民间借贷行为，根据《中华人民共和国合同法》制定本规定。",
    "Email: LAW-office@Court.GOV.cn 电话：010-12345678",
    "北京大学生前来应聘",
    "abc123def 中文abc123 ##ing ##北京",
    "ΟΔΟΣ希腊文Σ",
    "控制字符\x00\x07\u200b零宽\ufffd替换\u2028行分隔",
    "𠀀扩展B汉字和豈兼容汉字",
    "ひらがなカタカナ한국어混合",
    "e\u0301分解重音A\u030a",
    "",
    "   ",
    "\n",
    "a" * 150 + "中文",
    "１２３４５６７８９０",
    "百分之五十50%和千分之三3‰",
    "“引号”‘单引号’《书名号》〈尖括号〉",
    "（一）被告应于判决生效之日起十日内偿还借款本金50000元及利息；",
    "SELECT * FROM users WHERE id=1; 查询用户",
    "温度是-5°C到+10°C之间",
    "版本v2.0.1已发布",
    "借款人Zhang San (张三) 和 Lǐ Sì (李四) 在 Shànghǎi 签约",
]

# Texts on which transformers 4.57.6 RoFormerTokenizerFast disagrees with its
# slow RoFormerTokenizer, the reference here. The fast class strips accents
# before jieba segments the text, and it does not split a jieba segment such
# as "C++" at punctuation.
FAST_DIFFERS_TEXTS = {
    "C++和C#都是编程语言，联系邮箱foo_bar@example.org。",
    "café naïve résumé Ångström在中文里",
    "ひらがなカタカナ한국어混合",
    "借款人Zhang San (张三) 和 Lǐ Sì (李四) 在 Shànghǎi 签约",
}

# Special tokens written in the text, and near misses that are plain text.
SPECIAL_TOKEN_TEXTS = [
    "[MASK]",
    "我爱[MASK]京",
    "[CLS]开头[SEP]结尾[SEP]",
    "小写[mask]不算",
    "[Mask]大小写混合",
    "[[MASK]]",
    "[MASK",
    "MASK]",
    "x[UNK]y",
    "[PAD][PAD]",
    "a [SEP] b",
    "[SEP]\t[SEP]",
    "［MASK］全角括号",
    "[MASK]\u0301重音",
    "unaffable[MASK]ing",
]

# (lowercase, strip_accents) of the TokenizerSpec, which are do_lower_case and
# strip_accents of the transformers tokenizer.
CASES = [
    pytest.param((True, None), id="uncased"),
    pytest.param((False, None), id="cased"),
    pytest.param((True, False), id="lowercase-keep-accents"),
    pytest.param((False, True), id="cased-strip-accents"),
]


def is_cjk(char):
    return any(first <= ord(char) <= last for first, last in CJK_RANGES)


def is_cjk_word(segment):
    return len(segment) > 1 and all(is_cjk(char) for char in segment)


def transformers_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def mismatches(ours, reference, texts):
    """Return the texts whose ids differ between the two tokenizers."""
    return [
        text for text in texts if ours.encode(text) != transformers_ids(reference, text)
    ]


def write_vocab(path, tokens):
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return path


# --- Texts and vocabulary -------------------------------------------------------------


@pytest.fixture(scope="module")
def english_lines():
    """Lines of at least 40 characters from the Wikipedia XML excerpt."""
    with bz2.open(ENWIKI_PATH, "rt", encoding="utf-8") as file:
        text = file.read(1_500_000)
    return [line for line in text.splitlines() if len(line) >= 40][:2000]


@pytest.fixture(scope="module")
def cail_texts():
    """Documents A, B and C of the first CAIL_LINES CAIL2019-SCM lines."""
    texts = []
    with open(DATA_DIR / "cail2019_scm" / "input.txt", encoding="utf-8") as file:
        for line in itertools.islice(file, CAIL_LINES):
            row = json.loads(line)
            texts.extend([row["A"], row["B"], row["C"]])
    return texts


@pytest.fixture(scope="module")
def spliced_texts(cail_texts, english_lines):
    """CAIL text with Wikipedia words inserted at random places (fixed seed)."""
    rng = random.Random(0)
    words = [word for line in english_lines[:300] for word in line.split()]
    texts = []
    for document in cail_texts[:150]:
        chars = list(document[:200])
        for _ in range(5):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(words))
        texts.append("".join(chars))
    return texts


@pytest.fixture(scope="module")
def vocab(english_lines, cail_texts, spliced_texts):
    """A RoFormer-style vocabulary for the test texts.

    It contains the special tokens, WordPiece tokens trained on Wikipedia in
    lowercase and cased form, every CJK character of the texts, full-width
    punctuation, digits, and every second one of the 800 most frequent jieba
    words of CAIL. So jieba words are found whole about as often as they fall
    back to single characters.
    """
    uncased = train_wordpiece(english_lines, 3000, TokenizerSpec("wordpiece"))
    cased = train_wordpiece(
        english_lines, 3000, TokenizerSpec("wordpiece", lowercase=False)
    )
    all_texts = [*cail_texts, *spliced_texts, *MIXED_TEXTS]
    cjk_chars = sorted({char for text in all_texts for char in text if is_cjk(char)})
    segment_counts = Counter(
        segment
        for text in cail_texts
        for segment in jieba.cut(text.lower(), HMM=False)
        if is_cjk_word(segment)
    )
    jieba_words = [word for word, _ in segment_counts.most_common(800)][::2]

    tokens = [*SPECIAL_TOKENS, "[unused1]", "[unused2]"]
    candidates = [
        *uncased.vocab,
        *cased.vocab,
        *cjk_chars,
        *FULL_WIDTH_PUNCTUATION,
        *DIGITS,
        *("##" + digit for digit in DIGITS),
        *jieba_words,
        "😀",
        "é",
        "c++",
    ]
    known = set(tokens)
    for token in candidates:
        if token not in known:
            tokens.append(token)
            known.add(token)
    return tokens


@pytest.fixture(scope="module")
def vocab_path(vocab, tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", vocab)


@pytest.fixture(scope="module", params=CASES)
def word_pair(request, vocab_path):
    """Our "chinese_word" tokenizer and transformers' RoFormerTokenizer."""
    lowercase, strip_accents = request.param
    ours = Tokenizer.from_vocab_file(
        vocab_path,
        TokenizerSpec("chinese_word", lowercase=lowercase, strip_accents=strip_accents),
    )
    reference = transformers.RoFormerTokenizer(
        str(vocab_path), do_lower_case=lowercase, strip_accents=strip_accents
    )
    return ours, reference


# --- The vocabulary exercises every branch --------------------------------------------


@pytest.fixture(scope="module")
def reference_token_counts(vocab_path, cail_texts, spliced_texts):
    """Counts of the RoFormerTokenizer tokens of 60 CAIL and all spliced texts."""
    reference = transformers.RoFormerTokenizer(str(vocab_path))
    counts = Counter()
    for text in [*cail_texts[:60], *spliced_texts]:
        counts.update(reference.tokenize(text))
    return counts


def test_vocab_yields_whole_jieba_words(reference_token_counts):
    whole_words = sum(
        count for token, count in reference_token_counts.items() if is_cjk_word(token)
    )

    assert whole_words > 5000


def test_vocab_splits_unknown_jieba_words(vocab, cail_texts):
    vocab_set = set(vocab)
    unknown_words = [
        segment
        for text in cail_texts
        for segment in rjieba.cut(text.lower(), False)
        if is_cjk_word(segment) and segment not in vocab_set
    ]

    assert len(unknown_words) > 5000


def test_vocab_yields_wordpiece_tokens(reference_token_counts):
    continuations = sum(
        count
        for token, count in reference_token_counts.items()
        if token.startswith("##") and len(token) > 2
    )
    ascii_words = sum(
        count
        for token, count in reference_token_counts.items()
        if token.isascii() and token.isalpha()
    )

    assert continuations > 100
    assert ascii_words > 500


def test_vocab_yields_punctuation_digits_unk(reference_token_counts):
    full_width = sum(reference_token_counts[char] for char in FULL_WIDTH_PUNCTUATION)
    digits = sum(reference_token_counts[digit] for digit in DIGITS)

    assert full_width > 1000
    assert digits > 1000
    assert reference_token_counts["[UNK]"] > 0


# --- chinese_word against RoFormerTokenizer -------------------------------------------


# CAIL text has almost no accented letters, so two cases suffice there.
@pytest.mark.parametrize("word_pair", CASES[:2], indirect=True)
def test_cail_ids_match_roformer(word_pair, cail_texts):
    ours, reference = word_pair

    assert mismatches(ours, reference, cail_texts) == []


def test_spliced_ids_match_roformer(word_pair, spliced_texts):
    ours, reference = word_pair

    assert mismatches(ours, reference, spliced_texts) == []


def test_mixed_ids_match_roformer(word_pair):
    ours, reference = word_pair

    assert mismatches(ours, reference, MIXED_TEXTS) == []


def test_english_ids_match_roformer(word_pair, english_lines):
    ours, reference = word_pair

    assert mismatches(ours, reference, english_lines[:100]) == []


def test_literal_special_tokens_match_roformer(word_pair):
    ours, reference = word_pair

    assert mismatches(ours, reference, SPECIAL_TOKEN_TEXTS) == []


def test_whitespace_tokens_match_roformer(tmp_path):
    # RoFormerTokenizer looks a whitespace segment up in the vocabulary
    # before its basic tokenizer would drop it.
    tokens = [*SPECIAL_TOKENS, "我", "爱", "北京", "a", "b", " ", "\u3000", "\t"]
    path = write_vocab(tmp_path / "vocab.txt", tokens)
    ours = Tokenizer.from_vocab_file(path, TokenizerSpec("chinese_word"))
    reference = transformers.RoFormerTokenizer(str(path))
    texts = ["我 爱 北京", "a  b", "我\u3000爱", "a\tb", " ", "北京\n", "a\u00a0b"]

    assert mismatches(ours, reference, texts) == []


def test_jieba_segments_like_rjieba(cail_texts, spliced_texts):
    texts = [*cail_texts, *spliced_texts, *MIXED_TEXTS, *SPECIAL_TOKEN_TEXTS]
    differing = [
        text
        for text in texts
        if list(jieba.cut(text, HMM=False)) != rjieba.cut(text, False)
    ]

    assert differing == []


# --- Special tokens -------------------------------------------------------------------


def test_literal_mask_is_one_token():
    vocab = [*SPECIAL_TOKENS, "我", "爱", "北", "京", "[", "]", "mask", "m", "##ask"]
    for kind in ("wordpiece", "chinese_char", "chinese_word"):
        tokenizer = Tokenizer(vocab, TokenizerSpec(kind))
        ids, word_starts = tokenizer.encode_words("我爱[MASK]京")

        assert tokenizer.tokenize("我爱[MASK]京") == ["我", "爱", "[MASK]", "京"]
        assert ids[2] == tokenizer.mask_id
        assert word_starts == [True, True, True, True]


def test_lowercase_mask_stays_text():
    vocab = [*SPECIAL_TOKENS, "[", "]", "mask"]
    tokenizer = Tokenizer(vocab, TokenizerSpec("chinese_word"))

    assert tokenizer.tokenize("[mask]") == ["[", "mask", "]"]
    assert tokenizer.tokenize("[Mask]") == ["[", "mask", "]"]


@pytest.mark.parametrize(
    "texts",
    [
        pytest.param(MIXED_TEXTS, id="mixed"),
        pytest.param(SPECIAL_TOKEN_TEXTS, id="special-tokens"),
    ],
)
def test_cls_sep_single_matches_roformer(word_pair, texts):
    ours, reference = word_pair
    differing = []
    for text in texts:
        ids, types = encode_pair(
            ours.encode(text),
            None,
            seq_len=NO_TRUNCATION,
            cls_id=ours.cls_id,
            sep_id=ours.sep_id,
        )
        encoded = reference(text)
        if (ids, types) != (encoded["input_ids"], encoded["token_type_ids"]):
            differing.append(text)

    assert differing == []


def test_cls_sep_pair_matches_roformer(word_pair, cail_texts):
    ours, reference = word_pair
    pairs = [
        *zip(cail_texts[0:60:3], cail_texts[1:60:3], strict=True),
        *zip(MIXED_TEXTS, reversed(MIXED_TEXTS), strict=True),
        *zip(SPECIAL_TOKEN_TEXTS, MIXED_TEXTS, strict=False),
    ]
    differing = []
    for first, second in pairs:
        ids, types = encode_pair(
            ours.encode(first),
            ours.encode(second),
            seq_len=NO_TRUNCATION,
            cls_id=ours.cls_id,
            sep_id=ours.sep_id,
        )
        encoded = reference(first, second)
        if (ids, types) != (encoded["input_ids"], encoded["token_type_ids"]):
            differing.append((first, second))

    assert differing == []


def test_pair_truncation_matches_longest_first(word_pair):
    """Every split of a length budget between two texts, ties included,
    drops the same tokens as transformers' "longest_first" truncation."""
    ours, reference = word_pair
    first, second = "hello world 你好世界 again", "世界 hello 你好"
    differing = []
    for seq_len in range(8, 20):
        ids, types = encode_pair(
            ours.encode(first),
            ours.encode(second),
            seq_len=seq_len,
            cls_id=ours.cls_id,
            sep_id=ours.sep_id,
        )
        encoded = reference(
            first, second, truncation="longest_first", max_length=seq_len
        )
        if (ids, types) != (encoded["input_ids"], encoded["token_type_ids"]):
            differing.append(seq_len)

    assert differing == []


# --- RoFormerTokenizerFast ------------------------------------------------------------


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_ids_match_roformer_fast(vocab_path, cail_texts, lowercase):
    ours = Tokenizer.from_vocab_file(
        vocab_path, TokenizerSpec("chinese_word", lowercase=lowercase)
    )
    fast = transformers.RoFormerTokenizerFast(
        vocab_file=str(vocab_path), do_lower_case=lowercase
    )
    texts = [
        *cail_texts[:150],
        *SPECIAL_TOKEN_TEXTS,
        *(text for text in MIXED_TEXTS if text not in FAST_DIFFERS_TEXTS),
    ]

    assert mismatches(ours, fast, texts) == []


# --- wordpiece and chinese_char against BertTokenizer ---------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "chinese_char"])
@pytest.mark.parametrize("case", CASES)
def test_ids_match_bert(vocab_path, english_lines, spliced_texts, kind, case):
    lowercase, strip_accents = case
    ours = Tokenizer.from_vocab_file(
        vocab_path,
        TokenizerSpec(kind, lowercase=lowercase, strip_accents=strip_accents),
    )
    reference = transformers.BertTokenizer(
        str(vocab_path), do_lower_case=lowercase, strip_accents=strip_accents
    )
    texts = [
        *english_lines[:100],
        *spliced_texts[:50],
        *MIXED_TEXTS,
        *SPECIAL_TOKEN_TEXTS,
    ]

    assert mismatches(ours, reference, texts) == []


# --- Reading transformers tokenizer directories ---------------------------------------


@pytest.fixture(scope="module")
def check_texts(cail_texts):
    """Texts for the directory tests: mixed, special tokens and some CAIL."""
    return [*MIXED_TEXTS, *SPECIAL_TOKEN_TEXTS, *cail_texts[:20]]


@pytest.mark.parametrize("class_name", ["RoFormerTokenizer", "RoFormerTokenizerFast"])
@pytest.mark.parametrize("case", CASES)
def test_from_huggingface_reads_roformer_save(
    vocab_path, tmp_path, check_texts, class_name, case
):
    lowercase, strip_accents = case
    saved = getattr(transformers, class_name)(
        vocab_file=str(vocab_path), do_lower_case=lowercase, strip_accents=strip_accents
    )
    saved.save_pretrained(tmp_path)
    reference = transformers.RoFormerTokenizer.from_pretrained(tmp_path)

    ours = Tokenizer.from_huggingface(tmp_path)

    assert ours.spec == TokenizerSpec(
        "chinese_word", lowercase=lowercase, strip_accents=strip_accents
    )
    assert mismatches(ours, reference, check_texts) == []


@pytest.mark.parametrize("case", CASES)
def test_from_huggingface_reads_bert_save(vocab_path, tmp_path, check_texts, case):
    lowercase, strip_accents = case
    reference = transformers.BertTokenizer(
        str(vocab_path), do_lower_case=lowercase, strip_accents=strip_accents
    )
    reference.save_pretrained(tmp_path)

    ours = Tokenizer.from_huggingface(str(tmp_path))

    assert ours.spec == TokenizerSpec(
        "wordpiece", lowercase=lowercase, strip_accents=strip_accents
    )
    assert mismatches(ours, reference, check_texts) == []


def test_from_huggingface_reads_bert_fast_save(vocab_path, tmp_path):
    transformers.BertTokenizerFast(vocab_file=str(vocab_path)).save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "BertTokenizerFast"
    config_path.write_text(json.dumps(config), encoding="utf-8")

    assert Tokenizer.from_huggingface(tmp_path).spec == TokenizerSpec("wordpiece")


@pytest.mark.parametrize(
    "model_type, kind", [("roformer", "chinese_word"), ("bert", "wordpiece")]
)
def test_from_huggingface_uses_model_type(vocab_path, tmp_path, model_type, kind):
    # Without tokenizer_config.json, AutoTokenizer picks the class from
    # config.json, and so does from_huggingface.
    shutil.copy(vocab_path, tmp_path / "vocab.txt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, use_fast=False)

    ours = Tokenizer.from_huggingface(tmp_path)

    assert ours.spec == TokenizerSpec(kind)
    assert mismatches(ours, reference, MIXED_TEXTS) == []


def test_from_huggingface_missing_vocab(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RoFormerTokenizer"})
    )

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert str(tmp_path / "vocab.txt") in str(raised.value)
    assert "not found" in str(raised.value)


def test_from_huggingface_unknown_class(vocab_path, tmp_path):
    shutil.copy(vocab_path, tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "XLNetTokenizer"})
    )

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    message = str(raised.value)
    assert "'XLNetTokenizer'" in message
    for supported in (
        "RoFormerTokenizer",
        "RoFormerTokenizerFast",
        "BertTokenizer",
        "BertTokenizerFast",
    ):
        assert supported in message


def test_from_huggingface_without_class(vocab_path, tmp_path):
    shutil.copy(vocab_path, tmp_path / "vocab.txt")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert "tokenizer_config.json is missing" in str(raised.value)
    assert "from_vocab_file" in str(raised.value)


def test_from_huggingface_invalid_json(vocab_path, tmp_path):
    shutil.copy(vocab_path, tmp_path / "vocab.txt")
    config_path = tmp_path / "tokenizer_config.json"
    config_path.write_text('{"tokenizer_class": ')

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert f"Invalid JSON file {config_path}" in str(raised.value)


# Settings that a transformers tokenizer accepts but that would make its ids
# differ from ours, with a word that the error message must contain.
UNSUPPORTED_SETTINGS = [
    pytest.param("do_lower_case", "yes", "do_lower_case", id="do_lower_case"),
    pytest.param("strip_accents", 1, "strip_accents", id="strip_accents"),
    pytest.param("tokenize_chinese_chars", False, "tokenize_chinese_chars", id="cjk"),
    pytest.param("do_basic_tokenize", False, "do_basic_tokenize", id="basic"),
    pytest.param("split_special_tokens", True, "split_special_tokens", id="split"),
    pytest.param("never_split", ["[X]"], "never_split", id="never_split"),
    pytest.param("mask_token", "<mask>", "'<mask>'", id="mask_token"),
    pytest.param(
        "mask_token",
        {"content": "[MASK]", "lstrip": True, "rstrip": False},
        "lstrip",
        id="mask_lstrip",
    ),
    pytest.param("unk_token", None, "unk_token", id="unk_none"),
    pytest.param("additional_special_tokens", ["[X]"], "[X]", id="additional"),
    pytest.param(
        "added_tokens_decoder",
        {"9999": {"content": "[X]", "special": True}},
        "'[X]'",
        id="added_token",
    ),
    pytest.param(
        "added_tokens_decoder",
        {"7": {"content": "[MASK]", "special": True}},
        "id 7",
        id="added_token_wrong_id",
    ),
]


@pytest.mark.parametrize("key, value, expected_text", UNSUPPORTED_SETTINGS)
def test_from_huggingface_rejects_setting(
    vocab_path, tmp_path, key, value, expected_text
):
    transformers.RoFormerTokenizer(str(vocab_path)).save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config[key] = value
    config_path.write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert str(config_path) in str(raised.value)
    assert expected_text in str(raised.value)


def test_from_huggingface_rejects_special_map(vocab_path, tmp_path):
    transformers.RoFormerTokenizer(str(vocab_path)).save_pretrained(tmp_path)
    map_path = tmp_path / "special_tokens_map.json"
    map_path.write_text(json.dumps({"cls_token": "<s>"}), encoding="utf-8")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert str(map_path) in str(raised.value)
    assert "'<s>'" in str(raised.value)


def test_from_huggingface_rejects_added_tokens_file(vocab_path, tmp_path):
    transformers.RoFormerTokenizer(str(vocab_path)).save_pretrained(tmp_path)
    added_path = tmp_path / "added_tokens.json"
    added_path.write_text(json.dumps({"[NEW]": 99999}), encoding="utf-8")

    with pytest.raises(TokenizerError) as raised:
        Tokenizer.from_huggingface(tmp_path)

    assert str(added_path) in str(raised.value)
    assert "'[NEW]'" in str(raised.value)


# --- Writing transformers tokenizer directories ---------------------------------------

SAVE_SPECS = [
    pytest.param(TokenizerSpec("chinese_word"), "RoFormerTokenizer", id="word"),
    pytest.param(
        TokenizerSpec("chinese_word", lowercase=False, strip_accents=True),
        "RoFormerTokenizer",
        id="word-cased-strip-accents",
    ),
    pytest.param(TokenizerSpec("wordpiece"), "BertTokenizer", id="wordpiece"),
    pytest.param(
        TokenizerSpec("wordpiece", lowercase=True, strip_accents=False),
        "BertTokenizer",
        id="wordpiece-keep-accents",
    ),
    pytest.param(
        TokenizerSpec("chinese_char", lowercase=False), "BertTokenizer", id="char"
    ),
]


@pytest.mark.parametrize("spec, class_name", SAVE_SPECS)
def test_save_huggingface_loads_in_transformers(
    vocab, tmp_path, check_texts, spec, class_name
):
    ours = Tokenizer(vocab, spec)
    directory = tmp_path / "new" / "tokenizer"

    ours.save_huggingface(directory)
    reference = getattr(transformers, class_name).from_pretrained(directory)
    auto = transformers.AutoTokenizer.from_pretrained(directory, use_fast=False)

    assert type(auto).__name__ == class_name
    assert reference.do_lower_case == spec.lowercase
    assert mismatches(ours, reference, check_texts) == []


@pytest.mark.parametrize("spec, class_name", SAVE_SPECS)
def test_save_huggingface_round_trip(vocab, tmp_path, spec, class_name):
    ours = Tokenizer(vocab, spec)
    expected_kind = "chinese_word" if class_name == "RoFormerTokenizer" else "wordpiece"

    ours.save_huggingface(tmp_path)
    loaded = Tokenizer.from_huggingface(tmp_path)

    assert loaded.vocab == ours.vocab
    assert loaded.spec == dataclasses.replace(spec, kind=expected_kind)


def test_save_huggingface_loads_in_fast(vocab, tmp_path, cail_texts):
    ours = Tokenizer(vocab, TokenizerSpec("chinese_word"))

    ours.save_huggingface(tmp_path)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)

    assert type(fast).__name__ == "RoFormerTokenizerFast"
    assert mismatches(ours, fast, cail_texts[:30]) == []


def test_save_huggingface_keeps_special_ids(tmp_path):
    # The special tokens are not at ids 0 to 4 here.
    vocab = ["hello", *reversed(SPECIAL_TOKENS), "北京", "北", "京", "a"]
    ours = Tokenizer(vocab, TokenizerSpec("chinese_word"))

    ours.save_huggingface(tmp_path)
    reference = transformers.RoFormerTokenizer.from_pretrained(tmp_path)
    encoded = reference("北京[MASK]a", "hello[PAD]")

    assert reference.pad_token_id == ours.pad_id
    assert reference.unk_token_id == ours.unk_id
    assert reference.cls_token_id == ours.cls_id
    assert reference.sep_token_id == ours.sep_id
    assert reference.mask_token_id == ours.mask_id
    assert len(reference) == ours.vocab_size
    assert (
        encoded["input_ids"]
        == encode_pair(
            ours.encode("北京[MASK]a"),
            ours.encode("hello[PAD]"),
            seq_len=NO_TRUNCATION,
            cls_id=ours.cls_id,
            sep_id=ours.sep_id,
        )[0]
    )


def test_save_huggingface_rejects_max_chars(vocab, tmp_path):
    ours = Tokenizer(vocab, TokenizerSpec("chinese_word", max_chars_per_word=50))

    with pytest.raises(TokenizerError, match="max_chars_per_word is 50"):
        ours.save_huggingface(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_save_huggingface_rejects_tokenizer_json(vocab, tmp_path):
    ours = Tokenizer(vocab, TokenizerSpec("chinese_word"))
    ours.save(tmp_path)
    (tmp_path / "vocab.txt").unlink()

    with pytest.raises(TokenizerError) as raised:
        ours.save_huggingface(tmp_path)

    assert str(tmp_path / "tokenizer.json") in str(raised.value)
    assert not (tmp_path / "vocab.txt").exists()
    assert not (tmp_path / "tokenizer_config.json").exists()
