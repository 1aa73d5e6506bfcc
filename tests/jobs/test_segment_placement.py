"""jobs/segment_images.py --workers N never waits without end: a request the cluster's nodes can
never hold is refused up front in one line naming what is missing, amounts Ray can never grant
are refused before anything starts, and the wait for workers to start is bounded
(--placement-timeout). How many workers fit and the line naming what is missing are
cluster/placement.py's (tests/cluster/test_placement.py); here the job's own checks, and the
wiring with a stand-in for Ray's API: no Ray cluster here."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.placement import Node
from cluster.photo_segmenter import Settings
from cluster.segment_images import PLACEMENT_TIMEOUT, _on_ray, check_request, not_started_error, segment_images
from cluster.segment_plan import Photo, SegmentError
from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jobs_segment_images_cli", ROOT / "jobs" / "segment_images.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

# Each node's resources as ray.nodes() reports them ("Resources"); nodes() reads them as cluster.placement does.
LAPTOP = [{"CPU": 8.0, "memory": 1e10, "node:127.0.0.1": 1.0}]
GPU_NODES = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
HEAD_ONLY = [{"CPU": 0.0}]  # ray_cluster.yaml: a CPU-less head, GPU workers added by the autoscaler


def nodes(resources: list[dict]) -> list[Node]:
    return [Node(r.get("CPU", 0), r.get("GPU", 0)) for r in resources]


@pytest.mark.parametrize("cpus, gpus, message", [
    (1, 1.5, "--gpus-per-worker 1.5: a worker gets a fraction of one GPU or whole GPUs"),
    (0.00001, 0, "--cpus-per-worker 1e-05: Ray counts resources in steps of 0.0001"),
    (float("nan"), 0, "--cpus-per-worker must be a number >= 0, got nan"),
    (1, float("inf"), "--gpus-per-worker must be a number >= 0, got inf"),
])
def test_amounts_ray_can_never_grant_are_refused(cpus, gpus, message):
    with pytest.raises(SegmentError, match=message.replace("+", r"\+").replace(".", r"\.")):
        check_request(cpus, gpus)
    check_request(1, 2)  # whole GPUs
    check_request(0.5, 0.25)


def test_they_are_refused_before_any_photo_is_listed(tmp_path):
    with pytest.raises(SegmentError, match="never a mix"):
        segment_images(str(tmp_path / "missing-photos"), str(tmp_path / "none.pt"), str(tmp_path / "out"),
                       workers=2, gpus_per_worker=1.5, progress=False)
    with pytest.raises(SegmentError, match="--placement-timeout must be a number of seconds > 0"):
        segment_images(str(tmp_path / "missing-photos"), str(tmp_path / "none.pt"), str(tmp_path / "out"),
                       workers=2, placement_timeout=0, progress=False)


def test_workers_that_did_not_start_in_time_are_one_line():
    line = not_started_error(nodes(HEAD_ONLY), 4, 0, 1, 1, 600)
    assert line.startswith("only 0 of 4 Ray worker(s) started within 600s (--placement-timeout): --workers 4 of "
                           "1 CPU + 1 GPU each need 4 CPU + 4 GPU in all")
    assert line.endswith("or a longer --placement-timeout for a cluster that is still adding nodes")
    line = not_started_error(nodes(GPU_NODES), 2, 1, 1, 1, 600)  # they would fit: something else holds them
    assert "only 1 of 2" in line and "has room for them, but other work may hold it" in line
    assert "\n" not in line


def test_the_placement_timeout_is_an_option_with_a_bound(capsys):
    assert job.parse_args(["--photos", "p", "--segmenter", "s", "--out", "o"]).placement_timeout == PLACEMENT_TIMEOUT
    assert job.parse_args(["--photos", "p", "--segmenter", "s", "--out", "o",
                           "--placement-timeout", "90"]).placement_timeout == 90
    for words, message in [(["--placement-timeout", "0"], "must be a number of seconds > 0"),
                           (["--placement-timeout", "inf"], "must be a number of seconds > 0"),
                           (["--cpus-per-worker", "nan"], "must be a number >= 0")]:
        with pytest.raises(SystemExit) as e:
            job.parse_args(["--photos", "p", "--segmenter", "s", "--out", "o", *words])
        one_line_error(e.value.code, capsys.readouterr().err, message)


# ---------------------------------------------------------------------------------------------
# the wiring in _on_ray, with a stand-in for Ray's API (no cluster is started)

class FakeRay(types.ModuleType):
    """ray.nodes/remote/wait/kill as _on_ray uses them: workers that never start."""

    def __init__(self, nodes: list[dict]):
        super().__init__("ray")
        self.node_list, self.killed, self.waited, self.created = nodes, [], None, 0

    def nodes(self):
        return [{"Alive": True, "Resources": n} for n in self.node_list]

    def remote(self, cls):
        fake = self

        class ActorClass:
            def options(self, **kwargs):
                return self

            def remote(self, *args):
                fake.created += 1
                return SimpleNamespace(ready=SimpleNamespace(remote=lambda: object()))

        return ActorClass()

    def wait(self, refs, *, num_returns, timeout):
        self.waited = (len(refs), num_returns, timeout)
        return [], list(refs)  # none has started

    def kill(self, actor):
        self.killed.append(actor)


@pytest.fixture
def fake_ray(monkeypatch):
    import cluster.placement

    def install(nodes: list[dict], local: bool) -> FakeRay:
        fake = FakeRay(nodes)
        exceptions = types.ModuleType("ray.exceptions")
        exceptions.RayError = type("RayError", (Exception,), {})
        exceptions.RayTaskError = type("RayTaskError", (exceptions.RayError,), {})
        util = types.ModuleType("ray.util")
        util.ActorPool = lambda actors: pytest.fail("work was handed to workers that never started")
        for name, module in (("ray", fake), ("ray.exceptions", exceptions), ("ray.util", util)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(cluster.placement, "init_ray", lambda: local)
        return fake

    return install


def photos() -> list[Photo]:
    return [Photo(url="s3://b/p/a.jpg", rel="a.jpg", mask="s3://b/m/a.png", overlay=None)]


def test_workers_that_never_start_end_the_job_after_the_timeout(fake_ray):
    fake = fake_ray(HEAD_ONLY, local=False)
    notes = []
    with pytest.raises(SegmentError) as e:
        _on_ray(photos(), "s3://b/seg.pt", Settings(), 2, 1, 1, None, notes.append, placement_timeout=5)
    assert str(e.value).startswith("only 0 of 2 Ray worker(s) started within 5s (--placement-timeout): --workers 2 "
                                   "of 1 CPU + 1 GPU each need 2 CPU + 2 GPU in all; the cluster has 0 CPU + 0 GPU "
                                   "on 1 node(s): 2 CPU and 2 GPU missing")
    assert fake.waited == (2, 2, 5) and len(fake.killed) == 2
    assert notes == ["note: --workers 2 of 1 CPU + 1 GPU each need 2 CPU + 2 GPU in all; the cluster has 0 CPU + "
                     "0 GPU on 1 node(s): 2 CPU and 2 GPU missing; waiting up to 5s (--placement-timeout) for the "
                     "cluster to add nodes"]


def test_a_local_cluster_that_can_never_hold_the_workers_is_refused_before_any_starts(fake_ray):
    fake = fake_ray(LAPTOP, local=True)
    with pytest.raises(SegmentError, match=r"^--workers 2 of 1 CPU \+ 1 GPU each need 2 CPU \+ 2 GPU in all; the "
                                           r"cluster has 8 CPU \+ 0 GPU on 1 node\(s\): 2 GPU missing; use fewer"):
        _on_ray(photos(), "/seg.pt", Settings(), 2, 1, 1, None, print, placement_timeout=5)
    assert fake.created == 0 and fake.waited is None
