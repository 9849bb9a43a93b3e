"""docs/timings.json is the one home of the course's time figures: the notebook headers, docs/TRAINER.md and
README.md must state the figures it holds, and TRAINER's section tables must add up to its teaching times."""
import json
import re

import nbformat
import pytest

from tests.conftest import ROOT

TIMINGS = json.loads((ROOT / "docs" / "timings.json").read_text(encoding="utf-8"))
NOTEBOOKS = TIMINGS["notebooks"]
TRAINER = (ROOT / "docs" / "TRAINER.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def total(entry: dict) -> int:
    return entry["lesson_minutes"] + entry["exercise_minutes"]


def run_text(entry: dict) -> str:
    """'24-30 s (35-41 s with `SCN_PROFILE=full`)' or '1.5 s'."""
    full = entry.get("run_cpu_full")
    return f"{entry['run_cpu']} ({full} with `SCN_PROFILE=full`)" if full else entry["run_cpu"]


def row_of(text: str, stem: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith("|") and f"{stem}.ipynb`" in line]
    assert len(rows) == 1, f"expected one table row naming {stem}.ipynb, found {len(rows)}"
    return rows[0]


def section_minutes(stem: str) -> list:
    """The (section, minutes) rows of TRAINER's part-2 table for the notebook."""
    number = stem[:2]
    start = TRAINER.index(f"### {number} · ")
    end = TRAINER.find("\n#", start + 1)
    rows = re.findall(r"^\| ([^|]+?) \| (\d+) \|", TRAINER[start:end], re.M)
    assert rows, f"no section table for {stem} in docs/TRAINER.md"
    return [(name, int(minutes)) for name, minutes in rows]


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_the_notebook_header_states_the_figures(stem):
    entry = NOTEBOOKS[stem]
    header = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells[0].source
    assert (f"about {total(entry)} minutes in class ({entry['lesson_minutes']} min lesson, "
            f"{entry['exercise_minutes']} min exercises") in header
    assert f"Running every cell takes {entry['run_cpu']}" in header
    assert f"课堂上约 {total(entry)} 分钟（讲解 {entry['lesson_minutes']} 分钟，练习 {entry['exercise_minutes']} 分钟）" in header
    assert len(re.findall(r"\d+ min(?:utes)?\b", header)) == 3, "the header states another time besides the file's"


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_trainer_states_the_figures_and_its_sections_add_up(stem):
    entry = NOTEBOOKS[stem]
    row = row_of(TRAINER, stem)
    expected = (f"| {total(entry)} min ({entry['lesson_minutes']} min lesson, {entry['exercise_minutes']} min exercises) "
                f"| {run_text(entry)} |")
    assert row.endswith(expected), f"docs/TRAINER.md's row for {stem}: {row!r}, expected it to end {expected!r}"
    sections = section_minutes(stem)
    exercises = [minutes for name, minutes in sections if "Exercises" in name]
    assert exercises == [entry["exercise_minutes"]]
    assert sum(minutes for _, minutes in sections) == total(entry)


def test_readme_states_the_teaching_times():
    minutes = [str(total(NOTEBOOKS[stem])) for stem in sorted(NOTEBOOKS)]
    assert f"(in class: {', '.join(minutes[:-1])} and {minutes[-1]} minutes;" in README


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_readme_states_the_run_time(stem):
    row = row_of(README, stem)
    assert row.rstrip(" |").split("|")[-1].strip().startswith(NOTEBOOKS[stem]["run_cpu"]), row
