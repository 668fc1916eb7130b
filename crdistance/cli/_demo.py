"""``crdistance demo``: the main job end to end on a generated dataset, offline.

The demo writes the dataset of :mod:`crdistance.cli._demo_data`, then runs the
real ``fit``, ``predict`` and ``evaluate`` subcommands on it, with the best
backbone weights found in the torch hub cache, or random weights (with a
warning) when there are none.
"""

import importlib.util
import time
from pathlib import Path

from crdistance.cli._demo_data import DEFECT_TYPES, write_demo_dataset

WEIGHTS_PREFERENCE = (("mobilenet_v2", "IMAGENET1K_V1"), ("resnet18", "IMAGENET1K_V1"))
FALLBACK_BACKBONE = "mobilenet_v2"


def run_demo(args, console, commands):
    """Run the demo for parsed ``crdistance demo`` arguments.

    ``commands`` maps each subcommand's name to its function (the command line's
    table, handed in so that this module does not import the one that imports it).

    Returns
    -------
    payload : dict
        The results of every step, JSON-ready.
    text : str
        The summary printed without ``--json``.
    """
    from crdistance.cli._parser import build_parser

    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    console.info(f"demo: writing the synthetic dataset to {out_dir / 'data'}")
    data = write_demo_dataset(
        out_dir / "data",
        n_train=args.train,
        n_test_good=args.test_good,
        n_defective=args.defective,
        size=args.size,
    )
    backbone, weights = choose_weights(data, console)
    parser = build_parser()

    def run(*argv):
        quiet = ["--quiet"] if args.quiet else []
        command_args = parser.parse_args([*argv, *quiet])
        return commands[command_args.command](command_args, console)[0]

    features = ["--backbone", backbone, "--weights", weights or "none"]
    model = out_dir / "model.npz"
    fitted = run("fit", str(data), "-o", str(model), *features)
    test_folders = sorted(str(folder) for folder in (data / "test").iterdir())
    predicted = run(
        "predict", str(model), *test_folders, "-o", str(out_dir / "predictions")
    )
    figures = [] if importlib.util.find_spec("matplotlib") else ["--no-figures"]
    if figures:
        console.warn(
            "matplotlib is not installed: no ROC curves or heat-map grids "
            "(pip install matplotlib)."
        )
    evaluated = run("evaluate", str(data), "--methods", "crd,knn",
                    "-o", str(out_dir / "evaluation"), *features, *figures)
    payload = {
        "dataset": str(data),
        "backbone": backbone,
        "weights": weights,
        "fit": fitted,
        "predict": {
            "scores_csv": predicted["scores_csv"],
            "flagged": _flag_counts(predicted["images"]),
        },
        "evaluate": evaluated,
        "seconds": time.perf_counter() - start,
    }
    return payload, _summary(args, payload)


def choose_weights(data, console):
    """The first backbone of ``WEIGHTS_PREFERENCE`` whose weights load offline.

    Returns ``(FALLBACK_BACKBONE, None)`` (random weights), with a warning,
    when none does.
    """
    from crdistance.cli._io import training_images
    from crdistance.cli._model import make_featurizer

    paths = training_images(data)
    missing = []
    for backbone, weights in WEIGHTS_PREFERENCE:
        try:
            make_featurizer(
                paths,
                backbone=backbone,
                layers=None,
                weights=weights,
                resize=None,
                batch_size=1,
                device="cpu",
            )
        except FileNotFoundError as exc:
            missing.append(str(exc))
            continue
        console.info(f"demo: features of {backbone} with {weights} weights")
        return backbone, weights
    console.warn(
        f"{missing[0]}\nNo pretrained weights of "
        f"{' or '.join(name for name, _ in WEIGHTS_PREFERENCE)} in the torch hub "
        f"cache: the demo uses {FALLBACK_BACKBONE} with RANDOM weights. It shows "
        "the mechanics; pretrained features localise defects far better."
    )
    return FALLBACK_BACKBONE, None


def _flag_counts(images):
    """Images flagged anomalous among the defective and the good test images."""
    counts = {
        "defective": {"flagged": 0, "images": 0},
        "good": {"flagged": 0, "images": 0},
    }
    for image in images:
        kind = "good" if Path(image["path"]).parent.name == "good" else "defective"
        counts[kind]["images"] += 1
        counts[kind]["flagged"] += image["decision"] == "anomalous"
    return counts


def _summary(args, payload):
    from crdistance.cli._table import format_table

    fitted, predicted = payload["fit"], payload["predict"]
    crd, knn = payload["evaluate"]["rows"]
    speedup = knn["distance ms/image"] / crd["distance ms/image"]
    flagged = " and ".join(
        f"{count['flagged']} of {count['images']} {kind}"
        for kind, count in predicted["flagged"].items()
    )
    return "\n".join(
        [
            f"dataset: {args.train} good training images; {args.test_good} good and "
            f"{args.defective} defective test images ({', '.join(DEFECT_TYPES)}), "
            f"{args.size} x {args.size} pixels, in {payload['dataset']}",
            f"features: {payload['backbone']}, weights "
            f"{payload['weights'] or 'RANDOM (no pretrained weights found)'}",
            f"fit: {fitted['model']} on {fitted['n_fitted_images']} images, threshold "
            f"{fitted['threshold']:.4g} = {fitted['threshold_rule']}",
            f"predict: flagged {flagged} test images; overlays in "
            f"{Path(predicted['scores_csv']).parent / 'overlays'}",
            "",
            f"evaluate (every method fitted on all {args.train} training images):",
            format_table([crd, knn]),
            "",
            *(
                f"{name:<11} image AUROC {row['image AUROC']:.3f}, pixel AUROC "
                f"{row['pixel AUROC']:.3f}, distances "
                f"{row['distance ms/image']:.2f} ms per image"
                for name, row in (("CRD:", crd), ("exact 1-NN:", knn))
            ),
            f"CRD's distances are {speedup:.0f} times faster than exact 1-NN's "
            "(backbone excluded; timed on this machine, as it is loaded now).",
            "wrote " + ", ".join(payload["evaluate"]["files"]),
            f"demo finished in {payload['seconds']:.0f} s",
        ]
    )
