"""ReDO (Chen, Artieres, Denoyer, NeurIPS 2019, "Unsupervised Object Segmentation by Redrawing"):
the unsupervised baseline of the ComGAN paper, as a second method in the same system.

A mask network M splits a real photo I into REGIONS soft masks (a softmax over regions). One
region i per image is redrawn: a region generator G_i draws new pixels V from a code z and the
region's mask, and the redrawn image is m_i * V + (1 - m_i) * I. A discriminator D tells photos
from redrawn ones (hinge loss), so M must cut along boundaries where a redrawn region still looks
real; an information network Z (the paper's delta) recovers z from the redrawn image, so no region
may be empty (an empty region hides its z). M is the segmenter: exported in the segmenter
artifact format (the object region picked by where it lies in the frame), so evaluation and
segmenting new photos work on it unchanged.

As in the paper: orthogonal initialisation, spectral normalisation on every network but M,
conditional batch norm on z in G, Adam betas (0, 0.9), M's learning rate a tenth of the others',
z of model.z_dim ~ N(0, I) (the `redo` preset sets the paper's 32), the generator update of
Algorithm 1 (M, G and Z together) followed by the discriminator update on a fresh redraw.
Deviations (docs/DESIGN.md, "ReDO"): no self-attention (our images are 32-64 px); the regions are
drawn in equal numbers per batch (a shuffled half each) rather than independently, so that every
region generator takes part in every step (data parallelism needs every parameter used); the
networks are smaller versions of the paper's (widths from the model section).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from . import speed
from .config import ComGANConfig, ModelConfig
from .metrics import border_mean
from .training import Snapshot, _Step, build_networks

REGIONS = 2               # object and background
LAMBDA_Z = 5.0            # weight of the information-conservation term (the authors' code default)
MASK_LR_RATIO = 0.1       # M learns at a tenth of the others' rate (paper: 1e-5 against 1e-4)
MASK_WEIGHT_DECAY = 1e-4  # on M only (the authors' code)
ADAM_BETAS = (0.0, 0.9)
ORTHOGONAL_GAIN = 0.8     # the authors' code default
# The export tells the object region by where it lies: the frame's central half against its outer
# band, BAND of the side wide. M is unsure on the last pixels (zero padding): on the synthetic
# scenes both regions held 0.50 of the 1/16 ring the ComGAN export reads, and the wrong one was
# taken (strict IoU 0.002 against 0.509).
BAND = 1 / 8


def orthogonal(layer: nn.Module) -> nn.Module:
    nn.init.orthogonal_(layer.weight, ORTHOGONAL_GAIN)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def sn(layer: nn.Module) -> nn.Module:
    """A layer initialised orthogonally, then spectrally normalised (so the power iteration's
    vectors start from the initialised weight)."""
    return spectral_norm(orthogonal(layer))


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal initialisation of the layers `sn` did not initialise (M's)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not hasattr(m, "parametrizations"):
            orthogonal(m)


def levels(resolution: int) -> int:
    """Up- or down-sampling blocks between 4x4 and the image side."""
    return resolution.bit_length() - 3


# ---------------------------------------------------------------------------------------------
# M: the mask network (PSPNet-like: strided encoder, residual blocks, pyramid pooling, decoder)


def conv_bn_relu(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the features averaged over 1x1, 2x2 and 4x4 grids, reduced,
    upsampled and stacked onto the features, so every pixel sees global and regional context."""
    BINS = (1, 2, 4)

    def __init__(self, c):
        super().__init__()
        reduced = max(c // 4, 4)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c, reduced, 1, bias=False), nn.BatchNorm2d(reduced),
                          nn.ReLU(inplace=True)) for b in self.BINS)
        self.fuse = conv_bn_relu(c + reduced * len(self.BINS), c)

    def forward(self, x):
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.branches]
        return self.fuse(torch.cat([x, *pooled], 1))


class MaskNet(nn.Module):
    """Image [B, 3, H, W] in [-1, 1] -> soft masks [B, REGIONS, H, W] summing to 1 over regions."""

    def __init__(self, width: int, residual_blocks: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(conv_bn_relu(3, width), conv_bn_relu(width, 2 * width, 2),
                                     conv_bn_relu(2 * width, 4 * width, 2))
        self.middle = nn.Sequential(*[Residual(4 * width) for _ in range(residual_blocks)], PyramidPooling(4 * width))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), conv_bn_relu(4 * width, 2 * width),
                                     nn.Upsample(scale_factor=2), conv_bn_relu(2 * width, width),
                                     nn.Conv2d(width, REGIONS, 3, 1, 1))

    def forward(self, x):
        return torch.softmax(self.decoder(self.middle(self.encoder(x))), dim=1)


class ObjectMask(nn.Module):
    """The exported segmenter: M's object region as [B, 1, H, W] probabilities, like the U-Net S.
    `region` (a buffer, saved with the weights) is the region the export found to be the object."""

    def __init__(self, width: int):
        super().__init__()
        self.net = MaskNet(width)
        self.register_buffer("region", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.net(x).index_select(1, self.region.view(1))


def object_region(masks: torch.Tensor) -> int:
    """The region that holds more of the frame's central half than of its outer band: objects sit
    inside the frame, backgrounds reach its edges (the border prior of the ComGAN export, read
    over a band wide enough for M's unsure last pixels)."""
    side = min(masks.shape[-2:])
    q = side // 4
    centre = masks[..., q:side - q, q:side - q].float().mean((0, 2, 3))
    band = torch.stack([border_mean(masks[:, k:k + 1].float(), max(1, round(BAND * side))).mean()
                        for k in range(REGIONS)])
    return int((centre - band).argmax())


# ---------------------------------------------------------------------------------------------
# G: one region generator per region (SAGAN-like, conditional batch norm on z, the mask as input)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift come from z: z sets the region's colours and texture."""

    def __init__(self, c, z_dim):
        super().__init__()
        self.norm = nn.BatchNorm2d(c, affine=False)
        self.affine = sn(nn.Linear(z_dim, 2 * c))

    def forward(self, x, z):
        gamma, beta = self.affine(z).unsqueeze(-1).unsqueeze(-1).chunk(2, 1)
        return self.norm(x) * (1 + gamma) + beta


class UpBlock(nn.Module):
    """Residual up-sampling block; the region's mask, at the block's output size, joins its input."""

    def __init__(self, c_in, c_out, z_dim):
        super().__init__()
        self.norm1, self.norm2 = ConditionalBatchNorm(c_in, z_dim), ConditionalBatchNorm(c_out, z_dim)
        self.conv1 = sn(nn.Conv2d(c_in + 1, c_out, 3, 1, 1))
        self.conv2 = sn(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.skip = sn(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x, z, mask):
        up = F.interpolate(F.relu(self.norm1(x, z)), scale_factor=2)
        h = self.conv1(torch.cat([up, F.adaptive_avg_pool2d(mask, up.shape[-1])], 1))
        h = self.conv2(F.relu(self.norm2(h, z)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class RegionGenerator(nn.Module):
    """(mask [B, 1, H, W], z [B, z_dim]) -> pixel values V [B, 3, H, W] in [-1, 1]."""

    def __init__(self, width: int, resolution: int, z_dim: int):
        super().__init__()
        n = levels(resolution)
        channels = [width * min(2 ** (n - i), 8) for i in range(n + 1)]
        self.start = channels[0]
        self.fc = sn(nn.Linear(z_dim, 16 * channels[0]))
        self.blocks = nn.ModuleList(UpBlock(a, b, z_dim) for a, b in zip(channels, channels[1:]))
        self.out = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU(), sn(nn.Conv2d(channels[-1], 3, 3, 1, 1)),
                                 nn.Tanh())

    def forward(self, mask, z):
        h = self.fc(z).view(-1, self.start, 4, 4)
        for block in self.blocks:
            h = block(h, z, mask)
        return self.out(h)


class RegionGenerators(nn.Module):
    """G_1 ... G_REGIONS; each image's region is drawn by its own generator."""

    def __init__(self, width: int, resolution: int, z_dim: int):
        super().__init__()
        self.regions = nn.ModuleList(RegionGenerator(width, resolution, z_dim) for _ in range(REGIONS))

    def forward(self, mask, z, region):
        out = None
        for k, generator in enumerate(self.regions):
            chosen = (region == k).nonzero().squeeze(1)
            if chosen.numel():  # in training every region has images (draw_regions); a preview may ask for one
                drawn = generator(mask[chosen], z[chosen])  # bf16 under CPU autocast, whatever mask is
                out = drawn.new_empty(mask.shape[0], *drawn.shape[1:]) if out is None else out
                out = out.index_put((chosen,), drawn.to(out.dtype))
        return out


# ---------------------------------------------------------------------------------------------
# D and Z: spectrally normalised residual encoders (D judges, Z recovers the redrawn region's z)


class DownBlock(nn.Module):
    def __init__(self, c_in, c_out, first=False):
        super().__init__()
        self.first = first
        self.conv1, self.conv2 = sn(nn.Conv2d(c_in, c_out, 3, 1, 1)), sn(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.skip = sn(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x):
        h = self.conv1(x if self.first else F.relu(x))
        h = F.avg_pool2d(self.conv2(F.relu(h)), 2)
        return h + self.skip(F.avg_pool2d(x, 2))


class Encoder(nn.Module):
    """Image -> `outputs` numbers: residual down-sampling to 4x4, ReLU, sum over positions, linear."""

    def __init__(self, width: int, resolution: int, outputs: int):
        super().__init__()
        n = levels(resolution)
        channels = [3] + [width * min(2 ** i, 8) for i in range(n)]
        pairs = enumerate(zip(channels, channels[1:]))
        self.blocks = nn.Sequential(*[DownBlock(a, b, first=i == 0) for i, (a, b) in pairs])
        self.head = sn(nn.Linear(channels[-1], outputs))

    def forward(self, x):
        return self.head(F.relu(self.blocks(x)).sum((2, 3)))


class CodeReader(nn.Module):
    """Z (the paper's delta): the redrawn image -> its region's z. Shared layers, one last layer
    per region (as in the paper), all computed and the redrawn region's taken."""

    def __init__(self, width: int, resolution: int, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(width, resolution, REGIONS * z_dim)

    def forward(self, x, region):
        per_region = self.encoder(x).view(-1, REGIONS, self.z_dim)
        return per_region[torch.arange(x.shape[0], device=x.device), region]


def build_redo_networks(cfg: ModelConfig) -> dict[str, nn.Module]:
    nets = {"M": MaskNet(cfg.seg_width), "G": RegionGenerators(cfg.ngf, cfg.resolution, cfg.z_dim),
            "D": Encoder(cfg.dz_width, cfg.resolution, 1), "Z": CodeReader(cfg.info_width, cfg.resolution, cfg.z_dim)}
    for net in nets.values():
        orthogonal_init(net)
    return nets


# ---------------------------------------------------------------------------------------------
# State and step


def draw_regions(batch: int, device) -> torch.Tensor:
    """Which region each image gets redrawn: every region for an equal share of the batch, in a
    random order (every region generator takes part in every step)."""
    return (torch.randperm(batch, device=device) % REGIONS)


def redraw(M: nn.Module, G: nn.Module, real: torch.Tensor, z_dim: int):
    """(redrawn images, region per image, z, all soft masks) for a batch of photos."""
    masks = M(real)
    region = draw_regions(real.shape[0], real.device)
    z = torch.randn(real.shape[0], z_dim, device=real.device, dtype=real.dtype)
    m = masks[torch.arange(real.shape[0], device=real.device), region].unsqueeze(1)
    return m * G(m, z, region) + (1 - m) * real, region, z, masks


def region_statistics(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each image's smaller region (`mask/min_region`: the paper's collapse gauge, 0 when one region
    takes the whole image) and the share of pixels M is sure of (`mask/binary_fraction`)."""
    areas = masks.float().mean((2, 3))
    return {"mask/min_region": areas.min(1).values.mean(),
            "mask/binary_fraction": (masks.float().amax(1) > 0.9).float().mean()}


@dataclass
class ReDOState(Snapshot):
    """M, G, D, Z and their optimisers; M is what the stage exports. M, G and Z, updated together
    from one loss, share one Adam (M's parameter group at its own rate and weight decay: the same
    updates as three optimisers, and one loss-scaler step under fp16)."""
    M: nn.Module
    G: nn.Module
    D: nn.Module
    Z: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    step: int = 0
    TRAINED: ClassVar = ("M", "G", "D", "Z")
    CARRIED: ClassVar = ()
    OPTIMIZERS: ClassVar = ("opt_G", "opt_D")

    @classmethod
    def create(cls, cfg: ComGANConfig) -> "ReDOState":
        nets = build_networks(build_redo_networks, cfg)
        lr = cfg.stage2.lr
        groups = [{"params": nets["M"].parameters(), "lr": lr * MASK_LR_RATIO, "weight_decay": MASK_WEIGHT_DECAY},
                  {"params": [*nets["G"].parameters(), *nets["Z"].parameters()]}]
        return cls(nets["M"], nets["G"], nets["D"], nets["Z"],
                   speed.adam(groups, cfg.stage2, cfg.speed, betas=ADAM_BETAS),
                   speed.adam(nets["D"].parameters(), cfg.stage2, cfg.speed, betas=ADAM_BETAS))


class ReDOStep(_Step):
    """Algorithm 1 of the paper: phase G (M, G and Z together: fool the plain, frozen D, recover
    z), then phase D (hinge loss on the photos against a fresh redraw by the updated M and G)."""

    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        state, cfg = self.state, self.cfg
        M, G, D, Z = (self.use(name) for name in ("M", "G", "D", "Z"))
        opt_G, opt_D = self.use("opt_G"), self.use("opt_D")
        real = speed.as_input(real, cfg.speed)

        state.D.requires_grad_(False)
        opt_G.zero_grad(set_to_none=True)
        redrawn, region, z, masks = redraw(M, G, real, cfg.model.z_dim)
        adv = -state.D(redrawn).mean()
        info = (Z(redrawn, region) - z).pow(2).mean()
        self.backward(adv + LAMBDA_Z * info)
        mask_grad = gradient_norm(state.M)
        opt_G.step()
        state.D.requires_grad_(True)

        opt_D.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = redraw(state.M, state.G, real, cfg.model.z_dim)[0]
        d_real, d_fake = D(real), D(fake)
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.backward(loss_d)
        opt_D.step()

        state.step += 1
        stats = {"loss/D": loss_d, "loss/G_adv": adv, "loss/info_z": info, "D/real_score": d_real.mean(),
                 "D/fake_score": d_fake.mean(), "grad/mask_net": mask_grad, **region_statistics(masks)}
        return {k: v.detach().float() for k, v in stats.items()}


def gradient_norm(module: nn.Module) -> torch.Tensor:
    """2-norm of the gradient on a module's weights (ComGAN's Figure 4 gauge, here on M)."""
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else next(module.parameters()).new_zeros(())


@torch.no_grad()
def export_segmenter(M: nn.Module, cfg: ModelConfig, photos: torch.Tensor, chunk: int) -> ObjectMask:
    """M as the segmenter: an ObjectMask holding M's weights and the object region, told apart on
    `photos` by where it lies in the frame (object_region)."""
    with torch.random.fork_rng(devices=[]):  # building it draws initial weights: not from training's stream
        segmenter = ObjectMask(cfg.seg_width).to(photos.device)
    segmenter.net.load_state_dict(M.state_dict())
    segmenter.eval()
    masks = torch.cat([segmenter.net(photos[i:i + chunk]) for i in range(0, photos.shape[0], chunk)])
    segmenter.region.fill_(object_region(masks))
    return segmenter
