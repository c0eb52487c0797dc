"""GPU path of the CNN space: bf16 autocast, channels_last, no host syncs inside a step's forward/backward.
Runs only with NASP_TEST_DEVICE=cuda (see benchmarks/bench_cnn_gpu.py)."""

import pytest
import torch

from nasp.search import SearchConfig, Searcher
from nasp.spaces.cnn import CNNSearchSpace, ImageClassificationTask
from nasp.strategies import STRATEGIES


@pytest.fixture
def cuda(device):
    if device.type != "cuda":
        pytest.skip("CUDA-only test (set NASP_TEST_DEVICE=cuda)")
    return device


def _setup(cuda, strategy="nasp", op_set="darts"):
    torch.manual_seed(0)
    m = CNNSearchSpace(C=8, layers=5, op_set=op_set).to(cuda).to(memory_format=torch.channels_last)
    cfg = SearchConfig(strategy=strategy, epochs=1, amp="bf16")
    s = Searcher(m, ImageClassificationTask(channels_last=True), cfg, device=cuda, show_progress=False)
    batch = (torch.randn(16, 3, 32, 32, device=cuda), torch.randint(0, 10, (16,), device=cuda))
    return s, batch


@pytest.mark.parametrize("strategy", ["nasp", "darts1", "darts2"])
@pytest.mark.parametrize("op_set", ["darts", "nasp"])
def test_bf16_channels_last_steps(cuda, strategy, op_set):
    s, batch = _setup(cuda, strategy, op_set)
    for _ in range(2):
        out = STRATEGIES[strategy](s, batch, batch, True)
    assert torch.isfinite(out["train_loss"]) and torch.isfinite(out["alpha_loss"])
    assert all(torch.isfinite(a).all() for a in s.alpha_params)


@pytest.mark.parametrize("view_name", ["sparse_view", "nasp_view", "softmax_view"])
def test_no_host_sync_in_forward_backward(cuda, view_name):
    s, batch = _setup(cuda)
    view = getattr(s.model.arch, view_name)()          # the one host transfer of a step happens here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with s.autocast():
            loss = s.task.loss(s.model, batch, view, "train")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_nasp_alpha_step_peak_memory_below_darts(cuda):
    peaks = {}
    for strategy in ("nasp", "darts1"):
        s, batch = _setup(cuda, strategy)
        STRATEGIES[strategy](s, batch, batch, True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        STRATEGIES[strategy](s, batch, batch, True)
        torch.cuda.synchronize()
        peaks[strategy] = torch.cuda.max_memory_allocated() - base
        del s
    assert peaks["nasp"] < peaks["darts1"]
