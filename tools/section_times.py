"""Run time of each section of executed notebooks, from the timings nbclient writes into every cell.

    python tools/execute_notebooks.py --out build        # execute (on the machine you will teach on)
    python tools/section_times.py build/0*.ipynb         # then: seconds per `##` section, as a table

A section is a `#` or `##` heading and the cells up to the next one; its time is the sum, over its code
cells, of execute_input -> execute_reply (the kernel's own start and end of each cell; the wait before a
cell and the kernel's start-up are not counted, so the notebook's total is a little under its wall time).
"""
import argparse
import datetime
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import nbformat


def seconds(cell) -> Optional[float]:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda text: datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def section_times(path) -> List[Tuple[str, float, int]]:
    """(heading, seconds, code cells) for each top-level section of an executed notebook, in order."""
    nb = nbformat.read(str(path), as_version=4)
    sections: List[Tuple[str, float, int]] = [("(before the first heading)", 0.0, 0)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith(("# ", "## ")):
                    sections.append((line.lstrip("# ").strip(), 0.0, 0))
        elif cell.cell_type == "code":
            took = seconds(cell)
            if took is not None:
                heading, total, count = sections[-1]
                sections[-1] = (heading, total + took, count + 1)
    return [s for s in sections if s[2] or s[0] != "(before the first heading)"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", help="executed notebooks, e.g. build/03_export_scn.ipynb")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        rows = section_times(path)
        print(f"\n{Path(path).name}: {sum(r[1] for r in rows):.1f} s in code cells\n")
        print("| section | code cells | run time |\n|---|---:|---:|")
        for heading, total, count in rows:
            print(f"| {heading} | {count} | {total:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
