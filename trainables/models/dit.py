"""Class-conditional DiT predicting the average velocity F(x_t, t, r, y) over [r, t].

Built from timm's PatchEmbed / Attention / Mlp with adaLN-Zero conditioning (Peebles & Xie,
"Scalable Diffusion Models with Transformers", 2023). RCGM adds a second timestep embedder
for the end time r, gated by the gap (t - r), so at r == t the model is a plain velocity
network and the r pathway only matters for real jumps (method notes, section 1.2).
"""

import math

import torch
from torch import nn
from timm.layers import Attention, Mlp, PatchEmbed

from trainables.rcgm.errors import ConfigError

# name -> (depth, width, heads). XS and T are ours (CPU tests and small sweeps); S..XL are the DiT paper's.
DIT_SIZES = {
    "XS": (2, 64, 2),
    "T": (6, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Apply adaLN shift/scale, broadcast over the token axis."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Embed scalar times in [0, 1] with sinusoidal features and a two-layer MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        # DiT's frequencies were tuned for integer steps 0..1000; scaling t in [0, 1] up keeps the
        # high-frequency features informative instead of nearly constant.
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def sinusoidal(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        """Return (B, freq_dim) cos/sin features of the scaled times."""
        half = self.freq_dim // 2
        # At least float32: half-precision times would alias nearby t after the x1000 scaling.
        dtype = torch.promote_types(t.dtype, torch.float32)
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
        args = (t.to(dtype) * self.time_scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embed class labels; index num_classes is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated (and gated) by the condition."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        # True: F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU). Those
        # kernels have no forward-mode AD rule: MeanFlow's JVP selects SDPA's math kernel itself.
        self.attn.fused_attn = fused_attn
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """Modulated norm and a linear map from tokens back to patch pixels."""

    def __init__(self, hidden: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * channels)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Return (len(pos), dim) sin/cos features of positions."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Return a fixed (grid_h*grid_w, dim) 2-D position embedding: half the width per axis."""
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, ys), sincos_1d(dim // 2, xs)], dim=1).float()


class DiT(nn.Module):
    """DiT with t and gated r embedders: forward(x, t, r, y=None) -> tensor shaped like x."""

    def __init__(
        self,
        data_shape: tuple,
        num_classes: int | None,
        patch: int,
        depth: int,
        hidden: int,
        heads: int,
        mlp_ratio: float = 4.0,
        fused_attn: bool = True,
    ):
        super().__init__()
        channels, height, width = data_shape
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        self.patch = patch
        self.grid = (height // patch, width // patch)
        self.x_embed = PatchEmbed((height, width), patch, channels, hidden, bias=True)
        self.t_embed = TimestepEmbedder(hidden)
        self.r_embed = TimestepEmbedder(hidden)
        self.y_embed = LabelEmbedder(num_classes, hidden) if num_classes is not None else None
        # Fixed, not learned: DiT's choice; kept out of state_dict since it is a function of the shape.
        self.register_buffer("pos_embed", sincos_2d(hidden, *self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, fused_attn) for _ in range(depth))
        self.final = FinalLayer(hidden, patch, channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embedders, and zero adaLN/output so F == 0 at init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.x_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        for embedder in (self.t_embed, self.r_embed):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        # adaLN-Zero: every residual branch starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, r: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """c = emb_t(t) + (t - r) * emb_r(r) + emb_y(y): the r path vanishes exactly at r == t."""
        c = self.t_embed(t) + (t - r).to(self.pos_embed.dtype)[:, None] * self.r_embed(r)
        if self.y_embed is not None:
            c = c + self.y_embed(y, t.shape[0], t.device)
        elif y is not None:
            raise ConfigError("y", "labels", "None: this DiT was built unconditional (num_classes=None)")
        return c

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Turn (B, T, p*p*C) tokens back into (B, C, H, W) images."""
        channels = self.data_shape[0]
        gh, gw = self.grid
        p = self.patch
        x = tokens.reshape(tokens.shape[0], gh, gw, p, p, channels)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(tokens.shape[0], channels, gh * p, gw * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(t, r, y)
        h = self.x_embed(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))


def parse_dit_name(name: str) -> tuple[int, int, int, int]:
    """'DiT-S/2' -> (depth, width, heads, patch)."""
    try:
        size, patch = name.removeprefix("DiT-").split("/")
        return (*DIT_SIZES[size], int(patch))
    except (KeyError, ValueError):
        raise ConfigError("model", name, "DiT-<" + "|".join(DIT_SIZES) + ">/<patch>, e.g. DiT-S/2") from None


def build_dit(name: str, data_shape: tuple, num_classes: int | None = None, **kwargs) -> DiT:
    """Build a named DiT (e.g. 'DiT-XS/4') for (C, H, W) data; kwargs go to DiT (fused_attn, mlp_ratio)."""
    depth, hidden, heads, patch = parse_dit_name(name)
    if len(data_shape) != 3 or data_shape[1] % patch or data_shape[2] % patch:
        raise ConfigError("data_shape", tuple(data_shape), f"(C, H, W) with H and W divisible by patch {patch}")
    return DiT(tuple(data_shape), num_classes, patch, depth, hidden, heads, **kwargs)
