"""An embedded English corpus for quick starts: `--data enwiki` for the text8 presets.

The gensim wheel (optional extra `corpus`: `pip install "discrete-diffusion[corpus]"`) ships a
shortened English Wikipedia dump as test data. We locate that file without importing gensim
(package metadata, else `importlib.util.find_spec`), stream its XML with `iterparse`, strip the
wiki markup with our own filter in the spirit of Matt Mahoney's `wikifil.pl` (redirect pages,
comments, references, HTML tags, templates, tables, interlanguage and category links dropped;
links replaced by their visible text; headings and emphasis reduced to their words; HTML
entities decoded) and convert the result to text8 format. The result (about 3.1M characters)
is cached as a plain text8 file, so the text8 loader reads it like any other.
"""

from __future__ import annotations

import bz2
import html
import importlib.metadata
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from discrete_diffusion.data.text_cache import cache_key
from discrete_diffusion.data.text_convert import to_text8
from discrete_diffusion.files import atomic_write_text, cache_dir

ENWIKI_MEMBER = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ENWIKI_RELPATH = f"gensim/test/test_data/{ENWIKI_MEMBER}"
_FILTER_VERSION = 1

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"<[^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_DROP_LINK = re.compile(r"\[\[(?:category|[a-z]{2,3}(?:-[a-z]+)?|simple):[^\[\]]*\]\]", re.I)
_FILE_LINK = re.compile(r"\[\[(?:file|image):(?:[^\[\]]|\[\[[^\[\]]*\]\])*\]\]", re.I)
_LINK = re.compile(r"\[\[([^\[\]|]*\|)*([^\[\]|]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]*\s*([^\]]*)\]")
_URL = re.compile(r"(?:https?|ftp)://\S+")


def enwiki_dump_path() -> Path:
    """The gensim wheel's Wikipedia excerpt (.xml.bz2), found without importing gensim."""
    try:
        for f in importlib.metadata.files("gensim") or []:
            if str(f).replace("\\", "/").endswith(ENWIKI_RELPATH):
                path = Path(str(f.locate()))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("gensim")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / "test" / "test_data" / ENWIKI_MEMBER
            if path.is_file():
                return path
    raise FileNotFoundError(
        "the embedded Wikipedia corpus needs the gensim wheel's test data: "
        'pip install "discrete-diffusion[corpus]" (or pass a text8 file with --data PATH)'
    )


def iter_page_texts(xml_path: str | Path) -> Iterator[str]:
    """Wiki markup of each page (the <text> of its revision), streamed from .xml or .xml.bz2."""
    path = Path(xml_path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "text":
                yield elem.text or ""
            elif tag == "page":
                elem.clear()  # keep memory flat on large dumps


def _remove_nested(pattern: re.Pattern, text: str) -> str:
    """Remove innermost matches repeatedly, so nested {{...{{...}}...}} go too."""
    while True:
        text, n = pattern.subn(" ", text)
        if n == 0:
            return text


def strip_wiki_markup(markup: str) -> str:
    """Plain text of one page's wiki markup ('' for a redirect)."""
    if markup.lstrip().lower().startswith("#redirect"):
        return ""
    text = _COMMENT.sub(" ", markup)
    text = _REF.sub(" ", text)
    text = _remove_nested(_TEMPLATE, text)
    text = _remove_nested(_TABLE, text)
    text = html.unescape(text)  # entities written as &amp;nbsp; in the XML
    text = _REF.sub(" ", _COMMENT.sub(" ", text))
    text = _TAG.sub(" ", text)
    text = _DROP_LINK.sub(" ", text)
    text = _FILE_LINK.sub(lambda m: _caption(m.group(0)), text)
    text = _LINK.sub(lambda m: m.group(2), text)
    text = _EXTERNAL.sub(lambda m: m.group(1), text)
    return _URL.sub(" ", text)


def _caption(file_link: str) -> str:
    """[[File:x.jpg|thumb|A caption with [[links]]]] -> its last field, the caption."""
    inner = _LINK.sub(lambda m: m.group(2), file_link[2:-2])
    return inner.rsplit("|", 1)[-1] if "|" in inner else " "


def wiki_to_text8(xml_path: str | Path) -> str:
    """A whole dump in text8 format: each page's plain text, converted, joined by spaces."""
    pages = (to_text8(strip_wiki_markup(t)) for t in iter_page_texts(xml_path))
    return " ".join(p for p in pages if p)


def enwiki_text8_path(root: Path | None = None) -> Path:
    """The embedded corpus as a text8 file in the cache, built on first use."""
    dump = enwiki_dump_path()
    key = cache_key([dump], {"filter": _FILTER_VERSION})
    out = (root or cache_dir()) / "corpus" / f"enwiki-text8-{key}.txt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, wiki_to_text8(dump))
    return out
