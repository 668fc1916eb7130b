"""The verbs of the ``crdistance`` command, and :func:`main` dispatching to them."""

import json
import sys
import warnings
from pathlib import Path

from crdistance.cli._fit import fit
from crdistance.cli._io import (
    CommandError,
    Console,
    ImageReader,
    UsageError,
    query_images,
)
from crdistance.cli._parser import EVALUATE_CELLS, build_parser, featurizer_options


def predict(args, console):
    """``crdistance predict``: score images, write scores.csv and overlays."""
    from crdistance.cli._model import load_model
    from crdistance.cli._predict import predict_images

    pipeline = load_model(args.model)
    paths = query_images(args.images)
    reader = ImageReader(args.skip_unreadable)
    rows, csv_path = predict_images(pipeline, paths, args.out_dir, reader, console)
    threshold = float(pipeline[-1].threshold_)
    flagged = sum(row["decision"] == "anomalous" for row in rows)
    routed = "category" in (rows[0] if rows else {})
    width = max([len(row["category"] or "") for row in rows] if routed else [0])
    rate = getattr(pipeline[-1], "false_alarm_rate_", None)
    lines = [
        f"{row['decision']:<10} {_number(row['score']):>10}  "
        + (f"p={_number(row['p_value']):<8} " if rate is not None else "")
        + (f"{row['category'] or '':<{width}}  " if routed else "")
        + row["path"]
        for row in rows
    ]
    units = ", in units of each category's threshold" if routed else ""
    if rate is not None:
        units += f"; p-value <= {rate:.3g}, the calibrated false-alarm rate"
    lines.append(
        f"{flagged} of {len(rows)} images anomalous (score above {threshold:.4g}"
        f"{units}); wrote {csv_path} and the overlays in "
        f"{Path(args.out_dir) / 'overlays'}"
    )
    payload = {
        "model": str(args.model),
        "threshold": threshold,
        "false_alarm_rate": rate,
        "scores_csv": str(csv_path),
        "images": rows,
        "skipped": reader.report(console),
    }
    return payload, "\n".join(lines)


def evaluate(args, console):
    """``crdistance evaluate``: the metrics table and figures of a dataset."""
    from crdistance.cli._categories import category_names
    from crdistance.cli._evaluate import evaluate_dataset
    from crdistance.cli._table import format_table

    if args.max_epochs is not None and "grad" not in args.methods:
        raise UsageError("--max-epochs sets the training of the grad method; add "
                         "grad to --methods or leave out --max-epochs.")
    if "crd_routed" in args.methods and len(args.data_dirs) < 2:
        raise UsageError(
            "crd_routed fits one CRD per category and needs 2 or more DATA_DIRs, "
            f"one per category; got {len(args.data_dirs)}."
        )
    category_names(args.data_dirs)
    if args.cells is not None and "local" not in args.methods:
        raise CommandError(
            "--cells sets the cells of the local method; add local to --methods."
        )
    rows, written, skipped = evaluate_dataset(
        args.data_dirs,
        args.methods,
        args.out_dir,
        featurizer_options=featurizer_options(args),
        method_options={
            "lam": args.lam,
            "lam_scale": args.lam_scale,
            "cells": EVALUATE_CELLS if args.cells is None else args.cells,
            "nearest_cells": args.nearest_cells,
            "coreset_ratio": args.coreset_ratio,
            "max_epochs": args.max_epochs,
        },
        reader=ImageReader(args.skip_unreadable),
        figures=not args.no_figures,
        console=console,
    )
    text = "\n".join([format_table(rows), "", "wrote " + ", ".join(map(str, written))])
    files = [str(path) for path in written]
    return {"rows": rows, "files": files, "skipped": skipped}, text


def demo(args, console):
    """``crdistance demo``: generate a dataset, then fit, predict and evaluate."""
    from crdistance.cli._demo import run_demo

    return run_demo(args, console, COMMANDS)


def export(args, console):
    """``crdistance export``: write a fitted model as one ONNX graph."""
    from crdistance.cli._model import load_model
    from crdistance.export import to_onnx

    pipeline = load_model(args.model)
    console.info(f"export: tracing {pipeline[0].backbone} to ONNX")
    try:
        to_onnx(pipeline, args.output, float16=args.float16)
    except TypeError as exc:  # a kind of model to_onnx does not export
        raise CommandError(f"Cannot export {args.model}: {exc}") from exc
    size = Path(args.output).stat().st_size
    text = f"wrote {args.output} ({size:,} bytes)"
    return {"onnx": str(args.output), "bytes": size}, text


def serve(args, console):
    """``crdistance serve``: serve a model file over HTTP until stopped."""
    from crdistance.cli._serve import serve as run_server

    return run_server(args, console)


COMMANDS = {
    "fit": fit,
    "predict": predict,
    "evaluate": evaluate,
    "demo": demo,
    "export": export,
    "serve": serve,
}


def _number(value):
    return "" if value is None else f"{value:.4g}"


def _tell(console):
    def show(message, category, filename, lineno, file=None, line=None):
        console.warn(str(message))

    return show


def main(argv=None):
    """Run the ``crdistance`` command; returns the exit code.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments after the program name; None reads ``sys.argv``.

    Returns
    -------
    code : int
        0 on success, 1 on an error (explained on stderr); usage errors exit
        with 2 through argparse, and options that do not go together
        (``fit --embedder cse --auto``, ...) return 2.

    Examples
    --------
    >>> from crdistance.cli import main
    >>> main(["export", "no-such-model.npz", "-q"])
    1
    """
    args = build_parser().parse_args(argv)
    console = Console(args.quiet)
    try:
        with warnings.catch_warnings():
            # The library's warnings (too few rows for the cells, ...) are told
            # as the command's own "warning: ..." lines, without a source line.
            warnings.showwarning = _tell(console)
            payload, text = COMMANDS[args.command](args, console)
    except UsageError as exc:
        print(f"crdistance {args.command}: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc)}))
        return 2
    except (CommandError, OSError, ValueError, ImportError) as exc:
        print(f"crdistance {args.command}: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc)}))
        return 1
    except KeyboardInterrupt:
        print(f"crdistance {args.command}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(payload, indent=2) if args.json else text)
    return 0
