"""Ray start-up and worker placement, shared by the pipeline, evaluation, Tune and photo segmentation.

This module owns: starting or joining Ray (`init_ray`), the nodes that are up (`alive_nodes`),
how many workers of given CPUs and GPUs those nodes hold at once (`workers_that_fit`, the one
place that counts it), the one-line shortfall when they hold too few (`shortfall`), and the
training workers' resources from `run.*` (`cpus_per_worker`, `resources_per_worker`,
`check_placement`). Everything but `init_ray` and `alive_nodes` is plain arithmetic on `Node`s,
testable without Ray.

`ray` is imported inside those two functions only: photo segmentation and Tune import this module
at the top, and their command lines answer --help (and refuse a bad flag) without loading Ray.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass

from .config import Config, ConfigError, RunConfig

RESOURCE_UNITS = 10000   # Ray grants CPUs and GPUs in steps of 1/10000
GPUS_PER_TRAINING_WORKER = 1  # run.use_gpu: each training worker drives one GPU


# ---------------------------------------------------------------------------------------------
# Ray start-up

def init_ray() -> bool:
    """Connect to RAY_ADDRESS's cluster, or start a local one; True when the cluster is local
    (then its nodes are all there will ever be: no autoscaler can add any)."""
    import ray

    address = os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return address is None
    if address is None:
        quiet_local_cluster()
    # A new local cluster keeps its dashboard: Ray Train's placement-group cleaner polls the
    # state API it serves (without it: a warning every few seconds). It listens on 127.0.0.1.
    ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    return address is None


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_local_cluster() -> None:
    """Drop two lines a laptop run printed that mean nothing to its user, and nothing else:
    - Ray's notice that token authentication is on (it is, and it should be; failures still show);
    - per stage, a core_worker error about Ray Train's PreemptionWatcher actor, which watches for
      cloud spot-instance preemption: a local cluster has none, so it is not started (the env var
      reaches the Train controller, which the cluster started here inherits it from)."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DropNotice("Token authentication is enabled"))
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


# ---------------------------------------------------------------------------------------------
# The nodes, and how many workers they hold

@dataclass(frozen=True)
class Node:
    cpus: float  # as Ray reports them ("Resources" of ray.nodes())
    gpus: float


def alive_nodes() -> list[Node]:
    import ray

    return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def units(amount: float) -> int:
    """`amount` in Ray's steps: counted this way, 1.0 CPU holds ten workers of 0.1, not 1.0 // 0.1 = 9."""
    return round(amount * RESOURCE_UNITS)


def workers_that_fit(nodes: list[Node], cpus: float, gpus: float) -> int | float:
    """How many workers of `cpus` CPUs and `gpus` GPUs each `nodes` hold at once: a worker lies on
    one node, so what is left over on several nodes does not add up to one. math.inf for a worker
    that asks for nothing (it fits anywhere, any number of times)."""
    return sum(_fit_on_one_node(node, cpus, gpus) for node in nodes)


def _fit_on_one_node(node: Node, cpus: float, gpus: float) -> int | float:
    limits = [units(have) // units(need) for have, need in ((node.cpus, cpus), (node.gpus, gpus)) if units(need)]
    return min(limits, default=math.inf)


def amounts(cpus: float, gpus: float, gpus_always: bool = False) -> str:
    """'4 CPU', '4 CPU + 1 GPU'; with `gpus_always` also '8 CPU + 0 GPU' (a GPU request's shortfall)."""
    return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus or gpus_always else "")


def totals(nodes: list[Node]) -> tuple[float, float]:
    """(CPUs, GPUs) of all `nodes` together."""
    return sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)


def shortfall(nodes: list[Node], workers: int, cpus: float, gpus: float, request: str) -> str | None:
    """None when `nodes` hold all `workers` workers of `cpus` CPUs and `gpus` GPUs at once, else
    one line naming what is missing: resources in all, or a node big enough for one worker.
    `request` names the workers as the caller's user asked for them ('--workers 2')."""
    fit = workers_that_fit(nodes, cpus, gpus)
    if fit >= workers:
        return None
    request = f"{request} of {amounts(cpus, gpus)} each"
    total_cpus, total_gpus = totals(nodes)
    have = f"{amounts(total_cpus, total_gpus, gpus_always=bool(gpus))} on {len(nodes)} node(s)"
    missing = [f"{workers * need - total:g} {key}" for key, need, total in (("CPU", cpus, total_cpus),
                                                                           ("GPU", gpus, total_gpus))
               if units(workers * need) > units(total)]
    if missing:
        return (f"{request} need {amounts(workers * cpus, workers * gpus)} in all; the cluster has {have}: "
                f"{' and '.join(missing)} missing")
    shapes = Counter((n.cpus, n.gpus) for n in nodes)
    listed = ", ".join(f"{n} x {amounts(c, g, gpus_always=bool(gpus))}" for (c, g), n in shapes.most_common(4))
    return (f"{request}: the cluster has {have} ({listed}{', ...' if len(shapes) > 4 else ''}), but a worker "
            f"must fit on one node and they hold {fit} at once")


# ---------------------------------------------------------------------------------------------
# The training workers (run.workers, run.cpus_per_worker, run.use_gpu)

def gpus_per_worker(run: RunConfig) -> int:
    return GPUS_PER_TRAINING_WORKER if run.use_gpu else 0


def resources_per_worker(cfg: Config) -> dict:
    """What Ray Train reserves for each worker of a stage (run.cpus_per_worker resolved already)."""
    gpus = gpus_per_worker(cfg.run)
    return {"CPU": cfg.run.cpus_per_worker, **({"GPU": gpus} if gpus else {})}


def cpus_per_worker(cfg: Config, nodes: list[Node]) -> int:
    """The CPUs Ray reserves per worker: run.cpus_per_worker, or (0, auto) the most that still
    places every worker on the nodes that are up, e.g. all of a laptop's CPUs split evenly."""
    r = cfg.run
    if r.cpus_per_worker:
        return r.cpus_per_worker
    if r.use_gpu and not any(n.gpus for n in nodes):
        raise ConfigError("run.cpus_per_worker=0 (auto) needs GPU nodes that are already up; with GPU nodes "
                          "that an autoscaler adds later, name it, e.g. run.cpus_per_worker=3 on 4-vCPU GPU nodes")
    cpus = max([1] + [int(n.cpus) for n in nodes])  # whole CPUs: they are the worker's torch threads
    while cpus > 1 and workers_that_fit(nodes, cpus, gpus_per_worker(r)) < r.workers:
        cpus -= 1
    return cpus


def check_placement(cfg: Config, cpus: int, nodes: list[Node], fixed_cluster: bool) -> str | None:
    """Refuse (ConfigError) a request that can never be placed: Ray would wait for it forever. On a
    cluster that an autoscaler may grow, return the line saying what the stage waits for; None
    when the nodes up now hold every worker."""
    r = cfg.run
    short = shortfall(nodes, r.workers, cpus, gpus_per_worker(r), f"{r.workers} worker(s)")
    if short is None:
        return None
    if fixed_cluster:
        raise ConfigError(f"{short}; they can never be placed on this machine: lower run.workers or "
                          f"run.cpus_per_worker")
    return (f"waiting for the cluster to add nodes: {short}; without an autoscaler this waits forever "
            f"(Ctrl-C, then lower run.workers or run.cpus_per_worker)")
