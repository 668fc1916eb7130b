"""Throughput of PatchFeaturizer backbones and the share of the CRD head.

For each backbone, times (best of ``--repeats``) the featurizer on synthetic
``--size`` x ``--size`` images, ``CRDetector.fit`` on the features of
``--n-train`` images, and ``CRDetector.score_patches`` on those of ``--n-test``
images, then prints images per second and the share of end-to-end inference
time spent in the CRD head. Weights are random by default: speed does not
depend on their values.

    python benchmarks/bench_featurizer.py
    python benchmarks/bench_featurizer.py --backbones mobilenet_v2 --size 320
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

from crdistance import CRDetector
from crdistance.featurizer import PatchFeaturizer


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["wide_resnet50_2", "mobilenet_v2"]
    )
    parser.add_argument("--weights", default=None, help="weights name or file")
    parser.add_argument("--size", type=int, default=224, help="image side (pixels)")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lam", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all)"
    )
    return parser.parse_args()


def best_time(function, repeats):
    """Smallest wall-clock time of `repeats` calls, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def machine_description(device):
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1] for line in cpuinfo if "model name" in line]
        cpu = names[0].strip() if names else cpu
    if device.type == "cuda":
        cpu += f", GPU {torch.cuda.get_device_name(device)}"
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads on "
        f"{device}, load average {load} (1/5/15 min) at start"
    )


def bench_backbone(backbone, args, train_images, test_images):
    featurizer = PatchFeaturizer(
        backbone=backbone,
        weights=args.weights,
        resize=args.size,
        batch_size=args.batch_size,
        device=args.device,
        progress=False,
    ).fit(train_images)
    featurizer.transform(test_images[: args.batch_size])  # warm-up
    train_features = featurizer.transform(train_images)
    backbone_time, test_features = best_time(
        lambda: featurizer.transform(test_images), args.repeats
    )
    detector = CRDetector(lam=args.lam)
    fit_time, _ = best_time(lambda: detector.fit(train_features), args.repeats)
    head_time, _ = best_time(
        lambda: detector.score_patches(test_features), args.repeats
    )
    n_test = len(test_images)
    return {
        "backbone": backbone,
        "d": featurizer.n_features_out_,
        "grid": "x".join(map(str, test_features.shape[1:3])),
        "backbone img/s": n_test / backbone_time,
        "CRD img/s": n_test / head_time,
        "end-to-end img/s": n_test / (backbone_time + head_time),
        "CRD share": f"{head_time / (backbone_time + head_time):.1%}",
        f"CRD fit ({len(train_images)} img) s": fit_time,
    }


def print_table(rows):
    columns = list(rows[0])
    cells = [
        [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    print(machine_description(device))
    print(
        f"{args.size}x{args.size} synthetic uint8 images, weights={args.weights}, "
        f"batch_size={args.batch_size}, lam={args.lam}, best of {args.repeats}\n"
    )
    rng = np.random.default_rng(0)
    shape = (args.size, args.size, 3)
    train_images = rng.integers(0, 256, size=(args.n_train, *shape), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(args.n_test, *shape), dtype=np.uint8)
    rows = [
        bench_backbone(backbone, args, train_images, test_images)
        for backbone in args.backbones
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
