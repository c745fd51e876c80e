"""ONNX export of the camera student's inference graph, and an onnxruntime runner.

The exported network is THE student (:class:`~labeldistill.models.student.BEVDepthStudent`)
built with ``exportable=True``, which selects standard-ONNX ops (opset 17) in its layers, not
a second copy of its forward:

* the closed-form adjugate inverse :func:`~labeldistill.ops.inverse.inverse_4x4` instead of
  ``torch.inverse`` (no ONNX operator);
* :func:`~labeldistill.ops.deform_conv.deform_conv2d_plain` (``grid_sample`` and a grouped
  matrix product) instead of torchvision's ``deform_conv2d`` (no ONNX operator);
* :func:`~labeldistill.ops.voxel_pool.voxel_pool_scatter` (one ``ScatterElements`` add, exact
  at any onnxruntime thread count) instead of the sparse CSR product of training.

The graph takes the network inputs of one sample batch (B = 1 by default) of all key frames and
returns the raw head outputs of every task (decoding and NMS stay in PyTorch, so the same
:meth:`CenterHead.decode` gives the boxes).

Inputs (names): ``imgs`` [B, F, N, 3, H, W] (normalised as the dataset does), ``ego_from_camera``,
``intrinsics``, ``ida`` [B, F, N, 4, 4], ``bda`` [B, 4, 4]. Outputs: ``task{t}.{branch}`` for
t = 0..5 and branch in reg, height, dim, rot, vel, heatmap, each [B, k, Y, X] (heatmap logits).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from labeldistill.checkpoint.weights import load_into, read_weights, strip_prefix
from labeldistill.config import ExperimentConfig
from labeldistill.data.dataset import build_dataset, collate
from labeldistill.errors import CheckpointError, UserError
from labeldistill.evaluation.results import results_from_detections, write_results
from labeldistill.io import atomic_path
from labeldistill.models.build import build_student
from labeldistill.models.center_head import REG_BRANCHES, CenterHead
from labeldistill.models.student import BEVDepthStudent
from labeldistill.structures import HeadOutput, TaskOutput

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("imgs", "ego_from_camera", "intrinsics", "ida", "bda")
BRANCHES = tuple(name for name, _ in REG_BRANCHES) + ("heatmap",)


def output_names(num_tasks: int) -> list[str]:
    """``task{t}.{branch}`` in task-major, :data:`BRANCHES` order."""
    return [f"task{t}.{b}" for t in range(num_tasks) for b in BRANCHES]


# --------------------------------------------------------------------------------------------
# The exportable student
# --------------------------------------------------------------------------------------------


def exportable_student(student: BEVDepthStudent) -> BEVDepthStudent:
    """``student`` itself when built with ``exportable=True``, else the same network built so
    (same constructor arguments) holding a copy of its state; eval mode."""
    if student.exportable:
        return student.eval()
    twin = BEVDepthStudent(
        student.cfg,
        student.grid,
        student.num_frames,
        student.backbone.image_size,
        img_mean=student.img_mean,
        img_std=student.img_std,
        weights=student.weights,
        exportable=True,
    )
    twin.load_state_dict(student.state_dict(), strict=True)
    return twin.eval()


class FlatHeadOutputs(nn.Module):
    """The exportable student's ``forward`` with its head maps as a flat tuple (ONNX outputs).

    forward(imgs [B, F, N, 3, H, W], ego_from_camera / intrinsics / ida [B, F, N, 4, 4],
    bda [B, 4, 4]) -> 6 * len(tasks) tensors in :func:`output_names` order.
    """

    def __init__(self, student: BEVDepthStudent) -> None:
        super().__init__()
        if not student.exportable:
            raise ValueError("FlatHeadOutputs needs a student built with exportable=True")
        self.student = student

    def forward(
        self, imgs: Tensor, ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor
    ) -> tuple[Tensor, ...]:
        head = self.student(imgs, ego_from_camera, intrinsics, ida, bda).head
        return tuple(getattr(task, name) for task in head.tasks for name in BRANCHES)


def head_output_from_arrays(arrays: Sequence[Any]) -> HeadOutput:
    """The flat outputs (numpy or tensors, :func:`output_names` order) -> :class:`HeadOutput`."""
    if len(arrays) % len(BRANCHES):
        raise ValueError(f"{len(arrays)} outputs is not a multiple of {len(BRANCHES)}")
    tensors = [torch.as_tensor(np.asarray(a)) for a in arrays]
    tasks = []
    for t in range(len(tensors) // len(BRANCHES)):
        chunk = tensors[t * len(BRANCHES) : (t + 1) * len(BRANCHES)]
        tasks.append(TaskOutput(**dict(zip(BRANCHES, chunk))))
    return HeadOutput(tasks=tasks)


# --------------------------------------------------------------------------------------------
# Export and run
# --------------------------------------------------------------------------------------------


def example_inputs(
    cfg: ExperimentConfig, batch: int = 1, num_cameras: int = 6
) -> tuple[Tensor, ...]:
    """Plausible inputs of the config's shape (six cameras around the ego, 1.5 m high)."""
    h, w = cfg.data.image_size
    f = cfg.num_frames
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, f, num_cameras, 3, h, w, generator=g)
    ego = torch.zeros(batch, f, num_cameras, 4, 4)
    for c in range(num_cameras):
        yaw = 2 * np.pi * c / num_cameras
        rz = torch.tensor(
            [[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]],
            dtype=torch.float32,
        )
        cam_to_ego = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # z fwd -> x fwd
        ego[:, :, c, :3, :3] = rz @ cam_to_ego
        ego[:, :, c, :3, 3] = torch.tensor([0.0, 0.0, 1.5])
        ego[:, :, c, 3, 3] = 1.0
    k = torch.eye(4).repeat(batch, f, num_cameras, 1, 1)
    k[..., 0, 0] = k[..., 1, 1] = 0.8 * w
    k[..., 0, 2], k[..., 1, 2] = w / 2.0, h / 2.0
    ida = torch.eye(4).repeat(batch, f, num_cameras, 1, 1)
    bda = torch.eye(4).repeat(batch, 1, 1)
    return imgs, ego, k, ida, bda


def export_onnx(
    student: BEVDepthStudent,
    out: str | Path,
    example: tuple[Tensor, ...],
    opset: int = OPSET,
) -> Path:
    """Trace the student's inference graph on ``example`` inputs and write ONNX to ``out``.

    Shapes are fixed to those of ``example`` (batch, frames, cameras, image size).
    """
    if opset < 16:
        raise UserError(
            f"ONNX opset {opset} is too old: ScatterElements with reduction needs >= 16"
        )
    wrapper = FlatHeadOutputs(exportable_student(student)).eval()
    names = output_names(len(student.head.task_heads))
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(example),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=names,
            do_constant_folding=True,
        )
    check_standard_ops(out)
    log.info("wrote %s (%d outputs, opset %d)", out, len(names), opset)
    return out


def check_standard_ops(path: str | Path) -> set[str]:
    """The operator types of an ONNX file; UserError if any is outside the default domain."""
    import onnx  # optional here: the [deploy] extra, needed only to export / check

    model = onnx.load(str(path), load_external_data=False)
    custom = {
        f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")
    }
    if custom:
        raise UserError(f"{path} uses non-standard operators {sorted(custom)}: cannot deploy it")
    return {n.op_type for n in model.graph.node}


class OnnxStudent:
    """onnxruntime session of an exported student: ``run(imgs, ego, K, ida, bda) -> HeadOutput``
    (numpy or tensor inputs of the exported shapes)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # optional here: the [deploy] extra, needed only to run

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} not found: run labeldistill export-onnx first")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise CheckpointError(f"ONNX file {path} cannot be loaded ({str(exc)[:160]})") from None
        self.inputs = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.path = path

    def run(self, *inputs: Any) -> HeadOutput:
        feed = {}
        for name, value in zip(INPUT_NAMES, inputs):
            arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            arr = arr.astype(np.float32)
            if tuple(arr.shape) != self.inputs[name]:
                raise UserError(
                    f"{self.path}: input {name} has shape {list(arr.shape)}, the graph was "
                    f"exported for {list(self.inputs[name])}: export again with this config"
                )
            feed[name] = arr
        return head_output_from_arrays(self.session.run(None, feed))


def export_from_config(
    cfg: ExperimentConfig, ckpt: str | Path | None, out: str | Path, opset: int = OPSET
) -> Path:
    """Build the config's student, load ``ckpt`` (any stage file holding a student; EMA
    preferred), export it for batch 1 with the config's frames and image size."""
    student = load_student(cfg, ckpt)
    return export_onnx(student, out, example_inputs(cfg), opset)


def load_student(cfg: ExperimentConfig, ckpt: str | Path | None) -> BEVDepthStudent:
    """The config's camera student with weights from ``ckpt`` (a student-stage or LabelDistill
    checkpoint; ``None``: random weights, for tests and benchmarks)."""
    student = build_student(cfg)
    if ckpt is not None:
        state = read_weights(ckpt).state_dict
        if any(k.startswith("student.") for k in state):
            state = strip_prefix(state, "student.")
        load_into(student, state, ckpt)
    return student.eval()


def predict_onnx(
    cfg: ExperimentConfig, onnx_path: str | Path, split: str | None, out: str | Path
) -> Path:
    """nuScenes result JSON of ``split`` (default: the val split) with the network run by
    onnxruntime (one sample at a time) and our decoding (METHOD.md 4.7)."""
    split = split or cfg.data.val_split
    runner = OnnxStudent(onnx_path)
    decoder = CenterHead(sum(cfg.student.bev_encoder.neck_out_channels), cfg.grid, cfg.student.head)
    dataset = build_dataset(cfg.data, split, train=False)
    dets, metas = [], []
    for i in tqdm(range(len(dataset)), desc=f"onnx {split}", unit="sample"):
        batch = collate([dataset[i]])
        head = runner.run(batch.imgs, batch.ego_from_camera, batch.intrinsics, batch.ida, batch.bda)
        dets.extend(decoder.decode(head))
        metas.extend(batch.metas)
    out = Path(out)
    write_results(out, results_from_detections(dets, metas))
    log.info("%s: %d samples of %s -> %s", onnx_path, len(metas), split, out)
    return out
