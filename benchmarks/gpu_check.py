"""Single-GPU check of the fast path, sized to finish in under 5 minutes on one GPU.

1. The CUDA tests: ``NASP_TEST_DEVICE=cuda pytest`` on the core and SIF test files (bounded by ``--test-timeout``).
2. Step timings of one NASP search step (alpha step + weight step, the step ``Searcher.fit`` runs) on the toy space
   and the SIF space: fp32 vs bf16 autocast (``SearchConfig.amp``), optionally ``SearchConfig.compile`` (the task
   loss through ``torch.compile``); CUDA events, median of repeats. On CUDA it also counts the host syncs inside one
   step (``torch.cuda.set_sync_debug_mode("warn")``): a NASP step with an alpha update reads the discrete
   selection of the updated A once (so that only the selected ops run; see ``nasp.strategies``), the rest is zero.
3. Fast-path plumbing: channels_last for a model with convolutions (``nasp.device.prepare_model``), pinned
   batches (``PinnedLoader``) copied with ``non_blocking=True``.

    python benchmarks/gpu_check.py                      # on a GPU machine (writes benchmarks/results/gpu_check.json)
    python benchmarks/gpu_check.py --device cpu --tiny --no-tests     # plumbing check on CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasp import distributed as nd  # noqa: E402
from nasp.device import prepare_model  # noqa: E402
from nasp.search import SearchConfig, Searcher, to_device  # noqa: E402
from nasp.spaces.toy import ToySpace, ToyTask, make_toy_data, random_planted  # noqa: E402
from nasp.strategies import STRATEGIES  # noqa: E402
from nasp.streams import ResumableStream, TensorLoader  # noqa: E402

TEST_FILES = ("tests/test_prox.py", "tests/test_search.py", "tests/test_sif.py")


def run_tests(device: str, timeout: float) -> dict:
    """The CUDA test run (a subprocess; its own time limit)."""
    env = {**os.environ, "NASP_TEST_DEVICE": device, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *TEST_FILES], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"returncode": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": [f"timed out after {timeout:.0f}s"], "seconds": timeout}


def _toy_case(device, tiny: bool):
    inputs, nodes, dim, n, batch = (3, 2, 8, 512, 64) if tiny else (4, 4, 256, 65536, 4096)
    planted = random_planted(inputs, nodes, 0)
    x, y = make_toy_data(n, planted, num_inputs=inputs, dim=dim, seed=0)
    xv, yv = make_toy_data(n // 4, planted, num_inputs=inputs, dim=dim, seed=1)
    loaders = [nd.PinnedLoader(TensorLoader(a, b, batch_size=batch, seed=s)) if device.type == "cuda" else
               TensorLoader(a, b, batch_size=batch, seed=s) for a, b, s in ((x, y, 0), (xv, yv, 1))]
    return ToySpace(num_inputs=inputs, num_nodes=nodes, dim=dim, seed=0), ToyTask(), loaders, batch


def _sif_case(device, tiny: bool):
    from data_loaders import BatchIterator, random_split
    from sif.space import SIFSpace
    from sif.synthetic import planted_ratings
    from sif.task import RatingTask

    users, items, n, dim, batch = (30, 40, 800, 4, 128) if tiny else (943, 1682, 100_000, 16, 4096)
    ds = planted_ratings("multiply", num_users=users, num_items=items, n=n, dim=4, seed=0)
    train, valid, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)
    mean, std = float(train.ratings.mean()), float(train.ratings.std())

    def it(d, seed):      # the whole dataset lives on the device: no host->device copies in the step
        data = {"users": d.users, "items": d.items, "ratings": ((d.ratings - mean) / std).float()}
        return BatchIterator(data, batch_size=batch, seed=seed, device=device, fields=("users", "items", "ratings"))

    space = SIFSpace(users, items, embedding_dim=dim, use_bias=True, seed=0)
    return space, RatingTask(mean, std, train_all_heads=True), [it(train, 0), it(valid, 1)], batch


def time_steps(space, task, loaders, device, amp, compile_, steps, repeats, warmup) -> dict:
    """Median ms per NASP step (alpha + weight) over repeats; host syncs counted on CUDA."""
    cfg = SearchConfig(epochs=1, amp=amp, w_weight_decay=0.0, compile=compile_)    # compiles the task loss
    s = Searcher(space, task, cfg, device=device, show_progress=False)
    tr, va = ResumableStream(loaders[0]), ResumableStream(loaders[1])
    step = STRATEGIES["nasp"]

    def one():
        return step(s, to_device(next(tr), s.device), to_device(next(va), s.device), True)

    for _ in range(warmup):
        one()
    syncs = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                one()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    per = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(steps):
                out = one()
            end.record()
            torch.cuda.synchronize()
            per.append(start.elapsed_time(end) / steps)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = one()
            per.append((time.perf_counter() - t0) * 1e3 / steps)
    return {"ms_per_step": statistics.median(per), "repeats_ms": per, "host_syncs_per_step": syncs,
            "train_loss": float(out["train_loss"]), "finite": bool(torch.isfinite(out["train_loss"]))}


def plumbing(device) -> dict:
    """channels_last on conv models (CUDA default), pinned batches on CUDA."""
    conv = prepare_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), device,
                            channels_last=True if device.type == "cpu" else None)
    w = conv[0].weight
    res = {"channels_last": bool(w.is_contiguous(memory_format=torch.channels_last))}
    if device.type == "cuda":
        batch = next(iter(nd.PinnedLoader(TensorLoader(torch.zeros(8, 3), batch_size=4))))
        res["pinned"] = bool(batch[0].is_pinned())
        y = conv(torch.randn(2, 3, 16, 16, device=device).to(memory_format=torch.channels_last))
        res["conv_out_channels_last"] = bool(y.is_contiguous(memory_format=torch.channels_last))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU plumbing check)")
    p.add_argument("--no-tests", action="store_true")
    p.add_argument("--test-timeout", type=float, default=150.0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd forwards")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available (use --device cpu --tiny for a plumbing check)")
    t_start = time.perf_counter()
    from _machine import machine_line

    res: dict = {"machine": machine_line(), "device": str(device), "tiny": args.tiny}
    if not args.no_tests:
        res["tests"] = run_tests(str(device), args.test_timeout)
        print("tests:", res["tests"]["summary"], flush=True)
    res["plumbing"] = plumbing(device)
    print("plumbing:", res["plumbing"], flush=True)
    bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
    amps = [None, "bf16"] if bf16 else [None]
    res["steps"] = []
    for name, make in (("toy", _toy_case), ("sif", _sif_case)):
        for amp in amps:
            for compile_ in ([False, True] if args.compile else [False]):
                torch.manual_seed(0)
                space, task, loaders, batch = make(device, args.tiny)
                r = time_steps(space, task, loaders, device, amp, compile_, args.steps, args.repeats, args.warmup)
                r.update(space=name, amp=amp or "fp32", compile=compile_, batch=batch)
                res["steps"].append(r)
                print(f"{name:4s} {r['amp']:5s} compile={compile_!s:5s} batch={batch:5d} "
                      f"{r['ms_per_step']:8.3f} ms/step  host syncs/step={r['host_syncs_per_step']}  "
                      f"loss={r['train_loss']:.4f}", flush=True)
    res["seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"done in {res['seconds']:.1f}s -> {out}")
    if any(not r["finite"] for r in res["steps"]) or res.get("tests", {}).get("returncode") not in (None, 0):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
