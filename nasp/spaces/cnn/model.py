"""Stand-alone networks built from a :class:`~nasp.spaces.cnn.genotypes.CellGenotype`.

- :class:`NetworkCIFAR`: stem conv 3x3 to stem_multiplier * C channels, ``layers`` cells with reductions at 1/3
  and 2/3 of the depth, optional auxiliary head after the second reduction (weight 0.4 in the recipe),
  drop-path on every non-identity op (probability set by the trainer, e.g. linearly increased to 0.2).
  DARTS' evaluation setting: 20 cells, C=36.
- :class:`NetworkImageNet`: a two-stage stem that reduces 224 px inputs by 8, 14 cells, C=48, auxiliary head,
  7x7 average pooling.

BN layers are affine here (they are affine=False only while searching).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .genotypes import CellGenotype
from .ops import OPS, FactorizedReduce, Identity, ReLUConvBN

__all__ = ["drop_path", "EvalCell", "NetworkCIFAR", "NetworkImageNet", "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet"]


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples of a path with probability ``drop_prob`` and rescale the kept ones by 1 / keep."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class EvalCell(nn.Module):
    """A discrete cell. forward(s0, s1, drop_prob) -> (B, len(concat) * C, H', W')."""

    def __init__(self, genotype: CellGenotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.indices = [j for _, j in pairs]
        self.ops = nn.ModuleList(OPS[op](C, 2 if reduction and j < 2 else 1, True) for op, j in pairs)
        self.steps = len(pairs) // 2
        self.multiplier = len(self.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for n in (2 * i, 2 * i + 1):
                h = self.ops[n](states[self.indices[n]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[n], Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[c] for c in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on 8x8 feature maps: ReLU, avg-pool 5 / 3 -> 2x2, 1x1 conv 128, BN, ReLU,
    2x2 conv 768, BN, ReLU, linear."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(AuxiliaryHeadCIFAR):
    """Auxiliary classifier on 14x14 feature maps (avg-pool 5 / 2)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes)
        self.features[1] = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)


class _Network(nn.Module):
    """Shared body: cells from a genotype, reductions at 1/3 and 2/3 of the depth, auxiliary head."""

    drop_path_prob: float = 0.0

    def _build_cells(self, genotype, C, layers, C_pp, C_p, C_curr, reduction_prev, auxiliary, num_classes,
                     aux_cls):
        self.cells = nn.ModuleList()
        self.aux_index = 2 * layers // 3
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_p
        self.auxiliary_head = aux_cls(C_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def _run_cells(self, s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor | None]:
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return s1, aux


class NetworkCIFAR(_Network):
    """forward(x (B, 3, 32, 32)) -> (logits (B, classes), auxiliary logits or None)."""

    def __init__(self, genotype: CellGenotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, stem_multiplier: int = 3, in_channels: int = 3):
        super().__init__()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        self._build_cells(genotype, C, layers, C_curr, C_curr, C, False, auxiliary, num_classes, AuxiliaryHeadCIFAR)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s = self.stem(x)
        out, aux = self._run_cells(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), aux


class NetworkImageNet(_Network):
    """forward(x (B, 3, 224, 224)) -> (logits, auxiliary logits or None). Stem: conv 3x3 s2 to C/2, BN, ReLU,
    conv 3x3 s2 to C, BN; then ReLU, conv 3x3 s2, BN (input / 8 before the first cell)."""

    def __init__(self, genotype: CellGenotype, C: int = 48, num_classes: int = 1000, layers: int = 14,
                 auxiliary: bool = True, in_channels: int = 3):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self._build_cells(genotype, C, layers, C, C, C, True, auxiliary, num_classes, AuxiliaryHeadImageNet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)   # 7x7 at 224 px, any size otherwise

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, aux = self._run_cells(s0, s1)
        return self.classifier(self.global_pooling(out).flatten(1)), aux
