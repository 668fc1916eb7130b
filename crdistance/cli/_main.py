"""The verbs of the ``crdistance`` command, and :func:`main` dispatching to them."""

import json
import sys
import warnings
from pathlib import Path

from crdistance import CRDetector
from crdistance.cli._io import (
    CommandError,
    Console,
    ImageReader,
    UsageError,
    query_images,
    training_images,
)
from crdistance.cli._parser import (
    DEFAULT_LAM,
    DEFAULT_LAM_SCALE,
    EVALUATE_CELLS,
    build_parser,
)


def fit(args, console):
    """``crdistance fit``: fit a model on good images and save it."""
    from crdistance.cli._cse import make_embedder
    from crdistance.cli._model import (
        fit_model,
        held_out,
        local_detector,
        make_featurizer,
        save_model,
    )

    _check_fit_options(args)
    if args.auto and args.cells is not None:
        raise CommandError("--auto chooses the cells itself; leave out --cells.")
    if args.auto and args.calibration == 0:
        raise CommandError(
            "--auto may choose local CRD, which sets its threshold on held-out good "
            "images; pass --calibration above 0."
        )
    if args.cells is not None and args.calibration == 0:
        # Its training scores are optimistic: the training rows are in its cells.
        raise CommandError(
            "Local CRD (--cells) sets its threshold on held-out good images; "
            "pass --calibration above 0."
        )
    cse = args.embedder == "cse"
    paths = training_images(args.data_dir)
    console.info(f"fit: {len(paths)} good images in {paths[0].parent}")
    featurizer = make_featurizer(paths, **_featurizer_options(args))
    auto = None
    if args.auto:
        from crdistance.cli._auto import choose_detector

        held = held_out(len(paths), args.calibration)
        detector, auto = choose_detector(
            featurizer, [p for i, p in enumerate(paths) if i not in held], console
        )
    elif args.detector == "kmeans":
        from crdistance.cli._cse import kmeans_detector

        detector = kmeans_detector()
    elif args.cells is None:
        detector = CRDetector(lam=args.lam, lam_scale=args.lam_scale)
    else:
        detector = local_detector(
            None if cse else featurizer,
            cells=args.cells,
            nearest_cells=args.nearest_cells,
            lam=args.lam,
            lam_scale=args.lam_scale,
        )
    reader = ImageReader(args.skip_unreadable)
    pipeline, info = fit_model(
        featurizer,
        detector,
        paths,
        calibration=args.calibration,
        reader=reader,
        console=console,
        embedder=make_embedder(console) if cse else None,
    )
    info = {
        "data": str(paths[0].parent),
        **_featurizer_options(args),
        **info,
        "skipped": reader.report(console),
    }
    if auto is not None:
        info["auto"] = auto
    path = save_model(pipeline, args.output)
    method = (
        f"{auto['chosen']} (--auto)," if auto is not None
        else f"k-means, {info['n_clusters_fitted']} centres,"
        if args.detector == "kmeans"
        else "CRD" if args.cells is None
        else f"local CRD, {args.cells} cells{'' if cse else ' per layer'},"
    )
    features = f"{args.backbone}, {info['n_features']} features per patch"
    if cse:
        record = info["embedder"]
        method = f"CSE embedding + {method}"
        features = (f"{args.backbone}, {record['n_features_in']} features per patch "
                    f"embedded in {record['n_components']}; {record['n_iter']} "
                    f"epochs, weights of epoch {record['best_epoch']}")
    text = (
        f"wrote {path}: {method} on {info['n_fitted_images']} images "
        f"({features}), "
        f"threshold {info['threshold']:.4g} = {info['threshold_rule']}"
    )
    return {"model": str(path), **info}, text


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
    lines = [
        f"{row['decision']:<10} {_number(row['score']):>10}  {row['path']}"
        for row in rows
    ]
    lines.append(
        f"{flagged} of {len(rows)} images anomalous (score above {threshold:.4g}); "
        f"wrote {csv_path} and the overlays in {Path(args.out_dir) / 'overlays'}"
    )
    payload = {
        "model": str(args.model),
        "threshold": threshold,
        "scores_csv": str(csv_path),
        "images": rows,
        "skipped": reader.report(console),
    }
    return payload, "\n".join(lines)


def evaluate(args, console):
    """``crdistance evaluate``: the metrics table and figures of a dataset."""
    from crdistance.cli._evaluate import evaluate_dataset, format_table

    if args.cells is not None and "local" not in args.methods:
        raise CommandError(
            "--cells sets the cells of the local method; add local to --methods."
        )
    rows, written, skipped = evaluate_dataset(
        args.data_dir,
        args.methods,
        args.out_dir,
        featurizer_options=_featurizer_options(args),
        method_options={
            "lam": args.lam,
            "lam_scale": args.lam_scale,
            "cells": EVALUATE_CELLS if args.cells is None else args.cells,
            "nearest_cells": args.nearest_cells,
            "coreset_ratio": args.coreset_ratio,
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


COMMANDS = {
    "fit": fit,
    "predict": predict,
    "evaluate": evaluate,
    "demo": demo,
    "export": export,
}


def _check_fit_options(args):
    """Refuse the options of ``fit`` that do not go together (exit code 2)."""
    if args.auto and args.embedder != "none":
        raise UsageError(
            "--auto compares detectors on the backbone's features, not on a "
            f"trained embedding; leave out --auto or --embedder {args.embedder}."
        )
    if args.auto and args.detector is not None:
        raise UsageError("--auto chooses the detector itself; leave out --detector.")
    if args.detector == "kmeans" and args.cells is not None:
        raise UsageError("--cells fits local CRD, which --detector kmeans is not; "
                         "leave out one of them.")
    if args.detector == "kmeans" and (args.lam, args.lam_scale) != (
        DEFAULT_LAM, DEFAULT_LAM_SCALE
    ):
        raise UsageError("--lam and --lam-scale set the penalty of CRD; "
                         "--detector kmeans has none. Leave them out.")


def _featurizer_options(args):
    return {
        "backbone": args.backbone,
        "layers": args.layers,
        "weights": args.weights,
        "resize": args.resize,
        "batch_size": args.batch_size,
        "device": args.device,
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
