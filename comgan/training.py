"""Stage-1 and stage-2 states and update steps, written as explicit phases (StyleGAN-style).

Stage 1, one step: phase Dz (update D_z on real, x_bar and x_bar_z), then phase Gmain (update G,
D_f and D_b together: fool D_z, recover f and b, sharpen the mask by beta * H2). Stage 2, one
step: phase Dm (D_m: real = generated masks, fake = S(x_bar), S(x)), then phase S (consistency
lambda * |S(x_bar) - x_bar_m| plus fooling D_m on both S outputs, plus, once self-training has
begun, learning the EMA teacher's confident masks of the real batch).

A state holds the plain networks and optimisers and snapshots itself with `state_dict()` /
`load_state_dict()`. A step may be given `prepared` versions of them (wrapped for data
parallelism and mixed precision by the caller) and a `backward` that routes loss.backward()
through the same machinery; phases that only *use* a frozen discriminator call the plain module,
so no DDP reducer of that discriminator is armed while it gets no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from . import losses, speed
from .augment import diff_augment, parse_policy
from .config import ComGANConfig
from .ema import ema_decay_at, make_ema, update_ema
from .metrics import mask_statistics
from .networks import build_stage1_networks, build_stage2_networks, sample_codes
from .refine import colour_refined


MASK_BORDER_RING = 1 / 16  # width of the frame's outer ring the border prior looks at, as a share of the side
G_EMA_DECAY = 0.999        # G_ema (what is exported) averages G with this decay, ramped up from 0 (ema_decay_at)
SELF_TRAIN_CONFIDENCE = 0.8  # self-training learns the teacher's pixels > this or < 1 - this: unsure ones teach noise
SELF_TRAIN_EMA = 0.99        # the teacher is S's EMA (steadier than S), updated every step from step 0
SELF_TRAIN_AUGMENT = "color,translation"  # S's view of the real batch (labels move with it): S learns to see through it


def plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def build_networks(build, cfg: ComGANConfig) -> dict[str, nn.Module]:
    """A stage's networks in the layout and code path cfg.speed asks for."""
    nets = build(cfg.model)
    speed.prepare_networks(nets.values(), cfg.speed)
    return nets


class Snapshot:
    """state_dict() / load_state_dict() over the names a state lists: its trained networks
    (TRAINED, the ones wrapped for data parallelism), other networks it carries (CARRIED, e.g.
    G_ema), its optimisers and the step counter. Tensors and plain types only."""
    TRAINED: ClassVar[tuple[str, ...]] = ()
    CARRIED: ClassVar[tuple[str, ...]] = ()
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ()

    def trained(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.TRAINED}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {name: getattr(self, name) for name in self.OPTIMIZERS}

    def state_dict(self) -> dict:
        names = self.TRAINED + self.CARRIED + self.OPTIMIZERS
        return {"step": self.step, **{name: getattr(self, name).state_dict() for name in names}}

    def load_state_dict(self, saved: dict) -> None:
        for name in self.TRAINED + self.CARRIED:
            getattr(self, name).load_state_dict(saved[name])
        for optimizer, saved_optimizer in zip(self.optimizers().values(), (saved[n] for n in self.OPTIMIZERS)):
            speed.load_optimizer_state(optimizer, saved_optimizer)
        self.step = int(saved["step"])


@dataclass
class Stage1State(Snapshot):
    """Everything stage 1 trains, plus G_ema (the network that is evaluated and handed on)."""
    G: nn.Module
    D_z: nn.Module
    D_f: nn.Module
    D_b: nn.Module
    G_ema: nn.Module
    opt_D: torch.optim.Optimizer
    opt_G: torch.optim.Optimizer
    step: int = 0
    TRAINED: ClassVar = ("G", "D_z", "D_f", "D_b")
    CARRIED: ClassVar = ("G_ema",)
    OPTIMIZERS: ClassVar = ("opt_D", "opt_G")

    @classmethod
    def create(cls, cfg: ComGANConfig) -> "Stage1State":
        nets = build_networks(build_stage1_networks, cfg)
        g_ema = make_ema(nets["G"])  # before compiling: G_ema only runs no-grad passes
        speed.compile_networks(nets, cfg.speed)
        g_params = [p for name in ("G", "D_f", "D_b") for p in nets[name].parameters()]
        return cls(nets["G"], nets["D_z"], nets["D_f"], nets["D_b"], g_ema,
                   speed.adam(nets["D_z"].parameters(), cfg.stage1, cfg.speed),
                   speed.adam(g_params, cfg.stage1, cfg.speed))


@dataclass
class Stage2State(Snapshot):
    """The segmenter S, its mask discriminator D_m and S's EMA teacher for self-training; the
    frozen generator is an input, not state."""
    S: nn.Module
    D_m: nn.Module
    S_teacher: nn.Module
    opt_S: torch.optim.Optimizer
    opt_Dm: torch.optim.Optimizer
    step: int = 0
    TRAINED: ClassVar = ("S", "D_m")
    CARRIED: ClassVar = ("S_teacher",)
    OPTIMIZERS: ClassVar = ("opt_S", "opt_Dm")

    @classmethod
    def create(cls, cfg: ComGANConfig) -> "Stage2State":
        nets = build_networks(build_stage2_networks, cfg)
        teacher = make_ema(nets["S"])  # before compiling: the teacher only runs no-grad passes
        speed.compile_networks(nets, cfg.speed)
        return cls(nets["S"], nets["D_m"], teacher, speed.adam(nets["S"].parameters(), cfg.stage2, cfg.speed),
                   speed.adam(nets["D_m"].parameters(), cfg.stage2, cfg.speed))

    def load_state_dict(self, saved: dict) -> None:
        if "S_teacher" not in saved:  # a checkpoint from before self-training: the teacher starts as S
            saved = {**saved, "S_teacher": saved["S"]}
        super().load_state_dict(saved)


@dataclass
class _Step:
    """What both steps share: the state, the config, and the prepared (wrapped) modules."""
    state: Snapshot
    cfg: ComGANConfig
    backward: Callable[[torch.Tensor], None] = plain_backward
    prepared: dict = field(default_factory=dict)  # name -> wrapped module or optimiser

    def use(self, name: str):
        """The prepared version of a network or optimiser where there is one, else the plain one."""
        return self.prepared[name] if name in self.prepared else getattr(self.state, name)


class Stage1Step(_Step):
    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        state, cfg = self.state, self.cfg
        G, D_z = self.use("G"), self.use("D_z")
        opt_D, opt_G = self.use("opt_D"), self.use("opt_G")
        real = speed.as_input(real, cfg.speed)
        z, f, b, f_idx, b_idx = sample_codes(real.shape[0], cfg.model, device=real.device)
        out = G(z, f, b)
        policy = parse_policy(cfg.stage1.augment)

        def aug(x):  # D_z sees every image, real or fake, through the same random augmentation
            return diff_augment(x, policy=policy)

        # Phase Dz: real -> 1, composite and global-feature image -> 0.
        state.D_z.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        d_real, d_fake, d_global = D_z(aug(real)), D_z(aug(out.image.detach())), D_z(aug(out.global_image.detach()))
        loss_d = losses.bce_real(d_real) + losses.bce_fake(d_fake) + losses.bce_fake(d_global)
        self.backward(loss_d)
        opt_D.step()

        # Phase Gmain: G, D_f, D_b together (InfoGAN-style); the plain D_z, frozen, judges.
        state.D_z.requires_grad_(False)
        opt_G.zero_grad(set_to_none=True)
        adv = losses.bce_real(state.D_z(aug(out.image))) + losses.bce_real(state.D_z(aug(out.global_image)))
        info_f, info_b, composite_info = self.info_losses(out, f_idx, b_idx)
        if out.mask.requires_grad:
            out.mask.retain_grad()  # the gradient that reaches the mask: the paper's Figure 4 gauge
        entropy = losses.binary_entropy(out.mask)
        area = losses.mask_area_hinge(out.mask, cfg.stage1.mask_area_max)
        loss_g = adv + warmed_beta(cfg.stage1.beta, state.step, cfg.stage1.beta_warmup) * entropy
        if info_f is not None:
            loss_g = loss_g + info_f + info_b
        if cfg.stage1.mask_area_weight:
            loss_g = loss_g + cfg.stage1.mask_area_weight * area
        if composite_info is not None:
            loss_g = loss_g + cfg.stage1.composite_info_weight * composite_info
        border = losses.mask_border_loss(out.mask, MASK_BORDER_RING)
        if cfg.stage1.mask_border_weight:
            loss_g = loss_g + cfg.stage1.mask_border_weight * border
        self.backward(loss_g)
        grads = mask_gradient_norms(out.mask, state.G)
        opt_G.step()
        state.D_z.requires_grad_(True)

        state.step += 1
        update_ema(state.G_ema, state.G, ema_decay_at(state.step, G_EMA_DECAY))
        stats = {
            "loss/D_z": loss_d, "loss/G_adv": adv,
            "loss/binary_entropy": entropy, "loss/mask_area_hinge": area,
            "loss/mask_border": border, "loss/G_total": loss_g,
            "D_z/real_score": torch.sigmoid(d_real).mean(), "D_z/fake_score": torch.sigmoid(d_fake).mean(),
            **mask_statistics(out.mask), **grads,
        }
        if info_f is not None:
            stats.update({"loss/D_f_info": info_f, "loss/D_b_info": info_b})
        if composite_info is not None:
            stats["loss/composite_info"] = composite_info
        return {k: v.detach() for k, v in stats.items()}

    def info_losses(self, out, f_idx, b_idx):
        """(CE of D_f on x_f, CE of D_b on x_b, CE of D_f on the composite or None when its weight is
        0). D_f learns from x_f only; on the composite the plain D_f, frozen, reads f as a judge
        (like D_z in this phase). Trained on composites too, it learnt to read f from the faint
        tint a mask lends an object drawn by the background branch, and the term lost its point
        (seed 1 of the default job: CE 0.11 on the composite with 24 % faint masks).
        The study's variants (plain ComGAN's losses) have no info terms: D_f and D_b do not run
        (None), so no data-parallel reducer waits on their gradients."""
        info_f = info_b = None
        if self.cfg.model.variant == "ds-comgan":
            info_f = losses.info_loss(self.use("D_f")(out.fg), f_idx)
            info_b = losses.info_loss(self.use("D_b")(out.bg), b_idx)
        if not self.cfg.stage1.composite_info_weight:
            return info_f, info_b, None
        reader = self.state.D_f
        reader.requires_grad_(False)
        composite = losses.info_loss(reader(out.image), f_idx)
        reader.requires_grad_(True)
        return info_f, info_b, composite


def mask_gradient_norms(mask: torch.Tensor, G: nn.Module) -> dict[str, torch.Tensor]:
    """2-norms of the generator loss's gradient on the mask x_m and on the mask network M's weights
    (ComGAN's Figure 4: they vanish when a run heads for a trivial solution). Zero where no
    gradient reached them."""
    zero = mask.new_zeros(())
    at_mask = mask.grad.norm() if mask.grad is not None else zero
    mask_net = getattr(G, "mask_net", None)  # test stubs have none
    grads = [p.grad for p in mask_net.parameters() if p.grad is not None] if mask_net is not None else []
    at_net = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else zero
    return {"grad/mask": at_mask.float(), "grad/mask_net": at_net.float()}


@dataclass
class Stage2Step(_Step):
    generator: nn.Module | None = None   # the frozen G_ema, in eval mode

    @torch.no_grad()
    def generate(self, batch: int, device, rng: torch.Generator | None = None):
        """(x_bar, x_bar_m) of fresh codes; `rng` gives previews their own random stream."""
        z, f, b, _, _ = sample_codes(batch, self.cfg.model, device=device, generator=rng)
        out = self.generator(z, f, b)
        return out.image, out.mask

    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        state, cfg = self.state, self.cfg
        S, D_m, opt_S, opt_Dm = self.use("S"), self.use("D_m"), self.use("opt_S"), self.use("opt_Dm")
        real = speed.as_input(real, cfg.speed)
        fake_img, fake_mask = self.generate(real.shape[0], real.device)
        self_training = cfg.stage2.self_train.weight > 0 and state.step >= cfg.stage2.self_train.start
        if self_training:
            real, pseudo, confident, unguarded = self.pseudo_labels(real, fake_mask.mean())
        # One S call on generated and real images: one DDP forward, shared BatchNorm statistics.
        pred_fake, pred_real = S(torch.cat([fake_img, real])).chunk(2)

        # Phase Dm: the generator's masks are "real"; S's predictions on both domains are "fake".
        state.D_m.requires_grad_(True)
        opt_Dm.zero_grad(set_to_none=True)
        loss_dm = (losses.bce_real(D_m(fake_mask)) + losses.bce_fake(D_m(pred_fake.detach()))
                   + losses.bce_fake(D_m(pred_real.detach())))
        self.backward(loss_dm)
        opt_Dm.step()

        # Phase S: consistency with x_bar_m plus fooling the plain, frozen D_m on both domains.
        state.D_m.requires_grad_(False)
        opt_S.zero_grad(set_to_none=True)
        cons = losses.consistency_loss(pred_fake, fake_mask)
        adv = losses.bce_real(state.D_m(pred_fake)) + losses.bce_real(state.D_m(pred_real))
        loss_s = cfg.stage2.lam * cons + cfg.stage2.adv_weight * adv
        stats = {}
        if self_training:
            self_loss = losses.pseudo_label_loss(pred_real, pseudo, confident)
            loss_s = loss_s + cfg.stage2.self_train.weight * self_loss
            stats = {"loss/S_self_train": self_loss, "seg/confident_share": confident.mean(),
                     "seg/guarded_images": 1 - unguarded.mean()}
        self.backward(loss_s)
        opt_S.step()
        state.D_m.requires_grad_(True)

        state.step += 1
        update_ema(state.S_teacher, state.S, SELF_TRAIN_EMA)  # from step 0: ready when self-training starts
        stats.update({"loss/D_m": loss_dm, "loss/S_consistency": cons, "loss/S_adv": adv, "loss/S_total": loss_s,
                      "seg/pred_real_mean": pred_real.mean(), "seg/pred_fake_mean": pred_fake.mean()})
        return {k: v.detach() for k, v in stats.items()}

    @torch.no_grad()
    def pseudo_labels(self, real: torch.Tensor, generated_area: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(augmented real, binary pseudo-label, confident-pixel weight, per-image 1/0: not held
        back by stage2.self_train.area_guard), the first three through the same
        SELF_TRAIN_AUGMENT: the teacher sees the plain photo (and its mirror image), so its
        labels do not depend on the augmentation S must learn to see through. A cut-out square
        zeroes the weight too: S is not asked to guess what it cannot see."""
        teacher = self.state.S_teacher
        probs = (teacher(real) + teacher(real.flip(-1)).flip(-1)) / 2
        if self.cfg.stage2.self_train.colour_bins:
            probs = colour_refined(real, probs, self.cfg.stage2.self_train.colour_bins, SELF_TRAIN_CONFIDENCE)
        margin = SELF_TRAIN_CONFIDENCE - 0.5
        pseudo = (probs > 0.5).to(real.dtype)
        confident = ((probs - 0.5).abs() > margin).to(real.dtype)
        unguarded = area_within(pseudo, generated_area, self.cfg.stage2.self_train.area_guard)
        confident = confident * unguarded.view(-1, 1, 1, 1)
        return (*diff_augment(real, pseudo, confident, policy=parse_policy(SELF_TRAIN_AUGMENT)),
                unguarded)


def warmed_beta(beta: float, step: int, warmup: int) -> float:
    """beta, rising linearly from beta / warmup at step 0 to beta from step warmup - 1 on (warmup
    0: beta throughout). A function of the step alone, so a resumed run follows the same schedule."""
    return beta if warmup <= 0 else beta * min(1.0, (step + 1) / warmup)


def area_within(masks: torch.Tensor, reference_area: torch.Tensor, guard: float) -> torch.Tensor:
    """Per image, 1 where the binary mask's foreground share is at least `guard` x reference_area
    and its background share at least `guard` x (1 - reference_area), else 0: [B]. guard 0: all 1."""
    share = masks.flatten(1).float().mean(1)
    reference_area = reference_area.float()
    return ((share >= guard * reference_area) & (1 - share >= guard * (1 - reference_area))).to(masks.dtype)
