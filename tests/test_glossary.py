"""docs/GLOSSARY.md: at least 40 terms, English and Chinese, each linked to a section that exists.

A link's part after `#` must be the id nbconvert gives that heading in the HTML copy of the notebook
(JupyterLab decodes the same fragment to its own id), so the test renders each notebook's markdown cells
with nbconvert and collects the heading ids.
"""
import re
from functools import lru_cache
from urllib.parse import unquote

import nbformat
import pytest

from tests.conftest import ROOT

GLOSSARY = ROOT / "docs" / "GLOSSARY.md"
ROW = re.compile(r"^\|(?P<en>[^|]+)\|(?P<zh>[^|]+)\|(?P<meaning>[^|]+)\|(?P<where>.+)\|\s*$")
LINK = re.compile(r"\]\(<?(?P<path>\.\./notebooks/[^#>)]+\.ipynb)#(?P<fragment>[^>]+)>?\)")
CJK = re.compile(r"[\u4e00-\u9fff]")
REQUIRED_ZH = ["体素", "子流形卷积", "规则表", "校准", "动态范围", "算子", "初始化器", "装饰器", "闭包", "猴子补丁",
               "重入保护", "BN 折叠", "训练后量化", "量化感知训练", "对称量化", "逐通道", "量化阈值"]


def rows():
    lines = GLOSSARY.read_text(encoding="utf-8").splitlines()
    found = [ROW.match(line) for line in lines if line.startswith("| ") and not line.startswith("| English")]
    return [m.groupdict() for m in found if m and not set(m.group("en").strip()) <= {"-"}]


@lru_cache(maxsize=None)
def heading_ids(relative: str) -> frozenset:
    """The id of every heading in the notebook's HTML, as nbconvert writes them (markdown cells only)."""
    from nbconvert import HTMLExporter
    nb = nbformat.read(GLOSSARY.parent / relative, as_version=4)
    nb.cells = [cell for cell in nb.cells if cell.cell_type == "markdown"]
    body, _ = HTMLExporter(exclude_input_prompt=True).from_notebook_node(nb)
    return frozenset(re.findall(r'<h[1-6] id="([^"]+)"', body))


def test_forty_terms_in_both_languages():
    found = rows()
    assert len(found) >= 40, f"{GLOSSARY.name} has {len(found)} terms, the course needs at least 40"
    english = [r["en"].strip() for r in found]
    assert len(set(english)) == len(english), "a term is listed twice"
    for row in found:
        assert row["en"].strip() and CJK.search(row["zh"]), f"term without its Chinese: {row}"
    chinese = " ".join(r["zh"] for r in found)
    assert [z for z in REQUIRED_ZH if z not in chinese] == []


@pytest.mark.parametrize("row", rows(), ids=lambda r: r["en"].strip())
def test_each_term_links_to_a_section_that_exists(row):
    link = LINK.search(row["where"])
    assert link, f"{row['en'].strip()}: no link to a notebook section in {row['where']!r}"
    path = GLOSSARY.parent / link["path"]
    assert path.is_file(), f"{row['en'].strip()}: {link['path']} does not exist"
    ids = heading_ids(link["path"])
    assert link["fragment"] in ids, (f"{row['en'].strip()}: no heading {unquote(link['fragment'])!r} in {path.name}; "
                                     f"its headings: {sorted(unquote(i) for i in ids)[:60]}")
