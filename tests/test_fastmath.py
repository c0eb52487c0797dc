"""nasp.fastmath: numpy's tanh on CPU tensors, the same as torch's up to float rounding."""

import torch

from nasp.fastmath import tanh_into


def _x(dtype):
    x = torch.cat([torch.randn(1000, dtype=torch.float64) * s for s in (1e-8, 0.1, 1, 5, 40)])
    return x.reshape(100, 50).to(dtype)


def test_tanh_into_strided_input_matches_torch():
    """A column slice (the cell's g half of the gates) into a contiguous buffer; float32 to ~1 ulp, float64
    to 1e-15."""
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-15)):
        z = _x(dtype)
        g = z[:, 25:]                                              # strided, as z[:, H:] in the cell
        out = torch.empty(100, 25, dtype=dtype)
        assert tanh_into(g, out) is out
        torch.testing.assert_close(out, torch.tanh(g), rtol=tol, atol=tol)
    assert tanh_into(torch.tensor([float("nan")]), torch.empty(1)).isnan().all()


def test_tanh_into_falls_back_to_torch():
    """Other dtypes, a non-contiguous out or mixed dtypes: torch's own tanh, bit for bit."""
    bf = _x(torch.bfloat16)
    assert torch.equal(tanh_into(bf, torch.empty_like(bf)), torch.tanh(bf))
    z = _x(torch.float32)
    out = torch.empty(50, 100).t()                                 # non-contiguous out
    assert torch.equal(tanh_into(z, out), torch.tanh(z))
    out64 = torch.empty(100, 50, dtype=torch.float64)
    torch.testing.assert_close(tanh_into(z, out64), torch.tanh(z).double())

