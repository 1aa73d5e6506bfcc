"""DS-ComGAN networks (pure PyTorch), following the paper and the authors' public code.

Generator: feature generator Phi (z -> 4x4 -> ... -> full resolution), the global-feature head
x_bar_z, shared features phi = [a1, a2, a3] from the last three stages, and the subnets
M(phi), F(phi, f), B(phi, b). The composite is x_bar = m * x_f + (1 - m) * x_b.
Discriminators: D_z (real/fake), D_f and D_b (info heads predicting f and b), D_m (masks).
Segmenter S: a U-Net. Every width and the resolution come from `ModelConfig`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import winograd
from .config import ModelConfig


class GLU(nn.Module):
    """Gated linear unit over channels: halves them, x[:c] * sigmoid(x[c:]).

    `fused` (speed.Formulation.fused_glu) picks how, with the same values. Off: the authors' two slices,
    whose backward builds a zeroed NCHW gradient and copies each half in. On: F.glu's kernel in
    NCHW; under channels_last, chunk, whose backward (a cat of the halves' gradients) keeps the
    layout, where F.glu's backward returns NCHW gradients and makes BatchNorm's backward 7x slower.
    (BatchNorm + GLU forward and backward at the paper's widest shape, 2-core CPU: slices 0.20 s,
    F.glu 0.12 s in NCHW; channels_last: chunk 0.18 s, slices 0.55 s, F.glu 0.53 s.)"""
    fused = True

    def forward(self, x):
        if not self.fused:
            c = x.shape[1] // 2
            return x[:, :c] * torch.sigmoid(x[:, c:])
        if x.is_contiguous():
            return F.glu(x, dim=1)
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class Conv3x3(nn.Conv2d):
    """3x3, stride 1, zero padding 1: every 3x3 conv of the networks.

    `winograd` (SpeedConfig.winograd) picks how, with the same values: off, PyTorch's direct
    convolution; on, Winograd F(4x4, 3x3) on the CPU where the layer is wide enough to pay
    (comgan/winograd.py), else the direct one. A subclass of nn.Conv2d, so parameter names and
    checkpoints are those of the plain layer."""
    winograd = False

    def __init__(self, c_in, c_out, bias=False):
        super().__init__(c_in, c_out, 3, 1, 1, bias=bias)

    def forward(self, x):
        if self.winograd:
            return winograd.conv3x3(x, self.weight, self.bias)
        return super().forward(x)


def conv3x3(c_in, c_out, bias=False):
    return Conv3x3(c_in, c_out, bias=bias)


def same_block(c_in, c_out):
    return nn.Sequential(conv3x3(c_in, 2 * c_out), nn.BatchNorm2d(2 * c_out), GLU())


def up_block(c_in, c_out, scale=2):
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode="nearest"), same_block(c_in, c_out))


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(conv3x3(c, 2 * c), nn.BatchNorm2d(2 * c), GLU(), conv3x3(c, c), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def num_upblocks(resolution: int) -> int:
    return int(math.log2(resolution)) - 2


# ---------------------------------------------------------------------------------------------
# Generator


class FeatureGenerator(nn.Module):
    """Phi: z -> (8*ngf, 4, 4) -> upBlocks halving channels to full resolution.

    Returns the activations of the last three stages (coarse to fine): the sources of a1, a2, a3.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = 8 * cfg.ngf
        self.c0 = c
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim, c * 4 * 4 * 2, bias=False), nn.BatchNorm1d(c * 4 * 4 * 2), GLU())
        ups = []
        for _ in range(num_upblocks(cfg.resolution)):
            ups.append(up_block(c, c // 2))
            c //= 2
        self.ups = nn.ModuleList(ups)
        self.out_channels = c

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], self.c0, 4, 4)
        acts = [h]  # the 4x4 stage counts too, so 16 px (two upBlocks) still has three stages
        for up in self.ups:
            h = up(h)
            acts.append(h)
        return acts[-3:]


class SharedFeatures(nn.Module):
    """phi (eq. 5): a1 = x4-upsampled stage L-2, a2 = x2-upsampled stage L-1, a3 = stage L."""

    def __init__(self, c_last: int):
        super().__init__()
        self.a1 = up_block(4 * c_last, 2 * c_last, scale=4)
        self.a2 = up_block(2 * c_last, c_last, scale=2)
        self.out_channels = 4 * c_last

    def forward(self, acts):
        h1, h2, h3 = acts
        return torch.cat([self.a1(h1), self.a2(h2), h3], dim=1)


class Subnet(nn.Module):
    """M, F or B: [code tiled over space ++] phi -> sameBlock -> ResBlocks -> sameBlock -> conv3x3."""

    def __init__(self, c_phi, code_len, width, c_last, num_res, c_out, activation):
        super().__init__()
        self.code_len = code_len
        # How the code enters the first conv (speed.Formulation.code_as_bias; same result either way).
        self.code_as_bias = True
        self.body = nn.Sequential(
            same_block(c_phi + code_len, width),
            *[ResBlock(width) for _ in range(num_res)],
            same_block(width, c_last),
        )
        self.to_out = nn.Sequential(conv3x3(c_last, c_out), activation)

    def forward(self, phi, code=None):
        if not self.code_len:
            return self.to_out(self.body(phi))
        if not self.code_as_bias:  # the paper's formulation: N code channels tiled over space
            code = code[:, :, None, None].expand(-1, -1, phi.shape[2], phi.shape[3])
            return self.to_out(self.body(torch.cat([code, phi], dim=1)))
        first_conv, rest_of_block = self.body[0][0], self.body[0][1:]
        h = conv_with_constant_channels(first_conv, code, phi)
        return self.to_out(self.body[1:](rest_of_block(h)))


def conv_with_constant_channels(conv: nn.Conv2d, const: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """conv(cat([const tiled over space, x])) without building the tiled channels.

    A spatially constant input channel contributes, at each output pixel, the sum of the kernel
    taps that land inside the image (zero padding drops the others): a per-sample bias in the
    interior, less at the border rows and columns. `const` is (B, C) and comes first in the
    concatenation, as in the weights' input-channel order. Costs one conv over x's channels plus
    a (B, C) x (C, 9 * out) product, instead of a conv over C + x's channels (at N = 200 and 64
    feature channels: a quarter of the work, forward and backward)."""
    # The border corrections below hold for a stride-1, zero-padded, 'same'-size convolution.
    k = conv.weight.shape[2:]
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"
            or conv.padding != (k[0] // 2, k[1] // 2) or k[0] % 2 == 0 or k[1] % 2 == 0):
        raise ValueError(f"conv_with_constant_channels needs an odd-kernel, stride-1, zero-padded 'same' "
                         f"convolution, got {conv}")
    c_const = const.shape[1]
    w_const, w_x = conv.weight.split([c_const, conv.weight.shape[1] - c_const], dim=1)
    if isinstance(conv, Conv3x3) and conv.winograd:
        out = winograd.conv3x3(x, w_x, conv.bias)
    else:
        out = F.conv2d(x, w_x, conv.bias, conv.stride, conv.padding)
    taps = torch.einsum("bc,ocyx->boyx", const, w_const)              # (B, out, kh, kw)
    rows = _taps_inside(out.shape[2], w_const.shape[2], conv.padding[0], x.device, x.dtype)  # (H, kh)
    cols = _taps_inside(out.shape[3], w_const.shape[3], conv.padding[1], x.device, x.dtype)  # (W, kw)
    # (B, H, W, out) viewed as (B, out, H, W): NHWC strides, which the conv's output has under
    # channels_last, so the sum below runs over matching memory.
    const_part = torch.einsum("boyx,iy,jx->bijo", taps, rows, cols).permute(0, 3, 1, 2)
    return out + const_part


def _taps_inside(size: int, kernel: int, padding: int, device, dtype) -> torch.Tensor:
    """inside[i, k] = 1 where tap k of output position i reads an input pixel (stride 1)."""
    pos = torch.arange(size, device=device)[:, None] + torch.arange(kernel, device=device)[None, :] - padding
    return ((pos >= 0) & (pos < size)).to(dtype)


@dataclass
class GeneratorOutput:
    image: torch.Tensor     # x_bar: the composite, [-1, 1]
    mask: torch.Tensor      # x_bar_m, (0, 1), one channel
    fg: torch.Tensor        # x_bar_f, the unmasked foreground
    bg: torch.Tensor        # x_bar_b, the unmasked background
    global_image: torch.Tensor  # x_bar_z, the global-feature image (eq. 7)


class OwnFeatures(nn.Module):
    """An independent Phi and shared-feature head for one branch of the study's variants: z -> phi."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.phi_net = FeatureGenerator(cfg)
        self.shared = SharedFeatures(self.phi_net.out_channels)

    def forward(self, z):
        return self.shared(self.phi_net(z))


class Generator(nn.Module):
    """x_bar = m * x_f + (1 - m) * x_b. `cfg.variant` says which parts read the shared Phi(z): all
    three in (DS-)ComGAN; M and F in Pi1, while B has a generator of its own on z (FineGAN-like);
    only F in Pi2, M and B each having their own (three independent generators, PerturbGAN-like).
    Pi1 and Pi2 are the paper's degenerate relatives (its section 3.1, Figure 2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.phi_net = FeatureGenerator(cfg)
        c_last = self.phi_net.out_channels
        self.global_head = nn.Sequential(conv3x3(c_last, 3), nn.Tanh())
        self.shared = SharedFeatures(c_last)
        c_phi, n, w = self.shared.out_channels, cfg.num_categories, cfg.subnet_width
        self.mask_net = Subnet(c_phi, 0, w, c_last, num_res=1, c_out=1, activation=nn.Sigmoid())
        self.fg_net = Subnet(c_phi, n, w, c_last, num_res=2, c_out=3, activation=nn.Tanh())
        self.bg_net = Subnet(c_phi, n, w, c_last, num_res=2, c_out=3, activation=nn.Tanh())
        self.independent_layers = cfg.variant in ("pi1", "pi2")
        self.bg_features = OwnFeatures(cfg) if self.independent_layers else None
        self.mask_features = OwnFeatures(cfg) if cfg.variant == "pi2" else None
        if self.independent_layers:
            # Pi1 is not symmetric in F and B (F shares M's features), so its layers are swapped
            # by this flag rather than by exchanging subnets; Pi2 follows it for one code path.
            self.register_buffer("layers_swapped", torch.zeros((), dtype=torch.bool))

    def forward(self, z, f, b) -> GeneratorOutput:
        swapped = self.independent_layers and bool(self.layers_swapped)
        if swapped:  # the first code drives the foreground, whichever subnet draws it
            f, b = b, f
        acts = self.phi_net(z)
        phi = self.shared(acts)
        mask = self.mask_net(phi if self.mask_features is None else self.mask_features(z))
        fg = self.fg_net(phi, f)
        bg = self.bg_net(phi if self.bg_features is None else self.bg_features(z), b)
        if swapped:
            mask, fg, bg = 1 - mask, bg, fg
        image = mask * fg + (1 - mask) * bg
        return GeneratorOutput(image, mask, fg, bg, self.global_head(acts[-1]))

    @torch.no_grad()
    def swap_foreground_background_(self) -> None:
        """Exchange the roles of F and B: mask -> 1 - mask, x_f <-> x_b, same composite.

        A run may learn the mask of the background. In ComGAN, symmetric in F and B, negating the
        bias-free last conv of M turns sigmoid(a) into sigmoid(-a) = 1 - sigmoid(a); since f and
        b are independent and identically distributed, swapping the subnets leaves the
        distribution of generated images unchanged. Only the names of the parts change. Pi1
        and Pi2 flip a saved flag instead (see __init__).
        """
        if self.independent_layers:
            self.layers_swapped.logical_not_()
            return
        conv = self.mask_net.to_out[0]
        assert conv.bias is None, "the mask head must be bias-free for an exact swap"
        conv.weight.neg_()
        self.fg_net, self.bg_net = self.bg_net, self.fg_net


Z_SCALE = 4.0  # z ~ N(0, 1) * Z_SCALE: the authors' code draws z this wide; every noise draw uses it


def sample_codes(batch: int, cfg: ModelConfig, device=None, generator: torch.Generator | None = None):
    """z ~ N(0, 1) * Z_SCALE and independent one-hot f, b (the paper's unsupervised setting)."""
    z = torch.randn(batch, cfg.z_dim, device=device, generator=generator) * Z_SCALE
    n = cfg.num_categories
    f_idx = torch.randint(n, (batch,), device=device, generator=generator)
    b_idx = torch.randint(n, (batch,), device=device, generator=generator)
    return z, F.one_hot(f_idx, n).to(z.dtype), F.one_hot(b_idx, n).to(z.dtype), f_idx, b_idx


# ---------------------------------------------------------------------------------------------
# Discriminators


def _encoder(c_in: int, width: int, resolution: int) -> tuple[nn.Sequential, int]:
    """Stride-2 conv4 layers down to 4x4 (width doubling, capped at 8x), then conv3 s1."""
    layers = [nn.Conv2d(c_in, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    c, size = width, resolution // 2
    while size > 4:
        c_next = min(2 * c, 8 * width)
        layers += [nn.Conv2d(c, c_next, 4, 2, 1, bias=False), nn.BatchNorm2d(c_next), nn.LeakyReLU(0.2, inplace=True)]
        c, size = c_next, size // 2
    layers += [conv3x3(c, c), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers), c


class Discriminator(nn.Module):
    """D_z on images (3 channels) or D_m on masks (1 channel): one real/fake logit per image.

    The authors' D_z also carries a code head that no loss uses; it is left out (at the paper
    config D_z has 2.33 M parameters, 3.01 M with that head)."""

    def __init__(self, c_in: int, width: int, resolution: int):
        super().__init__()
        self.encoder, c = _encoder(c_in, width, resolution)
        self.logit = nn.Conv2d(c, 1, 4, 1, 0)

    def forward(self, x):
        return self.logit(self.encoder(x)).flatten(1).squeeze(1)


class InfoHead(nn.Module):
    """D_f or D_b (eq. 8): predicts the one-hot code (N logits) from x_bar_f or x_bar_b."""

    def __init__(self, width: int, resolution: int, num_categories: int):
        super().__init__()
        self.encoder, c = _encoder(3, width, resolution)
        self.head = nn.Sequential(conv3x3(c, c), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(c, num_categories, 4, 4))

    def forward(self, x):
        return self.head(self.encoder(x)).flatten(1)


# ---------------------------------------------------------------------------------------------
# Segmenter


def _double_conv(c_in, c_out):
    return nn.Sequential(
        conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        conv3x3(c_out, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """S: U-Net with `depth` max-pool levels, filters width * 2^level; sigmoid mask out."""

    def __init__(self, width: int, depth: int, c_in: int = 3):
        super().__init__()
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(c_in, chans[0])] +
                                  [_double_conv(chans[i], chans[i + 1]) for i in range(depth)])
        self.up_convs = nn.ModuleList([conv3x3(chans[i + 1], chans[i], bias=True) for i in reversed(range(depth))])
        self.up_blocks = nn.ModuleList([_double_conv(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x):
        skips = []
        h = self.down[0](x)
        for block in self.down[1:]:
            skips.append(h)
            h = block(F.max_pool2d(h, 2))
        for up_conv, block in zip(self.up_convs, self.up_blocks):
            h = up_conv(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = block(torch.cat([skips.pop(), h], dim=1))
        return torch.sigmoid(self.out(h))


# ---------------------------------------------------------------------------------------------
# Builders


def build_stage1_networks(cfg: ModelConfig) -> dict[str, nn.Module]:
    return {
        "G": Generator(cfg),
        "D_z": Discriminator(3, cfg.dz_width, cfg.resolution),
        "D_f": InfoHead(cfg.info_width, cfg.resolution, cfg.num_categories),
        "D_b": InfoHead(cfg.info_width, cfg.resolution, cfg.num_categories),
    }


def build_stage2_networks(cfg: ModelConfig) -> dict[str, nn.Module]:
    return {
        "S": UNet(cfg.seg_width, cfg.seg_depth),
        "D_m": Discriminator(1, cfg.dz_width, cfg.resolution),  # D_m has D_z's width (model.dz_width)
    }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
