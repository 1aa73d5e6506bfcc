r"""Ray Tune sweep over DS-ComGAN runs: every trial is a whole run (stage 1, handoff, stage 2,
evaluation) on its own Ray Train workers, named after its trial id under the sweep's storage.

    python jobs/tune.py beta=0,0.5,1,2 lam=loguniform:0.5:8 N=3,6,12 --search random --samples 12
    python jobs/tune.py --sweep my_sweep.yaml
    python jobs/tune.py --resume --name sweep-default           # continue an interrupted sweep
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py --config paper --workers 4 --set run.use_gpu=true \
        --set data.train=s3://bucket/cub/train --set data.eval=s3://bucket/cub/test --set data.synthetic=false \
        --storage s3://bucket/sweeps --name cub-beta beta=0,0.5,1,2

Search space (positional KEY=VALUES words): a comma list (grid search tries every value, random
search picks among them), or a range uniform:LOW:HIGH, loguniform:LOW:HIGH or randint:LOW:HIGH
(random and optuna search). beta, lam/lambda and N stand for stage1.beta, stage2.lam and
model.num_categories; any other dotted config key works too (stage1.steps=400,800). Values every
trial shares go through --set KEY=VALUE (or the --config preset / YAML file).

A sweep YAML holds the same things by name:

    config: default            # preset or config file
    set: {stage1.steps: 400}   # fixed overrides
    space: {beta: [0, 0.5, 1], lam: "loguniform:0.5:8", N: [3, 6, 12]}
    search: random             # grid, random or optuna (TPE; pip install optuna)
    samples: 12
    objective: auto            # iou (labelled data.eval), health (no labels) or fid (needs inception)

Objective: strict IoU of the trial's segmenter on data.eval when it has masks (maximised); without
labels, the watchdog's health score of the trial's generator (maximised; comgan/watchdog.py), or
FID against data.train with --objective fid --inception PATH (minimised). The watchdog stops a
trial whose stage-1 checks find a trivial solution --patience times in a row; --scheduler asha
also stops trials whose health lags at equal images seen.

Outputs under <storage>/<name>/: results.csv and results.json (every trial's parameters, objective,
stop reason, wall time, artifact URLs; also printed), best/ (the best trial's generator.pt,
segmenter.pt and trial.json), tensorboard/ (hparams: tensorboard --logdir <storage>/<name>/tensorboard),
runs/<trial id>/ (each trial's run) and Tune's own experiment state. A --name whose folder holds
a training run (or anything else that is not a sweep) is refused; a sweep in which no trial
produced a result (all failed or were stopped) exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli import (EXIT_INTERRUPTED, EXIT_STAGE_FAILED, EXIT_USER_ERROR, OneLineParser,  # noqa: E402
                         int_at_least, print_error)
from comgan.errors import UserError  # noqa: E402
from data_shards.io import redact  # noqa: E402

# The sweep (cluster.sweep and the config: torch) and Tune (cluster.tune: Ray) are imported where they
# are used, once the command line has parsed: --help and usage mistakes stay instant.

FILE_KEYS = ("config", "set", "space")  # a sweep YAML's keys besides the sweep's settings (sweep.OPTIONS)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="jobs/tune.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="Exit codes: 0 done (see the table for each trial's stop reason), 1 no trial produced "
                             "a result (every trial failed or was stopped), 2 a mistake in the command, sweep, "
                             "config, data or storage (a --name taken by a run included), 130 interrupted "
                             "(continue with --resume).")
    p.add_argument("space", nargs="*", metavar="KEY=VALUES",
                   help="what the sweep varies, e.g. beta=0,0.5,1 lam=loguniform:0.5:8 N=3,6,12")
    p.add_argument("--sweep", help="sweep YAML (config, set, space, search, samples, objective, ...); "
                                   "command-line options override it")
    p.add_argument("--config", help="preset name (default, tiny, paper, photos) or config YAML (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="a config override every trial shares (repeatable), e.g. --set stage1.steps=400")
    p.add_argument("--search", choices=["grid", "random", "optuna"], help="how trials are drawn (default: grid)")
    p.add_argument("--samples", type=int_at_least(1),
                   help="grid: repeats of the whole grid; random/optuna: number of trials (default: 1)")
    p.add_argument("--objective", choices=["auto", "iou", "health", "fid"],
                   help="auto: iou with labelled data.eval, else health (fid with --inception)")
    p.add_argument("--inception", help="TorchScript Inception (inception-2015-12-05.pt) path or URL, for fid")
    p.add_argument("--fid-samples", type=int_at_least(2), help="images per FID, generated and real (default: 2000)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], help="asha: stop trials whose health lags (default: fifo)")
    p.add_argument("--patience", type=int_at_least(0),
                   help="trivial watchdog checks in a row that stop a trial; 0: never (default: 2)")
    p.add_argument("--concurrent", type=int_at_least(1), help="trials at once (default: as many as the cluster holds)")
    p.add_argument("--workers", type=int_at_least(1), help="Ray Train workers per trial")
    p.add_argument("--storage", help="where sweeps are kept: a folder or URL such as s3://bucket/sweeps (default: runs)")
    p.add_argument("--name", help="sweep name (default: sweep-<config>); with --resume, the sweep to continue")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep --name as it was started: finished trials are kept, unfinished ones "
                        "resume from their checkpoints")
    p.add_argument("--dry-run", action="store_true", help="check the sweep, print its search space and exit")
    return p.parse_intermixed_args(argv)


def read_sweep_file(path: str) -> dict:
    import yaml

    from cluster.config import ConfigError
    from cluster.sweep import OPTIONS

    known = (*FILE_KEYS, *OPTIONS)
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file {path} not found")
    try:
        data = yaml.safe_load(open(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping ({', '.join(known)})")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if not isinstance(data.get("set", {}), dict):
        raise ConfigError(f"{path}: set: must be a mapping of config keys to values")
    return data


def build_sweep(args: argparse.Namespace):
    from cluster.config import load_config
    from cluster.search_space import parse_space, specs_from_yaml
    from cluster.sweep import OPTIONS, Sweep, check_sweep

    file = read_sweep_file(args.sweep) if args.sweep else {}
    fixed = [f"{k}={_text(v)}" for k, v in (file.get("set") or {}).items()] + list(args.fixed)
    if args.workers is not None:
        fixed.append(f"run.workers={args.workers}")
    config = args.config if args.config is not None else file.get("config", "default")  # "" is refused there
    base = load_config(config, fixed)
    specs = (specs_from_yaml(file["space"]) if "space" in file else []) + list(args.space)
    axes = parse_space(specs, base)

    def pick(name, default):
        """The command line's value, else the sweep file's, else the sweep's default."""
        value = getattr(args, name)
        value = value if value is not None else file.get(name, default)
        return int(value) if isinstance(default, int) else value  # the counts: ints, however YAML wrote them

    sweep = Sweep(name=args.name or f"sweep-{base.preset}", storage=args.storage or base.run.storage, base=base,
                  axes=axes, **{name: pick(name, default) for name, default in OPTIONS.items()})
    check_sweep(sweep)
    return sweep


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from cluster.config import ConfigError  # inside the try: Ctrl-C while torch loads is one line too
        from cluster.sweep import check_sweep_folder, load_sweep, no_result

        if args.resume:
            if args.space or args.sweep or args.fixed:
                raise ConfigError("--resume continues a sweep exactly as it was started: give only --name "
                                  "(and --storage), not a search space, --sweep or --set")
            sweep = load_sweep(args.storage or "runs", args.name or "sweep-default")
        else:
            sweep = build_sweep(args)
        if args.dry_run:
            check_sweep_folder(sweep)  # run_sweep checks it first too: a --name a run (or anything else) holds
            print(f"sweep {redact(sweep.root)}: {sweep.search} search, {sweep.samples} sample(s), objective "
                  f"{sweep.objective} ({sweep.mode}imised)")
            for axis in sweep.axes:
                print(f"  {axis.key}: {list(axis.values) if axis.values else f'{axis.kind}:{axis.low}:{axis.high}'}")
            return 0
        from cluster.tune import run_sweep  # imports ray: keep --help and mistakes fast

        rows = run_sweep(sweep, resume=args.resume)
    except UserError as e:
        print_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: continue with the same --name and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if any(r["stop"] == "not finished" for r in rows):
        print(f"some trials did not finish: continue with python jobs/tune.py --resume --name {sweep.name}"
              + (f" --storage {redact(sweep.storage)}" if sweep.storage != "runs" else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = no_result(sweep, rows)
    if failed:
        print_error(failed)
        return EXIT_STAGE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
