"""BEV encoder (METHOD.md 4.5): state-dict names and shapes of the 2key paper config
(METHOD.md 12.1), initialisation and forward values."""

from __future__ import annotations

import math

import pytest
import torch

from labeldistill.config import BevEncoderConfig
from labeldistill.errors import ConfigError
from labeldistill.models.bev_encoder import BevEncoder


@pytest.fixture(autouse=True)
def _one_thread():
    """Convolutions run far faster on one thread on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (c,)) for k in BN}


def expected_paper_2key() -> dict[str, tuple[int, ...]]:
    """``head.trunk.*`` / ``head.neck.*`` of METHOD.md 12.1 for the 2key student (450 input)."""
    exp: dict[str, tuple[int, ...]] = {
        "trunk.conv1.weight": (300, 450, 7, 7),
        **_bn("trunk.bn1", 300),
    }
    c_in = 300
    for i, c in enumerate((300, 600, 1200)):
        for j in range(2):
            p = f"trunk.layer{i + 1}.{j}"
            cin = c_in if j == 0 else c
            exp[f"{p}.conv1.weight"] = (c, cin, 3, 3)
            exp[f"{p}.conv2.weight"] = (c, c, 3, 3)
            exp.update(_bn(f"{p}.bn1", c))
            exp.update(_bn(f"{p}.bn2", c))
        if i > 0:
            exp[f"trunk.layer{i + 1}.0.downsample.0.weight"] = (c, c_in, 1, 1)
            exp.update(_bn(f"trunk.layer{i + 1}.0.downsample.1", c))
        c_in = c
    for i, shape in enumerate(
        [(450, 64, 1, 1), (300, 64, 2, 2), (600, 64, 4, 4), (1200, 64, 8, 8)]
    ):
        exp[f"neck.deblocks.{i}.0.weight"] = shape
        exp.update(_bn(f"neck.deblocks.{i}.1", 64))
    return exp


@pytest.fixture(scope="module")
def paper_encoder() -> BevEncoder:
    torch.manual_seed(0)
    return BevEncoder(450, BevEncoderConfig())


def test_paper_state_dict_names_and_shapes(paper_encoder: BevEncoder) -> None:
    got = {k: tuple(v.shape) for k, v in paper_encoder.state_dict().items()}
    assert got == expected_paper_2key()
    assert paper_encoder.out_channels == 256


def test_paper_init(paper_encoder: BevEncoder) -> None:
    sd = paper_encoder.state_dict()
    # Kaiming normal, fan_out, ReLU: std = sqrt(2 / (300 * 7 * 7)).
    std = sd["trunk.conv1.weight"].std().item()
    assert std == pytest.approx(math.sqrt(2 / (300 * 49)), rel=0.02)
    std = sd["trunk.layer3.1.conv1.weight"].std().item()
    assert std == pytest.approx(math.sqrt(2 / (1200 * 9)), rel=0.02)
    ones = ("bn1.weight", "downsample.1.weight")
    for name, value in sd.items():
        if name.endswith("bn2.weight"):
            assert torch.all(value == 0), name  # zero_init_residual
        elif name.endswith(ones) or (name.startswith("neck.") and name.endswith(".1.weight")):
            assert torch.all(value == 1), name
        elif name.endswith(".bias"):
            assert torch.all(value == 0), name  # every bias of the encoder belongs to a BN


def test_paper_forward_shapes_and_levels(paper_encoder: BevEncoder) -> None:
    x = torch.randn(1, 450, 16, 16)
    neck, (s0, s1) = paper_encoder(x)
    assert neck.shape == (1, 256, 16, 16)
    assert s1.shape == (1, 300, 8, 8)
    assert torch.equal(s0, x)
    # With every block's bn2 zero, each layer-1 block is relu(identity): layer1 == stem output.
    trunk = paper_encoder.trunk
    stem = torch.relu(trunk.bn1(trunk.conv1(x)))
    torch.testing.assert_close(s1, stem)


def test_small_config_and_half_precision_input() -> None:
    cfg = BevEncoderConfig(base_channels=8, neck_out_channels=(4, 4, 4, 4))
    enc = BevEncoder(6, cfg)
    neck, (s0, s1) = enc(torch.randn(1, 6, 32, 24).half())
    assert neck.shape == (1, 16, 32, 24) and neck.dtype == torch.float32
    assert s0.dtype == torch.float32 and s1.shape == (1, 8, 16, 12)
    assert enc.out_channels == 16


def test_bad_config_raises() -> None:
    with pytest.raises(ConfigError, match="num_stages"):
        BevEncoder(6, BevEncoderConfig(base_channels=8, strides=(1, 2)))
    with pytest.raises(ConfigError, match="neck_upsample_strides"):
        BevEncoder(6, BevEncoderConfig(base_channels=8, neck_upsample_strides=(1, 2, 4)))
