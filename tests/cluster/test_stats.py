"""StatsTicker reduces across real ranks: two processes, a real gloo process group on loopback.

The ticker only needs an object with `reduce(tensor, reduction="mean")`, the signature of
accelerate's `Accelerator.reduce(tensor, reduction="sum", scale=1.0)`. `AllReduceMean` below
stands in for the Accelerator with a plain torch.distributed all_reduce, so the test exercises a
real cross-process reduction without accelerate's launcher.
"""
from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


class AllReduceMean:
    """Stand-in for accelerate.Accelerator: reduce(tensor, reduction) over the default group."""

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        if reduction == "mean":
            out /= dist.get_world_size()
        return out


def rank_stats(rank: int, step: int) -> dict[str, torch.Tensor]:
    """Different values per rank and step; keys inserted in a different order on each rank (the
    reduced vector must line keys up by name, not by insertion order)."""
    stats = {"loss/a": torch.tensor(1.0 + 10 * rank + step),          # r0: 1, 2, 3   r1: 11, 12, 13
             "loss/b": torch.tensor(-2.0 * (rank + 1) * step),        # r0: 0, -2, -4 r1: 0, -4, -8
             "count": torch.tensor(rank + step)}                       # int64; r0: 0, 1, 2  r1: 1, 2, 3
    if step == 2:  # a term that starts mid-tick (stage 2's self-training): r0 5, r1 7
        stats["loss/late"] = torch.tensor(5.0 + 2 * rank)
    return stats if rank == 0 else dict(reversed(list(stats.items())))


def _worker(rank: int, port: int, out_dir: str) -> None:
    from cluster.stats import StatsTicker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    try:
        ticker = StatsTicker(AllReduceMean())
        for step in range(3):
            ticker.add(rank_stats(rank, step))
        first = ticker.reduce()
        ticker.add({"loss/a": torch.tensor(100.0 * (rank + 1))})   # a new tick: r0 100, r1 200
        second = ticker.reduce()
        empty = ticker.reduce()  # nothing added since: no collective, nothing reported
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"first": first, "second": second, "empty": empty}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_stats_ticker_means_over_steps_and_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # Mean over 3 steps and 2 ranks, by hand:
    #   loss/a: (1 + 2 + 3 + 11 + 12 + 13) / 6 = 7;  loss/b: (0 - 2 - 4 + 0 - 4 - 8) / 6 = -3;
    #   count: (0 + 1 + 2 + 1 + 2 + 3) / 6 = 1.5; loss/late over the one step that had it: (5 + 7) / 2.
    expected_first = {"loss/a": 7.0, "loss/b": -3.0, "count": 1.5, "loss/late": 6.0}
    for r, res in enumerate(results):
        assert res["first"] == pytest.approx(expected_first), f"rank {r}"
        assert res["second"] == pytest.approx({"loss/a": 150.0}), f"rank {r}: the tick starts afresh"
        assert res["empty"] == {}, f"rank {r}"
