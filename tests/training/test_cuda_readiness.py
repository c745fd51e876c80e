"""Issue 13 (CUDA readiness, proven on CPU): the trainer options meant for CUDA runs and one
DDP step of every stage with ``find_unused_parameters=False`` (gloo, one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from labeldistill.config import load_config
from labeldistill.training import run
from labeldistill.training.datamodule import StageDataModule
from labeldistill.training.stage_module import StageModule

FAST = ["data.num_workers=0", "data.image_size=[64, 192]", "data.key_idxes=[]"]


def test_deterministic_is_warn_only_on_cuda() -> None:
    """Item 4: the ASPP average pool / bilinear upsampling backward raise in strict mode on
    CUDA, so deterministic runs use the warn-only mode there; CPU keeps the strict mode."""
    gpu = load_config("bevdepth_tiny", ["trainer.accelerator=gpu", "trainer.deterministic=true"])
    cpu = load_config("bevdepth_tiny", ["trainer.accelerator=cpu", "trainer.deterministic=true"])
    off = load_config("bevdepth_tiny", ["trainer.accelerator=gpu"])
    assert run.resolve_deterministic(gpu) == "warn"
    assert run.resolve_deterministic(cpu) is True
    assert run.resolve_deterministic(off) is False


def test_cuda_numerics_options() -> None:
    """Item 11: cudnn.benchmark on for CUDA runs unless deterministic, TF32 switches applied
    to the CUDA backends (matmul TF32 off: it would round the geometry)."""
    gpu = load_config("bevdepth_tiny", ["trainer.accelerator=gpu"])
    assert run.resolve_benchmark(gpu) is True
    assert run.resolve_benchmark(load_config("bevdepth_tiny", ["trainer.accelerator=cpu"])) is False
    det = load_config("bevdepth_tiny", ["trainer.accelerator=gpu", "trainer.deterministic=true"])
    assert run.resolve_benchmark(det) is False
    forced = load_config(
        "bevdepth_tiny", ["trainer.accelerator=cpu", "trainer.cudnn_benchmark=true"]
    )
    assert run.resolve_benchmark(forced) is True
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = False
        run.apply_cuda_flags(gpu)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
        run.apply_cuda_flags(
            load_config("bevdepth_tiny", ["trainer.accelerator=gpu", "trainer.matmul_tf32=true"])
        )
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_ddp_strategy_does_not_search_unused_parameters() -> None:
    cfg = load_config("bevdepth_tiny", ["trainer.strategy=ddp", "trainer.accelerator=cpu"])
    strategy = run.resolve_strategy(cfg)
    assert strategy._ddp_kwargs.get("find_unused_parameters") is False
    cfg = load_config(
        "bevdepth_tiny", ["trainer.strategy=ddp", "trainer.find_unused_parameters=true"]
    )
    assert run.resolve_strategy(cfg)._ddp_kwargs.get("find_unused_parameters") is True


class _Step(nn.Module):
    """What Lightning's DDP wrapper runs: the stage's total loss of a batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.compute_losses(batch).total


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["bevdepth_tiny", "centerpoint_tiny", "labeldistill_step1_tiny", "labeldistill_tiny"]
)
def test_ddp_step_without_unused_parameter_search(
    config: str, synthetic_root: Path, tmp_path: Path
) -> None:
    """Item 9: two DDP steps of every stage with find_unused_parameters=False succeed (DDP
    raises in the second step if a trainable parameter got no gradient in the first), and
    every trainable parameter receives a gradient."""
    import torch.distributed as dist

    cfg = load_config(
        config,
        [
            f"data.dataroot={synthetic_root}",
            "data.train_split=mini_val",
            "data.batch_size=2",
            *FAST,
        ],
    )
    module = StageModule(cfg)
    dm = StageDataModule(cfg, needs_lidar=module.needs_lidar, needs_depth=module.needs_depth)
    batch = next(iter(dm.train_dataloader()))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        module.train()
        ddp = nn.parallel.DistributedDataParallel(_Step(module), find_unused_parameters=False)
        opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            loss = ddp(batch)
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
        missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing[:5]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("config", ["bevdepth_tiny", "labeldistill_tiny"])
def test_channels_last_keeps_the_math_and_bf16_mixed_stays_close(
    config: str, synthetic_root: Path
) -> None:
    """``trainer.channels_last`` moves every convolution weight to NHWC and changes no value of
    the loss or the gradients (float32); the same step under CPU bf16 autocast (what
    ``trainer.precision=bf16-mixed`` runs) stays within 5 % of the float32 loss."""
    overrides = [f"data.dataroot={synthetic_root}", "data.train_split=mini_val", *FAST]
    torch.manual_seed(0)
    ref = StageModule(load_config(config, overrides))
    nhwc = StageModule(load_config(config, [*overrides, "trainer.channels_last=true"]))
    nhwc.load_state_dict(ref.state_dict())
    convs = [m.weight for m in nhwc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in ref.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    )
    dm = StageDataModule(ref.cfg, needs_lidar=ref.needs_lidar, needs_depth=ref.needs_depth)
    batch = next(iter(dm.train_dataloader()))
    losses = []
    for module in (ref, nhwc):
        module.train()
        module.zero_grad(set_to_none=True)
        loss = module.compute_losses(batch).total
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    # per-parameter gradients are ill-conditioned here (a bias before a BatchNorm has a true
    # gradient of ~0 and changes by 100 % between 1 and 2 threads), so the whole gradient
    # vector is compared: direction and length
    ga, gb = (
        torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        for m in (ref, nhwc)
    )
    assert ga.numel() == gb.numel() > 10_000
    assert float(torch.nn.functional.cosine_similarity(ga, gb, dim=0)) > 0.9999
    assert abs(float(gb.norm() / ga.norm()) - 1.0) < 5e-3  # 1.2e-3 measured (labeldistill)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = nhwc.compute_losses(batch).total.float()
    assert torch.isfinite(bf16)
    assert abs(float(bf16) - float(losses[0])) <= 0.05 * abs(float(losses[0]))


def test_fast_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch) -> None:
    """``trainer.precision=fast``: fp16 mixed on CUDA, bf16 mixed on a CPU with native bf16,
    float32 elsewhere (emulated bf16 is slower than float32); ``auto`` stays float32 on CPU."""
    fast_cpu = load_config("bevdepth_tiny", ["trainer.precision=fast", "trainer.accelerator=cpu"])
    fast_gpu = load_config("bevdepth_tiny", ["trainer.precision=fast", "trainer.accelerator=gpu"])
    auto_cpu = load_config("bevdepth_tiny", ["trainer.accelerator=cpu"])
    assert isinstance(run.cpu_has_native_bf16(), bool)
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: True)
    assert run.resolve_precision(fast_cpu) == "bf16-mixed"
    assert run.resolve_precision(fast_gpu) == "16-mixed"
    assert run.resolve_precision(auto_cpu) == "32-true"
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: False)
    assert run.resolve_precision(fast_cpu) == "32-true"
    explicit = load_config("bevdepth_tiny", ["trainer.precision=bf16-mixed"])
    assert run.resolve_precision(explicit) == "bf16-mixed"
