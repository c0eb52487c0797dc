"""Seconds per search step and peak memory of NASP vs DARTS first / second order on the CNN supernet.

All strategies run in ONE process on copies of the SAME supernet (same initial weights and alphas) and the SAME
batches; their steps are interleaved repeat by repeat, so machine load hits them alike; the medians of the
repeats are reported with the split into the alpha step and the weight step. Peak memory: one fresh child
process per (op set, strategy) runs the same steps; peak = ru_maxrss after the steps minus the resident set
just before the first step (CPU; ru_maxrss of the
child, plus a 1 ms RSS sampler for peaks below the import-time maximum), or torch.cuda.max_memory_allocated (GPU).

Options beyond the paper, measured here as extra rows (off by default in the library):
  nasp/every2    alpha update every 2nd step (SearchConfig.alpha_every=2): mean seconds per step;
  nasp/sub4      alpha gradient of the non-selected ops on a quarter of the batch (CNNSearchSpace.alpha_subbatch).

Memory format: channels_last for every strategy by default (on this CPU it makes convolutions, BN and pools
2-5x faster than NCHW for all of them alike); ``--no-channels-last`` measures NCHW.

Times: wall-clock seconds per step (median and min of the repeats) and the process CPU seconds per step
(median; with one thread this is close to the wall time of an unloaded machine, and far less sensitive to other
jobs on a shared machine than the wall time). The machine line (benchmarks/_machine.py, with the load average)
is stored at the start and at the end of the run.

Reference configuration of the issue (C=8, 5 cells, 4 nodes, batch 16, 32x32, 1 thread)::

    PYTHONPATH=. python benchmarks/bench_cnn_step.py --threads 1 --out benchmarks/results/cnn_step_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_line  # noqa: E402

from nasp.search import SearchConfig, Searcher  # noqa: E402
from nasp.spaces.cnn import CNNSearchSpace, ImageClassificationTask  # noqa: E402
from nasp.strategies import STRATEGIES  # noqa: E402

VARIANTS = {   # name -> (core strategy, alpha_every, alpha_subbatch divisor)
    "nasp": ("nasp", 1, None),
    "darts1": ("darts1", 1, None),
    "darts2": ("darts2", 1, None),
    "nasp/every2": ("nasp", 2, None),
    "nasp/sub4": ("nasp", 1, 4),
}


def build(args, op_set: str, device: torch.device):
    """The shared supernet and the fixed batches (2 training, 2 validation)."""
    torch.manual_seed(0)
    model = CNNSearchSpace(C=args.C, layers=args.layers, steps=args.nodes, multiplier=args.nodes, op_set=op_set,
                           num_classes=10, seed=0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(4)]
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    return model, batches


def make_searcher(model, variant: str, args, device):
    strategy, every, div = VARIANTS[variant]
    m = copy.deepcopy(model)
    if div:
        m.alpha_subbatch = max(1, args.batch // div)
    if args.channels_last:
        m = m.to(memory_format=torch.channels_last)
    cfg = SearchConfig(strategy=strategy, epochs=1, alpha_every=every, amp="bf16" if args.amp else None)
    task = ImageClassificationTask(channels_last=args.channels_last)
    return Searcher(m, task, cfg, device=device, show_progress=False)


def one_step(s: Searcher, variant: str, batches, i: int) -> None:
    strategy, every, _ = VARIANTS[variant]
    STRATEGIES[strategy](s, batches[i % 2], batches[2 + i % 2], i % every == 0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_all(args, op_set: str, device) -> dict:
    model, batches = build(args, op_set, device)
    searchers = {v: make_searcher(model, v, args, device) for v in args.variants}
    times = {v: [] for v in searchers}
    cpu = {v: [] for v in searchers}
    phases = {v: {"alpha": [], "weight": []} for v in searchers}
    for rep in range(args.warmup + args.repeats):
        for v, s in searchers.items():
            every = VARIANTS[v][1]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(every):           # a full cycle of alpha_every steps, reported per step
                one_step(s, v, batches, rep * every + i)
            sync(device)
            dt = (time.perf_counter() - t0) / every
            dc = (time.process_time() - c0) / every
            ph = s.timer.collect()
            if rep >= args.warmup:
                times[v].append(dt)
                cpu[v].append(dc)
                for p in ("alpha", "weight"):
                    phases[v][p].append(ph.get(p, 0.0) / every)
    return {v: {"median_s": statistics.median(times[v]), "min_s": min(times[v]), "cpu_s": statistics.median(cpu[v]),
                "alpha_s": statistics.median(phases[v]["alpha"]), "weight_s": statistics.median(phases[v]["weight"])}
            for v in searchers}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(args, op_set: str, variant: str, device) -> float:
    """Peak memory (MiB) of ``steps`` search steps of one strategy, measured in this (fresh) process."""
    model, batches = build(args, op_set, device)
    s = make_searcher(model, variant, args, device)
    del model
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
        max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sampler = _RssSampler()
    for i in range(args.mem_steps * VARIANTS[variant][1]):
        one_step(s, variant, batches, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    sampled = sampler.stop()
    max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampled, max_after if max_after > max_before else 0)   # ru_maxrss only counts if the steps raised it
    return (peak - base) / 2**20


class _RssSampler:
    """Samples the resident set size every millisecond in a thread (torch kernels release the GIL)."""

    def __init__(self):
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_bytes())


def memory_all(args, op_set: str) -> dict:
    out = {}
    for v in args.variants:
        cmd = [sys.executable, __file__, "--child", op_set, v] + _passthrough(args)
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = float(res.stdout.strip().splitlines()[-1])
    return out


def _passthrough(args) -> list[str]:
    out = ["--C", str(args.C), "--layers", str(args.layers), "--nodes", str(args.nodes), "--batch", str(args.batch),
           "--size", str(args.size), "--threads", str(args.threads), "--mem-steps", str(args.mem_steps),
           "--device", args.device]
    out += ["--channels-last"] if args.channels_last else ["--no-channels-last"]
    out += ["--amp"] if args.amp else []
    return out


def table(results: dict) -> str:
    lines = ["| op set | strategy | s/step (median) | s/step (min) | CPU s/step | alpha step s | weight step s | "
             "peak MiB | NASP speed-up (wall median / CPU) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for op_set, rows in results["op_sets"].items():
        base = rows["nasp"]["median_s"] if "nasp" in rows else None
        base_cpu = rows["nasp"].get("cpu_s") if "nasp" in rows else None
        for v, r in rows.items():
            speed = f"{r['median_s'] / base:.2f}x" if base and v.startswith("darts") else ""
            if speed and base_cpu and r.get("cpu_s"):
                speed += f" / {r['cpu_s'] / base_cpu:.2f}x"
            mem = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
            cpu = f"{r['cpu_s']:.3f}" if r.get("cpu_s") is not None else "-"
            lines.append(f"| {op_set} | {v} | {r['median_s']:.3f} | {r['min_s']:.3f} | {cpu} | {r['alpha_s']:.3f} | "
                         f"{r['weight_s']:.3f} | {mem} | {speed} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--op-sets", nargs="+", default=["darts", "nasp"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for every strategy (default: on)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("OP_SET", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="only print the markdown table of a saved JSON result")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return {}
    if args.child:
        print(child_memory(args, args.child[0], args.child[1], device))
        return {}
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
               "machine": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else _cpu_name()},
               "machine_line_start": machine_line(), "op_sets": {}}
    for op_set in args.op_sets:
        rows = time_all(args, op_set, device)
        if not args.no_memory:
            for v, mib in memory_all(args, op_set).items():
                rows[v]["peak_mib"] = mib
        results["op_sets"][op_set] = rows
        print(f"[{op_set}] done", file=sys.stderr, flush=True)
    results["machine_line_end"] = machine_line()
    print(results["machine_line_start"], "\n", results["machine_line_end"], sep="")
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
