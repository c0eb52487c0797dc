"""One-GPU check of the CNN search path, under 5 minutes on a recent GPU:

1. the CUDA tests (bf16 autocast, channels_last, no host syncs inside forward/backward, NASP peak memory below
   DARTS) plus the space tests on the GPU (NASP_TEST_DEVICE=cuda; 120 s limit);
2. the step benchmark at the paper's search configuration (8 cells, C=16, 4 nodes, batch 64, 32x32), bf16
   autocast and channels_last: median seconds per step (CUDA events / synchronised wall clock) and peak
   memory (torch.cuda.max_memory_allocated in a fresh process per strategy) of NASP, DARTS first and second
   order, both op sets (240 s limit).

    python benchmarks/bench_cnn_gpu.py --out "$OUT"          # on the GPU machine
    python benchmarks/bench_cnn_gpu.py --device cpu --tiny    # a quick dry run of the script on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict, timeout: int, log: Path) -> dict:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"timed out after {timeout}s\n{e.stdout or ''}{e.stderr or ''}"
    log.write_text(out)
    print(out[-3000:], flush=True)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks/results/gpu")))
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (to check the script itself on CPU)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NASP_TEST_DEVICE": args.device, "PYTHONPATH": str(ROOT)}
    report = {"device": args.device}
    tests = [sys.executable, "-m", "pytest", "-q", "-x", "tests/test_cnn_cuda.py", "tests/test_cnn_space.py"]
    report["tests"] = _run(tests, env, 120, args.out / "tests.log")
    size = (["--C", "4", "--layers", "3", "--batch", "4", "--size", "8", "--repeats", "2", "--op-sets", "darts",
             "--variants", "nasp", "darts1", "--mem-steps", "1", "--threads", "1"] if args.tiny else
            ["--C", "16", "--layers", "8", "--batch", "64", "--size", "32", "--repeats", "8", "--warmup", "2",
             "--threads", "4"])
    bench = [sys.executable, "benchmarks/bench_cnn_step.py", "--device", args.device, *size,
             "--out", str(args.out / "cnn_step.json")]
    if args.device.startswith("cuda"):
        bench += ["--amp", "--channels-last"]
    report["benchmark"] = _run(bench, env, 240, args.out / "bench.log")
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(r["rc"] == 0 for r in (report["tests"], report["benchmark"])) else 1


if __name__ == "__main__":
    sys.exit(main())
