"""g on the batch's distinct rows (SIFSpace.transform with idx) equals g on every rating's copy (float64, 1e-12)."""
import torch

from sif.space import SIFSpace


def _grads(model, users, items, with_idx):
    model.zero_grad()
    emb, bias = model.encode(users, items)
    z = model.transform(emb, {"u": users, "v": items, "c": None} if with_idx else None)
    out = model.interact(z, model.sparse_view()) + bias
    (out ** 2).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_unique_rows_match_all_rows_in_output_and_gradients():
    torch.manual_seed(0)
    model = SIFSpace(30, 200, embedding_dim=8, use_bias=True, g_skip=False).double()
    users, items = torch.randint(30, (500,)), torch.randint(200, (500,))    # users repeat, items mostly distinct
    out_old, g_old = _grads(model, users, items, False)
    out_new, g_new = _grads(model, users, items, True)
    assert torch.allclose(out_old, out_new, atol=1e-12, rtol=0)
    assert len(g_old) == len(g_new) and len(g_old) > 0
    for a, b in zip(g_old, g_new, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
