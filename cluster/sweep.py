"""A Tune sweep without Ray: what it is (its settings, its search space, its folder), each trial's
config, and its results (the rows, results.csv / results.json, best/, the TensorBoard hparams and
the printed table). cluster/tune.py runs it on Ray Tune; jobs/tune.py builds and checks it.

Layout of a sweep, under any storage URL (local folder or s3://):

    <storage>/<sweep>/                 Tune's experiment state and one folder per trial (Tune's own)
    <storage>/<sweep>/sweep.json       the sweep as started: --resume continues exactly that sweep
    <storage>/<sweep>/runs/<trial id>/ each trial's run, the usual run layout (config.yaml, stage1/,
                                       stage2/, tensorboard/, eval.json, summary.json)
    <storage>/<sweep>/results.csv      one row per trial: parameters, objective, stop reason, wall
    <storage>/<sweep>/results.json     time and artifact URLs (also printed)
    <storage>/<sweep>/best/            the best trial's generator.pt and segmenter.pt, and trial.json
    <storage>/<sweep>/tensorboard/     TensorBoard hparams: one entry per trial, to compare them

A trial's objective, reported once at its end:

    iou      strict IoU of the trial's segmenter on data.eval (labelled shards), maximised
    health   the watchdog's health score of the final generator (comgan/watchdog.py), maximised;
             the objective without labels
    fid      FID of the final generator against data.train (needs --inception), minimised
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, fields

from comgan.config import ConfigError, set_key, trained_stages
from data_shards.io import list_tree, read_bytes, redact, redacted, remove_tree, url_exists, write_bytes

from . import placement
from .config import Config, config_from_dict, validate
from .search_space import Axis
from .storage import RunLayout
from .tensorboard import RunWriter

OBJECTIVES = {"iou": "max", "health": "max", "fid": "min"}
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
PROGRESS = "progress/images"
SETTINGS = "sweep.json"      # the sweep as started: --resume continues exactly that sweep
# How a sweep's folder is told from a run's: a sweep writes sweep.json before anything else, and
# Tune its experiment state (tuner.pkl); a run writes these at <storage>/<name>/ (storage.RunLayout)
SWEEP_FILES = (SETTINGS, "tuner.pkl")
RUN_FILES = ("config.yaml", "summary.json", "eval.json", "stage1", "stage2", "tensorboard")


@dataclass
class Sweep:
    """Everything a sweep is: where it lives, its base config, what it varies and how it judges."""
    name: str
    storage: str
    base: Config
    axes: list[Axis]
    search: str = "grid"        # grid: every combination (x samples); random / optuna: `samples` trials
    samples: int = 1
    objective: str = "auto"     # iou with labelled data.eval, else health (fid with an inception file)
    inception: str = ""         # TorchScript Inception for the fid objective (path or URL)
    fid_samples: int = 2000     # generated images (and at most this many real ones) per FID
    scheduler: str = "fifo"     # fifo, or asha on watch/health over progress/images
    patience: int = 2           # consecutive trivial watchdog checks that stop a trial; 0: never
    concurrent: int = 0         # trials at once; 0: as many as the cluster holds

    @property
    def root(self) -> str:
        return self.folder.root

    def path(self, *parts: str) -> str:
        return self.folder.path(*parts)

    @property
    def folder(self) -> RunLayout:
        """<storage>/<name>: a sweep's folder is laid out under the same URL rules as a run's."""
        return RunLayout(self.storage, self.name)

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def varied_keys(self) -> list[str]:
        """The config keys the sweep varies, in the order its axes were given."""
        return [axis.key for axis in self.axes]


# The settings a sweep YAML and the command line give by name, with their defaults: every field of
# a Sweep but the four each sweep is given (sweep.json records them by the same names)
OPTIONS = {field.name: field.default for field in fields(Sweep) if field.default is not MISSING}


def sweep_settings(sweep: Sweep) -> dict:
    """The sweep as JSON (sweep.json), the base config included."""
    return {"name": sweep.name, "storage": sweep.storage, "base": sweep.base.to_dict(), "preset": sweep.base.preset,
            "axes": [asdict(axis) for axis in sweep.axes], **{name: getattr(sweep, name) for name in OPTIONS}}


def load_sweep(storage: str, name: str) -> Sweep:
    """The sweep started under <storage>/<name>, as its sweep.json recorded it."""
    folder = RunLayout(storage, name)
    url = folder.path(SETTINGS)
    if not url_exists(url):
        raise ConfigError(f"no sweep to resume at {folder.root} ({SETTINGS} is missing)")
    data = json.loads(read_bytes(url))
    base = config_from_dict({**data["base"], "preset": data.get("preset", "default")})
    axes = [Axis(**{**a, "values": tuple(a["values"])}) for a in data["axes"]]
    return Sweep(name=data["name"], storage=storage, base=base, axes=axes, **{name: data[name] for name in OPTIONS})


def check_sweep(sweep: Sweep) -> None:
    """The sweep's own settings; the axes were checked when parsed (cluster/search_space.py)."""
    if sweep.search not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {sweep.search!r}")
    if sweep.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {sweep.scheduler!r}")
    if sweep.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {sweep.samples}")
    if sweep.patience < 0:
        raise ConfigError(f"--patience must be >= 0 (0: the watchdog never stops a trial), got {sweep.patience}")
    if sweep.search == "grid":
        for axis in sweep.axes:
            axis.check_grid()  # a range on a grid is one line, here, not when Tune starts
    if sweep.objective == "auto":
        sweep.objective = "iou" if sweep.base.data.eval else ("fid" if sweep.inception else "health")
    if sweep.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be auto or one of {', '.join(OBJECTIVES)}, got {sweep.objective!r}")
    if sweep.objective == "iou" and not sweep.base.data.eval:
        raise ConfigError("the iou objective needs labelled shards in data.eval; without labels use "
                          "--objective health (or fid with --inception)")
    if sweep.objective == "fid" and sweep.base.model.variant == "redo":
        raise ConfigError("the fid objective scores a generator's images, and ReDO (model.variant=redo) has no "
                          "generator: use --objective iou (with data.eval) or health")
    if sweep.objective == "fid" and not sweep.inception:
        raise ConfigError("the fid objective needs --inception PATH_OR_URL (StyleGAN2-ADA's inception-2015-12-05.pt)")
    if sweep.search == "optuna":
        try:
            import optuna  # noqa: F401  (only whether it is installed: Tune's OptunaSearch imports it)
        except ImportError:
            raise ConfigError("--search optuna needs Optuna: pip install 'ds-comgan[tune]' (or pip install optuna)") from None


def check_sweep_folder(sweep: Sweep) -> None:
    """Refuse a sweep whose folder, <storage>/<name>, holds anything but a sweep: a training run of
    that name (the sweep would delete its tensorboard/ and write over its files) or other files.
    A missing or empty folder, or one a sweep has started in, is fine."""
    if any(url_exists(sweep.path(name)) for name in SWEEP_FILES):
        return
    run = [name for name in RUN_FILES if url_exists(sweep.path(name))]
    if run:
        raise ConfigError(f"--name {sweep.name}: {sweep.root} is a training run ({', '.join(run)}), not a sweep; "
                          "a sweep there would delete its tensorboard/ and write over its files: give the sweep "
                          "another --name (or --storage)")
    other = list_tree(sweep.root)
    if other:
        raise ConfigError(f"--name {sweep.name}: {sweep.root} holds {len(other)} file(s) that are not a sweep's, "
                          f"e.g. {other[0]}: give the sweep another --name (or --storage)")


# ---------------------------------------------------------------------------------------------
# Trials


def trial_config(base: dict, params: dict, trial_id: str, runs_url: str) -> Config:
    """The base config with this trial's values, run as <sweep>/runs/<trial id>."""
    cfg = config_from_dict(copy.deepcopy(base))
    for key, value in params.items():
        set_key(cfg, key, value if isinstance(value, str) else json.dumps(value))
    cfg.run.name, cfg.run.storage = trial_id, runs_url
    # A sweep measures how often a recipe goes trivial, and its watchdog stopper ends such trials:
    # a trial never restarts stage 1 on another seed.
    cfg.run.collapse_restarts = 0
    validate(cfg)
    return cfg


def planned_images(cfg: Config) -> int:
    """The training images a whole run of `cfg` sees (both stages; ReDO's one): where
    progress/images ends."""
    return sum(getattr(cfg, s).steps * getattr(cfg, s).batch_size for s in trained_stages(cfg))


def planned_trials(sweep: Sweep) -> int | None:
    """How many trials the sweep runs (grid: every combination, times samples)."""
    if sweep.search != "grid":
        return sweep.samples
    return sweep.samples * math.prod(len(axis.values) for axis in sweep.axes)


def trials_at_once(sweep: Sweep, nodes: list[placement.Node]) -> int:
    """Trials whose workers all fit `nodes` at the same time (at least 1). A trial's workers may
    lie on several nodes: it is the workers that must each fit on one."""
    if sweep.concurrent:
        return sweep.concurrent
    r = sweep.base.run
    workers = placement.workers_that_fit(nodes, max(r.cpus_per_worker, 1), placement.gpus_per_worker(r))
    return max(1, workers // r.workers)


# ---------------------------------------------------------------------------------------------
# Results


def stop_reason(sweep: Sweep, metrics: dict, error: str | None) -> str:
    """How a trial ended, from its last metrics; `error` is the first line of its error, if any."""
    if error is not None:
        return f"error: {error[:200]}"
    if "objective" in metrics:
        return "finished"
    if sweep.patience and metrics.get("watch/trivial_checks", 0) >= sweep.patience:
        reason = metrics.get("watch/now") or metrics.get("watch/reason") or "trivial solution"
        return f"watchdog at step {metrics.get('step')}: {reason}"
    if sweep.scheduler == "asha":
        return f"ASHA at {metrics.get(PROGRESS, 0)} images"
    return "not finished"


def trial_row(sweep: Sweep, trial_id: str, params: dict, metrics: dict, error: str | None) -> dict:
    """A trial's row of the results: its axes' values `params`, its last `metrics`, and where its
    run and artifacts are."""
    run = RunLayout(sweep.path("runs"), trial_id)
    row = {"trial": trial_id, **params}
    objective = metrics.get("objective")
    row.update({
        "objective": None if objective is None or (isinstance(objective, float) and math.isnan(objective))
        else float(objective),
        "stop": stop_reason(sweep, metrics, error),
        "images": metrics.get(PROGRESS),
        "planned_images": planned_images(trial_config(sweep.base.to_dict(), params, trial_id, sweep.path("runs"))),
        "wall_s": round(float(metrics.get("time_total_s", 0.0)), 1),
        "health": metrics.get("watch/health"),
        "run": run.root,
        "generator": run.generator if url_exists(run.generator) else "",
        "segmenter": run.segmenter if url_exists(run.segmenter) else "",
    })
    return row


def _ended(stop: str) -> str:
    if stop.startswith("error"):
        return "failed"
    if stop.startswith("watchdog"):
        return "stopped by the watchdog"
    if stop.startswith("ASHA"):
        return "stopped by ASHA"
    return "finished without an objective" if stop == "finished" else stop


def no_result(sweep: Sweep, rows: list[dict]) -> str | None:
    """None when a trial produced a result (an objective), else the line saying none did: how the
    trials ended, the first failure's reason, and where every trial's is."""
    if any(row["objective"] is not None for row in rows):
        return None
    if not rows:
        return f"no trial produced a result: the sweep {sweep.root} ran no trial"
    ended = Counter(_ended(row["stop"]) for row in rows)
    line = f"no trial produced a result: {', '.join(f'{n} {how}' for how, n in ended.most_common())}"
    failed = next((row for row in sorted(rows, key=lambda r: r["trial"]) if row["stop"].startswith("error")), None)
    if failed:
        line += f" (trial {failed['trial']}: {failed['stop'][len('error: '):]})"
    return f"{line}; every trial's stop reason: {sweep.path('results.csv')}"


def best_row(sweep: Sweep, rows: list[dict]) -> dict | None:
    scored = [r for r in rows if r["objective"] is not None]
    if not scored:
        return None
    pick = max if sweep.mode == "max" else min
    return pick(scored, key=lambda r: r["objective"])


def write_results(sweep: Sweep, rows: list[dict]) -> None:
    """results.csv / results.json, best/ and the TensorBoard hparams; printed as a table."""
    rows = sorted(rows, key=lambda r: r["trial"])
    best = best_row(sweep, rows)
    document = {"sweep": sweep.root, "objective": sweep.objective, "mode": sweep.mode, "search": sweep.search,
                "space": [asdict(axis) for axis in sweep.axes], "best": best, "trials": rows}
    # Reports, read by people only: URLs without their credentials (sweep.json keeps the real
    # ones, --resume reads its base config back).
    write_bytes(sweep.path("results.json"), (json.dumps(redacted(document), indent=2, default=str) + "\n").encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(redacted(rows))
    write_bytes(sweep.path("results.csv"), text.getvalue().encode())
    if best:
        for name in ("generator", "segmenter"):
            if best[name]:
                write_bytes(sweep.path("best", f"{name}.pt"), read_bytes(best[name]))
        write_bytes(sweep.path("best", "trial.json"),
                    (json.dumps(redacted(best), indent=2, default=str) + "\n").encode())
    write_hparams(sweep, rows)
    print(redact(format_table(sweep, rows, best)), flush=True)  # it names the sweep's URLs


def write_hparams(sweep: Sweep, rows: list[dict]) -> None:
    """One TensorBoard hparams entry per trial (rewritten whole: a resumed sweep has no duplicates)."""
    url = sweep.path("tensorboard")
    remove_tree(url)
    writer = RunWriter(url)
    for row in rows:
        params = {key: row[key] for key in sweep.varied_keys}
        metrics = {"wall_seconds": row["wall_s"]}
        if row["objective"] is not None:  # a stopped trial has none (NaN would be dropped with a warning)
            metrics["objective"] = row["objective"]
        writer.hparams(params, metrics, row["trial"])
    writer.close()


def format_table(sweep: Sweep, rows: list[dict], best: dict | None) -> str:
    # Each column once: its heading, the row's field it shows, and how a value is written
    columns = [("trial", "trial", str), *((key, key, cell) for key in sweep.varied_keys),
               (sweep.objective, "objective", cell), ("wall s", "wall_s", "{:.0f}".format), ("stop", "stop", str)]
    lines = [[heading for heading, _, _ in columns],
             *([write(row[field]) for _, field, write in columns] for row in rows)]
    widths = [max(len(text) for text in column) for column in zip(*lines)]
    out = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines]
    stopped = [r for r in rows if r["stop"].startswith("watchdog")]
    if stopped:
        saved = sum(r["planned_images"] - (r["images"] or 0) for r in stopped)
        share = saved / sum(r["planned_images"] for r in stopped)
        out.append(f"the watchdog stopped {len(stopped)} trial(s), sparing {saved} of their training images "
                   f"({share:.0%})")
    if best:
        out.append(f"best: {best['trial']} ({sweep.objective} {best['objective']:.4f}, {sweep.mode}imised); "
                   f"its artifacts are copied to {sweep.path('best')}")
    else:
        out.append("no trial finished with an objective")
    out.append(f"table: {sweep.path('results.csv')}, {sweep.path('results.json')}; "
               f"compare trials: tensorboard --logdir {sweep.path('tensorboard')}")
    return "\n".join(out)


def cell(value) -> str:
    """A value as the printed table and the progress lines write it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
