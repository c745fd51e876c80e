"""ONNX export of the camera student's inference graph, and an onnxruntime runner.

The exported graph takes the network inputs of one sample batch (B = 1 by default) of all key
frames and returns the raw head outputs of every task (decoding and NMS stay in PyTorch, so
the same :meth:`CenterHead.decode` gives the boxes). Standard ONNX operators only (opset 17):

* ``torch.inverse`` has no ONNX operator: :func:`inverse_4x4` is the closed-form adjugate
  inverse in element-wise ops;
* torchvision's ``deform_conv2d`` has no ONNX operator: :func:`deform_conv2d_plain` is
  deformable convolution v1 written with ``grid_sample`` (bilinear, zero outside) and a grouped
  matrix product; it equals torchvision to float precision (tests/training/test_onnx.py);
* the voxel pooling (sparse CSR product in training) is :func:`voxel_pool_index_put`, an
  index-based sum (``index_put`` with accumulate = ONNX ``ScatterElements`` with reduction
  add); points outside the grid go to one extra dump cell that is dropped. Not ``ScatterND``:
  onnxruntime (1.31) runs ``ScatterND(reduction='add')`` on several threads without guarding
  repeated indices, so with ``intra_op_num_threads > 1`` updates to the same cell race and
  are lost (errors of 10-150 on a 400k-row sum, different at every run);
  ``ScatterElements(reduction='add')`` is exact at any thread count
  (tests/training/test_onnx.py::test_pooling_graph_is_thread_safe).

Inputs (names): ``imgs`` [B, F, N, 3, H, W] (normalised as the dataset does), ``ego_from_camera``,
``intrinsics``, ``ida`` [B, F, N, 4, 4], ``bda`` [B, 4, 4]. Outputs: ``task{t}.{branch}`` for
t = 0..5 and branch in reg, height, dim, rot, vel, heatmap, each [B, k, Y, X] (heatmap logits).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labeldistill.config import ExperimentConfig
from labeldistill.data.io import atomic_path
from labeldistill.errors import CheckpointError, UserError
from labeldistill.models.center_head import REG_BRANCHES
from labeldistill.models.depth_net import DeformConv2dPack, camera_vector
from labeldistill.models.student import BEVDepthStudent
from labeldistill.models.view_transform import frustum_geometry
from labeldistill.ops.voxel_pool import VoxelGrid
from labeldistill.structures import HeadOutput, TaskOutput

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("imgs", "ego_from_camera", "intrinsics", "ida", "bda")
BRANCHES = tuple(name for name, _ in REG_BRANCHES) + ("heatmap",)


def output_names(num_tasks: int) -> list[str]:
    """``task{t}.{branch}`` in task-major, :data:`BRANCHES` order."""
    return [f"task{t}.{b}" for t in range(num_tasks) for b in BRANCHES]


# --------------------------------------------------------------------------------------------
# Exportable replacements
# --------------------------------------------------------------------------------------------


def inverse_4x4(m: Tensor) -> Tensor:
    """Inverse of 4x4 matrices [..., 4, 4] by the adjugate (2x2 sub-determinant expansion);
    element-wise ops only, so it exports to any ONNX opset."""
    a = [[m[..., i, j] for j in range(4)] for i in range(4)]
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    c0 = a[2][0] * a[3][1] - a[3][0] * a[2][1]
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    rows = [
        [
            a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3,
            -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
            a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3,
            -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3,
        ],
        [
            -a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1,
            a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
            -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1,
            a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1,
        ],
        [
            a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0,
            -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
            a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0,
            -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0,
        ],
        [
            -a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0,
            a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
            -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0,
            a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0,
        ],
    ]
    adj = torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)
    return adj / det[..., None, None]


def frustum_geometry_plain(
    frustum: Tensor,
    ego_from_camera: Tensor,
    intrinsics: Tensor,
    ida: Tensor,
    bda: Tensor,
    precision: str = "fp32",
) -> Tensor:
    """:func:`labeldistill.models.view_transform.frustum_geometry` with :func:`inverse_4x4`
    (same ``precision`` modes, the fp16 emulation exports as Cast nodes).

    frustum [D, h, w, 4]; ego_from_camera, intrinsics, ida [B, N, 4, 4]; bda [B, 4, 4]
    -> [B, N, D, h, w, 3] ego metres.
    """
    return frustum_geometry(
        frustum, ego_from_camera, intrinsics, ida, bda, precision=precision, inverse=inverse_4x4
    )


def deform_conv2d_plain(
    x: Tensor, offset: Tensor, weight: Tensor, padding: int = 1, groups: int = 1
) -> Tensor:
    """Deformable convolution v1 (stride 1, dilation 1, one deformable group) in plain ops.

    x [B, C, H, W]; offset [B, 2*k*k, H', W'] with (dy, dx) per kernel tap (torchvision's
    layout, tap = ky * k + kx); weight [O, C / groups, k, k] -> [B, O, H', W'] with
    H' = H + 2 * padding - k + 1. Bilinear sampling with zeros outside the image, as
    ``torchvision.ops.deform_conv2d``; implemented with ``grid_sample`` (align_corners=True).
    """
    b, c, h, w = x.shape
    o, c_g, k, _ = weight.shape
    ho, wo = offset.shape[2], offset.shape[3]
    taps = k * k
    ky = torch.arange(k, dtype=x.dtype, device=x.device).repeat_interleave(k)  # [taps]
    kx = torch.arange(k, dtype=x.dtype, device=x.device).repeat(k)
    ys = torch.arange(ho, dtype=x.dtype, device=x.device) - padding
    xs = torch.arange(wo, dtype=x.dtype, device=x.device) - padding
    off = offset.view(b, taps, 2, ho, wo)
    py = ys.view(1, 1, ho, 1) + ky.view(1, taps, 1, 1) + off[:, :, 0]  # [B, taps, H', W']
    px = xs.view(1, 1, 1, wo) + kx.view(1, taps, 1, 1) + off[:, :, 1]
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(b, taps * ho, wo, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    cols = sampled.view(b, groups, c_g, taps, ho * wo).reshape(b, groups, c_g * taps, ho * wo)
    wmat = weight.view(groups, o // groups, c_g * taps)  # [G, O/G, C/G * taps]
    out = torch.matmul(wmat.unsqueeze(0), cols)  # [B, G, O/G, H'W']
    return out.reshape(b, o, ho, wo)


class PlainDeformConv(nn.Module):
    """A :class:`DeformConv2dPack` computed by :func:`deform_conv2d_plain` (shares weights)."""

    def __init__(self, src: DeformConv2dPack) -> None:
        super().__init__()
        self.weight = src.weight
        self.conv_offset = src.conv_offset
        self.groups = _groups_of(src)

    def forward(self, x: Tensor) -> Tensor:
        return deform_conv2d_plain(x, self.conv_offset(x), self.weight, 1, self.groups)


def _groups_of(module: DeformConv2dPack) -> int:
    in_channels = module.conv_offset.in_channels
    return in_channels // module.weight.shape[1]


class _ScatterAddRows(torch.autograd.Function):
    """``base.index_put((index[:, 0],), updates, accumulate=True)``: rows of ``updates`` [P, C]
    summed into ``base`` [R, C] at ``index`` [P, 1] (int64). Exported as one standard ONNX
    ``ScatterElements`` (axis 0, ``reduction='add'``) with the index expanded to [P, C]. The
    tracer's own ``index_put`` export drops the accumulation (wrong with repeated indices) and
    onnxruntime's ``ScatterND`` add is not thread-safe (module docstring)."""

    @staticmethod
    def forward(ctx: Any, base: Tensor, index: Tensor, updates: Tensor) -> Tensor:  # type: ignore[override]
        return base.index_put((index[:, 0],), updates, accumulate=True)

    @staticmethod
    def symbolic(g: Any, base: Any, index: Any, updates: Any) -> Any:  # noqa: ANN401
        full_index = g.op("Expand", index, g.op("Shape", updates))
        return g.op("ScatterElements", base, full_index, updates, axis_i=0, reduction_s="add")


def voxel_pool_index_put(
    geometry: Tensor, depth: Tensor, context: Tensor, grid: VoxelGrid
) -> Tensor:
    """Voxel pooling with one ``index_put`` (accumulate) into a grid with a dump cell.

    Same signature and result as :func:`labeldistill.ops.voxel_pool.voxel_pool_reference`:
    geometry [B, N, D, h, w, 3], depth [B, N, D, h, w], context [B, N, C, h, w] -> [B, C, Y, X].
    """
    b, n, d, h, w = depth.shape
    c = context.shape[2]
    nx, ny, nz = grid.size
    cell = torch.tensor(grid.cell, dtype=torch.float32)
    coord = torch.tensor(
        [lo + s / 2.0 for lo, s in zip(grid.lower, grid.cell)], dtype=torch.float32
    )
    base = coord - cell / 2.0  # computed exactly as the training op (float32)
    idx = ((geometry.float() - base.to(geometry.device)) / cell.to(geometry.device)).int().long()
    ix, iy, iz = idx[..., 0], idx[..., 1], idx[..., 2]
    valid = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    n_cells = ny * nx + 1  # + dump cell
    batch = torch.arange(b, device=depth.device).view(b, 1, 1, 1, 1)
    flat = torch.where(valid, iy * nx + ix, torch.full_like(ix, ny * nx)) + batch * n_cells
    ctx = context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # [B, N, 1, h, w, C]
    feats = (depth.unsqueeze(-1) * ctx).reshape(-1, c)
    out = depth.new_zeros(b * n_cells, c)
    out = _ScatterAddRows.apply(out, flat.reshape(-1, 1), feats)
    out = out.view(b, n_cells, c)[:, : ny * nx]
    return out.reshape(b, ny, nx, c).permute(0, 3, 1, 2).contiguous()


class ExportableStudent(nn.Module):
    """The student's inference path with exportable ops; outputs a flat tuple of head maps.

    forward(imgs [B, F, N, 3, H, W], ego_from_camera / intrinsics / ida [B, F, N, 4, 4],
    bda [B, 4, 4]) -> 6 * len(tasks) tensors in :func:`output_names` order. Holds a deep copy
    of the student (eval mode) whose deformable convs are :class:`PlainDeformConv`.
    """

    def __init__(self, student: BEVDepthStudent) -> None:
        super().__init__()
        net = copy.deepcopy(student).eval()
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, DeformConv2dPack):
                    setattr(module, name, PlainDeformConv(child))
        self.net = net

    def forward(
        self, imgs: Tensor, ego_from_camera: Tensor, intrinsics: Tensor, ida: Tensor, bda: Tensor
    ) -> tuple[Tensor, ...]:
        bb = self.net.backbone
        b, f, n = imgs.shape[:3]
        cam = camera_vector(ego_from_camera[:, 0], intrinsics[:, 0], ida[:, 0], bda)
        bevs = []
        for i in range(f):
            feats = bb.img_neck(bb.img_backbone(imgs[:, i].flatten(0, 1)))
            out = bb.depth_net(feats, cam)
            depth = out.depth_logits.softmax(dim=1)
            geom = frustum_geometry_plain(
                bb.frustum,
                ego_from_camera[:, i],
                intrinsics[:, i],
                ida[:, i],
                bda,
                precision=bb.geometry_precision,
            )
            h, w = depth.shape[2:]
            bevs.append(
                voxel_pool_index_put(
                    geom,
                    depth.view(b, n, bb.depth_channels, h, w),
                    out.context.view(b, n, bb.context_channels, h, w),
                    bb.grid,
                )
            )
        neck, _ = self.net.head.encode(torch.cat(bevs, dim=1))
        head = self.net.head(neck)
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
    wrapper = ExportableStudent(student).eval()
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
    import onnx

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
        import onnxruntime as ort

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
        except Exception as exc:  # noqa: BLE001
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
    from labeldistill.checkpoint.weights import load_into, read_weights, strip_prefix
    from labeldistill.models import build

    student = build.build_student(cfg)
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
    from tqdm import tqdm

    from labeldistill.data.dataset import build_dataset, collate
    from labeldistill.evaluation.nuscenes_eval import results_from_detections, write_results
    from labeldistill.models.center_head import CenterHead

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
