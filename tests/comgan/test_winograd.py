"""The Winograd 3x3 convolution (comgan/winograd.py) computes the direct convolution: its
outputs and both gradients against F.conv2d in float64 (exact up to rounding) and fp32, on
sizes that are not multiples of the 4x4 tile, channel counts that are not multiples of the
kernel's 32-channel chunks, and more tiles than one block holds."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from comgan import speed, winograd
from comgan.config import SpeedConfig
from comgan.networks import Conv3x3, Generator, UNet, conv_with_constant_channels, sample_codes


@pytest.fixture
def any_width(monkeypatch):
    """Winograd on every 3x3 conv, however narrow or small (the defaults skip those that do not pay)."""
    monkeypatch.setattr(winograd, "MIN_IN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_OUT_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)


def test_the_defaults_never_build_or_call_the_kernel(monkeypatch):
    """Opt-in: with the default speed switches even a layer wide enough to pay stays direct, so a
    machine without a C++ compiler never meets the native build."""
    def refuse():
        raise AssertionError("the default speed switches reached the native Winograd kernel")

    monkeypatch.setattr(winograd, "extension", refuse)
    conv = Conv3x3(64, 64)
    speed.prepare_networks([conv], SpeedConfig())
    x = torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, None, 1, 1), atol=1e-5)


def test_the_kernel_builds_here():
    """CI builds it: a silent fallback to the direct kernel would pass every other test."""
    assert winograd.extension() is not None


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 13), (1, 17, 33, 4, 4), (3, 64, 64, 10, 7), (1, 3, 2, 1, 6),
                                   (1, 40, 45, 9, 10), (2, 6, 5, 17, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_the_direct_convolution_in_float64(any_width, monkeypatch, shape, bias):
    monkeypatch.setattr(winograd, "TILE_BLOCK", 5)  # several blocks, the last one partial
    n, c, k, h, w = shape
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True) if bias else None
    assert winograd.applies(x, weight)
    ours, direct = winograd.conv3x3(x, weight, b), F.conv2d(x, weight, b, 1, 1)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, direct, rtol=0, atol=1e-12 * float(direct.detach().abs().max()))
    g = torch.randn_like(direct)
    inputs = [x, weight] + ([b] if bias else [])
    for a, d in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(direct, inputs, g)):
        torch.testing.assert_close(a, d, rtol=0, atol=1e-12 * float(d.abs().max()))


def test_matches_the_direct_convolution_in_fp32_at_a_paper_shape():
    """The widest paper layer (128 -> 256 at 128 px, here at 32 px): Winograd F(4x4, 3x3) rounds
    differently (its transforms scale values by up to 5 and 1/24), within 1e-5 relative."""
    torch.manual_seed(0)
    x = torch.randn(2, 128, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = (torch.randn(256, 128, 3, 3) * 0.03).requires_grad_()
    assert winograd.applies(x, weight)
    ours, direct = winograd.conv3x3(x, weight), F.conv2d(x, weight, None, 1, 1)
    scale = direct.abs().max()
    assert (ours - direct).abs().max() < 1e-5 * scale
    g = torch.randn_like(direct)
    for a, d in zip(torch.autograd.grad(ours, [x, weight], g), torch.autograd.grad(direct, [x, weight], g)):
        assert (a - d).abs().max() < 1e-5 * d.abs().max()


def test_only_wide_channels_last_cpu_float_convolutions_qualify():
    x = torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)
    assert winograd.applies(x, w)
    assert not winograd.applies(x.contiguous(), w)                            # NCHW: the kernel reads NHWC
    assert not winograd.applies(x[:, :32], torch.randn(64, 32, 3, 3))         # too few input channels
    assert not winograd.applies(x, torch.randn(3, 64, 3, 3))                  # too few output channels
    assert not winograd.applies(x[:, :, :8, :8].contiguous(memory_format=torch.channels_last), w)  # too small
    assert not winograd.applies(x.bfloat16(), w.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x, w)


def test_the_switch_routes_every_3x3_conv_and_keeps_parameter_names(cfg):
    generator, segmenter = Generator(cfg.model), UNet(8, 2)
    names = [k for k, _ in generator.named_parameters()]
    speed.prepare_networks([generator, segmenter], SpeedConfig(winograd=True))
    convs = [m for net in (generator, segmenter) for m in net.modules() if isinstance(m, Conv3x3)]
    assert convs and all(m.winograd for m in convs)
    assert [k for k, _ in generator.named_parameters()] == names
    speed.prepare_networks([generator, segmenter], speed.Formulation.plain())
    assert not any(m.winograd for m in convs)
    assert not any(type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)
                   for net in (generator, segmenter) for m in net.modules())  # none left out


def test_generator_and_segmenter_outputs_match_with_winograd_on(any_width, cfg, monkeypatch):
    calls = []
    apply = winograd._WinogradConv3x3.apply
    monkeypatch.setattr(winograd._WinogradConv3x3, "apply", lambda *args: calls.append(1) or apply(*args))
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        generator, segmenter = Generator(cfg.model).eval(), UNet(8, 2).eval()
        speed.prepare_networks([generator, segmenter], SpeedConfig(winograd=False))
        codes = sample_codes(3, cfg.model)[:3]
        x = torch.rand(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            direct = generator(*codes), segmenter(x)
            speed.prepare_networks([generator, segmenter], SpeedConfig(winograd=True))
            ours = generator(*codes), segmenter(x)
    finally:
        torch.set_default_dtype(torch.float32)
    convs = sum(isinstance(m, Conv3x3) for net in (generator, segmenter) for m in net.modules())
    # All but two: at 16 px the first upBlock and a1 both read the 4x4 fc output, viewed as NCHW.
    assert len(calls) == convs - 2
    for name in ("image", "mask", "fg", "bg", "global_image"):
        torch.testing.assert_close(getattr(ours[0], name), getattr(direct[0], name), rtol=0, atol=1e-10)
    torch.testing.assert_close(ours[1], direct[1], rtol=0, atol=1e-10)


def test_code_as_bias_runs_its_conv_by_winograd_too(any_width):
    torch.manual_seed(0)
    conv = Conv3x3(7 + 5, 6).double().to(memory_format=torch.channels_last)
    conv.winograd = True
    x = torch.randn(3, 5, 9, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    code = torch.randn(3, 7, dtype=torch.float64)
    tiled = F.conv2d(torch.cat([code[:, :, None, None].expand(-1, -1, 9, 6), x], dim=1), conv.weight, None, 1, 1)
    torch.testing.assert_close(conv_with_constant_channels(conv, code, x), tiled, rtol=0, atol=1e-12)


def test_a_kernel_that_cannot_be_built_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(winograd, "_extension", None)
    monkeypatch.setattr(winograd, "_unavailable", None)
    monkeypatch.setattr(winograd, "SOURCE", tmp_path / "missing.cpp")
    monkeypatch.setenv("COMGAN_EXTENSIONS_DIR", str(tmp_path / "build"))
    x = torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)
    with pytest.warns(RuntimeWarning, match="could not be built.*speed.winograd=false"):
        assert not winograd.applies(x, w)
    torch.testing.assert_close(winograd.conv3x3(x, w), F.conv2d(x, w, None, 1, 1))  # no second warning needed



def test_gradients_for_either_input_alone_and_from_an_nchw_gradient(any_width):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    g = torch.randn(2, 4, 9, 11, dtype=torch.float64)  # NCHW, not the output's layout
    for wants in ([x], [weight]):
        for t in (x, weight):
            t.requires_grad_(any(t is w for w in wants))
        ours = torch.autograd.grad(winograd.conv3x3(x, weight), wants, g)
        direct = torch.autograd.grad(F.conv2d(x, weight, None, 1, 1), wants, g)
        torch.testing.assert_close(ours[0], direct[0], rtol=0, atol=1e-12 * float(direct[0].abs().max()))


def test_double_backward_is_refused_not_silently_wrong(any_width):
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(winograd.conv3x3(x, weight).square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path):
    import os
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    winograd._remove_stale_lock(lock)
    assert lock.exists()  # a fresh lock: a build is running
    old = time.time() - winograd.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    winograd._remove_stale_lock(lock)
    assert not lock.exists()


def test_the_kernel_refuses_weights_that_do_not_fit():
    ext = winograd.extension()
    x = torch.randn(1, 8, 8, 5)  # NHWC with 5 channels
    with pytest.raises(RuntimeError, match="do not fit"):
        ext.forward(x, torch.randn(36, 4, 3), 16)
