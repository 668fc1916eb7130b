"""Latency and file size of exported ONNX models, next to the Python models.

Measured in one run, on random features and images (timing does not depend on
their content) and randomly initialised backbones:

- head: the exported CRD head in onnxruntime (CPU) on patch maps of 1 and 32
  images of 28 x 28 = 784 patches, next to ``CRDetector.score_samples`` on
  NumPy arrays and on torch tensors; a ratio above 1 means onnxruntime is faster.
- local head: the exported ``LocalCRDetector`` head (all cells' CRD from one
  product, masked to the nearest cells) in onnxruntime on the same patch maps,
  next to ``LocalCRDetector.score_patches`` (which scores the nearest cells
  only), with its file bytes in float32 and float16; on the features of a
  ``--local-features`` .npz (e.g. a feature cache of bench_local.py) or on
  random ones.
- pipeline: the exported ``Pipeline(PatchFeaturizer, CRDetector)`` graph
  (normalised images to image scores and anomaly maps) next to PyTorch eager
  doing the same work: the featurizer's module, the CRD of every patch in torch
  and ``crdistance.maps.anomaly_maps``.
- size: bytes of exported files, each measured after ``to_onnx`` or an actual
  export: the CRD head (float32 and float16) and a PatchCore-style 1-NN head
  (squared distances to a memory bank held as an initializer, ReduceMin,
  image score = largest patch distance) with 1 % and 10 % of the patch
  features of N training images as its bank, with its latency on one image.

Example::

    python benchmarks/bench_export.py              # d = 128 and 1536, 2 backbones
    python benchmarks/bench_export.py --threads 1  # one core for every library
    python benchmarks/bench_export.py --quick      # a smoke run
"""

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from _report import format_table, machine_summary
from bench_core import best_seconds
from onnx import TensorProto, helper, numpy_helper
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from crdistance import CRDetector, LocalCRDetector
from crdistance.export import OnnxDetector, to_onnx
from crdistance.featurizer import PatchFeaturizer
from crdistance.featurizer._images import preprocess
from crdistance.maps import anomaly_maps

GRID = (28, 28)
IMAGE_SIZE = 224


def patch_maps(n_images, d, seed):
    return np.random.default_rng(seed).standard_normal(
        (n_images, *GRID, d), dtype=np.float32
    )


def cpu_session(path, threads):
    """onnxruntime session on `threads` CPU threads (None: its default)."""
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"])


def head_rows(d, batches, fit_images, repeats, folder, threads):
    """CRD head in onnxruntime vs CRDetector on NumPy and on torch."""
    train = patch_maps(fit_images, d, seed=0)
    detector = CRDetector().fit(train)
    torch_detector = CRDetector().fit(torch.from_numpy(train))
    to_onnx(detector, folder / f"crd_{d}.onnx")
    onnx_detector = OnnxDetector(cpu_session(folder / f"crd_{d}.onnx", threads))
    rows = []
    for n_images in batches:
        X = patch_maps(n_images, d, seed=1)
        X_torch = torch.from_numpy(X)
        seconds = {
            "onnxruntime": best_seconds(
                partial(onnx_detector.score_samples, X), repeats),
            "numpy": best_seconds(partial(detector.score_samples, X), repeats),
            "torch": best_seconds(partial(torch_detector.score_samples, X_torch),
                                  repeats),
        }
        rows.append({
            "d": d, "images": n_images, "patches": n_images * GRID[0] * GRID[1],
            **{f"{name} ms": 1e3 * s for name, s in seconds.items()},
            "numpy / ort": seconds["numpy"] / seconds["onnxruntime"],
            "torch / ort": seconds["torch"] / seconds["onnxruntime"],
        })
    return rows


def local_rows(args, folder, threads):
    """Local CRD head in onnxruntime vs LocalCRDetector.score_patches."""
    d, n_images = sum(args.local_groups), args.local_fit_images + max(args.batches)
    if args.local_features is None:
        features = patch_maps(n_images, d, seed=0)
    else:
        with np.load(args.local_features) as cache:
            features = cache["features"][:n_images].astype(np.float32)
    detector = LocalCRDetector(
        n_cells=args.local_cells, n_nearest_cells=args.local_nearest,
        feature_groups=args.local_groups, random_state=0,
    ).fit(features[:args.local_fit_images])
    sizes = {}
    for float16 in (False, True):
        path = folder / f"local_{float16}.onnx"
        to_onnx(detector, path, float16=float16)
        sizes[float16] = path.stat().st_size
    onnx_detector = OnnxDetector(cpu_session(folder / "local_False.onnx", threads))
    rows = []
    for n_images in args.batches:
        X = features[-n_images:]
        seconds = {
            "onnxruntime": best_seconds(
                partial(onnx_detector.score_patches, X), args.repeats),
            "numpy": best_seconds(partial(detector.score_patches, X), args.repeats),
        }
        rows.append({
            "d": d, "groups": len(args.local_groups), "cells": args.local_cells,
            "nearest": args.local_nearest, "images": n_images,
            **{f"{name} ms": 1e3 * s for name, s in seconds.items()},
            "numpy / ort": seconds["numpy"] / seconds["onnxruntime"],
            "file bytes": sizes[False], "float16 file bytes": sizes[True],
        })
    return rows


def pipeline_rows(backbone, batches, repeats, folder, threads):
    """Exported featurizer + CRD graph vs PyTorch eager on the same work."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(batches), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    featurizer = PatchFeaturizer(
        backbone=backbone, weights=None, resize=IMAGE_SIZE, output="torch"
    )
    pipeline = make_pipeline(featurizer, CRDetector()).fit(images[:4])
    path = folder / f"{backbone}.onnx"
    to_onnx(pipeline, path)
    onnx_detector = OnnxDetector(cpu_session(path, threads))
    embedding = featurizer.embedding_
    device = next(embedding.parameters()).device
    detector = pipeline[-1]
    normalised = preprocess(images, resize=None, crop_size=None, device=device)

    def eager(batch):
        with torch.inference_mode():
            features = embedding(batch).permute(0, 2, 3, 1)
            crd = detector.score_patches(features)
            scores = -torch.amax(crd, dim=(1, 2))
        return scores, anomaly_maps(crd, (IMAGE_SIZE, IMAGE_SIZE))

    rows = []
    for n_images in batches:
        batch = normalised[:n_images]
        batch_numpy = batch.cpu().numpy()
        seconds = {
            "onnxruntime": best_seconds(
                partial(onnx_detector.run, batch_numpy), repeats),
            "eager": best_seconds(partial(eager, batch), repeats),
        }
        rows.append({
            "backbone": backbone, "d": detector.n_features_in_, "images": n_images,
            "onnxruntime ms": 1e3 * seconds["onnxruntime"],
            "eager ms": 1e3 * seconds["eager"],
            "eager / ort": seconds["eager"] / seconds["onnxruntime"],
            "file MB": path.stat().st_size / 1e6,
        })
    return rows


def knn_head(bank, path):
    """Write a 1-NN head: image score = -max over patches of min_b ||y - b||."""
    d = bank.shape[1]
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(bank.T), "bank_t"),
        numpy_helper.from_array(np.sum(bank * bank, axis=1), "bank_sq"),
        numpy_helper.from_array(np.array([-1, d], dtype=np.int64), "rows_shape"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.float32(-2.0), "minus_two"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
    ]
    nodes = [
        helper.make_node("Reshape", ["features", "rows_shape"], ["rows"]),
        helper.make_node("MatMul", ["rows", "bank_t"], ["dot"]),
        helper.make_node("Mul", ["dot", "minus_two"], ["cross"]),
        helper.make_node("Add", ["cross", "bank_sq"], ["partial"]),
        helper.make_node("ReduceMin", ["partial"], ["nearest"], axes=[1], keepdims=0),
        helper.make_node("ReduceSumSquare", ["rows"], ["norm_sq"], axes=[1],
                         keepdims=0),
        helper.make_node("Add", ["nearest", "norm_sq"], ["distance_sq"]),
        helper.make_node("Max", ["distance_sq", "zero"], ["clipped"]),
        helper.make_node("Sqrt", ["clipped"], ["distance"]),
        helper.make_node("Shape", ["features"], ["batch"], end=1),
        helper.make_node("Concat", ["batch", "minus_one"], ["per_image"], axis=0),
        helper.make_node("Reshape", ["distance", "per_image"], ["patch_distances"]),
        helper.make_node("ReduceMax", ["patch_distances"], ["worst"], axes=[1],
                         keepdims=0),
        helper.make_node("Neg", ["worst"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "knn_head", initializer=initializers,
        inputs=[helper.make_tensor_value_info(
            "features", TensorProto.FLOAT, ["n", "height", "width", d])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
    )
    opset = helper.make_opsetid("", 17)
    model = helper.make_model(graph, opset_imports=[opset], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save_model(model, path)


def size_rows(d, train_images, bank_shares, repeats, folder, threads):
    """File bytes of the CRD head and of 1-NN heads, and latency on one image."""
    n_rows = train_images * GRID[0] * GRID[1]
    detector = CRDetector().fit(patch_maps(8, d, seed=0))
    one_image = patch_maps(1, d, seed=1)
    rows = []
    for float16 in (False, True):
        path = folder / f"crd_{d}_{float16}.onnx"
        to_onnx(detector, path, float16=float16)
        onnx_detector = OnnxDetector(cpu_session(path, threads))
        rows.append({
            "head": f"CRD {'float16' if float16 else 'float32'}", "weight rows": d,
            "weights bytes": d * d * (2 if float16 else 4),
            "ms / image": 1e3 * best_seconds(
                partial(onnx_detector.score_samples, one_image), repeats),
        } | _file(path))
    for share in bank_shares:
        bank_rows = round(share * n_rows)
        bank = np.random.default_rng(2).standard_normal((bank_rows, d), np.float32)
        path = folder / f"knn_{d}_{share}.onnx"
        knn_head(bank, path)
        del bank
        session = cpu_session(path, threads)
        rows.append({
            "head": f"1-NN, {100 * share:g} % bank", "weight rows": bank_rows,
            "weights bytes": bank_rows * d * 4,
            "ms / image": 1e3 * best_seconds(
                partial(session.run, ["score"], {"features": one_image}),
                repeats),
        } | _file(path))
        path.unlink()
    crd_bytes = rows[0]["file bytes"]
    for row in rows:
        row["d"] = d
        row["x CRD float32"] = row["file bytes"] / crd_bytes
    return rows


def _file(path):
    return {"file bytes": path.stat().st_size, "file MB": path.stat().st_size / 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 1536])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32],
                        help="images per scored batch (784 patches each)")
    parser.add_argument("--local-groups", type=int, nargs="+",
                        default=[32, 24, 64, 96, 160],
                        help="feature groups of the local head (d is their sum)")
    parser.add_argument("--local-cells", type=int, default=64)
    parser.add_argument("--local-nearest", type=int, default=3)
    parser.add_argument("--local-fit-images", type=int, default=20,
                        help="images (784 patches each) the local head is fitted on")
    parser.add_argument("--local-features", type=Path, default=None,
                        help=".npz with 'features' (n, 28, 28, d): real patch "
                             "features for the local head (default: random)")
    parser.add_argument("--backbones", nargs="+",
                        default=["mobilenet_v2", "wide_resnet50_2"])
    parser.add_argument("--pipeline-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-images", type=int, default=714,
                        help="N: images whose patches make the 1-NN banks")
    parser.add_argument("--bank-shares", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of onnxruntime, torch and BLAS "
                             "(default: each library's own)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.batches, args.backbones = [128], [1], ["mobilenet_v2"]
        args.pipeline_batches, args.train_images, args.repeats = [1], 20, 1
        args.local_cells, args.local_fit_images = 8, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder, threadpool_limits(args.threads):
        folder = Path(folder)
        common = (args.repeats, folder, args.threads)
        heads = [row for d in args.dims
                 for row in head_rows(d, args.batches, 8, *common)]
        local = local_rows(args, folder, args.threads)
        pipelines = [row for backbone in args.backbones for row in pipeline_rows(
            backbone, args.pipeline_batches, *common)]
        sizes = [row for d in args.dims for row in size_rows(
            d, args.train_images, args.bank_shares, *common)]
    print(machine_summary())
    print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"threads: {args.threads or 'library defaults'} (torch "
          f"{torch.get_num_threads()})")
    print("\nCRD head: onnxruntime vs CRDetector.score_samples (best of "
          f"{args.repeats})\n")
    print(format_table(heads, ["d", "images", "patches", "onnxruntime ms", "numpy ms",
                               "torch ms", "numpy / ort", "torch / ort"]))
    print("\nLocal CRD head: onnxruntime vs LocalCRDetector.score_patches on "
          f"{args.local_features or 'random features'} (best of {args.repeats})\n")
    print(format_table(local, ["d", "groups", "cells", "nearest", "images",
                               "onnxruntime ms", "numpy ms", "numpy / ort",
                               "file bytes", "float16 file bytes"]))
    print(f"\nPipeline, {IMAGE_SIZE} x {IMAGE_SIZE} images to scores and anomaly "
          "maps: onnxruntime vs PyTorch eager\n")
    print(format_table(pipelines, ["backbone", "d", "images", "onnxruntime ms",
                                   "eager ms", "eager / ort", "file MB"]))
    print(f"\nExported heads: N = {args.train_images} images x {GRID[0] * GRID[1]} "
          "patches; file sizes measured on the written files\n")
    print(format_table(sizes, ["d", "head", "weight rows", "weights bytes",
                               "file bytes", "file MB", "x CRD float32",
                               "ms / image"]))


if __name__ == "__main__":
    main()
