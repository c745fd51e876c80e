"""ONNX export of the camera student (issue 6): the exported graph is thread-safe, the
onnxruntime student equals the PyTorch student on a synthetic sample, predict --onnx. (The
exportable ops are tested against their references in tests/ops/.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill.config import load_config
from labeldistill.errors import UserError
from labeldistill.export.onnx import (
    BRANCHES,
    OPSET,
    OnnxStudent,
    check_standard_ops,
    export_onnx,
)
from labeldistill.models import build
from labeldistill.ops.inverse import inverse_4x4
from labeldistill.ops.voxel_pool import VoxelGrid, voxel_pool_reference, voxel_pool_scatter


class _Pool(torch.nn.Module):
    def __init__(self, grid: VoxelGrid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, geom: torch.Tensor, depth: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return voxel_pool_scatter(geom, depth, ctx, self.grid)


def test_pooling_graph_is_thread_safe(tmp_path: Path) -> None:
    """The exported pooling sums ~100k points into 64 cells (thousands of repeats per cell):
    onnxruntime must give the reference at 1, 2 and 4 intra-op threads, every run (its
    ScatterND add loses repeated updates under threads; the export uses ScatterElements)."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(1)
    grid = VoxelGrid(lower=(-4.0, -4.0, -1.0), cell=(1.0, 1.0, 2.0), size=(8, 8, 1))
    geom = torch.rand(1, 2, 40, 24, 48, 3, generator=g) * 9 - 4.5
    depth = torch.rand(1, 2, 40, 24, 48, generator=g)
    ctx = torch.rand(1, 2, 8, 24, 48, generator=g)
    ref = voxel_pool_reference(geom, depth, ctx, grid)
    path = tmp_path / "pool.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _Pool(grid),
            (geom, depth, ctx),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["geom", "depth", "ctx"],
        )
    assert "ScatterND" not in check_standard_ops(path)
    feeds = {"geom": geom.numpy(), "depth": depth.numpy(), "ctx": ctx.numpy()}
    for threads in (1, 2, 4):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(3):
            got = torch.from_numpy(sess.run(None, feeds)[0])
            assert torch.allclose(got, ref, atol=1e-3, rtol=1e-5), (
                threads,
                (got - ref).abs().max(),
            )


TINY_DCN = [
    "student.depth_net.use_dcn=true",  # exercise the deformable conv and ASPP in the export
    "student.depth_net.use_aspp=true",
    "student.depth_net.mid_channels=32",
]


@pytest.fixture(scope="module")
def exported(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from labeldistill.data.dataset import build_dataset, collate

    cfg = load_config(
        "bevdepth_tiny", [f"data.dataroot={synthetic_root}", *TINY_DCN, "data.num_workers=0"]
    )
    student = build.build_student(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-trivial BN statistics and DCN offsets
        for name, buf in student.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.05)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 0.5 + 0.75)
        off = student.backbone.depth_net.depth_conv[4].conv_offset
        off.weight.copy_(torch.randn(off.weight.shape, generator=g) * 0.01)
        off.bias.copy_(torch.randn(off.bias.shape, generator=g) * 0.5)
    ds = build_dataset(cfg.data, cfg.data.val_split, train=False)
    batch = collate([ds[1]])
    inputs = (batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    export_onnx(student, path, inputs)
    return cfg, student, inputs, path


def test_onnx_student_equals_pytorch(exported) -> None:
    cfg, student, inputs, path = exported
    ops = check_standard_ops(path)
    assert {"GridSample", "ScatterElements"} <= ops
    assert "ScatterND" not in ops
    import onnx

    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    runner = OnnxStudent(path, threads=2)  # several threads: see test_pooling_graph_is_thread_safe
    assert runner.inputs["imgs"] == tuple(inputs[0].shape)
    got = runner.run(*inputs)
    with torch.no_grad():
        ref = student(*inputs).head
    assert len(got.tasks) == len(ref.tasks) == 6
    for t_got, t_ref in zip(got.tasks, ref.tasks):
        for name in BRANCHES:
            a, b = getattr(t_got, name), getattr(t_ref, name)
            assert a.shape == b.shape
            assert torch.allclose(a, b, atol=1e-4, rtol=0), (name, (a - b).abs().max())
    # the same detections after our decoding
    d_got, d_ref = student.head.decode(got), student.head.decode(ref)
    assert d_got[0].boxes.shape == d_ref[0].boxes.shape
    assert torch.allclose(d_got[0].scores, d_ref[0].scores, atol=1e-4)
    # a wrongly shaped input is refused with one line
    with pytest.raises(UserError, match="imgs"):
        runner.run(inputs[0][:, :, :3], *inputs[1:])


@pytest.mark.slow  # onnxruntime on every sample of the split (~2 s each on a shared CPU)
def test_predict_onnx_cli(exported, synthetic_root: Path, tmp_path: Path) -> None:
    from labeldistill.cli import main
    from labeldistill.data.infos import info_path, load_infos

    cfg, student, inputs, path = exported
    out = tmp_path / "results.json"
    args = ["predict", "bevdepth_tiny", "--onnx", str(path), "--out", str(out)]
    for o in [f"data.dataroot={synthetic_root}", *TINY_DCN]:
        args += ["--set", o]
    assert main(args) == 0
    results = json.loads(out.read_text())
    tokens = [i["sample_token"] for i in load_infos(info_path(synthetic_root, cfg.data.val_split))]
    assert sorted(results["results"]) == sorted(tokens)
    # sample 1 is the exported sample: same number of boxes as the PyTorch decode of it
    with torch.no_grad():
        dets = student.decode(student(*inputs))
    # (float-level differences may swap near-tied boxes in top-k / NMS of a random network,
    # so boxes are matched by score: nearly all must have a PyTorch twin)
    scores = np.array([r["detection_score"] for r in results["results"][tokens[1]]])
    ref = dets[0].scores.numpy()
    assert abs(len(scores) - len(ref)) <= 2
    matched = np.abs(scores[:, None] - ref[None, :]).min(axis=1) < 1e-4
    assert matched.mean() > 0.95
    top = np.sort(scores)[-10:]
    assert np.allclose(top, np.sort(ref)[-10:], atol=1e-4)


class _Geometry(torch.nn.Module):
    def __init__(self, frustum: torch.Tensor, precision: str) -> None:
        super().__init__()
        self.register_buffer("frustum", frustum)
        self.precision = precision

    def forward(self, e, k, ida, bda):
        from labeldistill.models.view_transform import frustum_geometry

        return frustum_geometry(
            self.frustum, e, k, ida, bda, precision=self.precision, inverse=inverse_4x4
        )


@pytest.mark.parametrize("precision", ["fp16_faithful", "fp32"])
def test_onnx_geometry_drops_the_same_points(tmp_path: Path, precision: str) -> None:
    # The faithful fp16 emulation exports (Cast nodes) and onnxruntime drops exactly the points
    # PyTorch drops (quirk 28): a 1600-px camera at the test-time ida, depths to 57.5 m.
    import onnxruntime as ort

    from labeldistill.models.view_transform import DROPPED_POINT, frustum_geometry, make_frustum

    frustum = make_frustum((256, 704), 16, (2.0, 58.0, 0.5))
    e = torch.eye(4)
    e[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    e[:3, 3] = torch.tensor([1.7, 0.0, 1.5])
    k = torch.eye(4)
    k[0, 0] = k[1, 1] = 1266.4
    k[0, 2], k[1, 2] = 816.3, 491.5
    ida = torch.eye(4)
    ida[0, 0] = ida[1, 1] = 0.44
    ida[1, 3] = -140.0
    args = (
        e.view(1, 1, 4, 4),
        k.view(1, 1, 4, 4),
        ida.view(1, 1, 4, 4),
        torch.eye(4).view(1, 4, 4),
    )
    ref = frustum_geometry(frustum, *args, precision=precision)
    path = tmp_path / "geom.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _Geometry(frustum, precision),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["e", "k", "ida", "bda"],
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(
        sess.run(None, {n: a.numpy() for n, a in zip(("e", "k", "ida", "bda"), args)})[0]
    )
    dropped_ref = (ref == DROPPED_POINT).all(-1)
    dropped = (got == DROPPED_POINT).all(-1)
    assert torch.equal(dropped, dropped_ref)
    assert int(dropped.sum()) == (4016 if precision == "fp16_faithful" else 0)
    torch.testing.assert_close(got[~dropped], ref[~dropped], atol=2e-3, rtol=0)
