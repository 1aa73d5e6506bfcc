"""The paper's trivial-solution study at this project's scale (ComGAN section 3.1, Figures 2 and 4).

ComGAN and its two degenerate relatives, trained with the adversarial and binary-entropy terms only
(the `study` preset: no info heads, no priors), at beta 0.1 and 1, over seeds:

- comgan: M, F and B all read the shared features Phi(z);
- pi1: B has a generator of its own on z (FineGAN-like);
- pi2: M and B each have their own (three independent generators, PerturbGAN-like).

The paper's claim: Pi1 and Pi2 end in trivial solutions, the mask network's gradient vanishing
(its Figure 4), where ComGAN's does not. Each run is a screen draw of benchmarks/robustness.py (the
recipe's steps in one process, stage 1 to its end whatever the watchdog says, then stage 2 and the
held-out strict IoU), its rows in --out; rerunning the same command skips the runs already there.

    python benchmarks/study.py                       # 3 variants x 2 betas x seeds 0-2, ~9 min a run on 2 cores
    python benchmarks/study.py --seeds 0 --variants pi1 --betas 1
    python benchmarks/study.py --figures             # from --out: the table and the two figures

--figures writes, beside --out: <name>_gradients.png (Figure 4: the 2-norm of the gradient on M's
weights over stage-1 steps, one line per run, one panel per beta), <name>_masks.png (Figure 2:
masks of each variant's first-seed generator on the watchdog's fixed codes, one row per variant and
beta) and prints the table: per variant and beta, how many runs the watchdog found trivial at the
end of stage 1, the strict IoU after stage 2 (min / median), and the late gradient norm on M.
Needs matplotlib for the gradient figure (pip install -e ".[bench]").
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from robustness import draw_picture, late_mean, load_rows, parse_seeds  # noqa: E402  (the screen draws' format)

VARIANTS = ("comgan", "pi1", "pi2")
BETAS = (0.1, 1.0)


def label(variant: str, beta: float) -> str:
    return f"study-{variant}-beta{beta:g}"


def run(a) -> None:
    for variant in a.variants:
        for beta in a.betas:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--config", a.config,
                   "--seeds", ",".join(map(str, a.seeds)), "--numerics", "native", "--label", label(variant, beta),
                   "--out", a.out, "--", f"model.variant={variant}", f"stage1.beta={beta:g}", *a.set]
            print("$ " + " ".join(cmd), flush=True)
            if subprocess.call(cmd, cwd=ROOT):
                raise SystemExit(f"study: the runs of {label(variant, beta)} failed; see above")


def table(rows: list[dict], variants, betas) -> None:
    print(f"{'variant':>8} {'beta':>5} {'runs':>4} {'trivial at end':>14} {'IoU min':>7} {'IoU median':>10} "
          f"{'grad M late':>11}")
    for variant in variants:
        for beta in betas:
            group = [r for r in rows if r["label"] == label(variant, beta) and r.get("iou") is not None]
            if not group:
                continue
            ious = [r["iou"] for r in group]
            trivial = sum(bool(r.get("final_reason")) for r in group)
            print(f"{variant:>8} {beta:>5g} {len(group):>4} {trivial:>14} {min(ious):>7.3f} "
                  f"{statistics.median(ious):>10.3f} {statistics.median(late_mean(r, 2) for r in group):>11.2f}")


def gradient_figure(rows: list[dict], variants, betas, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(betas), figsize=(5 * len(betas), 3.6), sharey=True, squeeze=False)
    colours = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, beta in zip(axes[0], betas):
        for variant in variants:
            for i, r in enumerate(r for r in rows if r["label"] == label(variant, beta) and r.get("grad_curve")):
                steps, norms = zip(*[(g[0], g[2]) for g in r["grad_curve"]])
                ax.plot(steps, norms, color=colours[variant], alpha=0.8, label=variant if i == 0 else None)
        ax.set_title(f"beta = {beta:g}")
        ax.set_xlabel("stage-1 step")
        ax.set_yscale("log")
        ax.legend()
    axes[0][0].set_ylabel("2-norm of dL_G / d(M's weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def mask_figure(rows: list[dict], variants, betas, out: Path, path: Path, count: int = 12) -> None:
    """One row of masks per variant and beta, from the generator its first-seed run saved."""
    import torch
    from PIL import Image, ImageDraw

    from comgan.artifacts import from_bytes, load_generator
    from comgan.visualize import grid_to_uint8, image_grid
    from comgan.watchdog import watch_codes

    strips, names = [], []
    for variant in variants:
        for beta in betas:
            group = sorted((r for r in rows if r["label"] == label(variant, beta)), key=lambda r: r["seed"])
            if not group:
                continue
            saved = draw_picture(out, label(variant, beta), "native", group[0]["seed"]).with_suffix(".pt")
            if not saved.exists():
                continue
            generator, model = load_generator(from_bytes(saved.read_bytes()))
            with torch.no_grad():
                masks = generator(*watch_codes(model, count)[:3]).mask
            strips.append(masks)
            names.append(f"{variant}, beta {beta:g}, seed {group[0]['seed']}")
    if not strips:
        print("no saved generators: no mask figure")
        return
    grid = Image.fromarray(grid_to_uint8(image_grid(strips)))
    scale = 3
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    margin = 170
    picture = Image.new("RGB", (grid.width + margin, grid.height), "white")
    picture.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(picture)
    row_height = grid.height / len(strips)
    for i, name in enumerate(names):
        draw.text((4, int((i + 0.4) * row_height)), name, fill="black")
    picture.save(path)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-2"), help="e.g. 0-2 or 0,3")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    p.add_argument("--config", default="study", help="the preset the runs start from (smoke tests: tiny with --set)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "study.json"))
    p.add_argument("--figures", action="store_true", help="only the table and the figures, from --out")
    a = p.parse_args()
    if not a.figures:
        run(a)
    out = Path(a.out)
    rows = [r for r in load_rows(out) if "error" not in r]
    table(rows, a.variants, a.betas)
    mask_figure(rows, a.variants, a.betas, out, out.with_name(out.stem + "_masks.png"))
    gradient_figure(rows, a.variants, a.betas, out.with_name(out.stem + "_gradients.png"))


if __name__ == "__main__":
    main()
