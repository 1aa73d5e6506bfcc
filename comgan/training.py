"""Stage-1 and stage-2 update steps, written as explicit phases (StyleGAN-style).

Stage 1, one step: phase Dz (update D_z on real, x_bar and x_bar_z), then phase Gmain (update G,
D_f and D_b together: fool D_z, recover f and b, sharpen the mask by beta * H2). Stage 2, one
step: phase Dm (D_m: real = generated masks, fake = S(x_bar), S(x)), then phase S (consistency
lambda * |S(x_bar) - x_bar_m| plus fooling D_m on both S outputs).

The steps take modules that may be wrapped for data parallelism; `backward` lets the caller
route loss.backward() through its mixed-precision / DDP machinery (accelerate), and the G phase
calls `d_plain` (the unwrapped D) so no DDP reducer of D is armed while D is frozen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from . import losses
from .config import Config
from .ema import ema_decay_at, make_ema, update_ema
from .metrics import mask_statistics
from .networks import build_stage1_networks, build_stage2_networks, sample_codes


def plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def adam(params, stage_cfg) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=stage_cfg.lr, betas=(stage_cfg.adam_beta1, stage_cfg.adam_beta2))


@dataclass
class Stage1State:
    """Everything stage 1 trains, plus G_ema. Modules may be replaced by wrapped versions."""
    G: nn.Module
    D_z: nn.Module
    D_f: nn.Module
    D_b: nn.Module
    G_ema: nn.Module
    opt_D: torch.optim.Optimizer
    opt_G: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def create(cls, cfg: Config) -> "Stage1State":
        nets = build_stage1_networks(cfg.model)
        opt_D = adam([p for p in nets["D_z"].parameters() if p.requires_grad], cfg.stage1)
        g_params = [p for name in ("G", "D_f", "D_b") for p in nets[name].parameters()]
        return cls(nets["G"], nets["D_z"], nets["D_f"], nets["D_b"], make_ema(nets["G"]),
                   opt_D, adam(g_params, cfg.stage1))


@dataclass
class Stage2State:
    S: nn.Module
    D_m: nn.Module
    opt_S: torch.optim.Optimizer
    opt_Dm: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def create(cls, cfg: Config) -> "Stage2State":
        nets = build_stage2_networks(cfg.model)
        return cls(nets["S"], nets["D_m"], adam(nets["S"].parameters(), cfg.stage2),
                   adam(nets["D_m"].parameters(), cfg.stage2))


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad or getattr(p, "_comgan_trainable", False)]


def set_trainable(module: nn.Module, flag: bool) -> None:
    """Toggle requires_grad of a module's trainable parameters (frozen heads stay frozen)."""
    for p in module.parameters():
        if not hasattr(p, "_comgan_trainable"):
            p._comgan_trainable = p.requires_grad
        if p._comgan_trainable:
            p.requires_grad_(flag)


@dataclass
class Stage1Step:
    state: Stage1State
    cfg: Config
    backward: Callable[[torch.Tensor], None] = plain_backward
    d_plain: nn.Module | None = None      # unwrapped D_z for the G phase
    g_ema_source: nn.Module | None = None  # unwrapped G whose weights G_ema averages

    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        s, c = self.state, self.cfg
        z, f, b, f_idx, b_idx = sample_codes(real.shape[0], c.model, device=real.device)
        out = s.G(z, f, b)

        # Phase Dz: real -> 1, composite and global-feature image -> 0.
        set_trainable(s.D_z, True)
        s.opt_D.zero_grad(set_to_none=True)
        d_real, d_fake, d_global = s.D_z(real), s.D_z(out.image.detach()), s.D_z(out.global_image.detach())
        loss_d = losses.bce_real(d_real) + losses.bce_fake(d_fake) + losses.bce_fake(d_global)
        self.backward(loss_d)
        s.opt_D.step()

        # Phase Gmain: G, D_f, D_b together (InfoGAN-style), D_z frozen.
        set_trainable(s.D_z, False)
        d = self.d_plain or s.D_z
        s.opt_G.zero_grad(set_to_none=True)
        adv = losses.bce_real(d(out.image)) + losses.bce_real(d(out.global_image))
        info_f = losses.info_loss(s.D_f(out.fg), f_idx)
        info_b = losses.info_loss(s.D_b(out.bg), b_idx)
        entropy = losses.binary_entropy(out.mask)
        loss_g = adv + info_f + info_b + c.stage1.beta * entropy
        area = losses.mask_area_hinge(out.mask, c.stage1.mask_area_min)
        if c.stage1.mask_area_weight:
            loss_g = loss_g + c.stage1.mask_area_weight * area
        self.backward(loss_g)
        s.opt_G.step()
        set_trainable(s.D_z, True)

        s.step += 1
        update_ema(s.G_ema, self.g_ema_source or s.G, ema_decay_at(s.step, c.stage1.ema_decay))
        stats = {
            "loss/D_z": loss_d.detach(), "loss/G_adv": adv.detach(), "loss/D_f_info": info_f.detach(),
            "loss/D_b_info": info_b.detach(), "loss/binary_entropy": entropy.detach(),
            "loss/mask_area_hinge": area.detach(),
            "loss/G_total": loss_g.detach(),
            "D_z/real_score": torch.sigmoid(d_real.detach()).mean(),
            "D_z/fake_score": torch.sigmoid(d_fake.detach()).mean(),
        }
        stats.update({k: v.detach() for k, v in mask_statistics(out.mask).items()})
        return stats


@dataclass
class Stage2Step:
    state: Stage2State
    generator: nn.Module   # frozen G_ema, eval mode
    cfg: Config
    backward: Callable[[torch.Tensor], None] = plain_backward
    dm_plain: nn.Module | None = None

    @torch.no_grad()
    def generate(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        z, f, b, _, _ = sample_codes(batch, self.cfg.model, device=device)
        out = self.generator(z, f, b)
        return out.image, out.mask

    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        s, c = self.state, self.cfg
        fake_img, fake_mask = self.generate(real.shape[0], real.device)
        # One S call on generated and real images: one DDP forward, shared BatchNorm statistics.
        pred = s.S(torch.cat([fake_img, real]))
        pred_fake, pred_real = pred.chunk(2)

        # Phase Dm: the generator's masks are "real"; S's predictions on both domains are "fake".
        set_trainable(s.D_m, True)
        s.opt_Dm.zero_grad(set_to_none=True)
        loss_dm = (losses.bce_real(s.D_m(fake_mask)) + losses.bce_fake(s.D_m(pred_fake.detach()))
                   + losses.bce_fake(s.D_m(pred_real.detach())))
        self.backward(loss_dm)
        s.opt_Dm.step()

        # Phase S: consistency with x_bar_m plus fooling D_m on both domains.
        set_trainable(s.D_m, False)
        d = self.dm_plain or s.D_m
        s.opt_S.zero_grad(set_to_none=True)
        cons = losses.consistency_loss(pred_fake, fake_mask)
        adv = losses.bce_real(d(pred_fake)) + losses.bce_real(d(pred_real))
        loss_s = c.stage2.lam * cons + c.stage2.adv_weight * adv
        self.backward(loss_s)
        s.opt_S.step()
        set_trainable(s.D_m, True)

        s.step += 1
        return {
            "loss/D_m": loss_dm.detach(), "loss/S_consistency": cons.detach(), "loss/S_adv": adv.detach(),
            "loss/S_total": loss_s.detach(),
            "seg/pred_real_mean": pred_real.detach().mean(), "seg/pred_fake_mean": pred_fake.detach().mean(),
        }
