"""How many CPUs each worker asks Ray for, and refusing requests no node can ever hold."""
from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config
from cluster.pipeline import Node, check_placement, worker_resources, workers_that_fit


def cfg(*overrides: str):
    return load_config("tiny", list(overrides))


def test_auto_splits_a_laptop_between_its_workers():
    laptop = [Node(cpus=8, gpus=0)]
    assert worker_resources(cfg("run.workers=1"), laptop) == 8
    assert worker_resources(cfg("run.workers=2"), laptop) == 4
    assert worker_resources(cfg("run.workers=8", "stage1.batch_size=8", "stage2.batch_size=8"), laptop) == 1


def test_auto_fits_a_mixed_cluster_not_its_total():
    """16 + 4 CPUs: 2 workers of 10 (the total split) would fit no node; 2 of 8 fit the big one."""
    mixed = [Node(cpus=16, gpus=0), Node(cpus=4, gpus=0)]
    cpus = worker_resources(cfg("run.workers=2"), mixed)
    assert cpus == 8 and workers_that_fit(mixed, cpus, use_gpu=False) >= 2
    assert worker_resources(cfg("run.workers=4"), mixed) == 4  # 4 + 1 workers of 4 fit; of 5 only 3


def test_gpu_workers_get_the_cpus_of_their_gpu_node():
    nodes = [Node(cpus=2, gpus=0), Node(cpus=4, gpus=1), Node(cpus=4, gpus=1)]
    assert worker_resources(cfg("run.workers=2", "run.use_gpu=true"), nodes) == 4


def test_auto_with_gpus_needs_gpu_nodes_that_are_up():
    head_only = [Node(cpus=0, gpus=0)]  # ray_cluster.yaml: a CPU-less head, GPU workers autoscale
    with pytest.raises(ConfigError, match=r"run.cpus_per_worker=3"):
        worker_resources(cfg("run.use_gpu=true"), head_only)
    assert worker_resources(cfg("run.use_gpu=true", "run.cpus_per_worker=3"), head_only) == 3


def test_a_request_that_can_never_fit_a_local_machine_is_refused():
    laptop = [Node(cpus=2, gpus=0)]
    check_placement(cfg("run.workers=2"), 1, laptop, fixed_cluster=True)  # fits
    with pytest.raises(ConfigError) as e:
        check_placement(cfg("run.workers=2"), 4, laptop, fixed_cluster=True)
    assert "2 worker(s) of 4 CPU can never be placed on this machine (2 CPU)" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="1 GPU"):
        check_placement(cfg("run.use_gpu=true"), 1, laptop, fixed_cluster=True)


def test_a_growing_cluster_is_waited_for_with_a_message(capsys):
    check_placement(cfg("run.workers=2", "run.use_gpu=true"), 3, [Node(cpus=0, gpus=0)], fixed_cluster=False)
    assert "waiting for the cluster to add nodes: 2 worker(s) of 3 CPU + 1 GPU" in capsys.readouterr().out
