"""Check a saved SCN file: the contract, and what it computes in float and in int8.

    python -m helpers.verify build/scn.onnx                          # the contract check alone
    python -m helpers.verify build/scn.onnx --tensors build/tensors  # + float and int8-faithful re-runs

--tensors DIR is the folder written by `python -m helpers.export --save-tensors DIR` with that file
(its manifest.json names the file's sha256; a folder written for another graph is refused unless
--other-graph says the file is an edited copy to compare anyway): the voxels,
the float PyTorch output, the fake-quant PyTorch output (output_int8.npy) and node_stats.npz. The
file is re-run twice from its nodes, attributes and fp16 initializers alone: in float, and with its
own precisions and dynamic ranges as the engine's int8 build computes them (helpers/check/int8.py).
Exit code 0: every check agrees; 1: a check disagrees (the first differing node is named);
2: bad input (one line: the file, what was expected, the fix), e.g. a folder written for another graph;
3: an internal error (a bug in the workbook).
"""
import argparse
import sys
import traceback

from helpers.check.agree import check_file, load_reference
from helpers.check.contract import OP_COUNTS
from helpers.check.runtime import check_coords
from helpers.errors import WorkbookError, held_warnings, print_warnings
from helpers.model import pick_device
from helpers.onnx_file import load_onnx


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m helpers.verify", description=__doc__.split("\n\n")[0],
                                epilog="exit codes: 0 all checks agree, 1 a check disagrees, 2 bad input, "
                                       "3 an internal error")
    p.add_argument("file", help="the .onnx file written by python -m helpers.export")
    p.add_argument("--tensors", metavar="DIR", help="folder written by export --save-tensors: also re-run the "
                   "file in float and in int8 and compare with PyTorch")
    p.add_argument("--other-graph", action="store_true", help="the file is not the graph the --tensors folder "
                   "was written with (e.g. an edited copy): compare anyway, instead of refusing the stale pair")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to re-run (default cpu, fp32)")
    p.add_argument("--network", choices=sorted(OP_COUNTS) + ["any"], help="whose node counts the file must have "
                   "(default: the network whose counts it has, else bevfusion); 'any' checks no counts")
    return p.parse_args(argv)


def expected_counts(model, network):
    """The node counts per op type the file must have: the named network's, or the one it matches."""
    if network == "any":
        return None
    if network:
        return OP_COUNTS[network]
    found = {}
    for node in model.graph.node:
        found[node.op_type] = found.get(node.op_type, 0) + 1
    for counts in OP_COUNTS.values():
        if all(found.get(op, 0) == n for op, n in counts.items()):
            return counts
    return OP_COUNTS["bevfusion"]


def main(argv=None) -> int:
    """The command line as a function: returns 0 (all agree), 1 (a check disagrees) or 2 (bad input)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help (0), or argparse's usage error (2)
        return int(stop.code or 0)
    with held_warnings() as held:  # a library's warning must not turn the one-line error into three lines
        try:
            device = pick_device(args.device)
            model = load_onnx(args.file)
            graph = None if args.other_graph else args.file  # its manifest must name this file
            reference = load_reference(args.tensors, graph=graph) if args.tensors else None
            if reference is not None and any(n.op_type == "SparseConvolution" for n in model.graph.node):
                check_coords(reference.coords, model)  # e.g. xyz rows for a zyx graph: bad input, said as such
            verdict = check_file(model, reference, op_counts=expected_counts(model, args.network), device=device)
        except WorkbookError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Exception:  # a damaged file is a verdict or a bad input; anything else is a bug: say so
            traceback.print_exc()
            print("error: internal error (a bug in the workbook); please report the traceback above", file=sys.stderr)
            return 3
    print_warnings(held)
    print(f"{args.file}:")
    for line in verdict.lines:
        print(line)
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
