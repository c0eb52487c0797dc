"""Seconds per search step and peak memory of NASP vs DARTS (first and second order) on the recurrent space.

Every strategy runs in a fresh subprocess (so peak memory is its own) on the same model (same seed, same
initial weights and alphas) and the same sequence of training/validation batches; the parent prints a
markdown table with the ratios of one run. ``nasp_graph`` is NASP with the older alpha step (every candidate at
every time step, the non-selected ones without graphs; ``RNNSearchSpace(nasp_alpha_step="graph")``);
``nasp_nofuse`` is NASP with the one-hot cell run node by node through autograd instead of the fused cell
(``RNNSearchSpace(fused_cell=False)``, the implementation before the fused cell). ``<strategy>_before``
(``nasp_before``, ``darts1_before``, ``darts2_before``) is that strategy as the code ran before the session of
2026-12-05: the decoder and its cross-entropy through ``F.linear`` + ``F.cross_entropy``
(``LanguageModelShell.fused_decoder = False``, not :mod:`nasp.spaces.rnn.decoder`) and torch's tanh everywhere
(:func:`nasp.fastmath.numpy_ok` answering False), so that before and after run in one invocation.
``--amp bf16``: the search's ``amp`` setting for every strategy (on the recurrent models: the tied decoder's
products in bfloat16, the cell in float32; :mod:`nasp.spaces.rnn.decoder`). ``--breakdown``: also the CPU ms per
step of the decoder, the fused cell, the alpha contraction and the optimiser steps (in the JSON).
A step is what the shared search loop does per training batch:
for NASP the proximal alpha step + the sparse weight step, for DARTS the (unrolled) alpha step + the dense
weight step. CPU s/step: the main thread's CPU time per step (``time.thread_time``; on a shared machine it
moves much less with the load than the wall time; with more than one torch thread it undercounts). Peak
memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps, on CPU the peak
resident set size (``ru_maxrss``) of the subprocess.

Examples::

    taskset -c 1 python benchmarks/bench_rnn_step.py --threads 1       # CPU, reduced sizes, one pinned core
    python benchmarks/bench_rnn_step.py --device cuda --hidden 300 --batch 256 --bptt 35   # DARTS search sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine  # noqa: E402
from nasp import fastmath  # noqa: E402
from nasp.search import SearchConfig, Searcher  # noqa: E402
from nasp.spaces.rnn import PRIMITIVES_DARTS, LanguageModelTask, RNNSearchSpace  # noqa: E402
from nasp.strategies import STRATEGIES  # noqa: E402

STRATEGY_NAMES = ("nasp", "darts1", "darts2")
# benchmark name -> (strategy, nasp_alpha_step, fused_cell, fused_decoder)
VARIANTS = {"nasp_graph": ("nasp", "graph", True, True), "nasp_nofuse": ("nasp", "contract", False, True),
            **{f"{n}_before": (n, "contract", True, False) for n in STRATEGY_NAMES}}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=7, help="timed steps; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--amp", default=None, choices=["bf16"],
                   help="the search's amp setting, for every strategy (bf16: the decoder's products in bfloat16)")
    p.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts of a step (CPU ms per step: decoder, fused cell, alpha contraction, ...)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _batches(args, n, seed):
    """n fixed (x, y, first) windows of random tokens, the same for every strategy."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(args.vocab, (args.bptt, args.batch), generator=g),
             torch.randint(args.vocab, (args.bptt, args.batch), generator=g), i == 0) for i in range(n)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args) -> dict:
    """Time one strategy; returns median seconds per step and peak memory."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name, alpha_step, fused_cell, fused_decoder = VARIANTS.get(args.worker, (args.worker, "contract", True, True))
    space = RNNSearchSpace(args.vocab, args.hidden, args.hidden, ops=PRIMITIVES_DARTS, seed=0,
                           alpha_init="darts" if name.startswith("darts") else "nasp", nasp_alpha_step=alpha_step,
                           fused_cell=fused_cell)
    space.lm.fused_decoder = fused_decoder
    if not fused_decoder:                             # "_before": torch's tanh everywhere too
        fastmath.numpy_ok = lambda t, contiguous=True: False
    config = SearchConfig(strategy=name, epochs=1, w_lr=20.0, w_lr_schedule="constant", w_momentum=0.0,
                          w_weight_decay=5e-7, grad_clip=0.25, a_lr=3e-3, a_betas=(0.9, 0.999), amp=args.amp)
    s = Searcher(space, LanguageModelTask(), config, device=device, show_progress=False)
    n = args.warmup + args.steps
    train = [tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in b) for b in _batches(args, n, 1)]
    valid = [tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in b) for b in _batches(args, n, 2)]
    step = STRATEGIES[name]
    parts = _time_parts(s) if args.breakdown else None
    rss_before = (torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    times, cpu = [], []
    for i in range(n):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0, c0 = time.perf_counter(), time.thread_time()
        if parts is not None and i == args.warmup:
            parts.clear()
        out = step(s, train[i], valid[i], True)
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    loss = float(out["train_loss"])
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"strategy": args.worker, "median_s": statistics.median(times), "min_s": min(times), "steps": len(times),
            "median_cpu_s": statistics.median(cpu),
            "peak_mib": peak, "rss_before_steps_mib": rss_before, "final_train_loss": loss,
            "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (ru_maxrss)",
            **({} if parts is None else {"parts_cpu_ms_per_step": {k: round(v * 1e3 / len(cpu), 2)
                                                                 for k, v in parts.items()}})}


def _time_parts(s) -> dict[str, float]:
    """Wrap the parts of a step so that their main-thread CPU seconds add up in the returned dict (nested parts
    count in both: the fused cell's backward includes the alpha contraction, the alpha step everything in it)."""
    from nasp import strategies
    from nasp.spaces.rnn import alpha_step, decoder, fused

    acc: dict[str, float] = {}

    def wrap(owner, attr: str, key: str, static: bool = False) -> None:
        f = getattr(owner, attr)

        def timed(*a, **k):
            c = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.thread_time() - c
        setattr(owner, attr, staticmethod(timed) if static else timed)

    for owner, attr, key, static in (
            (strategies, "nasp_alpha_grads", "alpha step: gradients", False),
            (strategies, "darts_alpha_grads", "alpha step: gradients", False),
            (strategies, "unrolled_alpha_grads", "alpha step: gradients", False),
            (strategies, "_alpha_update", "alpha step: Adam", False),
            (strategies, "weight_step", "weight step", False),
            (strategies, "clip_grad_norm_", "weight step: clip", False),
            (decoder._DecoderNLL, "forward", "decoder + softmax forward", True),
            (decoder._DecoderNLL, "backward", "decoder backward", True),
            (fused._SparseCell, "forward", "fused cell forward", True),
            (fused._SparseCell, "backward", "fused cell backward (incl. alpha contraction)", True),
            (alpha_step, "contract_alpha_grad", "alpha contraction", False),
            (s.w_opt, "step", "weight step: SGD", False),
            (s.model.arch, "prox_c2_", "alpha step: prox_C2", False)):
        wrap(owner, attr, key, static)
    return acc


def main(argv=None) -> list[dict]:
    args = _args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return []
    keys = ("device", "vocab", "hidden", "batch", "bptt", "warmup", "steps", "threads", "amp")
    base = [f"--{k}={getattr(args, k)}" for k in keys if getattr(args, k) is not None]
    base += ["--breakdown"] if args.breakdown else []
    if args.threads:
        torch.set_num_threads(args.threads)           # so the recorded machine description shows the workers'
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = []
    for name in args.strategies.split(","):
        cmd = [sys.executable, __file__, *base, "--worker", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = next((r for r in results if r["strategy"] == "nasp"), results[0])
    print(f"device={args.device} torch={torch.__version__} threads={args.threads or torch.get_num_threads()} "
          f"vocab={args.vocab} hidden={args.hidden} batch={args.batch} bptt={args.bptt} "
          f"steps={args.steps} (median) warmup={args.warmup} amp={args.amp}")
    print("| strategy | median s/step | x NASP time | median CPU s/step | x NASP CPU | peak memory MiB | x NASP memory "
          "| peak - before steps MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['strategy']} | {r['median_s']:.3f} | {r['median_s'] / ref['median_s']:.2f} | "
              f"{r['median_cpu_s']:.3f} | {r['median_cpu_s'] / ref['median_cpu_s']:.2f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] / ref['peak_mib']:.2f} | "
              f"{r['peak_mib'] - r['rss_before_steps_mib']:.0f} |")
    info = {"args": vars(args), "command": _command(), "machine": machine(), "load_average_before": load_before,
            "results": results}
    print(f"machine: {info['machine']}; load average before/after: {load_before} / "
          f"{info['machine'].get('load_average')}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return results


def _command() -> str:
    """The command line as run, with the CPU pinning (taskset) it ran under when any."""
    cmd = " ".join(["python", *sys.argv])
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return cmd
    return cmd if len(cpus) == os.cpu_count() else f"taskset -c {','.join(map(str, cpus))} {cmd}"


if __name__ == "__main__":
    main()
