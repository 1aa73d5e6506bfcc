"""Real-photo benchmark of the `photos` preset: one recipe, several photo collections, a held-out quarter.

A collection is a folder with images/<stem>.jpg and masks/<stem>.png (same stem; 0 = background,
255 = object). Defaults, relative to the folder above the repository:
  horses   ../shared/data/weizmann_horse     (200 Weizmann horses)
  flowers  ../shared/data/oxford_flowers17   (600 segmented Oxford 17 Flowers)
--source NAME=PATH points a collection elsewhere, or adds a new one (--collections NAME).

For each collection:

1. Split: the photos sorted by file stem; every 4th one (positions 3, 7, 11, ... counting from 0)
   is held out of training. That is a quarter (rounded down), the same on every machine and run.
2. Shards under benchmarks/out/photos/<collection>/shards/, each photo and mask squashed to a
   128 px square (the geometry every method is scored in; the preset trains at 64 px):
     train          the other 3/4, images only (all that training sees)
     eval-trained   the same 3/4 with their masks
     eval-heldout   the held-out 1/4 with their masks
   Written once; written again when the source's photos or the split changed (manifest "info").
3. Per variant, collection and seed, trains exactly as a user would:
     python jobs/train.py --config photos data.train=<train> data.eval=<eval-heldout> run.seed=S \\
         --storage benchmarks/out/photos/runs --name photos-<collection>-seed<S> [variant overrides]
   (the run's own evaluation scores the held-out quarter at 128 px, GrabCut beside it), then
   scores the run's segmenter on the photos it trained on (without their masks):
     python jobs/evaluate.py --segmenter <run>/stage2/segmenter.pt --data <eval-trained> \\
         --resolution 128 --grabcut --out <run>/eval128_trained.json --overwrite
   Runs of a variant other than `preset` are named photos-<variant>-<collection>-seed<S>, runs
   under --numerics avx2 get -avx2 appended: each setting has its own run folder.
   With --generators-of V, stage 2 alone is trained (jobs/segment.py, same data, seed and
   scoring) on the generator that variant V's run of the same collection, seed and numerics
   exported: stage-2 settings compared on one generator, in about half a run's time.
4. Appends one row per run to --out as it ends: strict IoU and paper-convention IoU (each image
   scored as the better of the mask and its complement; comgan/metrics.py iou_strict, iou_paper)
   of the segmenter on the held-out and on the trained-on photos, GrabCut's strict IoU on the
   same photos, wall times (resumed: true when the run folder was already there, so the times
   cover only what was left), CPU model (/proc/cpuinfo's model name, lscpu's 'Model name') and torch's CPU capability
   under the run's numerics. A row already there (same variant, numerics, collection and seed)
   is skipped: rerun the same command to continue an interrupted benchmark.

--table prints the table of --out without training: per collection and variant, min / median
over seeds of each figure, next to the reference bars: GrabCut's strict IoU on all the photos of
the collection at 128 px (horses 0.655, flowers 0.724) and, for the flowers, the published
paper-convention IoU on the related Oxford-102 Flowers (GrabCut 0.692, ReDO 0.764, DS-ComGAN 0.769).

    python benchmarks/photos.py                              # horses and flowers, seeds 0 1 2 (runs sized for ~1 h on 2 cores)
    python benchmarks/photos.py --collections flowers --seeds 0
    python benchmarks/photos.py --variant beta2 stage1.beta=2 --variant preset
    python benchmarks/photos.py --numerics avx2              # training under AVX2 kernels (benchmarks/robustness.py)
    python benchmarks/photos.py --numerics avx2 --generators-of preset --variant s2-base \
        --variant s2-nocolour stage2.self_train.colour_bins=0          # stage 2 alone, on the preset's generators
    python benchmarks/photos.py --source horses=/data/weizmann_horse --shards-only
    python benchmarks/photos.py --table
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cluster.cli import OneLineParser  # noqa: E402  (usage mistakes as one error line, exit 2)
from data_shards.writer import write_shards  # noqa: E402
from robustness import cpu_model, draw_env  # noqa: E402  (the numerics' environments, shared)

OUT = ROOT / "benchmarks" / "out" / "photos"
RESULTS = ROOT / "benchmarks" / "results" / "photos.json"
DATA = ROOT.parent / "shared" / "data"
COLLECTIONS = {"horses": DATA / "weizmann_horse", "flowers": DATA / "oxford_flowers17"}
SIZE = 128          # photos and masks squashed to SIZE x SIZE: the scoring geometry
HOLDOUT_EVERY = 4   # every 4th photo by sorted stem is held out of training
SETS = ("train", "eval-trained", "eval-heldout")
NUMERICS = ("native", "avx2")   # environments from benchmarks/robustness.py draw_env
PRESET = "preset"   # the variant without overrides
# Reference bars, as fractions. GrabCut (rectangle inset 5 %) on all the photos at 128 px, strict
# IoU: horses as measured by this repository's evaluation (benchmarks/results/horses.json), flowers
# from the collection's README. Published on Oxford-102 Flowers, paper-convention IoU.
REFERENCES = {
    "horses": "GrabCut on all 200 horses at 128 px: strict IoU 0.655",
    "flowers": "GrabCut on all 600 flowers at 128 px: strict IoU 0.724; published on Oxford-102 (paper "
               "convention, compare IoU*): GrabCut 0.692, ReDO 0.764, DS-ComGAN 0.769",
}
FIGURES = [("heldout_iou", "IoU"), ("heldout_iou_paper", "IoU*"), ("heldout_grabcut", "GrabCut"),
           ("trained_iou", "IoU"), ("trained_iou_paper", "IoU*"), ("trained_grabcut", "GrabCut")]
RESERVED = ("data.train=", "data.eval=", "run.seed=")  # the benchmark sets these itself
VARIANT_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"   # a variant's name is part of its run folders' names


class BenchmarkError(Exception):
    """A mistake in the command or the sources: one `error:` line, exit 2."""


# ---------------------------------------------------------------------------------------------
# Photos -> shards (shared with benchmarks/horses.py)


def squashed(path: Path, size: int, mode: str, resample) -> np.ndarray:
    """The image at `path` resized to size x size, aspect not kept."""
    return np.asarray(Image.open(path).convert(mode).resize((size, size), resample))


def photo_sample(image: Path, mask: Path | None, size: int) -> dict:
    """One shard sample: the photo squashed to a square (Lanczos) and, if given, its mask squashed
    the same way (bilinear, then > 127 is the object)."""
    sample = {"key": image.stem, "image": squashed(image, size, "RGB", Image.LANCZOS)}
    if mask is not None:
        sample["mask"] = squashed(mask, size, "L", Image.BILINEAR) > 127
    return sample


def write_photo_shards(images: list[Path], url: Path, size: int, masks: Path | None = None,
                       info: dict | None = None) -> dict:
    """Shards of `images` at `url`, squashed to `size` px; with `masks` (a folder), each photo's
    mask masks/<stem>.png too. Replaces what an earlier write left there."""
    samples = (photo_sample(p, masks / f"{p.stem}.png" if masks else None, size) for p in images)
    return write_shards(samples, str(url), samples_per_shard=64, total=len(images), progress=False, info=info)


# ---------------------------------------------------------------------------------------------
# Collections: split and shards


def split(stems: list[str]) -> tuple[list[str], list[str]]:
    """(trained, held_out): the stems sorted; position i is held out when i % 4 == 3."""
    ordered = sorted(stems)
    held = ordered[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    return [s for i, s in enumerate(ordered) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1], held


def check_source(name: str, source: Path) -> list[Path]:
    """The collection's photos (sorted), each with a mask; BenchmarkError naming what is missing."""
    images = sorted((source / "images").glob("*.jpg"))
    if not images:
        where = source / "images" if source.is_dir() else source
        raise BenchmarkError(f"{name}: no photos at {where} (expected images/*.jpg and masks/*.png; "
                             f"give --source {name}=PATH)")
    missing = [p.stem for p in images if not (source / "masks" / f"{p.stem}.png").is_file()]
    if missing:
        raise BenchmarkError(f"{name}: {len(missing)} of {len(images)} photos have no mask, the first "
                             f"{source / 'masks' / (missing[0] + '.png')}")
    if len(images) < HOLDOUT_EVERY:
        raise BenchmarkError(f"{name}: {len(images)} photos at {source / 'images'}; a held-out quarter needs at "
                             f"least {HOLDOUT_EVERY}")
    return images


def collection_shards(name: str, source: Path, out: Path | None = None) -> dict[str, str]:
    """{set: shard folder} of the collection under `out` (default OUT), written where missing or stale."""
    out = out or OUT
    images = check_source(name, source)
    by_stem = {p.stem: p for p in images}
    trained, held = split(list(by_stem))
    # The training set in a fixed shuffled order: the reader mixes only neighbouring samples, and
    # sorted stems may group a collection's kinds (Oxford flowers are numbered by species).
    shuffled = [trained[i] for i in np.random.default_rng(0).permutation(len(trained))]
    members = {"train": (shuffled, False), "eval-trained": (trained, True), "eval-heldout": (held, True)}
    urls = {}
    for set_name, (stems, with_masks) in members.items():
        url = out / name / "shards" / set_name
        info = {"collection": name, "source": str(source.resolve()), "set": set_name, "size": SIZE,
                "split": f"every {HOLDOUT_EVERY}th photo by sorted stem held out", "photos": len(stems),
                "stems_sha256": hashlib.sha256("\n".join(stems).encode()).hexdigest()}
        manifest = url / "manifest.json"
        if not (manifest.exists() and json.loads(manifest.read_text()).get("info") == info):
            try:
                write_photo_shards([by_stem[s] for s in stems], url, SIZE,
                                   masks=source / "masks" if with_masks else None, info=info)
            except OSError as e:   # a photo or mask PIL cannot read (the message names it), or no room
                raise BenchmarkError(f"{name}: writing {url}: {e}") from None
            print(f"[photos] wrote {len(stems)} {name} photos to {url}", flush=True)
        urls[set_name] = str(url)
    return urls


# ---------------------------------------------------------------------------------------------
# Runs


def run_name(variant: str, collection: str, seed: int, numerics: str) -> str:
    middle = "" if variant == PRESET else f"{variant}-"
    return f"photos-{middle}{collection}-seed{seed}" + ("" if numerics == "native" else f"-{numerics}")


def row_key(r: dict) -> tuple:
    return r["variant"], r["numerics"], r["collection"], r["seed"]


_CAPABILITY: dict[str, dict] = {}


def torch_capability(numerics: str) -> dict:
    """torch's CPU capability and version in a fresh process under the numerics' environment
    (the capability is fixed when torch loads)."""
    if numerics not in _CAPABILITY:
        code = "import torch; print(torch.backends.cpu.get_cpu_capability()); print(torch.__version__)"
        out = subprocess.run([sys.executable, "-c", code], env=draw_env(numerics), capture_output=True,
                             text=True, check=True).stdout.split()
        _CAPABILITY[numerics] = {"torch_capability": out[0], "torch": out[1]}
    return _CAPABILITY[numerics]


def run_one(variant: str, overrides: list[str], collection: str, seed: int, numerics: str, urls: dict,
            storage: Path, generators_of: str | None = None) -> dict | None:
    """Train (both stages, or stage 2 alone on the generator of variant `generators_of`), score on
    the trained-on photos, and return the row (None if a command failed or the generator is missing)."""
    name = run_name(variant, collection, seed, numerics)
    run = storage / name
    resumed = run.exists()
    env = draw_env(numerics)

    def command(script: str, *args: str) -> float | None:
        """Run one of the jobs; its wall seconds, or None (and a line) when it failed."""
        cmd = [sys.executable, str(ROOT / "jobs" / script), *args]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        if subprocess.call(cmd, cwd=ROOT, env=env):
            print(f"[photos] {name}: jobs/{script} failed; no row written", flush=True)
            return None
        return time.time() - t0

    script, stage1 = "train.py", []
    if generators_of:
        generator = storage / run_name(generators_of, collection, seed, numerics) / "stage1" / "generator.pt"
        if not generator.exists():
            print(f"[photos] {name}: no generator of {generators_of!r} at {generator}: skipped", flush=True)
            return None
        script, stage1 = "segment.py", ["--generator", str(generator)]
    train_s = command(script, "--config", "photos", *stage1, f"data.train={urls['train']}",
                      f"data.eval={urls['eval-heldout']}", f"run.seed={seed}", "--storage", str(storage),
                      "--name", name, *overrides)
    if train_s is None:
        return None
    summary = json.loads((run / "summary.json").read_text())
    report = run / "eval128_trained.json"
    eval_s = command("evaluate.py", "--segmenter", str(run / "stage2" / "segmenter.pt"), "--data",
                     urls["eval-trained"], "--resolution", str(SIZE), "--grabcut", "--out", str(report), "--overwrite")
    if eval_s is None:
        return None
    row = make_row(variant, overrides, collection, seed, numerics, name, summary, json.loads(report.read_text()),
                   train_s, eval_s, resumed)
    return row | {"generators_of": generators_of} if generators_of else row


def make_row(variant: str, overrides: list[str], collection: str, seed: int, numerics: str, run: str,
             summary: dict, trained: dict, train_s: float, eval_s: float, resumed: bool) -> dict:
    held = summary["eval"]
    grabcut = lambda r: (r.get("grabcut") or {}).get("iou_strict")  # noqa: E731
    return {"variant": variant, "overrides": overrides, "collection": collection, "seed": seed,
            "numerics": numerics, "run": run, "config": "photos",
            "heldout_photos": held["num_images"], "heldout_px": held.get("score_resolution"),
            "heldout_iou": held["segmenter"]["iou_strict"], "heldout_iou_paper": held["segmenter"]["iou_paper"],
            "heldout_grabcut": grabcut(held),
            "trained_photos": trained["num_images"], "trained_px": trained.get("score_resolution"),
            "trained_iou": trained["segmenter"]["iou_strict"], "trained_iou_paper": trained["segmenter"]["iou_paper"],
            "trained_grabcut": grabcut(trained),
            "wall_s": round(train_s + eval_s), "train_s": round(train_s), "eval_trained_s": round(eval_s),
            "stage1_s": summary.get("stage1", {}).get("perf/seconds"),
            "stage2_s": summary.get("stage2", {}).get("perf/seconds"), "resumed": resumed,
            "cpu": cpu_model(), **torch_capability(numerics),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def load_rows(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text()) if path.exists() else []
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path} is not a results file of this benchmark ({e})") from None


def save_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)  # a run that is killed while writing never leaves half a file


# ---------------------------------------------------------------------------------------------
# The table


def spread(values: list) -> tuple[float, float] | None:
    """(min, median) of the values that are there; None when none is."""
    values = [v for v in values if v is not None]
    return (min(values), statistics.median(values)) if values else None


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (collection, variant, numerics), in the order of first appearance: the seeds
    and (min, median) over them of every figure and of the wall time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["collection"], r["variant"], r["numerics"]), []).append(r)
    order = {c: i for i, c in enumerate(COLLECTIONS)}
    out = []
    for (collection, variant, numerics), rs in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], len(order))):
        entry = {"collection": collection, "variant": variant, "numerics": numerics,
                 "seeds": sorted(r["seed"] for r in rs), "wall_s": spread([r.get("wall_s") for r in rs]),
                 "cpus": sorted({f"{r.get('cpu')} ({r.get('torch_capability')})" for r in rs}),
                 "generators_of": rs[0].get("generators_of")}
        entry.update({key: spread([r.get(key) for r in rs]) for key, _ in FIGURES})
        out.append(entry)
    return out


def table(rows: list[dict]) -> str:
    fmt = lambda s: "-" if s is None else f"{s[0]:.3f}/{s[1]:.3f}"  # noqa: E731
    entries = summarise(rows)
    label = lambda e: (e["variant"] + ("" if e["numerics"] == "native" else f" {e['numerics']}")  # noqa: E731
                       + (f" (stage 2 on {e['generators_of']})" if e["generators_of"] else ""))
    seeds = lambda e: ",".join(map(str, e["seeds"]))  # noqa: E731
    vw = max([len("variant"), *(len(label(e)) for e in entries)]) + 2
    sw = max([len("seeds"), *(len(seeds(e)) for e in entries)]) + 2
    lines = [f"photos preset, scored at {SIZE} px; each cell min/median over seeds",
             f"{'':<{11 + vw + sw}}{'held-out quarter':^36}{'trained-on photos':^36}",
             f"{'collection':<11}{'variant':<{vw}}{'seeds':<{sw}}" + "".join(f"{name:>12}" for _, name in FIGURES)
             + f"{'wall min':>10}"]
    last = None
    for e in entries:
        if last is not None and e["collection"] != last:
            lines.append(f"{'':<11}{REFERENCES.get(last, '')}")
        last = e["collection"]
        wall = "-" if e["wall_s"] is None else f"{e['wall_s'][1] / 60:.0f}"
        lines.append(f"{e['collection']:<11}{label(e):<{vw}}{seeds(e):<{sw}}"
                     + "".join(f"{fmt(e[k]):>12}" for k, _ in FIGURES) + f"{wall:>10}")
    if last is not None:
        lines.append(f"{'':<11}{REFERENCES.get(last, '')}")
    cpus = sorted({c for e in entries for c in e["cpus"]})
    lines.append("IoU strict, IoU* paper convention (better of the mask and its complement), GrabCut strict IoU on "
                 "the same photos; wall: median minutes of a run (training + scoring the trained-on photos; "
                 "stage 2 alone where it says so)")
    lines.append("CPU (torch capability): " + "; ".join(cpus) if cpus else "no rows yet")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="benchmarks/photos.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Exit codes: 0 every run done (or skipped as done), 1 a run failed (its row is not written; "
                      "rerun to retry), 2 a mistake in the command or a source folder.")
    p.add_argument("--collections", nargs="+", default=list(COLLECTIONS), metavar="NAME",
                   help=f"collections to run (default: {' '.join(COLLECTIONS)}); a new NAME needs --source NAME=PATH")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="a collection's folder (images/*.jpg, masks/<stem>.png); repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run.seed values (default: 0 1 2)")
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a variant: a name and overrides of the photos preset, e.g. --variant beta2 stage1.beta=2; "
                        f"repeatable; default: '{PRESET}' (the preset as it is; name it to run it beside others)")
    p.add_argument("--numerics", choices=NUMERICS, default="native",
                   help="native: the machine's kernels; avx2: training and scoring with ATEN_CPU_CAPABILITY=avx2 "
                        "ONEDNN_MAX_CPU_ISA=AVX2 (what an AVX2-only CPU computes; changes nothing on one)")
    p.add_argument("--generators-of", metavar="VARIANT",
                   help="train stage 2 alone (jobs/segment.py) on the generator that VARIANT's run of the same "
                        "collection, seed and numerics exported (a run already in --storage); the variants' "
                        "overrides should then be stage-2 keys")
    p.add_argument("--storage", default=str(OUT / "runs"), help="where the run folders go (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON, appended to (default: %(default)s)")
    p.add_argument("--shards-only", action="store_true", help="write the collections' shards and stop")
    p.add_argument("--table", action="store_true", help="print the table of --out and stop (no training)")
    return p.parse_args(argv)


def sources(a: argparse.Namespace) -> dict[str, Path]:
    found = dict(COLLECTIONS)
    for spec in a.source:
        name, eq, path = spec.partition("=")
        if not eq or not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name) or not path:
            raise BenchmarkError(f"--source {spec!r}: expected NAME=PATH with a lower-case NAME (letters, digits, _)")
        found[name] = Path(path).expanduser()
    unknown = [c for c in a.collections if c not in found]
    if unknown:
        raise BenchmarkError(f"unknown collection {unknown[0]!r} (known: {', '.join(found)}; add one with "
                             f"--source {unknown[0]}=PATH)")
    return {c: found[c] for c in dict.fromkeys(a.collections)}


def variants(a: argparse.Namespace, rows: list[dict]) -> dict[str, list[str]]:
    """The variants to run, name -> overrides, each checked against the command and the rows already
    in the results (same overrides, and the same kind of run: both stages, or stage 2 alone on the
    same variant's generators)."""
    if a.generators_of is not None and not re.fullmatch(VARIANT_NAME, a.generators_of):
        raise BenchmarkError(f"--generators-of {a.generators_of!r}: a variant name (letters, digits, '.', '_' and '-')")
    trained = lambda g: f"stage 2 alone on {g!r}'s generators" if g else "both stages"  # noqa: E731
    chosen: dict[str, list[str]] = {}
    for name, *overrides in a.variant or [[PRESET]]:
        if not re.fullmatch(VARIANT_NAME, name):
            raise BenchmarkError(f"variant name {name!r}: letters, digits, '.', '_' and '-' only")
        if name == PRESET and overrides:
            raise BenchmarkError(f"'{PRESET}' is the preset without overrides; give the variant another name")
        if name in chosen:
            raise BenchmarkError(f"variant {name!r} given twice")
        for o in overrides:
            if "=" not in o:
                raise BenchmarkError(f"variant {name}: {o!r} is not of the form key=value")
            if o.startswith(RESERVED):
                raise BenchmarkError(f"variant {name}: {o!r}: the benchmark sets "
                                     f"{', '.join(k.rstrip('=') for k in RESERVED)} itself")
        if a.generators_of is not None and name == PRESET:
            raise BenchmarkError(f"--generators-of trains stage 2 alone: name the variant (--variant NAME "
                                 f"[KEY=VALUE ...]); '{PRESET}' is the whole preset")
        if name == a.generators_of:
            raise BenchmarkError(f"--generators-of {name}: a variant cannot train on its own generator")
        other = {tuple(r["overrides"]) for r in rows if r["variant"] == name} - {tuple(overrides)}
        if other:
            raise BenchmarkError(f"variant {name!r} has rows in the results with other overrides "
                                 f"({' '.join(next(iter(other))) or 'none'}); give this one another name")
        kinds = {r.get("generators_of") for r in rows if r["variant"] == name} - {a.generators_of}
        if kinds:
            raise BenchmarkError(f"variant {name!r} has rows of {trained(next(iter(kinds)))}, this command trains "
                                 f"{trained(a.generators_of)}; give it another name")
        chosen[name] = overrides
    return chosen


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    try:
        if a.table:
            if not out.exists():
                raise BenchmarkError(f"no results at {out} yet")
            print(table(load_rows(out)))
            return 0
        rows = load_rows(out)
        chosen = variants(a, rows)
        folders = sources(a)
        for name, source in folders.items():
            check_source(name, source)   # every source before the first (hour-long) run
        from cluster.config import ConfigError, load_config
        for name, overrides in chosen.items():
            try:
                load_config("photos", overrides)
            except ConfigError as e:
                raise BenchmarkError(f"variant {name}: {e}") from None
        urls = {name: collection_shards(name, source) for name, source in folders.items()}
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.shards_only:
        return 0
    failed = 0
    done = {row_key(r) for r in rows}
    for variant, overrides in chosen.items():
        for collection in folders:
            for seed in a.seeds:
                if (variant, a.numerics, collection, seed) in done:
                    continue
                row = run_one(variant, overrides, collection, seed, a.numerics, urls[collection], Path(a.storage),
                              a.generators_of)
                if row is None:
                    failed += 1
                    continue
                rows.append(row)
                save_rows(out, rows)   # after every run: an interrupted benchmark loses nothing
                print(table(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
