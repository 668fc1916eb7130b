"""Throughput and latency of ``crdistance serve`` against offline ``crdistance
predict``, on the same real magnetic_tile images in one run.

1. ``crdistance fit`` on the first ``--n-train`` good training images (the
   command's defaults: MobileNetV2, ImageNet weights from ``$TORCH_HOME``).
2. Offline: ``crdistance predict MODEL FOLDER -q --json`` on ``--n-images``
   test images (every k-th of the sorted test set, all kinds), and on the first
   ``--n-small`` of them; ``images_per_s`` is ``(n_images - n_small) / (t_all
   - t_small)``, the rate once the process has started and loaded the model
   (the end-to-end rate is in the ``#`` lines). The command writes an overlay
   PNG per image, as it always does (there is no option to skip them).
   ``crd_pipeline_offline``: the same model loaded in this process, the same
   images read and scored ``batch_size`` at a time (the featurizer's), no
   overlay, no HTTP: the work the server does for a request without overlay,
   after a warm-up batch.
3. Served: ``crdistance serve MODEL -q`` (its defaults: micro-batches of up to
   16 images, 5 ms wait), then for each ``--clients`` level ``--requests``
   requests of one image each (``POST /predict`` of the same JPEG files,
   multipart, no overlay) from that many keep-alive clients (threads of this
   process, on the same machine as the server), after ``2 x clients``
   warm-up requests. Latency is the client's, send to answer read;
   ``ratio_to_offline`` is the level's ``images_per_s`` over the
   ``crdistance predict`` one, ``ratio_to_pipeline`` over the in-process one;
   levels in ``--overlay-clients`` are run again asking for overlays
   (``crd_serve_<n>_clients_overlay``), nearer the command's work;
   ``mean_batch`` is images per model batch (the server's ``/metrics``);
   ``score_mismatches`` counts answers whose score differs from the offline
   score of that image (relative 1e-5).

The issue's targets (#20): ``ratio_to_offline >= 0.8`` at 8 clients, ``p99 <
2 x p50`` at 1 client; the ``#`` lines say whether this run met them. Columns
follow ``../shared/RESULTS.md`` (the accuracy columns empty), the serving
columns after them. Every command, request and level has a timeout.

Example::

    python benchmarks/bench_serve.py --out-dir docs/results   # the committed run
    python benchmarks/bench_serve.py --quick                  # a smoke test
"""

import argparse
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _features import MAGNETIC_TILE, RESULTS, log, use_shared_weights
from _report import format_table, machine_summary
from bench_accuracy import write_csv

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 600  # seconds, each crdistance command
REQUEST_TIMEOUT = 60  # seconds, each request
LEVEL_TIMEOUT = 600  # seconds, each level of clients
EXTRA = ["clients", "requests", "images", "wall_s", "images_per_s", "p50_ms",
         "p90_ms", "p99_ms", "errors", "score_mismatches", "mean_batch",
         "ratio_to_offline", "ratio_to_pipeline"]
"""The columns after the RESULTS.md ones, in this order."""
TABLE = ["method", "clients", "images", "images_per_s", "p50_ms", "p90_ms",
         "p99_ms", "errors", "ratio_to_offline", "ratio_to_pipeline", "mean_batch"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=MAGNETIC_TILE,
                        help="an MVTec-layout folder (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=30,
                        help="good training images the model is fitted on")
    parser.add_argument("--n-images", type=int, default=128,
                        help="test images scored offline and served")
    parser.add_argument("--n-small", type=int, default=16,
                        help="images of the short offline run (start-up cost)")
    parser.add_argument("--requests", type=int, default=256,
                        help="requests (one image each) per level of clients")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--overlay-clients", type=int, nargs="*", default=[8],
                        help="levels run again with overlay=true")
    parser.add_argument("--model", type=Path, default=None,
                        help="a model file of crdistance fit (default: fit one)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 10 training images, 6 test images, "
                        "8 requests at 1 and 2 clients, and at 2 with overlays")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_images, args.n_small = 10, 6, 2
        args.requests, args.clients, args.overlay_clients = 8, [1, 2], [2]
    if not 0 < args.n_small < args.n_images:
        parser.error("--n-small must lie between 0 and --n-images")
    return args


def crdistance(*arguments, timeout=COMMAND_TIMEOUT):
    """Run ``python -m crdistance ARGUMENTS``; (seconds, stdout). Fails loudly."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crdistance", *map(str, arguments)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"crdistance {arguments[0]} failed ({done.returncode}):\n"
                         f"{done.stderr}")
    return seconds, done.stdout


def copy_into(folder, paths):
    folder.mkdir(parents=True)
    for path in paths:
        shutil.copy(path, folder / path.name)
    return folder


def pick_images(data, n):
    """Every k-th image of the sorted test set (all kinds), n in all, with
    distinct file names."""
    paths = sorted((data / "test").glob("*/*.jpg"))
    step = max(1, len(paths) // n)
    chosen = paths[::step][:n]
    if len({path.name for path in chosen}) != len(chosen):
        raise SystemExit("test images with the same file name in two folders")
    return chosen


def offline(model, paths, n_small, work):
    """The offline rate and scores of ``crdistance predict`` (see the module)."""
    small = copy_into(work / "offline_small", paths[:n_small])
    everything = copy_into(work / "offline_all", paths)
    t_small, _ = crdistance("predict", model, small, "-o", work / "pred_small",
                            "-q", "--json")
    t_all, out = crdistance("predict", model, everything, "-o", work / "pred_all",
                            "-q", "--json")
    scores = {Path(row["path"]).name: row["score"] for row in json.loads(out)["images"]}
    rate = (len(paths) - n_small) / (t_all - t_small)
    log(f"offline: {len(paths)} images in {t_all:.1f} s, {n_small} in "
        f"{t_small:.1f} s: {rate:.1f} images/s after the start")
    return rate, scores, t_small, t_all


def pipeline_rate(model, paths):
    """Images per second of the model in this process, no overlay, no HTTP;
    and the scores by file name."""
    from PIL import Image

    from crdistance.cli._model import load_model  # the loader of the commands

    pipeline = load_model(model)
    featurizer, *steps, detector = [step for _, step in pipeline.steps]
    size = featurizer.batch_size

    def score(batch):
        images = []
        for path in batch:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        features = featurizer.transform(images)
        for step in steps:
            features = step.transform(features)
        patches = np.asarray(detector.score_patches(features))
        return patches.reshape(len(batch), -1).max(axis=1)

    score(paths[:size])  # warm-up
    start = time.perf_counter()
    scores = np.concatenate([score(paths[i:i + size])
                             for i in range(0, len(paths), size)])
    seconds = time.perf_counter() - start
    log(f"pipeline in process: {len(paths) / seconds:.1f} images/s")
    return seconds, dict(zip((path.name for path in paths), scores.tolist(),
                             strict=True))


class Server:
    """``crdistance serve MODEL -q`` on a free port of 127.0.0.1."""

    def __init__(self, model, work):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "serve.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "crdistance", "serve", str(model), "--host",
                 "127.0.0.1", "--port", str(self.port), "-q"],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)

    def __enter__(self):
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise SystemExit("crdistance serve exited:\n"
                                 + self.log_path.read_text(errors="replace"))
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready",
                                            timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit("crdistance serve not ready within 180 s")
            time.sleep(0.2)

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def batches(self):
        """(images, batches) so far, from ``/metrics``."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        total = float(re.search(r"^crdistance_batch_images_sum (\S+)$", text,
                                re.M).group(1))
        count = int(re.search(r"^crdistance_batch_images_count (\S+)$", text,
                              re.M).group(1))
        return total, count


def multipart(name, data):
    boundary = "bench-serve-boundary-4c1d"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + data + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def send(port, bodies, clients, n_requests, target="/predict"):
    """`n_requests` POST /predict from `clients` keep-alive clients: (seconds,
    [(status or None, answer bytes, seconds, image name)])."""
    counter, lock = itertools.count(), threading.Lock()
    outcomes = [None] * n_requests
    deadline = time.monotonic() + LEVEL_TIMEOUT

    def work():
        connection = http.client.HTTPConnection("127.0.0.1", port,
                                                timeout=REQUEST_TIMEOUT)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                if i >= n_requests:
                    return
                name, body, kind = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    connection.request("POST", target, body=body,
                                       headers={"Content-Type": kind})
                    response = connection.getresponse()
                    status, data = response.status, response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # reopened by the next request
                    status, data = None, repr(exc).encode()
                outcomes[i] = (status, data, time.perf_counter() - start, name)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LEVEL_TIMEOUT + REQUEST_TIMEOUT)
    seconds = time.perf_counter() - start
    return seconds, [outcome for outcome in outcomes if outcome is not None]


def served(server, bodies, clients, n_requests, offline_scores, overlay=False):
    """One level of clients: its row of the table (without the ratios)."""
    target = "/predict?overlay=true" if overlay else "/predict"
    send(server.port, bodies, clients, 2 * clients, target)  # warm-up
    images_before, batches_before = server.batches()
    seconds, outcomes = send(server.port, bodies, clients, n_requests, target)
    images_after, batches_after = server.batches()
    ok = [outcome for outcome in outcomes if outcome[0] == 200]
    mismatches = 0
    for _, data, _, name in ok:
        result = json.loads(data)["results"][0]
        mismatches += not np.isclose(result["score"], offline_scores[name],
                                     rtol=1e-5, atol=0)
        mismatches += overlay != ("overlay_png" in result)
    latency = 1000 * np.array([outcome[2] for outcome in outcomes] or [np.nan])
    p50, p90, p99 = (float(p) for p in np.percentile(latency, [50, 90, 99]))
    n_batches = batches_after - batches_before
    row = {
        "clients": clients, "images": len(ok), "requests": n_requests,
        "wall_s": seconds, "images_per_s": len(ok) / seconds,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
        "errors": n_requests - len(ok), "score_mismatches": mismatches,
        "mean_batch": ((images_after - images_before) / n_batches if n_batches
                       else None),
    }
    log(f"served, {clients} clients{', overlays' if overlay else ''}: "
        f"{row['images_per_s']:.1f} images/s, p50 "
        f"{p50:.0f} ms, p99 {p99:.0f} ms, {row['errors']} errors, mean batch "
        f"{row['mean_batch']}")
    return row


def header(args, started, load_before, model_line, offline_line, rows):
    load_after = os.getloadavg()
    machine = "\n".join(line for line in machine_summary().splitlines()
                        if not line.startswith("command: "))
    lines = [
        "command: python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        f"date: {started:%Y-%m-%d %H:%M} UTC",
        machine,
        f"load average: {load_before:.2f} at start, {load_after[0]:.2f} at end "
        f"(15 min: {load_after[2]:.2f})",
        model_line,
        offline_line,
        f"served: crdistance serve MODEL -q (--max-batch 16, --batch-wait-ms 5); "
        f"{args.requests} requests of one image (multipart POST /predict, no "
        "overlay but in the _overlay rows) per level from that many keep-alive "
        "clients, threads of the benchmark on the same machine, after 2 x "
        "clients warm-up requests; latency on the client",
        "pipeline: the model in the benchmark's process, the same images read "
        "and scored a featurizer batch at a time, no overlay, no HTTP",
    ]
    by_clients = {row["clients"]: row for row in rows
                  if row.get("clients") and not row["method"].endswith("_overlay")}
    if 8 in by_clients:
        ratio = by_clients[8]["ratio_to_offline"]
        lines.append(f"target ratio_to_offline >= 0.8 at 8 clients: {ratio:.2f}, "
                     + ("met" if ratio >= 0.8 else "not met")
                     + f" (against the model in process, no overlay: "
                     f"{by_clients[8]['ratio_to_pipeline']:.2f})")
    if 1 in by_clients:
        spread = by_clients[1]["p99_ms"] / by_clients[1]["p50_ms"]
        lines.append(f"target p99 < 2 x p50 at 1 client: p99 / p50 = {spread:.2f}, "
                     + ("met" if spread < 2 else "not met"))
    return lines


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    dataset = args.data.name
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
        work = Path(work)
        if args.model is None:
            train = sorted((args.data / "train" / "good").glob("*.jpg"))[:args.n_train]
            model = work / f"{dataset}.npz"
            fit_s, _ = crdistance("fit", copy_into(work / "train", train), "-o",
                                  model, "-q")
            model_line = (f"model: crdistance fit on the first {len(train)} good "
                          f"training images of {dataset} (the command's defaults), "
                          f"{fit_s:.0f} s")
        else:
            model = args.model
            model_line = f"model: {model}"
        log(model_line)
        paths = pick_images(args.data, args.n_images)
        rate, offline_scores, t_small, t_all = offline(model, paths, args.n_small,
                                                       work)
        offline_line = (
            f"offline: crdistance predict MODEL FOLDER -q --json on {len(paths)} "
            f"test images took {t_all:.1f} s, on {args.n_small} of them "
            f"{t_small:.1f} s; images_per_s = the difference in images over the "
            f"difference in seconds (start and model load excluded; end to end "
            f"{len(paths) / t_all:.1f} images/s); it writes an overlay PNG per "
            "image, the served requests ask for none")
        in_process_s, in_process_scores = pipeline_rate(model, paths)
        in_process = len(paths) / in_process_s
        mismatches = sum(not np.isclose(in_process_scores[name], score, rtol=1e-5,
                                        atol=0)
                         for name, score in offline_scores.items())
        rows = [{"dataset": dataset, "method": "crd_predict_offline",
                 "images": len(paths) - args.n_small, "wall_s": t_all - t_small,
                 "images_per_s": rate, "ratio_to_pipeline": rate / in_process},
                {"dataset": dataset, "method": "crd_pipeline_offline",
                 "images": len(paths), "wall_s": in_process_s,
                 "images_per_s": in_process, "score_mismatches": mismatches,
                 "ratio_to_offline": in_process / rate}]
        bodies = [(path.name, *multipart(path.name, path.read_bytes()))
                  for path in paths]
        levels = [(clients, False) for clients in args.clients]
        levels += [(clients, True) for clients in args.overlay_clients]
        with Server(model, work) as server:
            for clients, overlay in levels:
                row = served(server, bodies, clients, args.requests, offline_scores,
                             overlay)
                row["ratio_to_offline"] = row["images_per_s"] / rate
                row["ratio_to_pipeline"] = row["images_per_s"] / in_process
                noun = "client" if clients == 1 else "clients"
                method = f"crd_serve_{clients}_{noun}" + ("_overlay" if overlay else "")
                rows.append({"dataset": dataset, "method": method, **row})
        lines = header(args, started, load_before, model_line, offline_line, rows)
    suffix = "_quick" if args.quick else ""
    path = args.out_dir / f"bench_serve{suffix}.csv"
    write_csv([{key: row.get(key) for key in ["dataset", "method", *EXTRA]}
               for row in rows], path, lines)
    print(format_table(rows, TABLE))
    print("\n" + "\n".join(lines))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
