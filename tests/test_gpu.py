"""GPU paths agree with the CPU (skipped cleanly where CUDA is absent)."""

from __future__ import annotations

import pytest
import torch

from prunecli.scoring.force import iterative_snip_scores
from prunecli.scoring.snip import snip_scores
from prunecli.scoring.synflow import synflow_scores
from prunecli.scoring.topk import topk_masks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_topk_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randint(-50, 50, (1000, 300), generator=g).double() / 7, torch.randn(4000, generator=g)]
    parts[1] = parts[1].double()
    for k in (1, 12345, 200_000):
        cpu = topk_masks(parts, k)
        gpu = topk_masks([p.cuda() for p in parts], k)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu, strict=True))


def mlp() -> tuple[torch.nn.Module, list[str]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    ).double()
    return model, ["1.weight", "3.weight", "5.weight"]


def test_scores_on_cuda_match_cpu() -> None:
    model, names = mlp()
    x, y = torch.rand(64, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (64,))
    cpu = snip_scores(model, names, [(x, y)])
    gpu = snip_scores(model.cuda(), names, [(x.cuda(), y.cuda())])
    for n in names:
        torch.testing.assert_close(gpu[n].cpu(), cpu[n], rtol=1e-9, atol=1e-12)
    model.cpu()
    _, m_cpu = synflow_scores(model, names, (1, 28, 28), density=0.01, iterations=20)
    _, m_gpu = synflow_scores(model.cuda(), names, (1, 28, 28), density=0.01, iterations=20)
    assert all(torch.equal(m_cpu[n], m_gpu[n].cpu()) for n in names)
    model.cpu()
    _, f_cpu = iterative_snip_scores(model, names, [(x, y)], 0.05, 5, revive=True)
    _, f_gpu = iterative_snip_scores(model.cuda(), names, [(x.cuda(), y.cuda())], 0.05, 5, revive=True)
    agree = sum(int((f_cpu[n] == f_gpu[n].cpu()).sum()) for n in names) / sum(f_cpu[n].numel() for n in names)
    assert agree > 0.999  # float64 reductions differ in the last bits across devices
