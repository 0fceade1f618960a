"""FGD (Yang et al., CVPR 2022): focal and global knowledge distillation of FPN features."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn

from ..structures import DenseOutputs, DistillLayout
from .adapters import build_adapter
from .base import DISTILLER_REGISTRY, Distiller, check_loss_weights
from .helpers import feature_pairs

__all__ = ["FGD", "GlobalContext", "attention_maps", "box_masks"]


class GlobalContext(nn.Module):
    """
    The GcBlock-style context module of FGD's global distillation:
    x + MLP(sum_hw softmax(conv1x1(x))_hw * x_hw), i.e. [N, C, H, W] -> [N, C, H, W].
    The MLP's last conv starts at zero, so the module starts as the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"FGD's context module needs >= 2 feature channels, got {channels}")
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        weights = F.softmax(self.conv_mask(x).reshape(n, -1), dim=1)  # [N, HW]
        context = torch.einsum("nch,nh->nc", x.reshape(n, c, -1), weights)
        return x + self.channel_add(context.reshape(n, c, 1, 1))


def attention_maps(x: Tensor, temperature: float):
    """
    FGD's attention of a feature map x [N, C, H, W] from its mean absolute value:
    spatial [N, H, W] = H*W * softmax over locations, channel [N, C] = C * softmax over channels.
    """
    n, c, h, w = x.shape
    value = x.abs()
    spatial = h * w * F.softmax(value.mean(dim=1).reshape(n, -1) / temperature, dim=1)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def box_masks(targets: List[Instances], stride: float, shape, device):
    """
    FGD's foreground and background masks of one level, for all images at once.

    A GT box covers the cells from floor(x0 / stride) to ceil(x1 / stride) (inclusive; same for y),
    and each covered cell gets 1 / (number of cells of that box), the largest value where boxes
    overlap; so every GT weighs about 1 whatever its size. The background mask is 1 / N_bg on the
    cells no box covers (0 elsewhere).

    Returns:
        fg, bg: [N, H, W] each.
    """
    h, w = shape
    n = len(targets)
    boxes = torch.cat([t.gt_boxes.tensor for t in targets]).to(device=device, dtype=torch.float32)
    image_idx = torch.cat(
        [torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(targets)]
    ).to(device)
    fg = torch.zeros(n, h * w, device=device)
    if len(boxes):
        scaled = boxes / stride
        x0, y0 = scaled[:, 0].floor(), scaled[:, 1].floor()
        x1, y1 = scaled[:, 2].ceil(), scaled[:, 3].ceil()
        area = 1.0 / ((x1 - x0 + 1) * (y1 - y0 + 1))  # [M]
        ys = torch.arange(h, device=device, dtype=torch.float32)
        xs = torch.arange(w, device=device, dtype=torch.float32)
        in_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # [M, H]
        in_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # [M, W]
        value = (in_y[:, :, None] & in_x[:, None, :]) * area[:, None, None]  # [M, H, W]
        value = value.reshape(len(boxes), h * w)
        fg = fg.scatter_reduce(0, image_idx[:, None].expand_as(value), value, "amax")
    bg = (fg == 0).float()
    bg = bg / bg.sum(dim=1, keepdim=True).clamp(min=1.0)
    return fg.reshape(n, h, w), bg.reshape(n, h, w)


@DISTILLER_REGISTRY.register()
class FGD(Distiller):
    """
    FGD, per FPN level l (features T, S [N, C, H, W]; S after the adapter; sums over n, c, h, w):

    - focal: fg = sum M_fg * A_s^T * A_c^T * (S - T)^2 / N and bg likewise with M_bg, where
      A_s^T, A_c^T are the teacher's spatial and channel attention (temperature t);
    - attention: mask = (sum |A_c^S - A_c^T| + sum |A_s^S - A_s^T|) / N;
    - global: relation = sum (G_s(S) - G_t(T))^2 / N with two trainable GcBlock context modules
      per level (one for the student, one for the teacher features), trained with the student.

    loss_fgd_fg/bg/mask/relation = alpha/beta/gamma/lambda * the sums over levels.
    Both context modules start as the identity, so at the start all four terms vanish when S == T;
    once they are trained the relation term generally does not (G_s != G_t).
    """

    config = {
        "TEMPERATURE": (0.5, "temperature of the spatial/channel attention"),
        "ALPHA": (0.001, "weight of the foreground feature loss"),
        "BETA": (0.0005, "weight of the background feature loss"),
        "GAMMA": (0.0005, "weight of the attention (mask) loss"),
        "LAMBDA": (0.000005, "weight of the global relation loss"),
    }
    main_weights = ("ALPHA", "BETA", "GAMMA", "LAMBDA")

    @configurable
    def __init__(
        self,
        *,
        adapters: nn.ModuleList,
        student_context: nn.ModuleList,
        teacher_context: nn.ModuleList,
        temperature: float,
        alpha: float,
        beta: float,
        gamma: float,
        lambda_: float,
        **base,
    ):
        """
        Args:
            adapters: per level, maps student features [N, Cs, H, W] to [N, Ct, H, W].
            student_context, teacher_context: per level, a `GlobalContext` on Ct channels.
            temperature: attention temperature.
            alpha, beta, gamma, lambda_: weights of the fg, bg, attention and relation losses.
            base: the `Distiller` arguments.
        """
        super().__init__(**base)
        if not len(adapters) == len(student_context) == len(teacher_context):
            raise ValueError("FGD needs one adapter and two context modules per level")
        if temperature <= 0:
            raise ValueError(f"MODEL.DISTILL.FGD.TEMPERATURE must be > 0, got {temperature}")
        check_loss_weights("MODEL.DISTILL.FGD", ALPHA=alpha, BETA=beta, GAMMA=gamma, LAMBDA=lambda_)
        self.adapters = adapters
        self.student_context = student_context
        self.teacher_context = teacher_context
        self.temperature = temperature
        self.weights = {"fg": alpha, "bg": beta, "mask": gamma, "relation": lambda_}

    @classmethod
    def from_config(cls, cfg, layout: DistillLayout):
        """One adapter and two context modules per level of the layout (the authors' configs)."""
        args = super().from_config(cfg, layout)
        levels = range(layout.num_levels)
        s, t = layout.student_channels, layout.teacher_channels
        args["adapters"] = nn.ModuleList([build_adapter(cfg.ADAPTER, s, t) for _ in levels])
        args["student_context"] = nn.ModuleList([GlobalContext(t) for _ in levels])
        args["teacher_context"] = nn.ModuleList([GlobalContext(t) for _ in levels])
        args["lambda_"] = args.pop("lambda")
        return args

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        if student.num_levels != len(self.adapters):
            raise ValueError(
                f"FGD was built for {len(self.adapters)} FPN levels (the DistillLayout) but the "
                f"student has {student.num_levels}"
            )
        if len(targets) != student.features[0].shape[0]:
            raise ValueError(
                f"FGD: got {len(targets)} target Instances for a batch of "
                f"{student.features[0].shape[0]} images"
            )
        pairs = feature_pairs(teacher, student, self.adapters, "FGD", norm=self.feature_norm)
        terms = {k: [] for k in self.weights}
        for level, (t, s) in enumerate(pairs):
            n = t.shape[0]
            spatial_t, channel_t = attention_maps(t, self.temperature)
            spatial_s, channel_s = attention_maps(s, self.temperature)
            fg, bg = box_masks(targets, teacher.strides[level], t.shape[-2:], t.device)
            sq = (s - t) ** 2 * spatial_t[:, None] * channel_t[:, :, None, None]  # [N, C, H, W]
            terms["fg"].append((sq * fg[:, None]).sum() / n)
            terms["bg"].append((sq * bg[:, None]).sum() / n)
            terms["mask"].append(
                ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / n
            )
            relation = self.student_context[level](s) - self.teacher_context[level](t)
            terms["relation"].append((relation**2).sum() / n)
        losses, diagnostics = {}, {}
        for k, values in terms.items():
            per_level = torch.stack(values) * self.weights[k]
            diagnostics[f"{k}_per_level"] = per_level
            losses[k] = per_level.sum()
        return losses, diagnostics
