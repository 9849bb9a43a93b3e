"""What a course needs from notebooks 01, 02 and 04, read from the files (no kernel): exercises with check cells,
"predict, then run" prompts, English and Chinese headings, and slide metadata on the cells that open a slide."""
import re

import nbformat
import pytest

from tests.conftest import ROOT
from tests.exercise_support import CHECK_CALL, editions

CJK = re.compile(r"[\u4e00-\u9fff]")
STEMS = ["01_hooks", "02_decorator_trace", "04_own_network"]


def cells_of(stem):
    return nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells


def slide_type(cell):
    return cell.metadata.get("slideshow", {}).get("slide_type")


@pytest.mark.parametrize("stem", STEMS)
def test_each_exercise_has_a_solution_block_a_hint_and_one_check_cell_after_it(stem):
    cells = cells_of(stem)
    exercise_cells = {editions.exercise_number(c.source, stem): i for i, c in enumerate(cells)
                      if c.cell_type == "code" and editions.BEGIN in c.source}
    assert sorted(exercise_cells) == list(range(1, len(exercise_cells) + 1)) and len(exercise_cells) >= 3
    for number, index in exercise_cells.items():
        assert editions.HINT in cells[index].source, f"{stem}: exercise {number} has no hint"
        checks = [i for i, c in enumerate(cells) if c.cell_type == "code" and re.search(CHECK_CALL.format(number), c.source, re.M)]
        assert checks == [index + 1], f"{stem}: exercise {number}'s check cell should follow its cell"


@pytest.mark.parametrize("stem", STEMS)
def test_at_least_three_predict_prompts_each_answered_by_the_next_cell(stem):
    cells = cells_of(stem)
    prompts = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("**Predict.**")]
    assert len(prompts) >= 3
    for index in prompts:
        assert cells[index + 1].cell_type == "code", f"{stem}: the prompt in cell {index} is not followed by code"


@pytest.mark.parametrize("stem", STEMS)
def test_title_sections_and_recap_are_in_english_and_chinese_and_open_slides(stem):
    cells = cells_of(stem)
    assert cells[0].source.startswith("# ") and CJK.search(cells[0].source.splitlines()[0])
    assert "**After this notebook you will be able to**" in cells[0].source and "**学完本节你将能够**" in cells[0].source
    assert slide_type(cells[0]) == "slide"
    headings = [c for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert len(headings) >= 8
    for cell in headings:
        first = cell.source.splitlines()[0]
        assert CJK.search(first) and re.search(r"[A-Za-z]", first), f"{stem}: heading not in both languages: {first}"
        assert slide_type(cell) == "slide", f"{stem}: {first} does not open a slide"
    recap = [c.source for c in headings if c.source.startswith("## Recap")]
    assert len(recap) == 1 and len(CJK.findall(recap[0])) > 100  # the recap itself, not only its heading
    assert slide_type(cells[1]) == "skip"  # the set-up cell stays out of the deck
