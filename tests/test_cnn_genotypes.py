import json

import pytest
import torch

from nasp.genotype import Choice, Genotype
from nasp.spaces.cnn.genotypes import (
    DARTS_V1,
    DARTS_V2,
    GENOTYPES,
    NASP_12OP,
    CellGenotype,
    draw,
    from_core,
    get_genotype,
)
from nasp.spaces.cnn.model import NetworkCIFAR, NetworkImageNet
from nasp.train.image import count_parameters, multiply_adds


def test_darts_v2_has_3_35m_parameters():
    n = count_parameters(NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True))
    assert abs(n - 3.35e6) / 3.35e6 < 0.01, n


def test_nasp_cell_matches_the_12_op_space_and_its_reported_size():
    from nasp.spaces.cnn.ops import NASP_NORMAL_PRIMITIVES, NASP_REDUCE_PRIMITIVES

    assert {op for op, _ in NASP_12OP.normal} <= set(NASP_NORMAL_PRIMITIVES)
    assert {op for op, _ in NASP_12OP.reduce} <= set(NASP_REDUCE_PRIMITIVES)
    n = count_parameters(NetworkCIFAR(NASP_12OP, C=36, num_classes=10, layers=20, auxiliary=True))
    assert 7.35e6 <= n < 7.45e6, n          # the 12-op space's cell is reported at 7.4M parameters


def test_darts_v2_imagenet_mobile_size():
    net = NetworkImageNet(DARTS_V2, C=48, num_classes=1000, layers=14)
    assert abs(count_parameters(net) - 4.7e6) / 4.7e6 < 0.02     # DARTS reports 4.7M
    assert multiply_adds(net, (3, 224, 224)) < 600e6              # the mobile setting


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_json_round_trip(name, tmp_path):
    g = GENOTYPES[name]
    assert CellGenotype.from_json(g.to_json()) == g
    g.to_json(tmp_path / "g.json")
    assert get_genotype(tmp_path / "g.json") == g
    assert json.loads(g.to_json())["normal"][0] == list(g.normal[0])


def test_invalid_genotypes_are_rejected():
    with pytest.raises(ValueError, match="unknown op"):
        CellGenotype((("conv_9x9", 0), ("skip_connect", 1)), (2,), DARTS_V1.reduce[:2], (2,))
    with pytest.raises(ValueError, match="does not exist"):
        CellGenotype((("skip_connect", 2), ("skip_connect", 1)), (2,), DARTS_V1.reduce[:2], (2,))
    with pytest.raises(ValueError, match="keys"):
        CellGenotype.from_dict({"normal": []})


def test_picture_files_written(tmp_path):
    files = draw(DARTS_V2, tmp_path / "darts_v2")
    dots = [f for f in files if f.suffix == ".dot"]
    assert len(dots) == 2 and all(f.is_file() and f.stat().st_size > 0 for f in files)
    text = dots[0].read_text()
    assert "digraph" in text and "sep_conv_3x3" in text
    pytest.importorskip("matplotlib")
    assert any(f.suffix == ".png" for f in files)


def test_from_core_genotype():
    rows = []   # node 0: rows 0, 1; node 1: rows 2..4 (keep 2, 4); steps = 2
    for name in ("normal", "reduce"):
        cs = (Choice(0, "a", "sep_conv_3x3"), Choice(1, "b", "skip_connect"), Choice(2, "c", "max_pool_3x3"),
              Choice(4, "e", "dil_conv_3x3"))
        rows.append((name, cs))
    cell = from_core(Genotype(tuple(rows)), steps=2)
    assert cell.normal == (("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2))
    assert cell.normal_concat == (2, 3)


def test_eval_network_runs_with_aux_and_drop_path():
    net = NetworkCIFAR(DARTS_V1, C=8, num_classes=10, layers=5, auxiliary=True)
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    net.eval()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert aux is None
    small = NetworkImageNet(DARTS_V2, C=8, num_classes=7, layers=3, auxiliary=False)
    assert small(torch.randn(2, 3, 64, 64))[0].shape == (2, 7)
