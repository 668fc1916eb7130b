"""The argument parser of the ``crdistance`` command and its option types."""

import argparse
from pathlib import Path

from crdistance._version import __version__
from crdistance.cli._categories import DEFAULT_FALSE_ALARM_RATE
from crdistance.cli._cse import KMEANS_CLUSTERS

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_LAM, DEFAULT_LAM_SCALE = 0.01, "trace"
DEFAULT_NEAREST_CELLS = 3
EVALUATE_CELLS = 64
"""Cells of the ``local`` method of ``crdistance evaluate`` without ``--cells``."""
EPILOG = """\
examples:
  crdistance demo                                   # a self-contained tour
  crdistance fit parts/ -o model.npz             # parts/train/good or parts/
  crdistance fit parts/ --auto -o model.npz      # detector chosen from good images
  crdistance fit parts/ --cells 64 -o local.npz  # local CRD: per cell and layer
  crdistance fit parts/ --embedder cse --detector kmeans -o cse.npz  # CSE
  crdistance fit bolts/ nuts/ -o line.npz        # one model of two products
  crdistance fit bolts/ nuts/ --per-category -o routed.npz  # one CRD per product
  crdistance fit bolts/ nuts/ --detector grad -o grad.npz   # GRAD on both
  crdistance predict model.npz new_parts/ -o predictions/
  crdistance evaluate parts/ --methods crd,knn -o evaluation/
  crdistance evaluate parts/ --methods crd,local --cells 16 -o evaluation/
  crdistance evaluate parts/ --methods crd,cse,cse_kmeans -o evaluation/
  crdistance evaluate bolts/ nuts/ --methods crd,crd_routed,grad -o evaluation/
  crdistance export model.npz -o model.onnx
  crdistance serve model.npz --port 8000           # http://127.0.0.1:8000/

Several DATA_DIRs are several product categories, named by their folders.
Pretrained weights are read from $TORCH_HOME/hub/checkpoints, never downloaded.
"""
COMMAND_TEXTS = {
    "fit": (
        "fit a model on images of good parts (of one or more categories)",
        "Fit PatchFeaturizer + CRDetector (with --cells, LocalCRDetector; with "
        "--detector kmeans, KMeansDetector; with --detector grad, GRADDetector), "
        "with --embedder cse a ContrastiveEmbedder between them, on "
        "DATA_DIR/train/good (MVTec AD layout) or on the images in DATA_DIR, "
        "and save the model in the safe model format of crdistance.persistence "
        "(read without running code). Several DATA_DIRs are several product "
        "categories (each named by its folder) of ONE model: the detector is "
        "fitted on all of them (pooled), or with --per-category one per "
        "category behind a router (PerCategoryDetector); the threshold is set "
        "on good images held out of every category.",
    ),
    "predict": (
        "score images: scores.csv and heat-map overlays",
        "Score images with a fitted model. Writes OUT_DIR/scores.csv (path, "
        "score, decision, overlay; with a --per-category model also the "
        "category each image was routed to) and one overlay PNG per image in "
        "OUT_DIR/overlays.",
    ),
    "evaluate": (
        "compare detectors on MVTec AD style folders",
        "Fit each method on DATA_DIR/train/good and report image AUROC, pixel "
        "AUROC, AUPRO, fit time, distance time and state size on DATA_DIR/test, "
        "with ROC curves and heat-map grids. With several DATA_DIRs (product "
        "categories), each method is fitted once on the good training images "
        "of all of them and reported per category, then in a mean row per "
        "method (pixel metrics over the categories with masks; fit time and "
        "state size, of the one model, in this row only). A category without "
        "ground-truth masks gets image metrics only.",
    ),
    "demo": (
        "generate a small inspection dataset, fit, predict and evaluate",
        "Generate a deterministic dataset of woven surfaces with scratches, "
        "spots and cracks, then run fit, predict and evaluate (CRD against "
        "exact 1-NN) on it, offline.",
    ),
    "export": (
        "write a fitted model as ONNX",
        "Write a model file of `crdistance fit` as one ONNX graph (images in; "
        "CRD, score, label and anomaly map out).",
    ),
    "serve": (
        "serve a fitted model over HTTP (web page, JSON, KServe v2)",
        "Serve a model file of `crdistance fit` with uvicorn: the operator's web "
        "page at /, POST /predict for image files, the Open Inference Protocol "
        "(KServe v2) routes under /v2, Prometheus metrics at /metrics. Binds "
        "127.0.0.1 unless --host says otherwise. SIGHUP or POST "
        "/v2/repository/models/NAME/load reloads the model file; SIGTERM stops "
        "after the requests in flight. Needs the serve extra.",
    ),
}
"""Short help and description of each subcommand."""
DEMO_SIZES = (
    ("train", 40, "good training images"),
    ("test-good", 20, "good test images"),
    ("defective", 20, "defective test images"),
    ("size", 128, "image side in pixels"),
)


def _weights(value):
    return None if value.lower() == "none" else value


def _fraction(value):
    fraction = float(value)
    if not 0 <= fraction < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return fraction


def _open_fraction(value):
    fraction = float(value)
    if not 0 < fraction < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return fraction


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _method_list(value):
    from crdistance.cli._evaluate import METHOD_NAMES

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(METHOD_NAMES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"choose among {','.join(METHOD_NAMES)}, got {value!r}"
        )
    return names


def _option_groups():
    """Parent parsers of the options that several subcommands share."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or messages (warnings still shown)")
    output.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout")
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--skip-unreadable", action="store_true",
                         help="skip and report unreadable image files instead of "
                         "failing on the first one")
    features = argparse.ArgumentParser(add_help=False)
    group = features.add_argument_group("features")
    group.add_argument("--backbone", default=DEFAULT_BACKBONE,
                       help="torchvision model (default: %(default)s; "
                       "wide_resnet50_2 and resnet18 also have default layers)")
    group.add_argument("--layers", nargs="+", metavar="LAYER",
                       help="backbone layers whose patch features are "
                       "concatenated, on the grid of the first (default: the "
                       "backbone's, features.6 features.13 for mobilenet_v2)")
    group.add_argument("--weights", type=_weights, default="IMAGENET1K_V1",
                       help="torchvision weights name read from "
                       "$TORCH_HOME/hub/checkpoints, a state-dict file, or 'none' "
                       "for random weights (default: %(default)s)")
    group.add_argument("--resize", type=_positive_int, default=224,
                       help="images are resized to this square (default: 224)")
    group.add_argument("--batch-size", type=_positive_int, default=16,
                       help="images per backbone pass (default: 16)")
    group.add_argument("--device", default="auto",
                       help="torch device: auto, cpu, cuda, ... (default: auto)")
    detector = argparse.ArgumentParser(add_help=False)
    group = detector.add_argument_group("detector")
    group.add_argument("--lam", type=float, default=DEFAULT_LAM,
                       help="ridge penalty of CRD (default: %(default)s)")
    group.add_argument("--lam-scale", choices=["trace", "absolute"],
                       default=DEFAULT_LAM_SCALE,
                       help="'trace': lam times the mean Gram eigenvalue, "
                       "scale-free; 'absolute': the paper's lam (default: "
                       "%(default)s)")
    return output, reading, features, detector


def build_parser():
    """The argument parser of the ``crdistance`` command."""
    output, reading, features, detector = _option_groups()
    parser = argparse.ArgumentParser(
        prog="crdistance",
        description="Anomaly detection on images with the Collaborative "
        "Representation Distance (CRD).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"crdistance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, *parents):
        summary, description = COMMAND_TEXTS[name]
        return commands.add_parser(name, parents=parents, help=summary,
                                   description=description)

    fit = add("fit", output, reading, features, detector)
    _add_data_dirs(fit, "folder of good images, or MVTec AD folder with "
                   "train/good; several: one category each")
    _add_output(fit, "--output", "model.npz", "model file written")
    fit.add_argument("--calibration", type=_fraction, default=0.2,
                     help="share of the images of each category held out of the "
                     "fit to calibrate the threshold on (with --per-category, "
                     "each category's on its own images). 0 fits all and uses "
                     "the detector's own threshold, with no guarantee (CRD: "
                     "'auto'; kmeans, grad: the largest training distance; not "
                     "local CRD) (default: %(default)s)")
    fit.add_argument("--false-alarm-rate", type=_open_fraction,
                     default=DEFAULT_FALSE_ALARM_RATE, metavar="ALPHA",
                     help="bound on the share of new good images flagged, by split "
                     "conformal calibration on the held-out images (needs "
                     "1/ALPHA - 1 of them; with fewer, the smallest rate they "
                     "allow, 1/(n+1), with a warning) (default: %(default)s)")
    _add_local_options(fit, "fit local CRD (LocalCRDetector): one CRD model per "
                       "k-means cell, K cells per layer (default: plain CRD)")
    fit.add_argument("--auto", action="store_true",
                     help="choose the detector (CRD or local CRD, penalty, cells, "
                     "cell weights, groups) from the good images alone: a quarter "
                     "of them held out with synthetic defects (up to 256 images "
                     "take part); replaces --cells, --lam and --lam-scale")
    fit.add_argument("--detector", choices=["crd", "kmeans", "grad"],
                     help="crd: CRDetector (LocalCRDetector with --cells); kmeans: "
                     f"KMeansDetector, the distance to the nearest of "
                     f"{KMEANS_CLUSTERS} k-means centres of the training patches "
                     "(CSE's scorer); grad: GRADDetector, a network trained on "
                     "the patch-feature maps on the CPU (GRAD, seeded; one model "
                     "for many products). kmeans and grad hold the features in "
                     "memory (default: crd)")
    fit.add_argument("--per-category", action="store_true",
                     help="with several DATA_DIRs: one detector per category "
                     "(PerCategoryDetector, routing each image to the category "
                     "of nearest mean feature), scores in units of each "
                     "category's threshold (1 for all); holds the features in "
                     "memory (default: one detector pooled over all categories)")
    _add_max_epochs(fit, "epochs of --detector grad at most")
    fit.add_argument("--embedder", choices=["none", "cse"], default="none",
                     help="cse: train a ContrastiveEmbedder (CSE) on the patch "
                     "features of the training images and of defective copies of "
                     "them (synthetic, seeded), and fit the detector on its "
                     "embedding; holds these features in memory (default: "
                     "%(default)s)")

    predict = add("predict", output, reading)
    predict.add_argument("model", metavar="MODEL", type=Path)
    predict.add_argument("images", metavar="IMAGES", nargs="+",
                         help="image files or folders of images")
    _add_output(predict, "--out-dir", "predictions", "output folder")

    evaluate = add("evaluate", output, reading, features, detector)
    _add_data_dirs(evaluate, "MVTec AD folder (train/good, test/<kind>, "
                   "ground_truth/<kind>); several: one category each")
    evaluate.add_argument("--methods", type=_method_list, default="crd,knn",
                          help="comma-separated: crd, local (local CRD, "
                          "LocalCRDetector), auto (the detector fit --auto chooses "
                          "from the good training images), knn (exact 1-NN), "
                          "coreset (1-NN on a greedy coreset), cse (CRD on a "
                          "ContrastiveEmbedder trained on synthetic defects of the "
                          "training images), cse_kmeans (CSE: k-means on that "
                          "embedding), grad (GRADDetector), crd_routed (one CRD "
                          "per category behind a router, PerCategoryDetector; "
                          "needs 2 or more DATA_DIRs) (default: %(default)s)")
    _add_max_epochs(evaluate, "epochs of the grad method at most; needs grad in "
                    "--methods")
    evaluate.add_argument("--coreset-ratio", type=_fraction, default=0.1,
                          help="share of patches in the coreset (default: 0.1)")
    _add_local_options(evaluate, "k-means cells per layer of the local method; "
                       f"needs local in --methods (default: {EVALUATE_CELLS})")
    _add_output(evaluate, "--out-dir", "evaluation", "output folder")
    evaluate.add_argument("--no-figures", action="store_true",
                          help="write the table only (no matplotlib needed)")

    demo = add("demo", output)
    _add_output(demo, "--out-dir", "crdistance_demo", "output folder")
    for name, default, what in DEMO_SIZES:
        demo.add_argument(f"--{name}", type=_positive_int, default=default,
                          help=f"{what} (default: %(default)s)")

    export = add("export", output)
    export.add_argument("model", metavar="MODEL", type=Path)
    _add_output(export, "--output", "model.onnx", "ONNX file written")
    export.add_argument("--float16", action="store_true",
                        help="store the weights in float16")

    serve = add("serve", output)
    serve.add_argument("model", metavar="MODEL", type=Path)
    _add_serve_options(serve)
    return parser


def _add_serve_options(parser):
    """The options of ``crdistance serve`` (limits, key, batching)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s; another "
                        "address exposes the model to the network: set --api-key)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="TCP port (default: %(default)s)")
    parser.add_argument("--name", help="the model's name in the /v2 routes "
                        "(default: the model file's stem)")
    parser.add_argument("--api-key", help="require this key (Authorization: Bearer "
                        "KEY, or X-API-Key) on every route but the page and the "
                        "health probes; default: $CRDISTANCE_API_KEY, none if unset")
    parser.add_argument("--max-upload-mb", type=_positive_float, default=32.0,
                        help="largest request body in MiB (default: %(default)s)")
    parser.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                        help="largest image in pixels (default: %(default)s)")
    parser.add_argument("--max-images", type=_positive_int, default=32,
                        help="most images per request (default: %(default)s)")
    parser.add_argument("--timeout", type=_positive_float, default=60.0,
                        help="seconds a request may wait for its result, then 504 "
                        "(default: %(default)s)")
    parser.add_argument("--max-batch", type=_positive_int, default=16,
                        help="images scored together at most (micro-batching of "
                        "concurrent requests; default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=_non_negative_float, default=5.0,
                        help="how long a request waits for others to batch with "
                        "(default: %(default)s)")
    parser.add_argument("--graceful-timeout", type=_positive_float, default=30.0,
                        help="on SIGTERM, seconds to finish requests in flight "
                        "(default: %(default)s)")


def _port(value):
    port = _positive_int(value)
    if port > 65535:
        raise argparse.ArgumentTypeError(
            f"expected a TCP port up to 65535, got {value}")
    return port


def _positive_float(value):
    number = _non_negative_float(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return number


def _non_negative_float(value):
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of at least 0, got {value}")
    return number


def _add_local_options(parser, cells_help):
    group = parser.add_argument_group("local CRD")
    group.add_argument("--cells", type=_positive_int, metavar="K", help=cells_help)
    group.add_argument("--nearest-cells", type=_positive_int,
                       default=DEFAULT_NEAREST_CELLS, metavar="N",
                       help="a patch is scored on the cells of its N nearest "
                       "k-means centres (default: %(default)s)")


def _add_data_dirs(parser, what):
    parser.add_argument("data_dirs", metavar="DATA_DIR", type=Path, nargs="+",
                        help=f"{what}, named by the folder's name")


def _add_max_epochs(parser, what):
    parser.add_argument("--max-epochs", type=_positive_int, metavar="N",
                        help=f"{what} (default: GRADDetector's, "
                        f"{_grad_max_epochs()})")


def _grad_max_epochs():
    from crdistance.grad import GRADDetector

    return GRADDetector().max_epochs


def featurizer_options(args):
    """The PatchFeaturizer parameters of parsed ``fit`` or ``evaluate`` arguments."""
    return {
        "backbone": args.backbone,
        "layers": args.layers,
        "weights": args.weights,
        "resize": args.resize,
        "batch_size": args.batch_size,
        "device": args.device,
    }


def _add_output(parser, flag, default, what):
    parser.add_argument("-o", flag, type=Path, default=Path(default),
                        help=f"{what} (default: %(default)s)")
