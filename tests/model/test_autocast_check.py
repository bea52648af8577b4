import pytest
import torch
from torch import nn

from model.autocast_check import TOLERANCE, autocast_gradient_errors, convolution_inputs, gradient_error
from model.errors import InputError
from model.network import NetworkConfig, ResidualUNet
from tests.model.test_train import config_for


class _TripleGradient(torch.autograd.Function):
    """Identity forward, gradient times 3 backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad


class FaultyUnderAutocast(nn.Conv3d):
    """A convolution whose gradients are wrong only under CPU autocast, like the torch fault."""

    def forward(self, x):
        y = super().forward(x)
        return _TripleGradient.apply(y) if torch.is_autocast_enabled("cpu") else y


def test_healthy_convolution_agrees_with_fp32():
    assert gradient_error(nn.Conv3d(4, 8, 3, padding=1), (2, 4, 4, 6, 6), torch.bfloat16) < TOLERANCE
    assert gradient_error(nn.ConvTranspose3d(8, 4, 2, stride=2), (2, 8, 2, 3, 3), torch.bfloat16) < TOLERANCE


def test_wrong_gradient_reported():
    network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), FaultyUnderAutocast(4, 2, 3, padding=1))
    problems = autocast_gradient_errors(network, [(2, 1, 4, 6, 6)])
    assert len(problems) == 1
    prefix = "1 on input (2, 4, 4, 6, 6) (relative gradient error "
    assert problems[0].startswith(prefix)
    # Gradients three times too large, up to bf16 rounding: (3g - g) / g = 2.
    assert float(problems[0].removeprefix(prefix).rstrip(")")) == pytest.approx(2.0, abs=0.05)


def test_call_shapes_listed_once():
    config = NetworkConfig(base_features=2, max_features=4, strides=((2, 2, 2),) * 4, encoder_blocks=(1,) * 5)
    network = ResidualUNet(config)
    calls = convolution_inputs(network, [(1, 1, 32, 32, 32), (2, 1, 32, 32, 32), (1, 1, 32, 32, 32)])
    assert network.training
    convolutions = [m for m in network.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert len(calls) == 2 * len(convolutions)
    assert {shape[0] for _, _, shape in calls} == {1, 2}
    assert next(network.parameters()).grad is None  # the shape pass computes no gradients


def test_trainer_rejects_wrong_bf16_gradients(monkeypatch, tmp_path):
    import model.train as train

    calls = []

    def faulty(network, shapes, dtype=torch.bfloat16):
        calls.append([tuple(s) for s in shapes])
        if shapes[0][1] != 1:  # the projection head's input
            return []
        return ["decoder.0.0.conv1.0 on input (4, 16, 2, 4, 4) (relative gradient error 1.2)"]

    monkeypatch.setattr(train, "autocast_dtype", lambda device, enabled: torch.bfloat16 if enabled else None)
    monkeypatch.setattr(train, "autocast_gradient_errors", faulty)
    config = config_for(tmp_path / "data", tmp_path / "run", mixed_precision=True)
    with pytest.raises(
        InputError,
        match=r"wrong gradients .* for 1 convolution\(s\): unet\.decoder\.0\.0\.conv1\.0 on .* --no-mixed-precision",
    ):
        train.Trainer(config).run(stages=(1, 2))
    # Stage 1 runs one branch, stage 2 both branches as one batch of twice the size.
    assert calls[0] == [(2, 1, 16, 32, 32), (4, 1, 16, 32, 32)]
    assert calls[1] == [(4, 4, 16, 32, 32)]
    assert not (tmp_path / "run" / "state.pt").exists()
