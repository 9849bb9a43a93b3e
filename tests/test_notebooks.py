"""The notebooks run headless from top to bottom, report their key results, and are committed clean.

Convention: the LAST code cell of every notebook prints one line `RESULTS {json}` with the notebook's
key figures; these tests parse that line and check the figures.
"""
import json

import nbformat
import pytest

from tests.conftest import ROOT
from tests.exercise_support import editions, runner  # tools/execute_notebooks.py and tools/editions.py

NOTEBOOKS = ROOT / "notebooks"

TOY_OPS = ["Conv", "Relu", "Conv", "Add", "Relu", "Transpose", "Reshape", "Gemm", "Reshape"]


def notebook_path(stem: str):
    path = NOTEBOOKS / f"{stem}.ipynb"
    if not path.is_file():
        pytest.skip(f"{path.name} does not exist yet")
    return path


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def results_of(nb) -> dict:
    """The JSON printed as `RESULTS {...}` by the notebook's last code cell."""
    last = code_cells(nb)[-1]
    lines = [line for output in last.outputs if output.output_type == "stream"
             for line in output.text.splitlines() if line.startswith("RESULTS ")]
    assert len(lines) == 1, f"the last code cell should print one RESULTS line, got {lines}"
    return json.loads(lines[0][len("RESULTS "):])


def errors_in(nb) -> list:
    return [output for cell in code_cells(nb) for output in cell.outputs if output.output_type == "error"]


def check_01(results: dict):
    assert results["exercises"] == {"solved": 3, "total": 3}
    assert results["double_wrap_records"] == 2  # one call recorded twice after a patching cell ran twice
    assert results["guarded_trace"] == ["Block", "permute"]
    assert results["unguarded_trace"] == ["permute", "permute", "Block", "permute"]
    assert results["originals_restored"] is True
    assert results["reference_second_export"] == ["relu2", "relu3"]  # the import-time patcher's counters live on


def check_02(results: dict):
    assert results["nodes"] == 9 and results["ops"] == TOY_OPS and results["tensors"] == 10
    assert results["ort_max_abs_error"] < 1e-5
    assert results["checker_passed"] is True
    assert results["custom_op_default_domain_rejected"] is True and results["custom_op_own_domain_passed"] is True
    assert results["id_reuse_seen"] is True and results["ai_onnx_is_default_domain"] is True
    assert results["exercises"] == {"solved": 3, "total": 3}
    assert results["netron_stopped"] is True


def check_03(results: dict):
    assert results["profile"] == "ci"  # the kernel got SCN_PROFILE
    assert results["nodes"] == 40 and results["contract_problems"] == 0
    if results["dtype"] == "float32":  # the same rule as `python -m helpers.export`
        assert results["rerun_max_abs"] <= 1e-4
    else:
        assert results["rerun_cosine"] >= 0.9999
    assert results["exercises"] == {"solved": 4, "total": 4}
    assert results["one_voxel_nodes"] == 40  # the reference's input, one all-zero voxel, gives the same graph
    assert results["gallery"] == 7  # every "what goes wrong" entry reproduced and asserted


def check_04(results: dict):
    assert results["nodes"] == 14 and results["output"] == [1, 256, 200, 176]  # OpenPCDet's VoxelBackBone8x
    assert results["op_counts"] == {"SparseConvolution": 12, "ScatterDense": 1, "Reshape": 1}
    assert results["contract_problems"] == 0 and results["layout"] == "zyx"
    assert results["float_max_abs"] == 0.0 and results["int8_max_abs"] == 0.0  # both re-runs of the file, exactly
    assert results["wrong_format_refused"] is True  # format="xyz" on a zyx network: the contract check says so
    assert results["unsupported"] == ["pool", "up.0"] and results["fixed_contract_problems"] == 0
    assert results["flatten_without_handler"] == "ScatterDense"  # no handler: the graph stops before the view
    assert results["exercises"] == {"solved": 3, "total": 3}


CHECKS = {"01_hooks": check_01, "02_decorator_trace": check_02, "03_export_scn": check_03, "04_own_network": check_04}


@pytest.mark.parametrize("stem", list(CHECKS))
def test_notebook_runs_headless_and_reports_its_results(stem, tmp_path):
    nb = runner.execute_notebook(notebook_path(stem), tmp_path, profile="ci")
    assert errors_in(nb) == []
    assert (tmp_path / f"{stem}.ipynb").is_file() and (tmp_path / f"{stem}.html").stat().st_size > 0
    CHECKS[stem](results_of(nb))


@pytest.mark.parametrize("stem", list(CHECKS))
def test_the_student_edition_runs_headless_to_the_last_cell_and_solves_nothing(stem, tmp_path):
    instructor = nbformat.read(notebook_path(stem), as_version=4)
    if not any(editions.BEGIN in cell.source for cell in code_cells(instructor)):
        pytest.skip(f"{stem} has no exercise with solution markers yet")
    student = runner.write_student_copy(notebook_path(stem), tmp_path / "student")  # as `--student` does
    nb = runner.execute_notebook(student, tmp_path / "out", profile="ci", allow_errors=True)
    results = results_of(nb)  # the last cell ran
    assert results["exercises"]["solved"] == 0 and results["exercises"]["total"] >= 3
    assert all(error.ename == "NotImplementedError" for error in errors_in(nb))  # only stubs may raise


def run_all_cells(client, nb) -> dict:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            client.execute_cell(cell, index)
    assert errors_in(nb) == []
    return results_of(nb)


@pytest.mark.parametrize("stem", ["01_hooks", "02_decorator_trace", "03_export_scn", "04_own_network"])
def test_running_the_notebook_twice_in_one_kernel_gives_the_same_results(stem):
    nb = nbformat.read(notebook_path(stem), as_version=4)
    client = runner.make_client(nb)
    graph = runner.ROOT / "build" / "notebook03" / "scn.onnx"  # what notebook 03 saves
    with client.setup_kernel(env=runner.kernel_env("ci")):
        first = run_all_cells(client, nb)
        first_bytes = graph.read_bytes() if stem == "03_export_scn" else b""
        second = run_all_cells(client, nb)
        second_bytes = graph.read_bytes() if stem == "03_export_scn" else b""
    assert first == second
    assert first_bytes == second_bytes  # the same graph, byte for byte
    CHECKS[stem](second)


def test_committed_notebooks_have_no_outputs_and_no_execution_counts():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert paths, "no notebooks found"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for index, cell in enumerate(code_cells(nb)):
            assert cell.outputs == [], f"{path.name}: code cell {index} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name}: code cell {index} has an execution count"


def test_cli_skips_missing_notebooks_and_runs_by_short_name(tmp_path, capsys):
    assert runner.find_notebook("02") == NOTEBOOKS / "02_decorator_trace.ipynb"
    assert runner.find_notebook("01_hooks.ipynb") == NOTEBOOKS / "01_hooks.ipynb"
    assert runner.main(["--out", str(tmp_path), "99_not_there"]) == 0
    assert "skip" in capsys.readouterr().out
