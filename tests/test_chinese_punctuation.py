"""Chinese text uses full-width punctuation: ，。：；（）？！ — never an ASCII , . : ; ( ) ? ! right beside a
Chinese character, in the notebooks (every cell) and in the docs. Inline code (`...`) is left out of the scan:
code keeps its own punctuation."""
import re

import nbformat
import pytest

from tests.conftest import ROOT

CJK = "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (with extension A)
ASCII_MARKS = r",.:;()?!"
BESIDE = re.compile(rf"[{CJK}][{re.escape(ASCII_MARKS)}]|[{re.escape(ASCII_MARKS)}][{CJK}]")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FULL_WIDTH = dict(zip(",.:;()?!", "，。：；（）？！"))

FILES = sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"])


def text_lines(path):
    """(where, line) for every line of a Markdown file or of every cell of a notebook."""
    if path.suffix == ".ipynb":
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            for number, line in enumerate(cell.source.splitlines(), 1):
                yield f"{path.name} cell {index} line {number}", line
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield f"{path.name} line {number}", line


def ascii_marks_beside_chinese(line: str) -> list:
    """Each ASCII mark that touches a Chinese character, with that character: ['子(', ':前'] for '钩子(hook):前'."""
    scanned = CODE_SPAN.sub("C", line)  # a code span is a word of its own, not Chinese
    return BESIDE.findall(scanned)


def test_the_scan_finds_ascii_marks_beside_chinese_and_nothing_else():
    assert ascii_marks_beside_chinese("前向钩子(forward hook):能看到") == ["子(", ":能"]
    assert ascii_marks_beside_chinese("能看到.下一句") == ["到."]
    assert ascii_marks_beside_chinese("前向钩子（forward hook），能看到。") == []
    assert ascii_marks_beside_chinese("见 `f(x):` 的用法") == []  # code keeps its punctuation
    assert ascii_marks_beside_chinese("x = f(a, b)  # plain code") == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_ascii_punctuation_beside_chinese(path):
    found = [(where, line.strip()[:90], marks) for where, line in text_lines(path)
             if (marks := ascii_marks_beside_chinese(line))]
    assert not found, (f"{len(found)} lines of {path.name} put ASCII punctuation beside Chinese characters "
                       f"(use {''.join(FULL_WIDTH.values())}); the first: "
                       + "; ".join(f"{w}: {marks} in {text!r}" for w, text, marks in found[:5]))
