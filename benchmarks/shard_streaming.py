"""Shard streaming from S3 against the naive one-GET-per-image approach, and against what one
stage-1 training worker consumes.

Starts a moto S3 server on 127.0.0.1 in its own process (so the server's CPU is not the reader's
GIL), writes the built-in synthetic set at the config's resolution both as WebDataset shards and
as one object per image (the same PNG bytes), then measures, with the same decode + flip:

- shard streaming: data_shards.reader.train_loader as the training workers use it
  (data.loader_workers DataLoader processes, batches of the stage-1 per-worker batch);
- naive: one S3 GET per image, decoded in the training process, as a per-file dataset would;
- consumption: stage-1 steps of the same config in this process (images/s);
- peak memory (VmHWM, RSS) of each reader process and bytes read per sample.

    python benchmarks/shard_streaming.py                     # default config, 5000 images
    python benchmarks/shard_streaming.py --count 20000 --stream 40000 data.loader_workers=2
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the moto S3 server did not start")


def peak_memory(pid: int) -> dict:
    """Peak and current resident memory of a process, from /proc (MiB)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def loader_processes() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if "moto" not in " ".join(p.cmdline())]


def measure_streaming(url: str, cfg, samples: int) -> dict:
    from data_shards.reader import train_loader

    loader = train_loader(url, cfg.stage1.batch_size, num_workers=cfg.data.loader_workers, seed=0,
                          resolution=cfg.model.resolution, hflip=cfg.data.hflip)
    it = iter(loader)
    next(it)  # start-up (worker fork, first connections) is not throughput
    batches = max(1, samples // cfg.stage1.batch_size)
    t0 = time.perf_counter()
    for batch in itertools.islice(it, batches):
        pass
    seconds = time.perf_counter() - t0
    memory = {pid: peak_memory(pid) for pid in loader_processes()}
    del it, loader
    return {"samples": batches * cfg.stage1.batch_size, "seconds": seconds,
            "samples_per_s": batches * cfg.stage1.batch_size / seconds, "reader_processes": memory,
            "main_process": peak_memory(os.getpid())}


def measure_naive(urls: list[str], cfg) -> dict:
    """One GET per image, decoded and flipped like the shard reader does, in this process."""
    import numpy as np

    from data_shards.io import read_bytes
    from data_shards.decode import decode_image

    size = (cfg.model.resolution, cfg.model.resolution)
    rng = np.random.default_rng(0)
    read_bytes(urls[0])  # connection set-up
    total_bytes = 0
    t0 = time.perf_counter()
    for url in urls:
        data = read_bytes(url)
        total_bytes += len(data)
        image = decode_image(data, size)
        if rng.random() < 0.5:
            image = image[:, ::-1]
    seconds = time.perf_counter() - t0
    return {"samples": len(urls), "seconds": seconds, "samples_per_s": len(urls) / seconds,
            "bytes_per_sample": total_bytes / len(urls)}


def measure_consumption(cfg, steps: int) -> dict:
    """Images/s one stage-1 worker trains on with all this machine's cores (the default)."""
    import torch

    from comgan.training import Stage1State, Stage1Step

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    state = Stage1State.create(cfg)
    step = Stage1Step(state, cfg)
    real = torch.rand(cfg.stage1.batch_size, 3, cfg.model.resolution, cfg.model.resolution) * 2 - 1
    for _ in range(3):
        step(real)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(real)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "images_per_s": steps * cfg.stage1.batch_size / seconds}


def write_objects(samples, prefix: str) -> list[str]:
    """The same images as one PNG object each (the per-file layout the naive reader needs)."""
    from concurrent.futures import ThreadPoolExecutor

    from data_shards.io import join_url, write_bytes
    from data_shards.writer import _png

    items = [(join_url(prefix, f"{s['key']}.png"), _png(s["image"])) for s in samples]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: write_bytes(*item), items))
    return [u for u, _ in items]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), e.g. data.loader_workers=2")
    p.add_argument("--config", default="default")
    p.add_argument("--count", type=int, default=5000, help="images written (shards and objects)")
    p.add_argument("--stream", type=int, default=20000, help="samples streamed from the shards")
    p.add_argument("--naive", type=int, default=1000, help="images fetched one GET each")
    p.add_argument("--train-steps", type=int, default=20, help="stage-1 steps timed for consumption")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "shard_streaming.json"))
    a = p.parse_args()

    from cluster.config import load_config

    cfg = load_config(a.config, a.overrides)
    server, endpoint = start_s3_server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                       "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"})
    try:
        import boto3

        from data_shards.synthetic import synthetic_samples
        from data_shards.writer import write_synthetic

        boto3.client("s3").create_bucket(Bucket="bench")
        res, styles = cfg.model.resolution, cfg.data.synthetic_styles
        print(f"writing {a.count} synthetic {res}px images as shards and as single objects to {endpoint}", flush=True)
        manifest = write_synthetic("s3://bench/shards", a.count, res, styles, seed=1,
                                   samples_per_shard=cfg.data.samples_per_shard, progress=False)
        objects = write_objects(itertools.islice(synthetic_samples(a.count, res, styles, 1), a.naive),
                                "s3://bench/objects")

        consumption = measure_consumption(cfg, a.train_steps)
        print(f"stage-1 consumption: {consumption['images_per_s']:.0f} img/s", flush=True)
        naive = measure_naive(objects, cfg)
        print(f"naive, one GET per image: {naive['samples_per_s']:.0f} samples/s", flush=True)
        streaming = measure_streaming("s3://bench/shards", cfg, a.stream)
        streaming["bytes_per_sample"] = sum(s["bytes"] for s in manifest["shards"]) / manifest["num_samples"]
        print(f"shard streaming ({cfg.data.loader_workers} loader worker(s)): "
              f"{streaming['samples_per_s']:.0f} samples/s", flush=True)
    finally:
        server.kill()
        server.wait()

    peak = max((m["VmHWM"] for m in streaming["reader_processes"].values()), default=float("nan"))
    result = {"config": a.config, "overrides": a.overrides, "resolution": cfg.model.resolution,
              "images_written": a.count, "loader_workers": cfg.data.loader_workers,
              "streaming": streaming, "naive": naive, "stage1_consumption": consumption,
              "speedup_vs_naive": streaming["samples_per_s"] / naive["samples_per_s"],
              "headroom_vs_stage1": streaming["samples_per_s"] / consumption["images_per_s"],
              "reader_peak_rss_mib": peak}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nshard streaming   {streaming['samples_per_s']:>9.0f} samples/s   "
          f"{streaming['bytes_per_sample']:>7.0f} bytes/sample read")
    print(f"naive GET/image   {naive['samples_per_s']:>9.0f} samples/s   {naive['bytes_per_sample']:>7.0f} bytes/sample read")
    print(f"stage-1 consumes  {consumption['images_per_s']:>9.0f} images/s")
    print(f"speed-up vs naive {result['speedup_vs_naive']:>9.1f}x   (target >= 10x)")
    print(f"headroom vs train {result['headroom_vs_stage1']:>9.1f}x   (target >= 5x)")
    print(f"reader process peak RSS {peak:.0f} MiB (VmHWM; includes pages shared with the training process)")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
