"""Tests for roformer_jax.data.corpora: Wikipedia and CAIL readers, splits."""

import bz2
import html
import json
import re
from pathlib import Path

import pytest

from roformer_jax.data.corpora import (
    CorpusError,
    read_cail_documents,
    read_wikipedia_documents,
    split_documents,
    wikitext_to_text,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WIKI_DUMP = (
    DATA_DIR
    / "enwiki_excerpt"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
CAIL_FILE = DATA_DIR / "cail2019_scm" / "input.txt"


# --- Wikipedia excerpt --------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_pages():
    """(title, namespace, is_redirect, wikitext) of every page, by regex on the XML."""
    xml = bz2.decompress(WIKI_DUMP.read_bytes()).decode("utf-8")
    pages = []
    for page in re.findall(r"<page>(.*?)</page>", xml, flags=re.DOTALL):
        title = html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))
        namespace = re.search(r"<ns>(\d+)</ns>", page).group(1)
        text = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.DOTALL)
        wikitext = html.unescape(text.group(1)) if text else ""
        pages.append((title, namespace, "<redirect" in page, wikitext))
    return pages


@pytest.fixture(scope="module")
def wiki_documents():
    return read_wikipedia_documents(WIKI_DUMP, min_chars=0)


def _by_title(documents):
    return {document.split("\n", 1)[0]: document for document in documents}


def test_wiki_page_count(raw_pages, wiki_documents):
    articles = [page for page in raw_pages if page[1] == "0" and not page[2]]

    assert len(raw_pages) == 206
    # With min_chars=0 every article page gives a document, and nothing else does.
    assert len(wiki_documents) == len(articles)
    assert len(wiki_documents) < 206


def test_wiki_titles_first_lines(raw_pages, wiki_documents):
    article_titles = [
        title for title, ns, redirect, _ in raw_pages if ns == "0" and not redirect
    ]
    first_lines = [document.split("\n", 1)[0] for document in wiki_documents]

    assert first_lines == article_titles
    assert "Anarchism" in first_lines
    assert "Albert Einstein" in first_lines


def test_wiki_no_redirects(raw_pages, wiki_documents):
    redirect_titles = {title for title, _, redirect, _ in raw_pages if redirect}
    first_lines = {document.split("\n", 1)[0] for document in wiki_documents}

    assert len(redirect_titles) == 100
    assert not redirect_titles & first_lines
    assert not any("#REDIRECT" in document for document in wiki_documents)


def test_wiki_no_other_namespaces(raw_pages, wiki_documents):
    other_titles = {title for title, ns, _, _ in raw_pages if ns != "0"}
    first_lines = {document.split("\n", 1)[0] for document in wiki_documents}

    assert other_titles
    assert not other_titles & first_lines


@pytest.mark.parametrize(
    "markup", ["{{", "}}", "[[", "]]", "<ref", "{|", "|}", "&nbsp;", "&amp;", "'''"]
)
def test_wiki_markup_removed(wiki_documents, markup):
    with_markup = [doc.split("\n", 1)[0] for doc in wiki_documents if markup in doc]

    # Measured on this excerpt: no document keeps any of these. The hard cases
    # are single brackets inside file captions ("Bicyclo[1.1.0]butane") and
    # internal links inside external link labels, which both occur here.
    assert with_markup == []


def test_wiki_lead_sentence(wiki_documents, raw_pages):
    wikitext = {title: text for title, _, _, text in raw_pages}["Anarchism"]
    document = _by_title(wiki_documents)["Anarchism"]

    # The raw lead, with its bold title and links, as written in the dump.
    assert (
        "'''Anarchism''' is a [[political philosophy]] that advocates "
        "[[self-governance|self-governed]] societies"
    ) in wikitext
    assert (
        "Anarchism is a political philosophy that advocates self-governed societies"
    ) in document
    assert "<ref>" in wikitext
    assert "Redirect2" not in document


def test_wiki_min_chars(wiki_documents):
    lengths = sorted(len(doc.split("\n", 1)[1]) for doc in wiki_documents)
    threshold = lengths[len(lengths) // 2]

    documents = read_wikipedia_documents(WIKI_DUMP, min_chars=threshold)
    expected = [
        doc for doc in wiki_documents if len(doc.split("\n", 1)[1]) >= threshold
    ]

    assert documents == expected
    assert len(documents) < len(wiki_documents)


def test_wiki_plain_xml_matches_bz2(tmp_path, wiki_documents):
    plain = tmp_path / "dump.xml"
    plain.write_bytes(bz2.decompress(WIKI_DUMP.read_bytes()))

    assert read_wikipedia_documents(plain, min_chars=0) == wiki_documents


# --- Wiki markup on a small dump -------------------------------------------------------

SMALL_DUMP = """\
<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Test</sitename></siteinfo>
  <page>
    <title>Markup &amp; text</title>
    <ns>0</ns>
    <id>1</id>
    <revision>
      <id>10</id>
      <text xml:space="preserve">{{Infobox thing|name={{nested|x}}|image=[[File:I.png]]}}
'''Markup''' is a ''sample''&lt;ref name="a"&gt;Cite {{cite web|url=x}}&lt;/ref&gt; \
page&lt;ref name="b" /&gt; with [[Link target|a label]] and [[plain link]]s.

== History ==
See [http://example.com the site] and [https://example.org].&lt;!-- hidden --&gt;
{| class="wikitable"
|-
| cell || {{tpl}}
|}
[[File:Photo.jpg|thumb|A caption with [[a link]] in it.]]
Water is H&lt;sub&gt;2&lt;/sub&gt;O&amp;nbsp;and &amp;lt;b&amp;gt; tags.&lt;br /&gt;Next.
* item one
=== Sub heading ===
[[Category:Samples]]
</text>
    </revision>
  </page>
  <page>
    <title>Redirect page</title>
    <ns>0</ns>
    <id>2</id>
    <redirect title="Markup &amp; text" />
    <revision><id>20</id><text>#REDIRECT [[Markup &amp; text]]</text></revision>
  </page>
  <page>
    <title>Old redirect</title>
    <ns>0</ns>
    <id>3</id>
    <revision><id>30</id><text>#redirect [[Markup &amp; text]]</text></revision>
  </page>
  <page>
    <title>Talk:Markup</title>
    <ns>1</ns>
    <id>4</id>
    <revision><id>40</id><text>A long discussion about the page markup.</text></revision>
  </page>
  <page>
    <title>Stub</title>
    <ns>0</ns>
    <id>5</id>
    <revision><id>50</id><text>Short.</text></revision>
  </page>
  <page>
    <title>Two revisions</title>
    <ns>0</ns>
    <id>6</id>
    <revision><id>60</id><text>The first revision, which is replaced.</text></revision>
    <revision><id>61</id><text>The second revision is the current text.</text></revision>
  </page>
</mediawiki>
"""

SMALL_DUMP_MARKUP_BODY = (
    "Markup is a sample page with a label and plain links.\n"
    "History\n"
    "See the site and .\n"
    "Water is H2O and <b> tags. Next.\n"
    "item one\n"
    "Sub heading"
)


@pytest.fixture
def small_dump(tmp_path):
    path = tmp_path / "small.xml"
    path.write_text(SMALL_DUMP, encoding="utf-8")
    return path


def test_small_dump_documents(small_dump):
    documents = read_wikipedia_documents(small_dump, min_chars=20)

    assert documents == [
        "Markup & text\n" + SMALL_DUMP_MARKUP_BODY,
        "Two revisions\nThe second revision is the current text.",
    ]


def test_small_dump_without_titles(small_dump):
    documents = read_wikipedia_documents(small_dump, min_chars=0, include_title=False)

    assert documents == [
        SMALL_DUMP_MARKUP_BODY,
        "Short.",
        "The second revision is the current text.",
    ]


def test_small_dump_bz2_matches_plain(small_dump, tmp_path):
    compressed = tmp_path / "small.xml.bz2"
    compressed.write_bytes(bz2.compress(small_dump.read_bytes()))
    # Detection reads the bz2 magic bytes, so the suffix is not needed.
    unsuffixed = tmp_path / "small_compressed"
    unsuffixed.write_bytes(compressed.read_bytes())

    expected = read_wikipedia_documents(small_dump, min_chars=0)

    assert read_wikipedia_documents(compressed, min_chars=0) == expected
    assert read_wikipedia_documents(unsuffixed, min_chars=0) == expected


def test_small_dump_without_namespace(small_dump, tmp_path):
    # Older export formats have no <ns> element and another xmlns.
    old_format = SMALL_DUMP.replace("export-0.10", "export-0.3")
    old_format = re.sub(r"<ns>\d+</ns>", "", old_format)
    path = tmp_path / "old.xml"
    path.write_text(old_format, encoding="utf-8")

    titles = [
        document.split("\n", 1)[0]
        for document in read_wikipedia_documents(path, min_chars=0)
    ]

    assert titles == ["Markup & text", "Talk:Markup", "Stub", "Two revisions"]


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("{{a|b={{c|d}}}}Text.", "Text."),
        ("A<ref>x {{y}}</ref> b<ref name=n/> c.", "A b c."),
        ("A<math>x^2</math>b", "Ab"),
        ("Pre\n{|\n| a\n{|\n| nested\n|}\n|}\nPost", "Pre\nPost"),
        ("[[Target|label]] [[Page]]s", "label Pages"),
        ("[[File:X.png|thumb|Cap [[link]] Bicyclo[1.1.0]butane]]end", "end"),
        ("[[Image:X.png]][[Category:Y| ]][[category:z]]ok", "ok"),
        ("[[:Category:Y]]", "Category:Y"),
        ("[http://a.b/c?d=1 label [[Inner|text]] more]", "label text more"),
        ("[http://a.b]x", "x"),
        ("'''''both''''' ''it''", "both it"),
        ("== Title ==\nBody", "Title\nBody"),
        ("&amp;nbsp;&ndash;&lt;", "&nbsp;–<"),
        ("a&nbsp;b", "a b"),
        ("x<!-- c -->y<!-- open", "xy"),
        ("<span style='a'>in</span><br>out", "in out"),
        ("a\n\n\n  b  c ", "a\nb c"),
        ("* one\n# two\n: three\n; four", "one\ntwo\nthree\nfour"),
        ("__NOTOC__ text\n----", "text"),
        ("Name ({{IPA|x}}) is", "Name is"),
        ("open {{ never closed", "open never closed"),
        ("stray }} close", "stray }} close"),
    ],
)
def test_wikitext_to_text_cases(wikitext, expected):
    assert wikitext_to_text(wikitext) == expected


# --- Wikipedia errors ------------------------------------------------------------------


def test_wiki_missing_file(tmp_path):
    path = tmp_path / "absent.xml.bz2"

    with pytest.raises(CorpusError, match="not found") as raised:
        read_wikipedia_documents(path)

    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_wiki_invalid_bz2(tmp_path):
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(b"this is not compressed")

    with pytest.raises(CorpusError, match="bz2") as raised:
        read_wikipedia_documents(path)

    assert str(path) in str(raised.value)


def test_wiki_truncated_bz2(tmp_path, small_dump):
    compressed = bz2.compress(small_dump.read_bytes())
    path = tmp_path / "truncated.xml.bz2"
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(CorpusError, match="bz2|XML") as raised:
        read_wikipedia_documents(path)

    assert str(path) in str(raised.value)


def test_wiki_invalid_xml(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<mediawiki><page><title>x</title></mediawiki>", encoding="utf-8")

    with pytest.raises(CorpusError, match="not valid XML") as raised:
        read_wikipedia_documents(path)

    assert str(path) in str(raised.value)


def test_wiki_no_pages(tmp_path):
    path = tmp_path / "empty.xml"
    path.write_text("<mediawiki><siteinfo/></mediawiki>", encoding="utf-8")

    with pytest.raises(CorpusError, match="no <page> elements") as raised:
        read_wikipedia_documents(path)

    assert str(path) in str(raised.value)


def test_wiki_negative_min_chars(small_dump):
    with pytest.raises(ValueError, match="min_chars"):
        read_wikipedia_documents(small_dump, min_chars=-1)


# --- CAIL2019-SCM --------------------------------------------------------------------


def test_cail_distinct_documents():
    expected = []
    seen = set()
    with open(CAIL_FILE, encoding="utf-8") as file:
        for line in file:
            if not line.strip():
                continue
            record = json.loads(line)
            for key in ("A", "B", "C"):
                if record[key] not in seen:
                    seen.add(record[key])
                    expected.append(record[key])

    documents = read_cail_documents(CAIL_FILE)

    assert len(expected) == 227
    assert len(documents) == len(expected)
    assert documents == expected


def test_cail_text_byte_exact():
    first_line = CAIL_FILE.read_bytes().split(b"\n", 1)[0]
    # The value of "A" in the raw bytes, between its quotes, still JSON-escaped.
    raw_value = re.match(rb'\{"A": "((?:[^"\\]|\\.)*)"', first_line).group(1)

    document = read_cail_documents(CAIL_FILE)[0]

    assert document.startswith("原告李某1。委托代理人蒋水光，湘阴县南湖法律服务所")
    assert json.loads(b'"' + raw_value + b'"').encode("utf-8") == document.encode(
        "utf-8"
    )
    assert "\n\n" in document


def _write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD_LINE = json.dumps({"A": "甲", "B": "乙", "C": "甲"}, ensure_ascii=False).encode()


def test_cail_small_file(tmp_path):
    second = json.dumps({"A": "丙", "B": "乙", "C": "丁"}, ensure_ascii=False).encode()
    path = _write_lines(tmp_path / "input.txt", [GOOD_LINE, b"", second])

    assert read_cail_documents(path) == ["甲", "乙", "丙", "丁"]


def test_cail_invalid_json_names_line(tmp_path):
    path = _write_lines(tmp_path / "input.txt", [GOOD_LINE, GOOD_LINE, b'{"A": '])

    with pytest.raises(CorpusError, match="line 3") as raised:
        read_cail_documents(path)

    assert str(path) in str(raised.value)
    assert "not valid JSON" in str(raised.value)


def test_cail_invalid_utf8_names_line(tmp_path):
    path = _write_lines(tmp_path / "input.txt", [GOOD_LINE, b'{"A": "\xff"}'])

    with pytest.raises(CorpusError, match="line 2") as raised:
        read_cail_documents(path)

    assert "UTF-8" in str(raised.value)


def test_cail_missing_field_names_field(tmp_path):
    path = _write_lines(tmp_path / "input.txt", [b'{"A": "x", "B": "y"}'])

    with pytest.raises(CorpusError, match='line 1: field "C"'):
        read_cail_documents(path)


def test_cail_not_object(tmp_path):
    path = _write_lines(tmp_path / "input.txt", [GOOD_LINE, b'["A", "B"]'])

    with pytest.raises(CorpusError, match="line 2"):
        read_cail_documents(path)


def test_cail_missing_file(tmp_path):
    path = tmp_path / "absent.txt"

    with pytest.raises(CorpusError, match="not found") as raised:
        read_cail_documents(path)

    assert str(path) in str(raised.value)


def test_cail_empty_file(tmp_path):
    path = _write_lines(tmp_path / "input.txt", [b"", b"  "])

    with pytest.raises(CorpusError, match="no records"):
        read_cail_documents(path)


# --- split_documents ---------------------------------------------------------------


DOCUMENTS = [f"document {i}" for i in range(50)]


def test_split_sizes_and_cover():
    train, validation = split_documents(DOCUMENTS, validation_fraction=0.1, seed=0)

    assert len(validation) == 5
    assert len(train) == 45
    assert sorted(train + validation) == sorted(DOCUMENTS)
    assert not set(train) & set(validation)


def test_split_keeps_input_order():
    train, validation = split_documents(DOCUMENTS, validation_fraction=0.3, seed=2)

    assert train == [doc for doc in DOCUMENTS if doc in set(train)]
    assert validation == [doc for doc in DOCUMENTS if doc in set(validation)]


def test_split_deterministic():
    first = split_documents(DOCUMENTS, validation_fraction=0.2, seed=4)
    again = split_documents(DOCUMENTS, validation_fraction=0.2, seed=4)
    other = split_documents(DOCUMENTS, validation_fraction=0.2, seed=5)

    assert first == again
    assert first[1] != other[1]


def test_split_is_shuffled():
    _, validation = split_documents(DOCUMENTS, validation_fraction=0.2, seed=4)

    assert validation != DOCUMENTS[:10]
    assert validation != DOCUMENTS[-10:]


@pytest.mark.parametrize(
    ("fraction", "expected_validation"), [(0.001, 1), (0.999, 4), (0.4, 2)]
)
def test_split_at_least_one_each(fraction, expected_validation):
    documents = DOCUMENTS[:5]

    train, validation = split_documents(documents, validation_fraction=fraction, seed=0)

    assert len(validation) == expected_validation
    assert len(train) == 5 - expected_validation


@pytest.mark.parametrize(
    ("documents", "fraction", "seed", "message"),
    [
        (DOCUMENTS[:1], 0.5, 0, "at least 2 documents"),
        (DOCUMENTS, 0.0, 0, "validation_fraction"),
        (DOCUMENTS, 1.0, 0, "validation_fraction"),
        (DOCUMENTS, 0.1, -1, "seed"),
    ],
)
def test_split_invalid_arguments(documents, fraction, seed, message):
    with pytest.raises(ValueError, match=message):
        split_documents(documents, validation_fraction=fraction, seed=seed)
