"""Controllable generation from a stage-1 generator (the paper's Figs. 5-7): three grids that each
vary one code and hold the other two fixed.

    python jobs/generate.py --generator runs/default/stage1/generator.pt --out runs/default/controls
    python jobs/generate.py --generator s3://bucket/runs/cub-paper/stage1/generator.pt \\
        --out s3://bucket/runs/cub-paper/controls --categories 3,17,42,101 --groups 3 --seed 1 \\
        --tensorboard s3://bucket/runs/cub-paper/tensorboard

Writes to --out (a folder or URL prefix):
  vary_f.png  one column per foreground category f (the first --count, or --categories); b, z fixed
  vary_b.png  one column per background category b; f, z fixed
  vary_z.png  --count noise vectors z; f, b fixed
Each grid has --groups fixed settings, four rows each, top to bottom: composite, foreground (the
unmasked x_f), background (x_b), mask. The three grids share their fixed settings: group g starts
from the same (z, f, b) in all of them. Images smaller than 64 px are enlarged (nearest neighbour,
--scale). The mask depends on z only and the background on (z, b), so in vary_f the mask and
background rows repeat across columns by construction; what changes along the other rows is what
the varied code controls.

The generator runs in eval mode without gradients, --batch images at a time. Codes come from a
generator seeded with --seed: the same command gives the same PNGs bit for bit (on one device).
Existing PNGs are replaced only with --overwrite.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cluster.cli import EXIT_USER_ERROR, OneLineParser, int_at_least, print_error  # noqa: E402
from cluster.storage import read_artifact  # noqa: E402
from comgan import inference  # noqa: E402
from comgan.artifacts import from_bytes, load_generator  # noqa: E402
from comgan.controls import (VARIED, control_codes, control_grid, default_categories, default_scale,  # noqa: E402
                             generate, grid_size)
from comgan.errors import UserError  # noqa: E402
from comgan.visualize import grid_to_uint8  # noqa: E402
from data_shards.images import MAX_PIXELS  # noqa: E402
from data_shards.io import join_url, redact, url_exists, write_bytes  # noqa: E402

MAX_SCALE = 64  # a 16 px image 1024 px wide: more shows nothing new, and the grids grow with its square


def _categories(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one category")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/generate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Exit codes: 0 done, 2 a mistake in the command, a missing or unreadable generator, "
                      "existing output without --overwrite, or storage that cannot be used.")
    p.add_argument("--generator", required=True, metavar="URI",
                   help="the stage-1 artifact: a path or URL (s3://...) to a generator.pt")
    p.add_argument("--out", required=True, metavar="URL",
                   help="folder or URL prefix for vary_f.png, vary_b.png and vary_z.png")
    p.add_argument("--seed", type=int, default=0, help="seed of every code drawn (default: %(default)s)")
    p.add_argument("--count", type=int_at_least(1), default=8, metavar="N",
                   help="columns: noise vectors in vary_z, and in vary_f/vary_b the first N categories "
                        "(fewer if the model has fewer; default: %(default)s)")
    p.add_argument("--categories", type=_categories, metavar="I,J,...",
                   help="the categories shown as columns of vary_f and vary_b, instead of the first --count")
    p.add_argument("--groups", type=int_at_least(1), default=2, metavar="G",
                   help="fixed settings per grid, each a group of four rows (default: %(default)s)")
    p.add_argument("--scale", type=int_at_least(1, MAX_SCALE), metavar="K",
                   help=f"enlarge images K times, nearest neighbour, K <= {MAX_SCALE} (default: enough for 64 px, "
                        f"1 from 64 px up); each grid may have at most {MAX_PIXELS / 1e6:g} MP")
    p.add_argument("--batch", type=int_at_least(1), default=32, metavar="B",
                   help="images per generator call; memory grows with it (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="torch device to run the generator on: auto (cuda if available), cpu, cuda, cuda:1, ... "
                        "(default: %(default)s)")
    p.add_argument("--tensorboard", metavar="URL",
                   help="also log the grids as TensorBoard images (tags generate/vary_f, ..., at the artifact's "
                        "training step) to this folder or URL, e.g. the run's tensorboard/")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs already at --out")
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    try:
        return inference.resolve_device(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def load(url: str, device: torch.device):
    obj = from_bytes(read_artifact(url, "generator"), what=url)
    generator, model = load_generator(obj, what=url)
    step = obj.get("step")
    return generator.to(device), model, step if isinstance(step, int) else 0


def png_bytes(grid: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(grid_to_uint8(grid)).save(buf, format="PNG")
    return buf.getvalue()


def check_grid_size(resolution: int, groups: int, columns: int, scale: int) -> None:
    """Refuse, before generating, grids larger than the largest image the project opens: they are
    held in memory several times over (a few GB at that size), and no reader would open them."""
    height, width = grid_size(resolution, groups, columns, scale)
    if height * width > MAX_PIXELS:
        raise UserError(f"the grids would be {width}x{height} pixels ({height * width / 1e6:,.0f} MP), more than "
                        f"the {MAX_PIXELS / 1e6:g} MP an image may have: lower --scale, --count or --groups")


def run(args: argparse.Namespace) -> list[str]:
    targets = {vary: join_url(args.out, f"vary_{vary}.png") for vary in VARIED}
    if not args.overwrite:
        existing = [url for url in targets.values() if url_exists(url)]
        if existing:
            raise UserError(f"{existing[0]} already exists; use --overwrite to replace it")
    device = resolve_device(args.device)
    generator, model, step = load(args.generator, device)
    categories = args.categories or default_categories(model, args.count)
    bad = [c for c in categories if not 0 <= c < model.num_categories]
    if bad:
        raise UserError(f"--categories: {bad[0]} is not a category of this generator "
                        f"(model.num_categories is {model.num_categories}: 0..{model.num_categories - 1})")
    scale = args.scale or default_scale(model.resolution)
    check_grid_size(model.resolution, args.groups, max(args.count, len(categories)), scale)
    grids = {}
    for vary in VARIED:
        z, f, b = control_codes(model, vary, args.groups, args.count, args.seed, categories)
        grids[vary] = control_grid(generate(generator, z, f, b, chunk=args.batch), args.groups, scale=scale)
    lines = []
    for vary, url in targets.items():
        write_bytes(url, png_bytes(grids[vary]))
        _, h, w = grids[vary].shape
        lines.append(f"wrote {url} ({w}x{h} px)")
    if args.tensorboard:
        from cluster.tensorboard import RunWriter  # tensorboardX: only when asked for

        writer = RunWriter(args.tensorboard)
        try:
            for vary, grid in grids.items():
                writer.image(f"generate/vary_{vary}", grid.numpy(), step)
        finally:
            writer.close()
        lines.append(f"logged generate/vary_f, generate/vary_b, generate/vary_z to {args.tensorboard}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        lines = run(args)
    except (UserError, OSError) as e:  # OSError: storage the user has to fix
        print_error(e)
        return EXIT_USER_ERROR
    for line in lines:
        print(redact(line))  # URLs without their credentials
    return 0


if __name__ == "__main__":
    sys.exit(main())
