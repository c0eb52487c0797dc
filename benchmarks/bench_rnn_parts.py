"""CPU milliseconds of the parts of a recurrent search step (the leads of issue 18's speed targets), one thread.

- tanh: torch's against numpy's (:mod:`nasp.fastmath`) at the sizes the cell uses, and torch's sigmoid;
- tanh through autograd: torch's against a Function with numpy's forward and dy (1 - y^2) backward (the variant
  that was tried for DARTS' dense cell and not kept), forward + backward of an (n, B, H) strided block;
- the decoder + cross-entropy per loss evaluation: ``F.linear`` + ``F.cross_entropy`` against
  :func:`nasp.spaces.rnn.decoder.decoder_nll` (float32, and with bfloat16 products: the search's ``amp: bf16``),
  with all gradients (weight step), dL/d(out) only (alpha step) and the forward alone; its three products alone
  in float32 and bfloat16;
- NASP's alpha contraction alone (:func:`nasp.spaces.rnn.alpha_step.contract_alpha_grad`), with numpy's tanh
  and as before (``2 sigmoid(2g) - 1``).

Times are CPU time (``time.thread_time``) per call, the median of ``--repeats`` means. Example::

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_rnn_parts.py --json benchmarks/results/rnn_parts.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine  # noqa: E402
from nasp import fastmath  # noqa: E402
from nasp.buffers import BufferPool  # noqa: E402
from nasp.fastmath import tanh_into  # noqa: E402
from nasp.spaces.rnn import PRIMITIVES_DARTS, RNNSearchSpace  # noqa: E402
from nasp.spaces.rnn.alpha_step import contract_alpha_grad  # noqa: E402
from nasp.spaces.rnn.decoder import decoder_nll  # noqa: E402


def _ms(f, n: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean CPU ms per call of n calls (after one warm-up call)."""
    f()
    means = []
    for _ in range(repeats):
        t = time.thread_time()
        for _ in range(n):
            f()
        means.append((time.thread_time() - t) / n * 1e3)
    return statistics.median(means)


class _NumpyTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = tanh_into(x, torch.empty(x.shape, dtype=x.dtype))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return dy * (1 - y * y)


def _tanh(r: int) -> dict:
    out = {}
    for n in (4096, 40960, 1 << 22):
        x, o = torch.randn(n), torch.empty(n)
        k = max(3, 40_000_000 // n // 100)
        out[f"tanh_{n}"] = {"torch": _ms(lambda x=x, o=o: torch.tanh(x, out=o), k, r),
                            "numpy": _ms(lambda x=x, o=o: tanh_into(x, o), k, r),
                            "torch_sigmoid": _ms(lambda x=x, o=o: torch.sigmoid(x, out=o), k, r)}
    z, o = torch.randn(32, 256), torch.empty(32, 128)
    out["tanh_32x128_strided"] = {"torch": _ms(lambda: torch.tanh(z[:, 128:], out=o), 2000, r),
                                  "numpy": _ms(lambda: tanh_into(z[:, 128:], o), 2000, r)}
    for n in (1, 4, 8):
        w = torch.randn(n, 32, 256, requires_grad=True)

        def fb(fn, w=w):
            fn((w * 1.0)[..., 128:]).sum().backward()
        out[f"autograd_tanh_fwd_bwd_{n}x32x128"] = {"torch": _ms(lambda: fb(torch.tanh), 300, r),
                                                    "numpy_function": _ms(lambda: fb(_NumpyTanh.apply), 300, r)}
    return out


def _decoder(r: int, rows: int, hidden: int, vocab: int) -> dict:
    w = torch.nn.Parameter(torch.randn(vocab, hidden) * 0.1)
    b = torch.nn.Parameter(torch.zeros(vocab))
    y = torch.randint(vocab, (rows,))
    pool = BufferPool()
    out = torch.randn(rows, hidden, requires_grad=True)

    def run(fused, everything, low=None):
        loss = (decoder_nll(out, w, b, y, pool, fused, low) if fused
                else F.cross_entropy(F.linear(out, w, b), y))
        torch.autograd.grad(loss, [out, w, b] if everything else [out])
    res = {f"{'all_grads' if e else 'd_out_only'}": {"before": _ms(lambda e=e: run(False, e), 5, r),
                                                    "fused": _ms(lambda e=e: run(True, e), 5, r),
                                                    "fused_bf16": _ms(lambda e=e: run(True, e, torch.bfloat16), 5, r)}
           for e in (True, False)}
    with torch.no_grad():
        res["forward_only"] = {"fused": _ms(lambda: decoder_nll(out, w, b, y, pool), 5, r),
                               "fused_bf16": _ms(lambda: decoder_nll(out, w, b, y, pool, low=torch.bfloat16), 5, r)}
        P = torch.rand(rows, vocab)
        for dt in (torch.float32, torch.bfloat16):      # the three products alone
            o, ww, pp = out.detach().to(dt), w.detach().to(dt), P.to(dt)
            res[f"products_{str(dt)[6:]}"] = {"out_Wt": _ms(lambda o=o, ww=ww: o @ ww.t(), 5, r),
                                              "P_W": _ms(lambda pp=pp, ww=ww: pp @ ww, 5, r),
                                              "Pt_out": _ms(lambda pp=pp, o=o: pp.t() @ o, 5, r)}
    return res


def _contraction(r: int, hidden: int, batch: int, bptt: int) -> dict:
    space = RNNSearchSpace(100, hidden, hidden, ops=PRIMITIVES_DARTS, seed=0)
    N = space.num_nodes
    S, G = torch.randn(bptt, N, batch, hidden), torch.randn(N, hidden, bptt, batch)
    m = torch.rand(batch, hidden)
    Ws = space.lm.cell.Ws.detach()
    def run():
        contract_alpha_grad(space.ops, Ws, list(space.pairs), S, m, G, g_nhtb=True)
    now = _ms(run, 5, r)
    ok = fastmath.numpy_ok
    fastmath.numpy_ok = lambda t, contiguous=True: False      # as before: 2 sigmoid(2g) - 1 for tanh
    try:
        before = _ms(run, 5, r)
    finally:
        fastmath.numpy_ok = ok
    return {"before": before, "numpy_tanh": now}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = {"tanh": _tanh(args.repeats),
           "decoder_per_loss": _decoder(args.repeats, args.batch * args.bptt, args.hidden, args.vocab),
           "contraction": _contraction(args.repeats, args.hidden, args.batch, args.bptt)}
    info = {"args": vars(args), "command": " ".join(["python", *sys.argv]), "numpy": np.__version__,
            "machine": machine(), "load_average_before": load_before, "cpu_ms": res}
    print(json.dumps(info, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":
    main()
