"""The embedded Wikipedia corpus: locating the gensim file, XML parsing, markup filter."""

from __future__ import annotations

import bz2
import importlib.machinery
import importlib.metadata
import importlib.util
import sys

import pytest

from discrete_diffusion.data import corpus
from discrete_diffusion.data.corpus import (
    enwiki_text8_path,
    iter_page_texts,
    strip_wiki_markup,
    wiki_to_text8,
)
from discrete_diffusion.data.text_convert import to_text8

NS = "http://www.mediawiki.org/xml/export-0.10/"


def _page(title: str, text: str) -> str:
    return (f"<page><title>{title}</title><ns>0</ns><revision>"
            f'<text xml:space="preserve">{text}</text></revision></page>')


ARTICLE = (
    "{{Infobox thing|name=Zed {{nested|x}} }}'''Anarchism''' is a [[political philosophy]] "
    "that [[Self-governance|self-governed]] societies advocate.&lt;ref name=a&gt;Cited "
    "work 1999&lt;/ref&gt; It has 3 forms.\n== History ==\n"
    "{| class=&quot;wikitable&quot;\n|-\n| cell one || cell two\n|}\n"
    "[[File:Flag.svg|thumb|A black [[flag]]]] Text &amp;nbsp;after&amp;ndash;dash. "
    "See [http://example.org the site] and http://bare.example.com/x.\n"
    "&lt;!-- hidden comment --&gt;[[Category:Anarchism]] [[de:Anarchismus]]"
)


@pytest.fixture
def dump(tmp_path):
    xml = (f'<mediawiki xmlns="{NS}"><siteinfo><sitename>W</sitename></siteinfo>'
           + _page("Anarchism", ARTICLE)
           + _page("Redirect", "#REDIRECT [[Anarchism]]")
           + _page("Second", "Second ''page'' here.")
           + "</mediawiki>")
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    return path


def test_iter_page_texts_reads_every_page(dump) -> None:
    texts = list(iter_page_texts(dump))
    assert len(texts) == 3
    assert texts[0].startswith("{{Infobox") and "<ref" in texts[0]  # entities decoded by XML
    assert texts[1].startswith("#REDIRECT")


def test_markup_filter(dump) -> None:
    article = to_text8(strip_wiki_markup(next(iter_page_texts(dump))))
    assert article.startswith("anarchism is a political philosophy that self governed societies")
    assert "three forms" in article and "history" in article
    assert "a black flag" in article and "after dash" in article and "the site" in article
    for gone in ("infobox", "nested", "cited", "cell", "wikitable", "category", "anarchismus",
                 "hidden", "http", "example", "ref", "nbsp", "thumb", "svg"):
        assert gone not in article.split(), gone
    assert strip_wiki_markup("#REDIRECT [[X]]") == ""


def test_whole_dump_to_text8(dump) -> None:
    out = wiki_to_text8(dump)
    assert out.endswith("second page here")
    assert "redirect" not in out
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz ") and "  " not in out


def _no_metadata(name):
    raise importlib.metadata.PackageNotFoundError(name)


def test_locates_the_file_without_importing_gensim(tmp_path, monkeypatch, dump) -> None:
    pkg = tmp_path / "site" / "gensim"
    data = pkg / "test" / "test_data"
    data.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('gensim must not be imported')\n")
    (data / corpus.ENWIKI_MEMBER).write_bytes(dump.read_bytes())
    spec = importlib.machinery.ModuleSpec("gensim", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.metadata, "files", _no_metadata)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    assert corpus.enwiki_dump_path() == data / corpus.ENWIKI_MEMBER
    path = enwiki_text8_path()
    assert path.read_text() == wiki_to_text8(dump)
    assert "gensim" not in sys.modules or not sys.modules["gensim"].__file__.startswith(str(pkg))
    # cached: a second call does not rebuild
    monkeypatch.setattr(corpus, "wiki_to_text8", lambda p: pytest.fail("rebuilt"))
    assert enwiki_text8_path() == path


def test_missing_corpus_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(importlib.metadata, "files", _no_metadata)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"discrete-diffusion\[corpus\]"):
        corpus.enwiki_dump_path()
