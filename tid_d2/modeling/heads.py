"""`DenseTowerHead`: the shared GN conv-tower head of GFL and ATSS; `tower_blocks`: a conv tower as its
conv (+ norm) + activation blocks, for methods that read or reuse a head from inside its towers."""
import math
from typing import List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm

__all__ = ["Scale", "DenseTowerHead", "tower_blocks"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the regression output)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def tower_blocks(tower: nn.Sequential) -> List[nn.Sequential]:
    """Split a conv tower (Detectron2's and this project's heads: conv, optional norm, activation,
    repeated) into its blocks, each starting at a conv; the last module of a block is its
    activation."""
    blocks: List[List[nn.Module]] = []
    for m in tower:
        if isinstance(m, nn.Conv2d) or not blocks:
            blocks.append([])
        blocks[-1].append(m)
    return [nn.Sequential(*b) for b in blocks]


def _tower(in_channels: int, conv_dims: List[int], norm: str) -> nn.Sequential:
    layers, prev = [], in_channels
    for dim in conv_dims:
        layers += [nn.Conv2d(prev, dim, 3, padding=1, bias=not norm), get_norm(norm, dim), nn.ReLU()]
        prev = dim
    return nn.Sequential(*[m for m in layers if m is not None])


class DenseTowerHead(nn.Module):
    """
    Classification and regression towers shared over levels; outputs per level
    cls logits (N, K, H, W), regression (N, reg_channels, H, W) scaled per level, and optionally
    centerness logits (N, 1, H, W) from the regression tower.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: List[int],
        reg_channels: int,
        with_centerness: bool = False,
        norm: str = "GN",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"all head input levels need the same channel count, got {channels}")
        in_channels = channels.pop()
        norm = "" if norm in ("", "none", None) else norm
        self.cls_subnet = _tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _tower(in_channels, conv_dims, norm)
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, reg_channels, 3, padding=1)
        self.centerness = nn.Conv2d(last, 1, 3, padding=1) if with_centerness else None
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec], node_name: str, **kwargs):
        node = getattr(cfg.MODEL, node_name)
        return {
            "input_shape": input_shape,
            "num_classes": node.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * node.NUM_CONVS,
            "norm": node.HEAD_NORM,
            "prior_prob": node.PRIOR_PROB,
            **kwargs,
        }

    def forward(self, features: List[Tensor]):
        # level by level, the regression tower first: the order (and so the float sums of the shared
        # towers' gradients) of the head before it was split into towers and `predict`
        return self._predict([(self.bbox_subnet(x), self.cls_subnet(x)) for x in features])

    def predict(self, cls_feats: List[Tensor], box_feats: List[Tensor]):
        """The predictors on the towers' outputs (L x [N, C, H, W] each): per level cls logits,
        scaled regression and (with centerness) centerness logits, as `forward` returns them."""
        return self._predict(list(zip(box_feats, cls_feats)))

    def _predict(self, towers: List[Tuple[Tensor, Tensor]]):
        if len(towers) != len(self.scales):
            raise ValueError(f"head built for {len(self.scales)} levels, got {len(towers)}")
        logits, regs, ctrs = [], [], []
        for (box_feat, cls_feat), scale in zip(towers, self.scales):
            logits.append(self.cls_score(cls_feat))
            regs.append(scale(self.bbox_pred(box_feat)))
            if self.centerness is not None:
                ctrs.append(self.centerness(box_feat))
        return (logits, regs, ctrs) if self.centerness is not None else (logits, regs)
