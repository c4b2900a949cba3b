"""Peer architectures at their published sizes, in plain torch (random weights: for latency).

open_clip and timm import torchvision at import time, and torchvision cannot be installed beside
this torch build, so the peers are rebuilt here with the same shapes:

* ``vit_b_32``: open_clip ViT-B-32. Image: 224 px, patch 32, width 768, 12 layers, 12 heads,
  MLP 3072, class token, pre/post LayerNorm, projection to 512. Text: vocab 49408, context 77,
  width 512, 12 layers, 8 heads, causal mask, EOT-token pooling, projection to 512.
* ``mobileclip_s0``: MobileCLIP-S0 in its re-parameterised (inference) form. Image: MCi0 (FastViT
  family) at 256 px: MobileOne stem, stages of depth 2/6/10/2 and width 64/128/256/512,
  RepMixer token mixing in stages 1-3, conditional positional encoding + 16-head attention in
  stage 4, ConvFFN (7x7 depthwise, MLP ratio 3), 7x7 stride-2 patch embeddings, a 3x3 depthwise
  expansion to 1024 with squeeze-excite, global pool, projection to 512. Text: MCt, vocab 49408,
  context 77, width 512, RepMixer (1x11 depthwise) + 4 transformer layers + RepMixer, 8 heads,
  no causal mask, EOT pooling, projection to 512.

Parameter counts match the published ones: ViT-B-32 87.8M image / 63.4M text; MobileCLIP-S0
11.2M image (published 11.4M) / 42.4M text.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, CONTEXT, EMBED = 49408, 77, 512


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (open_clip's ResidualAttentionBlock)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def _eot_pool(x, input_ids):
    return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]


class ViTImage(nn.Module):
    def __init__(self, size=224, patch=32, width=768, layers=12, heads=12, out=EMBED):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        n = (size // patch) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(n, width) * 0.01)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.proj = nn.Linear(width, out, bias=False)

    def forward(self, pixel_values):
        x = self.conv1(pixel_values).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.ln_post(x[:, 0]))


class CLIPText(nn.Module):
    def __init__(self, width=512, layers=12, heads=8, out=EMBED):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out, bias=False)
        self.register_buffer("causal", torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1),
                             persistent=False)

    def forward(self, input_ids):
        x = self.token_embedding(input_ids) + self.positional_embedding
        for blk in self.blocks:
            x = blk(x, self.causal)
        return self.proj(_eot_pool(self.ln_final(x), input_ids))


# -- MobileCLIP-S0 (re-parameterised inference form) ------------------------------------------
def _conv(cin, cout, k, s=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, padding=(k - 1) // 2 if isinstance(k, int)
                        else tuple((kk - 1) // 2 for kk in k), groups=groups)]
    if act:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


class ConvFFN(nn.Module):
    def __init__(self, dim, ratio=3.0, k=7):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, k, padding=(k - 1) // 2 if isinstance(k, int)
                            else tuple((kk - 1) // 2 for kk in k), groups=dim)
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.dw(x))))


class RepMixerBlock(nn.Module):
    """x + DWConv(x) (the folded RepMixer), then x + ConvFFN(x)."""

    def __init__(self, dim, ratio=3.0, k=3, ffn_k=7):
        super().__init__()
        self.mixer = nn.Conv2d(dim, dim, k, padding=(k - 1) // 2 if isinstance(k, int)
                               else tuple((kk - 1) // 2 for kk in k), groups=dim)
        self.ffn = ConvFFN(dim, ratio, ffn_k)

    def forward(self, x):
        x = x + self.mixer(x)
        return x + self.ffn(x)


class AttnBlock(nn.Module):
    def __init__(self, dim, ratio=3.0, head_dim=32):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.attn = Attention(dim, dim // head_dim)
        self.ffn = ConvFFN(dim, ratio)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.attn(self.norm(x).flatten(2).transpose(1, 2))
        x = x + t.transpose(1, 2).reshape(b, c, h, w)
        return x + self.ffn(x)


class MCi0(nn.Module):
    def __init__(self, depths=(2, 6, 10, 2), dims=(64, 128, 256, 512), out=EMBED):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, dims[0], 3, 2), _conv(dims[0], dims[0], 3, 2, dims[0]),
                                  _conv(dims[0], dims[0], 1))
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            mods = []
            if i > 0:  # patch embedding: 7x7 stride-2 grouped conv + 1x1 conv
                mods += [_conv(dims[i - 1], dim, 7, 2, dims[i - 1]), _conv(dim, dim, 1)]
            if i == len(depths) - 1:
                mods += [nn.Conv2d(dim, dim, 7, padding=3, groups=dim)]  # RepCPE (folded residual)
                mods += [AttnBlock(dim) for _ in range(depth)]
            else:
                mods += [RepMixerBlock(dim) for _ in range(depth)]
            stages.append(nn.Sequential(*mods))
        self.stages = nn.Sequential(*stages)
        self.conv_exp = nn.Conv2d(dims[-1], 2 * dims[-1], 3, padding=1, groups=dims[-1])
        self.se_reduce = nn.Conv2d(2 * dims[-1], 2 * dims[-1] // 16, 1)
        self.se_expand = nn.Conv2d(2 * dims[-1] // 16, 2 * dims[-1], 1)
        self.proj = nn.Linear(2 * dims[-1], out, bias=False)

    def forward(self, pixel_values):
        x = self.conv_exp(self.stages(self.stem(pixel_values)))
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = F.gelu(x * s)
        return self.proj(x.mean((2, 3)))


class MCt(nn.Module):
    def __init__(self, width=512, heads=8, out=EMBED):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, width) * 0.01)
        self.first = RepMixerBlock(width, ratio=4.0, k=(1, 11), ffn_k=(1, 11))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(4))
        self.last = RepMixerBlock(width, ratio=4.0, k=(1, 11), ffn_k=(1, 11))
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out, bias=False)

    @staticmethod
    def _as_image(x):  # (B, N, C) -> (B, C, 1, N)
        return x.transpose(1, 2).unsqueeze(2)

    @staticmethod
    def _as_tokens(x):
        return x.squeeze(2).transpose(1, 2)

    def forward(self, input_ids):
        x = self.token_embedding(input_ids) + self.positional_embedding
        x = self._as_tokens(self.first(self._as_image(x)))
        for blk in self.blocks:
            x = blk(x)
        x = self._as_tokens(self.last(self._as_image(x)))
        return self.proj(_eot_pool(self.ln_final(x), input_ids))


PEERS = {
    # name: (image module, image size, text module)
    "vit-b-32": (lambda: ViTImage(), 224, lambda: CLIPText()),
    "mobileclip-s0": (lambda: MCi0(), 256, lambda: MCt()),
}
