"""Plain-text documents for masked language model pre-training.

Readers for a MediaWiki XML dump (English Wikipedia) and for the CAIL2019-SCM
JSON lines file (Chinese legal case descriptions), plus a document-level
train/validation split. Every reader returns a list of documents whose
paragraphs are separated by "\\n". Tokenization happens elsewhere.
"""

from __future__ import annotations

import bz2
import dataclasses
import html
import json
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np

BZ2_MAGIC = b"BZh"
CAIL_FIELDS = ("A", "B", "C")


class CorpusError(ValueError):
    """A corpus file is missing, unreadable or not in the expected format."""


# --- MediaWiki XML dumps ------------------------------------------------------


def read_wikipedia_documents(
    path: str | os.PathLike, *, min_chars: int = 200, include_title: bool = True
) -> list[str]:
    """Read the article pages of a MediaWiki XML dump as plain-text documents.

    The dump may be plain XML or bz2-compressed (detected from the first bytes,
    or from a `.bz2` suffix). Pages in a namespace other than 0 (talk, user,
    Wikipedia, template, ... pages) and redirects are skipped. Pages without an
    `<ns>` element, as in older export formats, count as articles.
    A page with several revisions contributes the text of its last one.

    Wiki markup is stripped with regular expressions by `wikitext_to_text`, so
    the result is approximate. When `include_title` is True the page title is the
    first paragraph. A document is dropped when its text without the title has
    fewer than `min_chars` characters.

    Raises:
      CorpusError: the file is missing or unreadable, is not valid bz2 or XML,
        or contains no `<page>` element.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars must be non-negative, got {min_chars}.")
    path = os.fspath(path)

    documents = []
    num_pages = 0
    with _open_dump(path) as stream:
        for page in _iterate_pages(stream, path):
            num_pages += 1
            if page.namespace not in (None, "0") or page.is_redirect:
                continue
            body = wikitext_to_text(page.text)
            if len(body) < min_chars:
                continue
            title = _collapse_whitespace(page.title)
            documents.append(f"{title}\n{body}" if include_title and title else body)

    if num_pages == 0:
        raise CorpusError(
            f"{path} contains no <page> elements, so it is not a MediaWiki XML "
            "dump. Pass a pages-articles dump (.xml or .xml.bz2)."
        )
    return documents


@dataclasses.dataclass(frozen=True)
class _Page:
    """Fields of one `<page>` element of a MediaWiki dump."""

    title: str
    namespace: str | None  # None when the page has no <ns> element
    is_redirect: bool
    text: str  # wikitext of the last revision


def _open_dump(path: str) -> BinaryIO:
    """Open a dump file as a binary stream, decompressing it if it is bz2."""
    try:
        with open(path, "rb") as file:
            magic = file.read(len(BZ2_MAGIC))
    except FileNotFoundError as error:
        raise CorpusError(
            f"Corpus file {path} not found. Check the path, or copy the dump there."
        ) from error
    except OSError as error:
        raise CorpusError(f"Corpus file {path} could not be read: {error}") from error

    if magic == BZ2_MAGIC or path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _local_name(tag: str) -> str:
    """Return `tag` without its `{namespace}` prefix, so any export version parses."""
    return tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    for child in element:
        if _local_name(child.tag) == name:
            return child
    return None


def _iterate_pages(stream: BinaryIO, path: str) -> Iterator[_Page]:
    """Yield the pages of the dump in `stream`, converting parse errors to CorpusError."""
    try:
        root = None
        for event, element in ElementTree.iterparse(stream, events=("start", "end")):
            if event == "start":
                if root is None:
                    root = element
                continue
            if _local_name(element.tag) != "page":
                continue
            yield _parse_page(element)
            # Parsed pages are dropped from the tree, so memory stays bounded
            # by the largest page instead of growing with the dump.
            root.clear()
    except ElementTree.ParseError as error:
        raise CorpusError(
            f"{path} is not valid XML ({error}). Pass an uncorrupted MediaWiki "
            "XML dump, plain or bz2-compressed."
        ) from error
    except (OSError, EOFError) as error:
        if not isinstance(stream, bz2.BZ2File):
            raise CorpusError(f"{path} could not be read: {error}") from error
        # bz2 raises OSError for data that is not bz2 and EOFError for a
        # truncated stream.
        raise CorpusError(
            f"{path} could not be decompressed as bz2 ({error}). Pass an "
            "uncorrupted .bz2 dump, or decompress it and pass the .xml file."
        ) from error


def _parse_page(page: ElementTree.Element) -> _Page:
    title_element = _child(page, "title")
    namespace_element = _child(page, "ns")
    title = (title_element.text or "") if title_element is not None else ""
    namespace = None
    if namespace_element is not None:
        namespace = (namespace_element.text or "").strip()

    text = ""
    for revision in page:
        if _local_name(revision.tag) != "revision":
            continue
        text_element = _child(revision, "text")
        text = (text_element.text or "") if text_element is not None else ""

    # Current export formats mark redirects with a <redirect> element. Older
    # ones only have the #REDIRECT line at the start of the text.
    is_redirect = _child(page, "redirect") is not None or bool(
        _REDIRECT_TEXT.match(text)
    )
    return _Page(title, namespace, is_redirect, text)


# --- Wiki markup --------------------------------------------------------------

_REDIRECT_TEXT = re.compile(r"\s*#REDIRECT\b", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)

# Elements whose content is not running text, so content and tags are removed.
# Tags of any other element are removed and their content is kept.
_DROPPED_ELEMENTS = (
    "ref|references|math|chem|ce|gallery|imagemap|timeline|score|"
    "syntaxhighlight|source|hiero|graph|templatedata|mapframe|maplink"
)
_DROPPED_SELF_CLOSING = re.compile(
    rf"<(?:{_DROPPED_ELEMENTS})\b[^<>]*/\s*>", re.IGNORECASE
)
_DROPPED_ELEMENT = re.compile(
    rf"<({_DROPPED_ELEMENTS})\b[^<>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
_LINE_BREAK = re.compile(r"<br\b[^<>]*>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^<>]*>")

_TEMPLATE_BRACES = re.compile(r"(?P<open>\{\{)|(?P<close>\}\})")
# Table delimiters count only at the start of a line, as MediaWiki parses them.
_TABLE_BRACES = re.compile(r"(?m)(?P<open>^[ \t:]*\{\|)|(?P<close>^[ \t]*\|\})")

_EXTERNAL_LINK = re.compile(
    r"\[(?:https?:|ftp:|mailto:|news:|irc:|//)[^\s\[\]]*(?:[ \t]+([^\[\]]*))?\]",
    re.IGNORECASE,
)
# Innermost internal link: no "[[" or "]]" inside, so nested links resolve
# first. Single brackets are allowed, as in "[[File:x.png|Bicyclo[1.1.0]butane]]".
_INTERNAL_LINK = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*)\]\]")
_REMOVED_LINK_NAMESPACES = ("file", "image", "category")

_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"(?m)^[ \t]*(={1,6})[ \t]*(.*?)[ \t]*\1[ \t]*$")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LIST_MARKER = re.compile(r"(?m)^[*#:;]+[ \t]*")
_HORIZONTAL_RULE = re.compile(r"(?m)^-{4,}[ \t]*$")
_EMPTY_PARENTHESES = re.compile(r"\([\s,;]*\)")
_SPACES = re.compile(r"[^\S\n]+")


def wikitext_to_text(wikitext: str) -> str:
    """Strip MediaWiki markup from `wikitext` approximately and return plain text.

    Removed with their content: comments, templates `{{...}}` (nested too),
    tables `{| ... |}`, `<ref>` and other non-prose elements such as `<math>`
    and `<gallery>`, and links to files, images and categories. Replaced by
    their text: links `[[target|label]]` by label, `[[target]]` by target,
    external links `[url label]` by label (`[url]` by nothing), headings
    `== X ==` by X, `<br>` by a space, and other HTML tags by their content.
    Bold and italic quotes, list markers, horizontal rules and magic words such
    as `__TOC__` are removed, then HTML entities are unescaped. Parentheses
    left empty, as by a removed pronunciation template, are removed.
    Paragraphs are separated by one "\\n" and runs of spaces become one space.
    """
    # NOTE: the time is quadratic in the number of unclosed "{{" or "{|"
    # (each one rescans the rest of the page), of "<ref>" tags without a
    # closing tag, and of the nesting depth of links. On a 2-core CPU, 8,000
    # unclosed "{{" (16 KB) took 6.9 s, so by that scaling 128,000 of them
    # (256 KB) would take about 30 minutes.
    text = _COMMENT.sub("", wikitext)
    text = _DROPPED_SELF_CLOSING.sub("", text)
    text = _DROPPED_ELEMENT.sub("", text)
    text = _remove_nested(text, _TEMPLATE_BRACES)
    text = _remove_nested(text, _TABLE_BRACES)
    # Internal links go first because an external link label may contain one.
    text = _replace_internal_links(text)
    text = _EXTERNAL_LINK.sub(lambda match: match.group(1) or "", text)
    # A <br> becomes a space, so that the words on either side stay apart.
    text = _LINE_BREAK.sub(" ", text)
    text = _TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _MAGIC_WORD.sub("", text)
    text = _LIST_MARKER.sub("", text)
    text = _HORIZONTAL_RULE.sub("", text)
    # Unescaping comes last, so an escaped "&lt;ref&gt;" stays as literal text.
    text = html.unescape(text)
    text = _EMPTY_PARENTHESES.sub("", text)
    return _collapse_whitespace(text)


def _remove_nested(text: str, braces: re.Pattern[str]) -> str:
    """Remove every outermost balanced `open ... close` span of `braces` from `text`.

    A stray closing delimiter is kept as text. An opening delimiter that is
    never closed is removed on its own, so it does not swallow the rest of the
    page.
    """
    kept = []
    while True:
        depth = 0
        kept_from = 0
        unclosed_start = 0
        for match in braces.finditer(text):
            if match.group("open") is not None:
                if depth == 0:
                    kept.append(text[kept_from : match.start()])
                    unclosed_start = match.start()
                depth += 1
            elif depth > 0:
                depth -= 1
                if depth == 0:
                    kept_from = match.end()

        if depth == 0:
            kept.append(text[kept_from:])
            return "".join(kept)
        # Drop the unmatched opener and scan the rest again, where the spans
        # nested inside it are now outermost.
        opener = braces.match(text, unclosed_start)
        assert opener is not None
        text = text[opener.end() :]


def _replace_link(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    target = target.strip()
    # "[[:Category:X]]" links to the category page and shows its name, while
    # "[[Category:X]]" files the page in X and shows nothing.
    if not target.startswith(":"):
        namespace, has_colon, _ = target.partition(":")
        if has_colon and namespace.strip().lower() in _REMOVED_LINK_NAMESPACES:
            return ""
    return label if label.strip() else target.lstrip(":")


def _replace_internal_links(text: str) -> str:
    while True:
        replaced = _INTERNAL_LINK.sub(_replace_link, text)
        if replaced == text:
            return text
        text = replaced


def _collapse_whitespace(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# --- CAIL2019-SCM -------------------------------------------------------------


def read_cail_documents(path: str | os.PathLike) -> list[str]:
    """Read the distinct case descriptions of a CAIL2019-SCM JSON lines file.

    Each non-blank line is an object with string fields "A", "B" and "C". The
    result contains every distinct text among them once, in first-seen order
    (line by line, A before B before C), unchanged.

    Raises:
      CorpusError: the file is missing or unreadable, a line is not UTF-8 or
        not a JSON object with string fields A, B and C, or the file has no
        non-blank line. The message names the file and line number.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            lines = file.read().split(b"\n")
    except FileNotFoundError as error:
        raise CorpusError(
            f"Corpus file {path} not found. Check the path, or copy the "
            "CAIL2019-SCM input.txt there."
        ) from error
    except OSError as error:
        raise CorpusError(f"Corpus file {path} could not be read: {error}") from error

    documents: dict[str, None] = {}
    for line_number, raw_line in enumerate(lines, start=1):
        record = _parse_cail_line(raw_line, path, line_number)
        if record is None:
            continue
        for field in CAIL_FIELDS:
            documents.setdefault(record[field])

    if not documents:
        raise CorpusError(
            f"{path} contains no records. Pass a JSON lines file with one "
            '{"A": ..., "B": ..., "C": ...} object per line.'
        )
    return list(documents)


def _parse_cail_line(raw_line: bytes, path: str, line_number: int) -> dict | None:
    """Return the JSON object of one line, or None for a blank line."""
    location = f"{path}, line {line_number}"
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"{location} is not valid UTF-8 ({error}). Re-encode the file as UTF-8."
        ) from error
    if line_number == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return None

    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        # Besides JSONDecodeError, json raises ValueError for an integer of
        # more than sys.get_int_max_str_digits() digits and RecursionError for
        # deeply nested arrays or objects.
        raise CorpusError(
            f"{location} is not valid JSON ({error}). Each line must be one JSON "
            "object."
        ) from error
    if not isinstance(record, dict):
        raise CorpusError(
            f"{location} is a JSON {type(record).__name__}, expected an object "
            'with string fields "A", "B" and "C".'
        )
    for field in CAIL_FIELDS:
        if not isinstance(record.get(field), str):
            raise CorpusError(
                f'{location}: field "{field}" is missing or not a string '
                f"(got {record.get(field)!r:.40}). Each record needs string "
                'fields "A", "B" and "C".'
            )
    return record


# --- Splits -------------------------------------------------------------------


def split_documents(
    documents: Sequence[str], *, validation_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split `documents` at random into (train, validation) by whole document.

    The validation split gets round(validation_fraction * len(documents))
    documents, clamped so that each split has at least one. Which documents go
    where depends only on `seed` and the number of documents. Each split keeps
    the input order.

    Raises:
      ValueError: validation_fraction is not in (0, 1), seed is negative, or
        there are fewer than 2 documents.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            "validation_fraction must be in the open interval (0, 1), got "
            f"{validation_fraction}."
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    num_documents = len(documents)
    if num_documents < 2:
        raise ValueError(
            f"Splitting needs at least 2 documents (one per split), got "
            f"{num_documents}."
        )

    num_validation = round(validation_fraction * num_documents)
    num_validation = min(max(num_validation, 1), num_documents - 1)
    order = np.random.default_rng(seed).permutation(num_documents)
    is_validation = np.zeros(num_documents, dtype=bool)
    is_validation[order[:num_validation]] = True

    train = [
        doc for doc, chosen in zip(documents, is_validation, strict=True) if not chosen
    ]
    validation = [
        doc for doc, chosen in zip(documents, is_validation, strict=True) if chosen
    ]
    return train, validation
