"""Write the student edition of the notebooks: every solution replaced by a stub, outputs cleared.

    python tools/editions.py                      # notebooks/*.ipynb -> build/student/*.ipynb (`make student`)
    python tools/editions.py --out DIR 01         # one notebook

The notebooks in notebooks/ are the instructor edition. In a code cell, the lines of a solution sit
between two marker lines (nbgrader's convention):

    def counted(log, prefix):
        ### BEGIN SOLUTION
        ### HINT: a closure with its own count, changed with nonlocal   <- optional, right after BEGIN
        def decorator(fn):
            ...
        ### END SOLUTION

The student edition replaces the whole block, markers included, by one line at the indent of BEGIN:

        raise NotImplementedError("Exercise 1: a closure with its own count, changed with nonlocal")

N is the number in the cell's `# Exercise N` comment (every cell with a solution has one). Every output
and execution count is cleared.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
EXERCISE = re.compile(r"^\s*#\s*Exercise\s+(\d+)\b")
DEFAULT_HINT = "write your answer here"


class EditionError(ValueError):
    """A notebook whose markers cannot be turned into a student edition (the message names the cell)."""


def exercise_number(source: str, where: str) -> int:
    numbers = {int(m.group(1)) for line in source.splitlines() if (m := EXERCISE.match(line))}
    if len(numbers) != 1:
        raise EditionError(f"{where}: a cell with a solution needs exactly one `# Exercise N` comment line, "
                           f"found {sorted(numbers) or 'none'}; add `# Exercise N: <title>` as its first line")
    return numbers.pop()


def strip_solutions(source: str, where: str = "cell") -> str:
    """The cell's source with each BEGIN/END block replaced by its `raise NotImplementedError(...)` stub."""
    lines = source.splitlines()
    if not any(line.strip() == BEGIN for line in lines):
        if any(line.strip() in (END,) or line.strip().startswith(HINT) for line in lines):
            raise EditionError(f"{where}: `{END}` or `{HINT}` without `{BEGIN}`")
        return source
    number = exercise_number(source, where)
    out: List[str] = []
    block: Optional[List[str]] = None  # the lines of the open block, None outside one
    for index, line in enumerate(lines, 1):
        marker = line.strip()
        if marker == BEGIN:
            if block is not None:
                raise EditionError(f"{where}, line {index}: `{BEGIN}` inside an open solution block")
            block, indent = [], line[:len(line) - len(line.lstrip())]
        elif marker == END:
            if block is None:
                raise EditionError(f"{where}, line {index}: `{END}` without `{BEGIN}`")
            hint = block[0].strip()[len(HINT):].strip() if block and block[0].strip().startswith(HINT) else DEFAULT_HINT
            out.append(f"{indent}raise NotImplementedError({f'Exercise {number}: {hint}'!r})")
            block = None
        elif block is not None:
            if marker.startswith(HINT) and block:
                raise EditionError(f"{where}, line {index}: `{HINT}` must come right after `{BEGIN}`")
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise EditionError(f"{where}: `{BEGIN}` without `{END}`")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def solution_lines(source: str) -> List[str]:
    """The lines inside the cell's solution blocks (HINT lines excluded): what a student must not see."""
    lines, inside = [], False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            inside = True
        elif marker == END:
            inside = False
        elif inside and not marker.startswith(HINT):
            lines.append(line)
    return lines


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of the instructor notebook `nb` with every solution stubbed and every output cleared."""
    nb = nbformat.from_dict(nb)  # a deep copy
    for index, cell in enumerate(nb.cells):
        where = f"{name} cell {index}"
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, where)
            cell.outputs, cell.execution_count = [], None
        elif BEGIN in cell.source or END in cell.source:
            raise EditionError(f"{where}: solution markers in a {cell.cell_type} cell; only code cells may hold solutions")
    return nb


def write_student_edition(out_dir: Path, names: Optional[List[str]] = None) -> List[Path]:
    """notebooks/<name>.ipynb -> out_dir/<name>.ipynb for every notebook (or those named); the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.stem == n or p.stem.startswith(f"{n}_") for n in names)]
    written = []
    for path in paths:
        nb = student_notebook(nbformat.read(path, as_version=4), path.name)
        target = out_dir / path.name
        nbformat.write(nb, str(target))
        written.append(target)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to convert, e.g. 01 (default: all)")
    parser.add_argument("--out", default=str(ROOT / "build" / "student"), help="folder (default build/student)")
    args = parser.parse_args(argv)
    try:
        written = write_student_edition(Path(args.out), args.names)
    except EditionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
