"""Kernel launches per step (tests/kernel_launches.py): the counter counts what a GPU would launch, the record
the performance page shows is the code's, and each chapter's step as it trains on CUDA issues no more than
1.10x the benchmark's fast step per image (the CPU-side half of issue 16's "within 10 % of the fast path")."""
import json

import pytest
import torch

from benchmarks.steps import STEPS
from fake_cuda import fake_cuda
from kernel_launches import RECORD, WITHIN, LaunchCounter, measure

CHAPTER_STEPS = [s for s in STEPS if s.build_chapter is not None]


def test_the_counter_counts_kernels_on_cuda_only_and_splits_off_a_watched_network():
    with fake_cuda(bf16=False):
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).to("cuda")
        x = torch.randn(5, 4, device="cuda")
        cpu = torch.randn(3)
        with LaunchCounter() as eager:
            y = net(x)                                   # addmm, relu (the weight's transpose is a view)
            y.t().contiguous().view(-1)                  # clone (a copy kernel); .t() and .view() are views
            (cpu * 2).sum()                              # CPU ops launch nothing on the GPU
        assert sum(eager.eager.values()) == 3, eager.eager
        assert eager.eager["addmm"] == 1 and eager.eager["relu"] == 1 and eager.eager["clone"] == 1
        assert eager.graph == 0 and eager.replays == 0

        watched = LaunchCounter()
        watched.watch(net)
        with watched:
            loss = (net(x) * 3).sum()                    # the network: one replay + one input copy + its backward
            loss.backward()
        assert watched.replays == 3
        assert watched.graph >= 4                        # addmm, relu forward; their backward ops
        assert dict(watched.eager) == {"mul": 2, "sum": 1, "ones_like": 1}   # x3 and its backward; the sum, its seed
        assert watched.launches == sum(watched.eager.values()) + 3


@pytest.mark.parametrize("spec", CHAPTER_STEPS, ids=[s.paper for s in CHAPTER_STEPS])
def test_each_chapter_step_launches_what_its_record_says_and_keeps_up_with_the_fast_step(spec):
    row = measure(spec)
    assert row["ratio_launches_per_image"] <= WITHIN, (
        f"{spec.paper}: the chapter's step issues {row['ratio_launches_per_image']}x the fast step's kernel "
        f"launches per image (at most {WITHIN}): on a GPU, where these steps wait on launches, it falls behind")
    assert row["ratio_flop_per_image"] <= WITHIN, (
        f"{spec.paper}: the chapter's step computes {row['ratio_flop_per_image']}x the fast step's FLOPs per image")
    recorded = json.loads(RECORD.read_text())
    assert recorded["torch"] == torch.__version__, "counts recorded with another torch: rewrite the record"
    assert row == recorded["steps"][spec.paper], (
        f"{spec.paper}: the kernel launches of its steps changed; if that is intended, run "
        f"`.venv/bin/python tests/kernel_launches.py --write` and commit {RECORD.name}\nnow: {json.dumps(row)}")


def test_the_record_covers_every_chapter_step():
    recorded = json.loads(RECORD.read_text())
    assert set(recorded["steps"]) == {s.paper for s in CHAPTER_STEPS}
    compiled = {p for p, r in recorded["steps"].items() if r["chapter_on_cuda"] == "chapter_compiled"}
    assert compiled == {s.paper for s in CHAPTER_STEPS if s.compilable} == {"margin_mix", "nm_tuple"}
