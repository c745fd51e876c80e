"""``labeldistill pipeline`` orchestration (recipes/pipeline.py) with a recording stage runner
injected (conftest.py): stage order, configs and overrides of a budget, teacher checkpoints
handed to the later stages, reuse of finished stages, the table; CLI errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from labeldistill.cli import main as cli_main
from labeldistill.errors import ConfigError
from labeldistill.recipes import budgets, pipeline
from labeldistill.recipes.budgets import BUDGETS
from labeldistill.recipes.pipeline import StageResult, format_table, run_pipeline
from labeldistill.training import backbone_pretrain


def test_stages_in_order_with_teacher_checkpoints(fake_runs, tmp_path: Path) -> None:
    result = run_pipeline(
        "/data/root",
        tmp_path,
        budget="tiny",
        seed=3,
        variants=("labeldistill", "label_only"),
        runner=fake_runs.runner,
    )
    keys = [r.key for r in result.rows]
    assert keys == ["lidar_teacher", "label_encoder", "baseline", "labeldistill", "label_only"]
    # stage 0 once, after the teachers, on the baseline's data; every camera stage loads it
    order = [c[0] for c in fake_runs]
    assert order.count("pretrain") == 1 and order.index("pretrain") == 4
    pretrain = next(c for c in fake_runs if c[0] == "pretrain")
    assert pretrain[1].name == "bevdepth_tiny" and pretrain[2].steps == 150
    backbone = tmp_path / "runs" / "backbone_pretrain" / backbone_pretrain.BACKBONE_FILE
    assert result.backbone.backbone == backbone
    trained = [c[1] for c in fake_runs if c[0] == "train"]
    names = [c.name for c in trained]
    assert names == [
        "centerpoint_tiny",
        "labeldistill_step1_tiny",
        "bevdepth_tiny",
        "labeldistill_tiny",
        "labeldistill_tiny_label_only",
    ]
    runs = tmp_path / "runs"
    teacher_ckpt = runs / "centerpoint_tiny" / "checkpoints" / "last.ckpt"
    label_ckpt = runs / "labeldistill_step1_tiny" / "checkpoints" / "last.ckpt"
    by_name = {c.name: c for c in trained}
    assert by_name["labeldistill_step1_tiny"].distill.lidar_ckpt == str(teacher_ckpt)
    ld = by_name["labeldistill_tiny"]
    assert (ld.distill.lidar_ckpt, ld.distill.label_ckpt) == (str(teacher_ckpt), str(label_ckpt))
    # the label-only ablation is not handed the LiDAR file (its config default stays)
    assert by_name["labeldistill_tiny_label_only"].distill.label_ckpt == str(label_ckpt)
    for c in trained:
        assert c.data.dataroot == "/data/root" and c.trainer.seed == 3
        assert c.trainer.output_dir == str(runs)
    # the budget: steps per stage, the same LiDAR input for teacher and distillation
    steps = {c.name: c.trainer.max_steps for c in trained}
    assert steps == {
        "centerpoint_tiny": 100,
        "labeldistill_step1_tiny": 100,
        "bevdepth_tiny": 450,
        "labeldistill_tiny": 450,
        "labeldistill_tiny_label_only": 450,
    }
    for c in trained:
        bb = c.student.image_backbone
        camera = c.stage in ("student", "labeldistill")
        if camera:
            assert (bb.pretrained, bb.pretrained_path) == (True, str(backbone))
        else:  # the teachers have no image backbone to load
            assert bb.pretrained_path == ""
    assert by_name["centerpoint_tiny"].data.lidar_sweeps == ld.data.lidar_sweeps == 0
    assert by_name["centerpoint_tiny"].trainer.ema_decay == 0.9
    assert by_name["bevdepth_tiny"].trainer.ema_decay == ld.trainer.ema_decay == 0.97
    # the camera students: the benchmark's regime, shortened (frozen stage-0 ResNet, stride 8,
    # the lr stepped after epochs 8 and 10 of 11)
    for c in (by_name["bevdepth_tiny"], ld, by_name["labeldistill_tiny_label_only"]):
        assert c.student.image_backbone.frozen_stages == 4
        assert c.student.view_transform.downsample == 8
        assert c.optim.milestones == (8, 10)
        assert (c.trainer.precision, c.trainer.channels_last) == ("fast", True)
    assert by_name["centerpoint_tiny"].optim.milestones == (1000,)
    # baseline and student share the budget and the input (key frame only on CPU)
    assert by_name["bevdepth_tiny"].student == ld.student
    assert by_name["bevdepth_tiny"].num_frames == ld.num_frames == 1
    assert result.by_key()["labeldistill"].metrics["mAP"] == pytest.approx(0.9)  # 9th call


def test_finished_stages_are_reused_and_teachers_can_be_shared(fake_runs, tmp_path) -> None:
    run_pipeline(None, tmp_path / "a", variants=(), baseline=False, runner=fake_runs.runner)
    assert len(fake_runs) == 4  # two trainings, two evaluations; no camera stage: no stage 0
    again = run_pipeline(None, tmp_path / "a", variants=(), baseline=False, runner=fake_runs.runner)
    assert len(fake_runs) == 4 and [r.metrics["mAP"] for r in again.rows] == pytest.approx(
        [0.2, 0.4]
    )
    # another seed's students with the teachers of the first run: only the baseline trains
    run_pipeline(
        None,
        tmp_path / "b",
        seed=1,
        variants=(),
        teacher_dir=tmp_path / "a",
        teacher_seed=0,
        runner=fake_runs.runner,
    )
    assert [c[1].name for c in fake_runs[4:] if c[0] == "train"] == ["bevdepth_tiny"]
    # stage 0 is a shared stage too: it goes beside the shared teachers
    pretrain = [c for c in fake_runs if c[0] == "pretrain"]
    assert len(pretrain) == 1 and pretrain[0][1].trainer.seed == 0
    # the shared stages alone (benchmarks/accuracy.py --shared-only, before parallel seeds)
    n = len(fake_runs)
    shared = run_pipeline(
        None, tmp_path / "c", variants=(), baseline=False, backbone=True, runner=fake_runs.runner
    )
    assert [c[0] for c in fake_runs[n:]] == ["train", "eval", "train", "eval", "pretrain"]
    assert shared.backbone is not None and [r.key for r in shared.rows] == [
        "lidar_teacher",
        "label_encoder",
    ]
    # stage 0 alone (in its own process beside the teachers' under --jobs)
    n = len(fake_runs)
    alone = run_pipeline(
        None,
        tmp_path / "d",
        variants=(),
        baseline=False,
        backbone=True,
        teachers=False,
        runner=fake_runs.runner,
    )
    assert [c[0] for c in fake_runs[n:]] == ["pretrain"] and alone.rows == []
    # --fresh retrains
    before = sum(1 for c in fake_runs if c[0] == "train")
    run_pipeline(
        None, tmp_path / "a", variants=(), baseline=False, fresh=True, runner=fake_runs.runner
    )
    assert sum(1 for c in fake_runs if c[0] == "train") == before + 2


def test_a_run_short_of_its_steps_is_continued_not_restarted(fake_runs, tmp_path) -> None:
    run_pipeline(None, tmp_path, variants=(), baseline=False, runner=fake_runs.runner)
    ckpt = tmp_path / "runs" / "centerpoint_tiny" / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 40, "state_dict": {}}, ckpt)  # cut off after 40 of 100 steps
    n = len(fake_runs)
    res = run_pipeline(None, tmp_path, variants=(), baseline=False, runner=fake_runs.runner)
    new = fake_runs[n:]
    # the teacher resumes from its own last.ckpt and is evaluated again (its old metrics are
    # stale); the label encoder, finished, is reused as it is
    assert [c[0] for c in new] == ["resume", "eval"]
    assert new[0][1].name == "centerpoint_tiny" and new[0][2] == ckpt
    assert res.by_key()["lidar_teacher"].metrics["mAP"] == pytest.approx(0.1 * len(fake_runs))
    # a checkpoint of the budget's length (or longer) is final
    torch.save({"global_step": 150, "state_dict": {}}, ckpt)
    n = len(fake_runs)
    run_pipeline(None, tmp_path, variants=(), baseline=False, runner=fake_runs.runner)
    assert fake_runs[n:] == []


def test_checkpoint_step_needs_a_training_checkpoint(tmp_path: Path) -> None:
    from labeldistill.checkpoint.weights import checkpoint_step
    from labeldistill.errors import CheckpointError

    good = tmp_path / "good.ckpt"
    torch.save({"global_step": 7, "state_dict": {}}, good)
    assert checkpoint_step(good) == 7
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(CheckpointError, match="bare.ckpt.*global_step"):
        checkpoint_step(bare)


def test_bad_budget_and_variant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown budget 'huge'"):
        run_pipeline(None, tmp_path, budget="huge")
    with pytest.raises(ConfigError, match="unknown variant 'both'"):
        run_pipeline(None, tmp_path, variants=("both",))
    assert set(BUDGETS) == {"tiny", "bench", "bench_scratch", "paper"}
    assert BUDGETS["paper"].stages["labeldistill"].overrides == ()
    assert BUDGETS["paper"].data is None and BUDGETS["paper"].backbone is None
    # bench_scratch = bench without stage 0, everything else equal
    bench, scratch = BUDGETS["bench"], BUDGETS["bench_scratch"]
    assert bench.backbone is not None and scratch.backbone is None
    # ... except that bench freezes the stage-0 ResNet (a frozen random one would be useless)
    frozen = "student.image_backbone.frozen_stages=4"
    for key, plan in bench.stages.items():
        other = scratch.stages[key]
        assert plan.config == other.config
        assert tuple(o for o in plan.overrides if o != frozen) == other.overrides
        assert (frozen in plan.overrides) == (key not in ("lidar_teacher", "label_encoder"))
    assert bench.data == scratch.data
    # every camera stage of the benchmark has the same length and is validated every epoch
    cams = {k: v for k, v in bench.stages.items() if k not in ("lidar_teacher", "label_encoder")}
    assert len({v.overrides[:4] for v in cams.values()}) == 1
    assert all("trainer.check_val_every_n_epoch=2" in v.overrides for v in cams.values())
    # 16 epochs of 192 steps (384 samples, batch 2), the lr stepped near the paper's fractions,
    # image features at stride 8, bf16 where the CPU has it, NHWC convolutions
    for key in cams:
        cfg = pipeline.stage_config(bench, key, None, tmp_path, 0, {})
        assert (cfg.trainer.max_steps, cfg.optim.milestones) == (3072, (12, 14))
        assert (cfg.optim.gamma, cfg.trainer.ema_decay) == (0.1, 0.99)
        assert cfg.student.view_transform.downsample == 8
        assert cfg.student.image_neck.upsample_strides == (0.5, 1.0, 2.0, 4.0)
        assert (cfg.trainer.precision, cfg.trainer.channels_last) == ("fast", True)
    # lidar_s0_detached = labeldistill with the LiDAR slice of S0 detached, in its own run dir
    ld = pipeline.stage_config(bench, "labeldistill", None, tmp_path, 0, {})
    det = pipeline.stage_config(bench, "lidar_s0_detached", None, tmp_path, 0, {})
    assert (ld.distill.lidar_level0_grad, det.distill.lidar_level0_grad) == (True, False)
    assert det.name != ld.name
    assert replace(det, name=ld.name, distill=ld.distill) == ld
    # level0_detached: both S0 slices detached, nothing else changed
    both = pipeline.stage_config(bench, "level0_detached", None, tmp_path, 0, {})
    flags = (both.distill.lidar_level0_grad, both.distill.label_level0_grad)
    assert flags == (False, False) and ld.distill.label_level0_grad
    assert both.name not in (ld.name, det.name)
    assert replace(both, name=ld.name, distill=ld.distill) == ld
    teacher = pipeline.stage_config(bench, "lidar_teacher", None, tmp_path, 0, {})
    assert (teacher.trainer.max_steps, teacher.optim.milestones) == (600, (1000,))
    assert budgets.BENCH_DATA.train_scenes * budgets.BENCH_DATA.samples_per_scene == 192 * 2
    with pytest.raises(ConfigError, match="teachers=False runs stage 0 only"):
        run_pipeline(None, tmp_path, teachers=False)
    assert bench.data.overrides() == (
        "data.version=v1.0-trainval",
        "data.train_split=train",
        "data.val_split=val",
    )


def test_cli_pipeline_reports_a_bad_budget(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["pipeline", "--budget", "huge", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown budget 'huge'") and "\n" not in err


def test_table_rows_columns_and_bands() -> None:
    def row(key: str, m: float) -> StageResult:
        metrics = {c: m for c in pipeline.METRIC_COLUMNS}
        metrics["ap_by_distance"] = {"0-20": m / 2, "20-30": None, ">30": 0.0}
        return StageResult(key, key, Path("x"), metrics)

    text = format_table([row("labeldistill", 0.5), row("baseline", 0.25), row("lidar_teacher", 1)])
    lines = text.splitlines()
    assert lines[0] == (
        "| model | mAP | NDS | mATE | mASE | mAOE | mAVE | mAAE | mAP 0-20 m | mAP 20-30 m "
        "| mAP >30 m |"
    )
    assert [ln.split(" | ")[0] for ln in lines[2:]] == [
        "| LiDAR teacher (CenterPoint)",
        "| baseline BEVDepth",
        "| LabelDistill",
    ]
    assert lines[-1].endswith("| 0.5000 | 0.2500 | - | 0.0000 |")
