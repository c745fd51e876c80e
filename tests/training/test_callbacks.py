"""EMA: closed form on a toy module, BN buffers included, and the callback inside a real fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labeldistill.training.callbacks import EMA_KEY, EMACallback, ModelEMA


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _fill(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if torch.is_floating_point(v):
                v.fill_(value + (0.5 if "running_var" in k else 0.0))


@pytest.mark.parametrize("n", [1, 7, 250])
def test_ema_closed_form_params_and_bn_buffers(n: int) -> None:
    decay = 0.999
    net = ToyNet()
    _fill(net, 2.0)  # initial EMA: 2.0 everywhere (running_var 2.5)
    ema = ModelEMA(net, decay)
    _fill(net, -1.0)  # the model then stays at -1.0 (running_var -0.5)
    for _ in range(n):
        ema.update(net)
    w = decay**n
    assert set(ema.state) == {
        "fc.weight",
        "fc.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
    }
    for k, v in ema.state.items():
        shift = 0.5 if "running_var" in k else 0.0
        expected = w * (2.0 + shift) + (1 - w) * (-1.0 + shift)
        torch.testing.assert_close(v, torch.full_like(v, expected), rtol=1e-6, atol=1e-6)
    assert ema.num_updates == n


def test_ema_leaves_integer_buffers_to_the_model() -> None:
    net = ToyNet()
    ema = ModelEMA(net, 0.9)
    net.bn.num_batches_tracked.fill_(17)
    ema.update(net)
    full = ema.full_state_dict(net)
    assert "bn.num_batches_tracked" not in ema.state
    assert full["bn.num_batches_tracked"].dtype == torch.int64
    assert int(full["bn.num_batches_tracked"]) == 17


def test_ema_swap_is_an_involution() -> None:
    net = ToyNet()
    ema = ModelEMA(net, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _fill(net, 3.0)
    ema.update(net)  # ema = 0.5 * before + 1.5
    after = {k: v.clone() for k, v in net.state_dict().items()}
    ema.swap_into(net)
    torch.testing.assert_close(net.fc.weight, 0.5 * before["fc.weight"] + 1.5)
    ema.swap_into(net)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, after[k])


class ToyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = ToyNet()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)


class Recorder(L.Callback):
    """Records the model's float state after every batch (runs after the EMA callback)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def test_callback_in_fit_matches_manual_ema(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 2))
    module = ToyModule()
    init = {k: v.clone() for k, v in module.model.state_dict().items()}
    decay = 0.9
    ema_cb = EMACallback(decay, tmp_path / "ema")
    rec = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[ema_cb, rec],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert len(rec.states) == 6
    expected = {k: v.clone() for k, v in init.items() if torch.is_floating_point(v)}
    for state in rec.states:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * state[k]
    saved = load_file(str(tmp_path / "ema" / "epoch_1.safetensors"))
    assert (tmp_path / "ema" / "epoch_0.safetensors").is_file()
    for k, v in expected.items():
        torch.testing.assert_close(saved[k], v, rtol=1e-5, atol=1e-6)
    assert int(saved["bn.num_batches_tracked"]) == 6
    # the same state goes into Lightning checkpoints
    ckpt: dict = {}
    ema_cb.on_save_checkpoint(trainer, module, ckpt)
    torch.testing.assert_close(ckpt[EMA_KEY]["fc.weight"], expected["fc.weight"])


def test_ema_warmup_ramp() -> None:
    """decay_n = decay * (1 - exp(-n / warmup)): the first update takes ~all of the model."""
    import math

    net = ToyNet()
    _fill(net, 0.0)
    ema = ModelEMA(net, 0.99, warmup_steps=50)
    values = [4.0, -2.0, 1.0]
    expected = 0.0
    for n, v in enumerate(values, start=1):
        d = 0.99 * (1 - math.exp(-n / 50))
        assert ema.current_decay() == pytest.approx(d)
        _fill(net, v)
        ema.update(net)
        expected = d * expected + (1 - d) * v
    torch.testing.assert_close(ema.state["fc.bias"], torch.full((2,), expected))
    assert ModelEMA(net, 0.99).current_decay() == 0.99  # no warm-up: constant


@pytest.mark.parametrize("keep", [-1, 2])
def test_keep_epochs_prunes_old_epoch_files(tmp_path: Path, keep: int) -> None:
    """4 epochs: keep=2 leaves epoch files 2 and 3 (checkpoints and EMA) plus last.ckpt;
    keep=-1 leaves all four of each."""
    from labeldistill.config import load_config
    from labeldistill.training.callbacks import checkpoint_callback
    from labeldistill.training.run_dir import RunDir

    cfg = load_config(
        "bevdepth_tiny", [f"trainer.output_dir={tmp_path}", f"trainer.keep_epochs={keep}"]
    )
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 2))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=4,
        callbacks=[
            EMACallback(0.9, RunDir.of(cfg).ema, keep_epochs=keep),
            checkpoint_callback(cfg),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ToyModule(), DataLoader(data, batch_size=4))
    epochs = [0, 1, 2, 3] if keep == -1 else [2, 3]
    ckpts = sorted(p.name for p in RunDir.of(cfg).checkpoints.glob("*.ckpt"))
    assert ckpts == sorted([f"epoch_{n}.ckpt" for n in epochs] + ["last.ckpt"])
    emas = sorted(p.name for p in RunDir.of(cfg).ema.glob("*.safetensors"))
    assert emas == [f"epoch_{n}.safetensors" for n in epochs]
    last = torch.load(RunDir.of(cfg).checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 8


def test_keep_epochs_zero_is_refused(tmp_path: Path) -> None:
    from labeldistill.config import load_config
    from labeldistill.errors import ConfigError
    from labeldistill.training.callbacks import checkpoint_callback

    with pytest.raises(ConfigError, match="trainer.keep_epochs"):  # range-checked at load
        load_config("bevdepth_tiny", ["trainer.keep_epochs=0"])
    cfg = load_config("bevdepth_tiny")
    bypassed = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, keep_epochs=0))
    with pytest.raises(ConfigError, match="trainer.keep_epochs"):  # and by the callback
        checkpoint_callback(bypassed)
