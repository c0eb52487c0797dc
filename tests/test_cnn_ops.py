import pytest
import torch

from nasp.spaces.cnn.ops import (
    NASP_NORMAL_PRIMITIVES,
    NASP_REDUCE_PRIMITIVES,
    OPS,
    PRIMITIVES,
    FactorizedReduce,
    search_op,
)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_every_op_keeps_shape(name, stride, affine):
    x = torch.randn(2, 8, 12, 12)
    out = OPS[name](8, stride, affine)(x)
    assert out.shape == (2, 8, 12 // stride, 12 // stride)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(OPS))
def test_search_ops_have_no_affine_bn_and_pools_get_bn(name):
    op = search_op(name, 4, 1)
    bns = [m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not bn.affine for bn in bns)
    if "pool" in name:
        assert len(bns) == 1


def test_op_sets_match_the_papers():
    assert len(PRIMITIVES) == 8 and PRIMITIVES[0] == "none"
    assert len(set(NASP_NORMAL_PRIMITIVES) | set(NASP_REDUCE_PRIMITIVES)) == 12
    assert "none" not in NASP_NORMAL_PRIMITIVES + NASP_REDUCE_PRIMITIVES


def test_sep_conv_and_dil_conv_internals():
    sep = OPS["sep_conv_3x3"](16, 1, True)
    convs = [m for m in sep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [16, 1, 16, 1]                    # (depthwise, pointwise) twice
    dil = OPS["dil_conv_5x5"](16, 1, True)
    dw = [m for m in dil.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert dw.dilation == (2, 2) and dw.kernel_size == (5, 5)


def test_factorized_reduce_odd_size():
    assert FactorizedReduce(4, 8)(torch.randn(2, 4, 7, 7)).shape == (2, 8, 4, 4)
