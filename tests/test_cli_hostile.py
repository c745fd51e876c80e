"""Hostile input and faults through the CLI (issue 14): one test (or a few) per item of the
issue, each failing on the code before the fix. A user error ends with exit code 2 and exactly
one ``error:`` line naming the file or key, no traceback and nothing half-written; Ctrl-C ends
with 130 and one line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from labeldistill.cli import main

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
READ_ONLY = Path("/sys/labeldistill_out")  # not writable, not even for root

# A short CPU student: 64x192 images, key frame only, in-process loading, 2 samples per step.
FAST = [
    "data.num_workers=0",
    "data.image_size=[64, 192]",
    "data.key_idxes=[]",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
]


def _sets(root: Path, out: Path, *extra: str) -> list[str]:
    args = []
    for item in [f"data.dataroot={root}", f"trainer.output_dir={out}", *FAST, *extra]:
        args += ["--set", item]
    return args


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error_line(rc: int, err: str, *must_name: str) -> str:
    """The one ``error:`` line of a failed command (asserts exit 2, no traceback)."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0], err  # nothing after it
    for name in must_name:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def _cli(*argv: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeldistill.cli", *map(str, argv)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def linked_root(src: Path, dst: Path, *, infos: bool = True, depth: bool = True) -> Path:
    """Hard-linked copy of a prepared dataset root; damage files by unlinking and rewriting."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    skip = [] if infos else ["nuscenes_infos_*.pkl"]
    skip += [] if depth else ["depth_gt"]
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip), copy_function=link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _mini_val(root: Path) -> list[dict]:
    from labeldistill.data.infos import info_path, load_infos

    return load_infos(info_path(root, "mini_val"))


def _empty_results(root: Path, path: Path) -> Path:
    from labeldistill.evaluation.results import RESULT_META

    results = {str(i["sample_token"]): [] for i in _mini_val(root)}
    path.write_text(json.dumps({"meta": RESULT_META, "results": results}))
    return path


@pytest.fixture(scope="module")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short bevdepth_tiny run through the CLI in a subprocess (2 steps): its run directory,
    stdout and stderr."""
    out = tmp_path_factory.mktemp("tiny_run")
    proc = _cli(
        "train",
        "bevdepth_tiny",
        *_sets(
            synthetic_root, out, "name=tiny", "trainer.max_steps=2", "data.train_split=mini_val"
        ),
    )
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "run": out / "tiny", "stdout": proc.stdout, "stderr": proc.stderr}


# ---------------------------------------------------------------------------------------------
# 1. an empty prediction scores 0 instead of crashing the devkit
# ---------------------------------------------------------------------------------------------


def test_item01_eval_json_of_an_all_empty_prediction(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = _empty_results(synthetic_root, tmp_path / "empty.json")
    rc, out, err = _run(
        capsys,
        "eval-json",
        "--dataroot",
        synthetic_root,
        "--version",
        "v1.0-mini",
        "--split",
        "mini_val",
        "--results",
        results,
        "--out",
        tmp_path / "eval",
    )
    assert rc == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mAP"] == 0.0 and metrics["NDS"] == 0.0
    assert set(metrics["per_class_AP"].values()) == {0.0}
    assert metrics["mATE"] == 1.0 and metrics["mAAE"] == 1.0  # the devkit's "no prediction"
    assert metrics["num_gt_by_distance"]["0-20"] > 0
    assert "mAP                   0.0000" in out and "car                     0.0000" in out


def test_item01_in_training_validation_of_a_model_without_boxes(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every score under the threshold (bias -50): validation scores 0 and the epoch's
    checkpoint is written."""
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        *_sets(
            synthetic_root,
            tmp_path,
            "data.train_split=mini_val",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=0.5",
            "student.head.init_bias=-50",
            "trainer.check_val_every_n_epoch=1",
        ),
    )
    assert rc == 0, err
    run = tmp_path / "bevdepth_tiny"
    assert (run / "checkpoints" / "epoch_0.ckpt").is_file()
    metrics = json.loads((run / "eval" / "val_epoch_0" / "metrics.json").read_text())
    assert metrics["mAP"] == 0.0 and metrics["NDS"] == 0.0
    written = json.loads((run / "eval" / "val_epoch_0" / "results_nusc.json").read_text())
    assert len(written["results"]) == 8 and not any(written["results"].values())


# ---------------------------------------------------------------------------------------------
# 2. --resume is exact with trainer.max_steps (killed at an epoch boundary and mid-epoch)
# ---------------------------------------------------------------------------------------------

_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from labeldistill.training import run

    KILL_AT = int(os.environ["LD_KILL_AT_STEP"])

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

    build = run.build_trainer

    def build_with_kill(cfg, callbacks, logger, fit):
        return build(cfg, [*callbacks, Kill()], logger, fit)

    run.build_trainer = build_with_kill
    from labeldistill.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


#: 8 samples / batch 2 = 4 steps per epoch; max_steps 8 = 2 epochs.
RESUME_COMMON = [
    "data.train_split=mini_val",
    "trainer.deterministic=true",
    "trainer.max_steps=8",
    "trainer.max_epochs=100",
    "trainer.keep_epochs=-1",
    "trainer.ema_decay=0.9",
]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output dir of the uninterrupted run ``full`` (8 steps)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    args = _sets(synthetic_root, out, "name=full", *RESUME_COMMON)
    assert main(["train", "bevdepth_tiny", *args]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 6], ids=["epoch_boundary", "mid_epoch"])
def test_item02_resume_after_kill9_equals_the_uninterrupted_run(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    uninterrupted: Path,
    kill_at: int,
) -> None:
    """kill -9 before step ``kill_at`` + 1, then ``train --resume last``: every tensor, the EMA
    and the global step of each epoch file equal the uninterrupted run's."""
    common = RESUME_COMMON
    args = ["train", "bevdepth_tiny", *_sets(synthetic_root, tmp_path, "name=part", *common)]
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, *args],
        env={**_env(), "LD_KILL_AT_STEP": str(kill_at)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    part = tmp_path / "part" / "checkpoints"
    assert torch.load(part / "last.ckpt", weights_only=True)["global_step"] == 4
    rc, _, err = _run(capsys, *args, "--resume", "last")
    assert rc == 0, err
    for name, step in (("epoch_0.ckpt", 4), ("epoch_1.ckpt", 8), ("last.ckpt", 8)):
        a = torch.load(uninterrupted / "full" / "checkpoints" / name, weights_only=True)
        b = torch.load(part / name, weights_only=True)
        assert a["global_step"] == b["global_step"] == step, name
        for key in ("state_dict", "ema_state_dict"):
            different = [k for k, v in a[key].items() if not torch.equal(v, b[key][k])]
            assert not different, (name, key, len(different))
    from safetensors.torch import load_file

    for epoch in (0, 1):
        ema = f"epoch_{epoch}.safetensors"
        a, b = (load_file(d / "ema" / ema) for d in (uninterrupted / "full", tmp_path / "part"))
        assert all(torch.equal(v, b[k]) for k, v in a.items()), ema


# ---------------------------------------------------------------------------------------------
# 3. output paths checked before the work
# ---------------------------------------------------------------------------------------------


def _dummy_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "dummy.ckpt"
    path.write_bytes(b"not read: the output check comes first")
    return path


@pytest.mark.parametrize(
    "case",
    [
        "predict_out_is_dir",
        "predict_out_below_a_file",
        "predict_read_only",
        "eval_read_only",
        "eval_json_out_is_file",
        "visualize_out_is_file",
        "visualize_scene_out_is_dir",
        "train_read_only_output_dir",
        "prepare_out_read_only",
        "export_onnx_out_is_dir",
        "convert_out_is_dir",
    ],
)
def test_item03_output_paths_checked_before_the_work(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    ckpt = _dummy_ckpt(tmp_path)
    cfg = ["bevdepth_tiny", *_sets(synthetic_root, tmp_path / "runs")]
    data = ["--dataroot", synthetic_root, "--version", "v1.0-mini", "--split", "mini_val"]
    argv, named = {
        "predict_out_is_dir": (["predict", *cfg, "--ckpt", ckpt, "--out", a_dir], a_dir),
        "predict_out_below_a_file": (
            ["predict", *cfg, "--ckpt", ckpt, "--out", a_file / "r.json"],
            a_file,
        ),
        "predict_read_only": (
            ["predict", *cfg, "--ckpt", ckpt, "--out", READ_ONLY / "r.json"],
            "/sys",
        ),
        "eval_read_only": (["eval", *cfg, "--ckpt", ckpt, "--out", READ_ONLY], "/sys"),
        "eval_json_out_is_file": (["eval-json", *data, "--gt-as-results", "--out", a_file], a_file),
        "visualize_out_is_file": (["visualize", *data, "--out", a_file], a_file),
        "visualize_scene_out_is_dir": (
            ["visualize", *data, "--scene", "scene-0103", "--out", a_dir],
            a_dir,
        ),
        "train_read_only_output_dir": (
            ["train", "bevdepth_tiny", *_sets(synthetic_root, READ_ONLY)],
            "trainer.output_dir",
        ),
        "prepare_out_read_only": (
            ["prepare", "--dataroot", synthetic_root, "--version", "v1.0-mini", "--out", READ_ONLY],
            "/sys",
        ),
        "export_onnx_out_is_dir": (["export-onnx", *cfg, "--ckpt", ckpt, "--out", a_dir], a_dir),
        "convert_out_is_dir": (
            ["convert", "--from-original", ckpt, "--config", "bevdepth_tiny", "--out", a_dir],
            a_dir,
        ),
    }[case]
    start = time.monotonic()
    rc, _, err = _run(capsys, *argv)
    _error_line(rc, err, named)
    assert time.monotonic() - start < 30  # before any inference or data pass
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in a_dir.iterdir()) == []
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# 4 and 15. bad checkpoints through --resume: one clear line, the same as eval's
# ---------------------------------------------------------------------------------------------


def _unsafe_ckpt(path: Path) -> Path:
    class Payload:
        def __reduce__(self):  # would run a shell command if unpickled without weights_only
            return (os.system, ("touch " + str(path.parent / "PWNED"),))

    torch.save({"state_dict": {}, "payload": Payload()}, path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "unsafe", "another_config", "weights_only"])
def test_item04_bad_resume_checkpoints_give_one_line(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, tiny_run: dict, kind: str
) -> None:
    last = tiny_run["run"] / "checkpoints" / "last.ckpt"
    extra: list[str] = []
    if kind == "truncated":
        bad = tmp_path / "cut.ckpt"
        bad.write_bytes(last.read_bytes()[:50_000])
        expect = "truncated or corrupt"
    elif kind == "unsafe":
        bad = _unsafe_ckpt(tmp_path / "unsafe.ckpt")
        expect = "could run code"
    elif kind == "another_config":
        bad = last
        extra = ["student.head.head_conv=8"]
        expect = "does not fit the model"
    else:
        bad = tmp_path / "weights.ckpt"
        state = torch.load(last, weights_only=True)
        torch.save({"state_dict": state["state_dict"]}, bad)
        expect = "no training state"
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        *_sets(synthetic_root, tmp_path, "name=r", *extra),
        "--resume",
        bad,
    )
    line = _error_line(rc, err, bad, expect)
    assert len(line) < 400  # not a list of every key name
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "r" / "config.yaml").exists()
    if kind in ("truncated", "unsafe"):  # eval reports the same file with the same words
        rc, _, err = _run(
            capsys, "eval", "bevdepth_tiny", *_sets(synthetic_root, tmp_path), "--ckpt", bad
        )
        assert expect in _error_line(rc, err, bad)


def test_item15_truncated_is_not_called_unsafe_and_messages_are_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_run: dict
) -> None:
    last = tiny_run["run"] / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    unsafe = _unsafe_ckpt(tmp_path / "unsafe.ckpt")
    for path, words in (
        (cut, "truncated or corrupt"),
        (empty, "truncated or corrupt"),
        (unsafe, "could run code"),
    ):
        rc, _, err = _run(capsys, "eval", "bevdepth_tiny", "--ckpt", path)
        line = _error_line(rc, err, path, words)
        if path != unsafe:
            assert "unsafe" not in line and "safely" not in line
        assert line.endswith(("retrain it", ".safetensors file"))  # the fix, not a cut sentence
        assert "internal miniz error" not in line  # torch's second sentence is left out


# ---------------------------------------------------------------------------------------------
# 5. a data error inside a DataLoader worker: the same one line as in-process
# ---------------------------------------------------------------------------------------------


def test_item05_data_error_in_a_worker_is_the_in_process_line(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = linked_root(synthetic_root, tmp_path / "root")
    infos = _mini_val(root)
    bad = root / infos[0]["cam_infos"]["CAM_FRONT"]["filename"]
    data = bad.read_bytes()
    _replace(bad, data[: len(data) // 3])
    lines = []
    for workers in (0, 1):
        rc, _, err = _run(
            capsys,
            "train",
            "bevdepth_tiny",
            *_sets(
                root, tmp_path / f"w{workers}", "data.train_split=mini_val", "trainer.max_steps=4"
            ),
            "--set",
            f"data.num_workers={workers}",
        )
        line = _error_line(rc, err, bad, "corrupt")
        assert "DataLoader worker" not in line and "Original Traceback" not in line
        lines.append(line)
    assert lines[0] == lines[1]


# ---------------------------------------------------------------------------------------------
# 6. result files: values the devkit would trip on, or take silently
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("detection_score", float("nan"), "detection_score"),
        ("detection_score", 1.5, "detection_score"),
        ("detection_score", -0.1, "detection_score"),
        ("size", [-1.0, 4.0, 1.5], "'size'"),
        ("rotation", [0.0, 0.0, 0.0, 0.0], "zero quaternion"),
        ("translation", [1.0, "a", 2.0], "'translation'"),
    ],
)
def test_item06_result_file_values(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    field: str,
    value: object,
    words: str,
) -> None:
    from labeldistill.evaluation.results import gt_as_results

    results = gt_as_results(synthetic_root, "v1.0-mini", "mini_val")
    token = next(t for t, recs in results["results"].items() if recs)
    results["results"][token][0][field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(results))  # NaN is written as the JSON extension NaN
    rc, _, err = _run(
        capsys,
        "eval-json",
        "--dataroot",
        synthetic_root,
        "--version",
        "v1.0-mini",
        "--split",
        "mini_val",
        "--results",
        path,
        "--out",
        tmp_path / "eval",
    )
    _error_line(rc, err, path, token, words)
    assert not (tmp_path / "eval" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# 7. synth --overwrite replaces only a directory synth wrote
# ---------------------------------------------------------------------------------------------


def test_item07_synth_overwrite_refuses_a_directory_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    real = tmp_path / "nuscenes"
    (real / "v1.0-mini").mkdir(parents=True)
    (real / "v1.0-mini" / "scene.json").write_text("[]")
    (real / "notes.txt").write_text("mine")
    rc, _, err = _run(capsys, "synth", "--out", real, "--overwrite", "--samples-per-scene", "1")
    _error_line(rc, err, real, "not written by labeldistill synth")
    assert (real / "notes.txt").read_text() == "mine"
    assert (real / "v1.0-mini" / "scene.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuscenes"]


def test_item07_synth_overwrite_replaces_its_own_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "synth"
    argv = ["synth", "--out", out, "--samples-per-scene", "1", "--image-size", "64x36"]
    assert _run(capsys, *argv, "--workers", "1")[0] == 0
    first = json.loads((out / "synth_config.json").read_text())
    assert _run(capsys, *argv, "--workers", "1", "--seed", "3", "--overwrite")[0] == 0
    assert json.loads((out / "synth_config.json").read_text())["seed"] == 3 != first["seed"]


# ---------------------------------------------------------------------------------------------
# 8. atomically written files honour the umask
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_elsewhere(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``prepare --out infos --depth-out depth`` of a copy without infos and depth GT, under
    umask 022: the dataroot, the info and the depth directories."""
    base = tmp_path_factory.mktemp("prepared_elsewhere")
    root = linked_root(synthetic_root, base / "root", infos=False, depth=False)
    infos, depth = base / "infos", base / "depth"
    old = os.umask(0o022)
    try:
        rc = main(
            [
                "prepare",
                "--dataroot",
                str(root),
                "--version",
                "v1.0-mini",
                "--workers",
                "1",
                "--out",
                str(infos),
                "--depth-out",
                str(depth),
            ]
        )
    finally:
        os.umask(old)
    assert rc == 0
    return {"root": root, "infos": infos, "depth": depth}


def test_item08_written_files_honour_the_umask(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, prepared_elsewhere: dict
) -> None:
    old = os.umask(0o022)
    try:
        rc, _, err = _run(
            capsys,
            "eval-json",
            "--dataroot",
            synthetic_root,
            "--version",
            "v1.0-mini",
            "--split",
            "mini_val",
            "--gt-as-results",
            "--out",
            tmp_path / "eval",
        )
        assert rc == 0, err
        os.umask(0o077)
        rc, _, err = _run(
            capsys,
            "eval-json",
            "--dataroot",
            synthetic_root,
            "--version",
            "v1.0-mini",
            "--split",
            "mini_val",
            "--gt-as-results",
            "--out",
            tmp_path / "private",
        )
        assert rc == 0, err
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for name in ("results_gt.json", "metrics.json"):
        assert mode(tmp_path / "eval" / name) == 0o644, name
        assert mode(tmp_path / "private" / name) == 0o600, name
    assert mode(prepared_elsewhere["infos"] / "nuscenes_infos_mini_val.pkl") == 0o644
    depth = sorted(prepared_elsewhere["depth"].iterdir())
    assert depth and {mode(p) for p in depth} == {0o644}


# ---------------------------------------------------------------------------------------------
# 9. numeric config values are range-checked
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.batch_size=-1", "data.batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("optim.lr=-1", "optim.lr"),
        ("data.image_size=[0, 0]", "data.image_size[0]"),
        ("grid.x_bound=[-51.2, 51.2, 0]", "grid.x_bound[2]"),
        ("grid.d_bound=[58, 2, 2]", "grid.d_bound"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.ema_decay=1.5", "trainer.ema_decay"),
    ],
)
def test_item09_numeric_ranges(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, override: str, key: str
) -> None:
    rc, _, err = _run(
        capsys, "train", "bevdepth_tiny", *_sets(synthetic_root, tmp_path), "--set", override
    )
    _error_line(rc, err, f"'{key}'")
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------------
# 10. existing run directories are protected
# ---------------------------------------------------------------------------------------------


def test_item10_fresh_train_into_an_existing_run_is_refused(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, tiny_run: dict
) -> None:
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run["run"], run)

    def run_files() -> dict[Path, bytes]:
        files = [run / "config.yaml", *run.glob("checkpoints/*"), *run.glob("ema/*")]
        return {p: p.read_bytes() for p in files}

    before = run_files()
    assert len(before) == 4  # config.yaml, epoch_0.ckpt, last.ckpt, ema/epoch_0
    base = [
        "train",
        "bevdepth_tiny",
        *_sets(synthetic_root, tmp_path, "name=tiny", "data.train_split=mini_val"),
    ]
    rc, _, err = _run(capsys, *base, "--set", "trainer.max_steps=1")
    _error_line(rc, err, run, "--resume last", "--overwrite")
    # a start-up failure with --overwrite: config.yaml and the checkpoints stay as they were
    rc, _, err = _run(
        capsys,
        *base,
        "--set",
        "data.train_split=mini_train",
        "--set",
        f"data.info_dir={tmp_path / 'no_infos'}",
        "--overwrite",
    )
    _error_line(rc, err, "no_infos")
    assert run_files() == before
    # --overwrite that gets going replaces the old run
    rc, _, err = _run(capsys, *base, "--set", "trainer.max_steps=1", "--overwrite")
    assert rc == 0, err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert "max_steps: 1" in (run / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------------
# 11. malformed nested info fields, dangling table tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage,field",
    [
        (
            lambda i: i["cam_infos"]["CAM_FRONT"].__setitem__("ego_pose", None),
            "cam_infos.CAM_FRONT.ego_pose",
        ),
        (lambda i: i["cam_infos"]["CAM_BACK"].pop("filename"), "cam_infos.CAM_BACK.filename"),
        (
            lambda i: i["cam_infos"]["CAM_FRONT_LEFT"]["calibrated_sensor"].__setitem__(
                "camera_intrinsic", [1, 2]
            ),
            "camera_intrinsic",
        ),
        (
            lambda i: i["lidar_infos"]["LIDAR_TOP"]["ego_pose"].__setitem__("rotation", [1, 0]),
            "LIDAR_TOP.ego_pose.rotation",
        ),
        (lambda i: i["ann_infos"][0].__setitem__("size", "big"), "ann_infos[0].size"),
        (lambda i: i.__setitem__("ann_infos", {"a": 1}), "ann_infos must be a list"),
    ],
    ids=[
        "ego_pose_none",
        "no_filename",
        "bad_intrinsic",
        "short_rotation",
        "size_text",
        "ann_dict",
    ],
)
def test_item11_malformed_info_fields(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage, field: str
) -> None:
    from labeldistill.data.infos import info_path, read_info_file, save_infos

    src = read_info_file(info_path(synthetic_root, "mini_val"))
    infos = [dict(i) for i in src.infos]
    infos[3] = pickle.loads(pickle.dumps(infos[3]))
    damage(infos[3])
    bad = save_infos(info_path(tmp_path, "mini_val"), infos, dict(src.meta))
    rc, _, err = _run(
        capsys,
        "visualize",
        "--dataroot",
        synthetic_root,
        "--version",
        "v1.0-mini",
        "--infos",
        bad,
        "--num",
        "8",
        "--out",
        tmp_path / "vis",
    )
    _error_line(rc, err, bad, "entry 3", field)
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        *_sets(synthetic_root, tmp_path, "data.train_split=mini_val"),
        "--set",
        f"data.info_dir={tmp_path}",
    )
    assert rc == 2 and "Traceback" not in err


def test_item11_dangling_table_token(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = linked_root(synthetic_root, tmp_path / "root", infos=False, depth=False)
    table = root / "v1.0-mini" / "sample.json"
    samples = json.loads(table.read_text())
    samples[5]["next"] = "f" * 32  # a sample that does not exist
    _replace(table, json.dumps(samples).encode())
    rc, _, err = _run(
        capsys, "prepare", "--dataroot", root, "--version", "v1.0-mini", "--workers", "1"
    )
    _error_line(rc, err, root / "v1.0-mini", "inconsistent")
    assert not list(root.glob("nuscenes_infos_*")) and not (root / "depth_gt").exists()


# ---------------------------------------------------------------------------------------------
# 12. empty selections
# ---------------------------------------------------------------------------------------------


def test_item12_empty_selections_are_errors(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from labeldistill.data.infos import save_infos

    data = [
        "visualize",
        "--dataroot",
        synthetic_root,
        "--version",
        "v1.0-mini",
        "--split",
        "mini_val",
    ]
    rc, _, err = _run(capsys, *data, "--num", "0", "--out", tmp_path / "a")
    _error_line(rc, err, "--num")
    empty = save_infos(tmp_path / "empty.pkl", [], {"version": "v1.0-mini", "split": "mini_val"})
    rc, _, err = _run(capsys, *data, "--infos", empty, "--out", tmp_path / "b")
    _error_line(rc, err, empty, "no samples")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # predictions asked for but none to draw: said so (the pictures still show the GT)
    results = _empty_results(synthetic_root, tmp_path / "empty.json")
    rc, _, err = _run(capsys, *data, "--num", "1", "--results", results, "--out", tmp_path / "c")
    assert rc == 0 and "no prediction with score >= 0.30" in caplog.text
    assert len(list((tmp_path / "c").glob("*.png"))) == 1


# ---------------------------------------------------------------------------------------------
# 13. Ctrl-C in train and eval: exit 130, one line
# ---------------------------------------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(cmd: list[str], ready, log: Path, timeout: float = 300) -> tuple[int, str]:
    """Start the CLI (stderr to ``log``), send SIGINT once ``ready(stderr so far)``.

    The child starts with SIGINT at its default disposition, as a process started from a
    terminal does: a child inherits an *ignored* SIGINT from its parent, and Python then never
    raises KeyboardInterrupt. (Lightning's Ctrl-C handler sets SIGINT to SIG_IGN in the process
    it runs in and leaves it so.) In the full suite this test twice saw the run train to the
    end after its SIGINT, and never when run alone; with this reset it passed. The test that
    would leave the worker's SIGINT ignored is not identified."""
    with open(log, "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labeldistill.cli", *map(str, cmd)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            preexec_fn=_default_sigint,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and not ready(log.read_text()):
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    return proc.returncode, log.read_text()


@pytest.mark.slow
def test_item13_ctrl_c_in_train_and_eval(
    synthetic_root: Path, tmp_path: Path, tiny_run: dict
) -> None:
    run = tmp_path / "long"
    rc, err = _interrupt_when(
        ["train", "bevdepth_tiny", *_sets(synthetic_root, tmp_path, "name=long")],
        lambda _: (run / "config.yaml").is_file(),  # written when training starts
        tmp_path / "train.log",
    )
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 130, err
    assert lines[-1] == "interrupted" and err.count("interrupted") == 1, err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    ckpt = tiny_run["run"] / "checkpoints" / "last.ckpt"
    rc, err = _interrupt_when(
        [
            "eval",
            "bevdepth_tiny",
            *_sets(synthetic_root, tmp_path, "data.val_split=mini_train", "data.batch_size=1"),
            "--ckpt",
            ckpt,
            "--out",
            tmp_path / "eval",
        ],
        lambda text: "Predicting" in text,
        tmp_path / "eval.log",
    )
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# 14. kill -9 of prepare: no orphaned workers; a killed write's temporary file is removed
# ---------------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_item14_kill9_of_prepare_leaves_no_workers_and_no_temporaries(
    synthetic_root: Path, tmp_path: Path
) -> None:
    root = linked_root(synthetic_root, tmp_path / "root", infos=False, depth=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labeldistill.cli",
            "prepare",
            "--dataroot",
            str(root),
            "--version",
            "v1.0-mini",
            "--workers",
            "2",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    depth = root / "depth_gt"
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid)
        if len(workers) >= 3 and depth.is_dir() and any(depth.iterdir()):
            break  # forkserver + 2 workers, and depth files being written
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 3
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "orphaned pool processes"
    # a temporary file as a write killed half-way leaves it (its writer pid is gone)
    stale = depth / ".x.jpg.bin.999999999.abc123.tmp"
    stale.write_bytes(b"half")
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "labeldistill.cli",
            "prepare",
            "--dataroot",
            str(root),
            "--version",
            "v1.0-mini",
            "--workers",
            "1",
        ],
        env=_env(),
        capture_output=True,
        timeout=600,
    ).returncode
    assert rc == 0
    assert not [p.name for p in depth.iterdir() if p.name.endswith(".tmp")]
    reference = synthetic_root / "depth_gt"
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in depth.iterdir()) == names
    assert all((depth / n).read_bytes() == (reference / n).read_bytes() for n in names)


# ---------------------------------------------------------------------------------------------
# 16. flags that were silently ignored or clamped
# ---------------------------------------------------------------------------------------------


def test_item16_conflicting_and_out_of_range_flags(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    onnx = tmp_path / "student.onnx"
    onnx.write_bytes(b"x")
    rc, _, err = _run(
        capsys,
        "predict",
        "bevdepth_tiny",
        "--ckpt",
        _dummy_ckpt(tmp_path),
        "--onnx",
        onnx,
        "--out",
        tmp_path / "r.json",
    )
    _error_line(rc, err, "--ckpt", "--onnx")
    for command in (
        ["synth", "--out", tmp_path / "s"],
        ["prepare", "--dataroot", synthetic_root, "--version", "v1.0-mini"],
    ):
        rc, _, err = _run(capsys, *command, "--workers", "0")
        _error_line(rc, err, "--workers", "got 0")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------------------------
# 17. a number given to a string field stays text
# ---------------------------------------------------------------------------------------------


def test_item17_numeric_text_for_string_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from labeldistill.config import load_config

    cfg = load_config(
        "bevdepth_tiny", ["trainer.output_dir=2024", "name=007", "trainer.max_steps=5"]
    )
    assert (cfg.trainer.output_dir, cfg.name, cfg.trainer.max_steps) == ("2024", "007", 5)
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        "--set",
        f"trainer.output_dir={2024}",
        "--set",
        "name=007",
        "--resume",
        "last",
    )
    _error_line(rc, err, str(Path("2024") / "007" / "checkpoints" / "last.ckpt"))
    rc, _, err = _run(capsys, "train", "bevdepth_tiny", "--set", "trainer.max_steps=abc")
    _error_line(rc, err, "'trainer.max_steps'", "integer")


# ---------------------------------------------------------------------------------------------
# 18. quiet, single log lines, bars off stdout, an end-of-training summary
# ---------------------------------------------------------------------------------------------


def test_item18_train_output(tiny_run: dict) -> None:
    assert tiny_run["stdout"] == ""  # progress bars go to stderr
    lines = [line.strip() for line in tiny_run["stderr"].replace("\r", "\n").splitlines()]
    logged = [line for line in lines if line.startswith(("INFO", "WARNING"))]
    assert logged and len(logged) == len(set(logged)), "a log line is printed twice"
    assert not any(line.startswith("INFO: ") for line in lines)
    assert "Tip:" not in tiny_run["stderr"]
    (summary,) = [line for line in logged if "finished tiny" in line]
    assert (
        "2 steps" in summary and "mean losses of the last epoch: " in summary and "loss " in summary
    )
    assert str(tiny_run["run"] / "checkpoints" / "last.ckpt") in summary


# ---------------------------------------------------------------------------------------------
# 19. depth GT out of the dataroot; the synthetic training journey of the README
# ---------------------------------------------------------------------------------------------


def test_item19_depth_gt_out_of_a_read_only_dataroot(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, prepared_elsewhere: dict
) -> None:
    root, infos, depth = (prepared_elsewhere[k] for k in ("root", "infos", "depth"))
    rc, _, err = _run(
        capsys, "prepare", "--dataroot", root, "--version", "v1.0-mini", "--depth-out", READ_ONLY
    )
    _error_line(rc, err, READ_ONLY)
    assert not (root / "depth_gt").exists() and not list(root.glob("nuscenes_infos_*"))
    reference = synthetic_root / "depth_gt"
    assert sorted(p.name for p in depth.iterdir()) == sorted(p.name for p in reference.iterdir())
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        *_sets(
            root,
            tmp_path / "runs",
            "data.train_split=mini_val",
            "trainer.max_steps=1",
            f"data.info_dir={infos}",
            f"data.depth_gt_dir={depth}",
        ),
    )
    assert rc == 0, err
    rc, _, err = _run(
        capsys,
        "train",
        "bevdepth_tiny",
        *_sets(
            root,
            tmp_path / "runs2",
            "data.train_split=mini_val",
            "trainer.max_steps=1",
            f"data.info_dir={infos}",
        ),
    )
    _error_line(rc, err, root / "depth_gt", "prepare")


def test_item19_tiny_teacher_paths_follow_the_output_dir() -> None:
    from labeldistill.config import load_config

    step1 = load_config("labeldistill_step1_tiny", ["trainer.output_dir=elsewhere"])
    assert step1.distill.lidar_ckpt == "elsewhere/centerpoint_tiny/checkpoints/last.ckpt"
    student = load_config("labeldistill_tiny_lidar_only", ["trainer.output_dir=x"])
    assert student.distill.label_ckpt == "x/labeldistill_step1_tiny/checkpoints/last.ckpt"
    assert load_config("labeldistill_tiny").distill.lidar_ckpt == (
        "demo_out/runs/centerpoint_tiny/checkpoints/last.ckpt"
    )


def test_item19_readme_documents_the_synthetic_journey() -> None:
    """The README's synthetic training journey names shipped configs and existing flags, in
    stage order; test_pipeline.py runs the same stages end to end."""
    from labeldistill.cli import build_parser
    from labeldistill.config import shipped_configs

    text = (REPO / "README.md").read_text()
    usage = text[text.index("## Usage") : text.index("## Results")]
    commands = [
        line.split("#")[0].strip()
        for line in usage.replace("\\\n", " ").splitlines()
        if line.strip().startswith("labeldistill ")
    ]
    trained = [c.split()[2] for c in commands if c.split()[1] == "train" and "_tiny" in c]
    assert trained == [
        "centerpoint_tiny",
        "labeldistill_step1_tiny",
        "labeldistill_tiny",
        "bevdepth_tiny",
    ]
    assert any("--depth-out" in c for c in commands)
    parser, _ = build_parser()
    for command in commands:
        args = command.split()[1:]
        parsed = parser.parse_args([a.strip("'\"") for a in args])
        if getattr(parsed, "config", None) and not parsed.config.endswith(".yaml"):
            assert parsed.config in shipped_configs(), command
