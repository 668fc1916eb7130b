"""``crdistance fit``: one model fitted on the good images of one or more
product categories, and the options that do not go together."""

from crdistance import CRDetector
from crdistance.cli._io import CommandError, ImageReader, UsageError
from crdistance.cli._parser import DEFAULT_LAM, DEFAULT_LAM_SCALE, featurizer_options


def fit(args, console):
    """``crdistance fit``: fit a model on good images and save it."""
    from crdistance.cli._categories import categories_text, per_category, training_sets
    from crdistance.cli._cse import make_embedder
    from crdistance.cli._model import (
        fit_model,
        grad_detector,
        held_out_within,
        local_detector,
        make_featurizer,
        save_model,
    )

    check_fit_options(args)
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
    names, paths, categories = training_sets(args.data_dirs)
    folders = {name: paths[categories.index(name)].parent for name in names}
    if len(names) == 1:
        console.info(f"fit: {len(paths)} good images in {folders[names[0]]}")
    else:
        console.info(f"fit: {len(paths)} good images of {len(names)} categories: "
                     + ", ".join(f"{categories.count(name)} in {folders[name]}"
                                 for name in names))
    featurizer = make_featurizer(paths, **featurizer_options(args))
    auto = None
    if args.auto:
        from crdistance.cli._auto import choose_detector

        held = held_out_within(categories, args.calibration)
        detector, auto = choose_detector(
            featurizer, [p for i, p in enumerate(paths) if i not in held], console
        )
    elif args.detector == "kmeans":
        from crdistance.cli._cse import kmeans_detector

        detector = kmeans_detector()
    elif args.detector == "grad":
        detector = grad_detector(console, args.max_epochs)
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
    if args.per_category:
        detector = per_category(detector)
    reader = ImageReader(args.skip_unreadable)
    pipeline, info = fit_model(
        featurizer,
        detector,
        paths,
        calibration=args.calibration,
        reader=reader,
        console=console,
        embedder=make_embedder(console) if cse else None,
        categories=categories,
        false_alarm_rate=args.false_alarm_rate,
    )
    info["categories"] = [{"name": record["name"],
                           "data": str(folders[record["name"]]), **record}
                          for record in info["categories"]]
    data = [str(folders[name]) for name in names]
    info = {
        "data": data[0] if len(data) == 1 else data,
        **featurizer_options(args),
        **info,
        "skipped": reader.report(console),
    }
    if auto is not None:
        info["auto"] = auto
    path = save_model(pipeline, args.output)
    lines = [f"wrote {path}: {_method(args, info, auto, pipeline[-1])} on "
             f"{info['n_fitted_images']} images ({_features(args, info)}), "
             f"threshold {info['threshold']:.4g} = {info['threshold_rule']}"]
    if len(names) > 1:
        lines.append(categories_text(info))
    return {"model": str(path), **info}, "\n".join(lines)


def _method(args, info, auto, detector):
    """How the text of ``fit`` names the fitted detector."""
    if auto is not None:
        return f"{auto['chosen']} (--auto),"
    each = " each" if args.per_category else ""
    if args.per_category:
        detector = detector.detectors_[0]
    if args.detector == "kmeans":
        centres = (detector.n_clusters if args.per_category
                   else info["n_clusters_fitted"])
        name, details = "k-means", f"{centres} centres{each}"
    elif args.detector == "grad":
        name, details = "GRAD", (
            f"at most {_plural(detector.max_epochs, 'epoch')}{each}"
            if args.per_category
            else f"{_plural(info['n_iter'], 'epoch')}, weights of epoch "
            f"{info['best_epoch']}")
    elif args.cells is None:
        name, details = "CRD", ""
    else:
        cells = "" if args.embedder == "cse" else " per layer"
        name, details = "local CRD", f"{args.cells} cells{cells}{each}"
    if args.embedder == "cse":
        name = f"CSE embedding + {name}"
    if not args.per_category:
        return f"{name}, {details}," if details else name
    routing = f"PerCategoryDetector, {info['routing']['rule']} routing"
    return f"{name} per category ({details}; {routing})" if details else (
        f"{name} per category ({routing})")


def _plural(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _features(args, info):
    """How the text of ``fit`` names the features."""
    if args.embedder != "cse":
        return f"{args.backbone}, {info['n_features']} features per patch"
    record = info["embedder"]
    return (f"{args.backbone}, {record['n_features_in']} features per patch "
            f"embedded in {record['n_components']}; {record['n_iter']} "
            f"epochs, weights of epoch {record['best_epoch']}")


def check_fit_options(args):
    """Refuse the options of ``fit`` that do not go together (exit code 2)."""
    from crdistance.cli._categories import category_names

    if args.auto and args.embedder != "none":
        raise UsageError(
            "--auto compares detectors on the backbone's features, not on a "
            f"trained embedding; leave out --auto or --embedder {args.embedder}."
        )
    if args.auto and args.detector is not None:
        raise UsageError("--auto chooses the detector itself; leave out --detector.")
    if args.detector in ("kmeans", "grad") and args.cells is not None:
        raise UsageError(f"--cells fits local CRD, which --detector {args.detector} "
                         "is not; leave out one of them.")
    if args.detector in ("kmeans", "grad") and (args.lam, args.lam_scale) != (
        DEFAULT_LAM, DEFAULT_LAM_SCALE
    ):
        raise UsageError("--lam and --lam-scale set the penalty of CRD; "
                         f"--detector {args.detector} has none. Leave them out.")
    if args.detector == "grad" and args.embedder != "none":
        raise UsageError(
            "--detector grad learns its own representation of the backbone's "
            f"features; leave out --embedder {args.embedder} or --detector grad."
        )
    if args.max_epochs is not None and args.detector != "grad":
        raise UsageError("--max-epochs sets the training of --detector grad; "
                         "add --detector grad or leave out --max-epochs.")
    if args.per_category:
        if len(args.data_dirs) < 2:
            raise UsageError(
                "--per-category fits one detector per category and needs 2 or more "
                f"DATA_DIRs, one per category; got {len(args.data_dirs)}."
            )
        if args.auto:
            raise UsageError("--auto chooses one detector on the good images of all "
                             "categories; leave out --auto or --per-category.")
        if args.embedder != "none":
            raise UsageError(
                f"--per-category does not fit --embedder {args.embedder}, trained "
                "on all categories; leave out one of them."
            )
    category_names(args.data_dirs)
