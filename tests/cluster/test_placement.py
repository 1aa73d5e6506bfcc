"""Worker placement (cluster/placement.py), without Ray: how many workers fit the nodes that are
up, how many CPUs each training worker asks for, and the one line for a request the nodes
cannot hold, refused where no node can ever be added and waited for where one may be."""
from __future__ import annotations

import math

import pytest

from cluster.config import ConfigError, load_config
from cluster.placement import (Node, check_placement, cpus_per_worker, resources_per_worker, shortfall,
                               workers_that_fit)
from cluster.search_space import parse_space
from cluster.sweep import Sweep, trials_at_once

LAPTOP = [Node(cpus=8, gpus=0)]
GPU_NODES = [Node(cpus=4, gpus=1), Node(cpus=4, gpus=1)]
HEAD_ONLY = [Node(cpus=0, gpus=0)]  # ray_cluster.yaml: a CPU-less head, GPU workers added by the autoscaler


def cfg(*overrides: str):
    return load_config("tiny", ["run.cpus_per_worker=0", *overrides])  # 0: auto, what these tests check


# ---------------------------------------------------------------------------------------------
# how many workers fit: the one count the pipeline, Tune and photo segmentation use

def test_workers_are_counted_node_by_node_not_from_the_total():
    """Two nodes of 3 CPUs hold two workers of 2, not 6 // 2 = 3: the spare CPU of each is no use."""
    assert workers_that_fit([Node(3, 0), Node(3, 0)], cpus=2, gpus=0) == 2
    assert workers_that_fit([Node(16, 0), Node(4, 0)], cpus=5, gpus=0) == 3
    assert workers_that_fit(LAPTOP, cpus=3, gpus=0) == 2


def test_the_scarcer_resource_of_a_node_decides():
    assert workers_that_fit([Node(8, 1)], cpus=2, gpus=1) == 1       # one GPU: one worker, 6 CPUs spare
    assert workers_that_fit([Node(2, 4)], cpus=1, gpus=1) == 2       # two CPUs for four GPUs
    assert workers_that_fit(GPU_NODES, cpus=2, gpus=0.5) == 4         # two workers share each GPU
    assert workers_that_fit([Node(0, 0), Node(8, 0)], cpus=1, gpus=1) == 0


def test_amounts_are_counted_in_rays_steps_not_floats():
    assert workers_that_fit([Node(1.0, 1.0)], cpus=0.1, gpus=0.1) == 10  # 1.0 // 0.1 is 9.0 in floats


def test_a_worker_that_asks_for_nothing_fits_anywhere_and_no_node_holds_nothing():
    assert workers_that_fit(HEAD_ONLY, cpus=0, gpus=0) == math.inf
    assert workers_that_fit([], cpus=1, gpus=0) == 0


# ---------------------------------------------------------------------------------------------
# the one line for workers the nodes do not hold (photo segmentation's words)

def test_requests_that_fit_are_let_through():
    assert shortfall(LAPTOP, 8, 1, 0, "--workers 8") is None
    assert shortfall(GPU_NODES, 2, 4, 1, "--workers 2") is None
    assert shortfall(GPU_NODES, 4, 2, 0.5, "--workers 4") is None  # two workers per GPU
    assert shortfall([Node(1.0, 1.0)], 10, 0.1, 0.1, "--workers 10") is None
    assert shortfall(HEAD_ONLY, 3, 0, 0, "--workers 3") is None  # asks for nothing: fits anywhere


def test_missing_resources_are_named_in_one_line():
    line = shortfall(LAPTOP, 2, 1, 1, "--workers 2")
    assert line == "--workers 2 of 1 CPU + 1 GPU each need 2 CPU + 2 GPU in all; the cluster has 8 CPU + 0 GPU " \
                   "on 1 node(s): 2 GPU missing"
    line = shortfall(LAPTOP, 4, 4, 0, "--workers 4")
    assert line == "--workers 4 of 4 CPU each need 16 CPU in all; the cluster has 8 CPU on 1 node(s): 8 CPU missing"
    assert "4 CPU and 4 GPU missing" in shortfall(HEAD_ONLY, 4, 1, 1, "--workers 4")


def test_a_worker_bigger_than_every_node_is_named_even_when_the_total_is_enough():
    line = shortfall(GPU_NODES, 1, 1, 2, "--workers 1")
    assert line == "--workers 1 of 1 CPU + 2 GPU each: the cluster has 8 CPU + 2 GPU on 2 node(s) " \
                   "(2 x 4 CPU + 1 GPU), but a worker must fit on one node and they hold 0 at once"
    assert "\n" not in line


# ---------------------------------------------------------------------------------------------
# the training workers: run.workers, run.cpus_per_worker, run.use_gpu

def test_auto_splits_a_laptop_between_its_workers():
    assert cpus_per_worker(cfg("run.workers=1"), LAPTOP) == 8
    assert cpus_per_worker(cfg("run.workers=2"), LAPTOP) == 4
    assert cpus_per_worker(cfg("run.workers=8", "stage1.batch_size=8", "stage2.batch_size=8"), LAPTOP) == 1


def test_auto_fits_a_mixed_cluster_not_its_total():
    """16 + 4 CPUs: 2 workers of 10 (the total split) would fit no node; 2 of 8 fit the big one."""
    mixed = [Node(cpus=16, gpus=0), Node(cpus=4, gpus=0)]
    cpus = cpus_per_worker(cfg("run.workers=2"), mixed)
    assert cpus == 8 and workers_that_fit(mixed, cpus, gpus=0) >= 2
    assert cpus_per_worker(cfg("run.workers=4"), mixed) == 4  # 4 + 1 workers of 4 fit; of 5 only 3


def test_auto_cpus_are_whole_cpus_as_the_pipeline_always_had_them():
    assert cpus_per_worker(cfg("run.workers=1"), [Node(cpus=8.0, gpus=0.0)]) == 8
    assert isinstance(cpus_per_worker(cfg("run.workers=1"), [Node(cpus=8.0, gpus=0.0)]), int)


def test_gpu_workers_get_the_cpus_of_their_gpu_node():
    nodes = [Node(cpus=2, gpus=0), Node(cpus=4, gpus=1), Node(cpus=4, gpus=1)]
    assert cpus_per_worker(cfg("run.workers=2", "run.use_gpu=true"), nodes) == 4


def test_auto_with_gpus_needs_gpu_nodes_that_are_up():
    with pytest.raises(ConfigError, match=r"run.cpus_per_worker=3"):
        cpus_per_worker(cfg("run.use_gpu=true"), HEAD_ONLY)
    assert cpus_per_worker(cfg("run.use_gpu=true", "run.cpus_per_worker=3"), HEAD_ONLY) == 3


def test_each_stage_worker_reserves_its_cpus_and_one_gpu_with_use_gpu():
    assert resources_per_worker(cfg("run.cpus_per_worker=3")) == {"CPU": 3}
    assert resources_per_worker(cfg("run.cpus_per_worker=3", "run.use_gpu=true")) == {"CPU": 3, "GPU": 1}


def test_a_request_that_can_never_fit_a_local_machine_is_refused():
    laptop = [Node(cpus=2, gpus=0)]
    assert check_placement(cfg("run.workers=2"), 1, laptop, fixed_cluster=True) is None  # fits
    with pytest.raises(ConfigError) as e:
        check_placement(cfg("run.workers=2"), 4, laptop, fixed_cluster=True)
    assert str(e.value) == ("2 worker(s) of 4 CPU each need 8 CPU in all; the cluster has 2 CPU on 1 node(s): "
                            "6 CPU missing; they can never be placed on this machine: lower run.workers or "
                            "run.cpus_per_worker")
    with pytest.raises(ConfigError, match="1 GPU"):
        check_placement(cfg("run.use_gpu=true"), 1, laptop, fixed_cluster=True)


def test_a_growing_cluster_is_waited_for_with_a_message():
    waiting = check_placement(cfg("run.workers=2", "run.use_gpu=true"), 3, HEAD_ONLY, fixed_cluster=False)
    assert waiting.startswith("waiting for the cluster to add nodes: 2 worker(s) of 3 CPU + 1 GPU each need "
                              "6 CPU + 2 GPU in all")
    assert waiting.endswith("without an autoscaler this waits forever (Ctrl-C, then lower run.workers or "
                            "run.cpus_per_worker)")


# ---------------------------------------------------------------------------------------------
# Tune: trials at once are the workers that fit, a trial's worth at a time

def sweep_of(*overrides: str, concurrent: int = 0) -> Sweep:
    base = cfg(*overrides)
    return Sweep(name="s", storage="runs", base=base, axes=parse_space(["beta=0,1"], base),
                 concurrent=concurrent)


def test_trials_at_once_on_one_machine_split_its_cpus_and_gpus():
    assert trials_at_once(sweep_of("run.workers=2", "run.cpus_per_worker=2"), LAPTOP) == 2
    assert trials_at_once(sweep_of("run.workers=1", "run.cpus_per_worker=2", "run.use_gpu=true"),
                          [Node(8, 2)]) == 2
    assert trials_at_once(sweep_of("run.workers=4", "run.cpus_per_worker=4"), LAPTOP) == 1  # none fits: one


def test_trials_at_once_count_workers_node_by_node():
    """Two 3-CPU nodes hold two workers of 2 CPUs: two one-worker trials at once. Their total,
    6 // 2, would start a third, whose worker waits for a node."""
    nodes = [Node(3, 0), Node(3, 0)]
    assert trials_at_once(sweep_of("run.workers=1", "run.cpus_per_worker=2"), nodes) == 2
    assert trials_at_once(sweep_of("run.workers=1", "run.cpus_per_worker=2", concurrent=5), nodes) == 5
