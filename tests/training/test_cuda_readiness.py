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
