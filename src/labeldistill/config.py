"""Typed configuration: one frozen dataclass per component, loaded from YAML.

A YAML file maps 1:1 onto :class:`ExperimentConfig`; unknown keys fail with their dotted path.
A file may name ``base: <file>`` (relative to itself, or a shipped config name); the base is
loaded first and the file's keys are merged over it (dicts merge recursively, everything else
replaces). Command-line overrides ``a.b.c=value`` are applied last; values are parsed as YAML
(a number given to a string field stays the text typed). ``${a.b}`` inside a string value is
replaced by the value of key ``a.b`` (after overrides). Numeric values are range-checked
(:func:`validate_ranges`).

Config names resolve to ``src/labeldistill/configs/<name>.yaml`` (shipped as package data);
a path to a YAML file works too.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from labeldistill.errors import ConfigError

Triple = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridConfig:
    """BEV grid and depth bins shared by the student, the teachers and the targets."""

    x_bound: Triple = (-51.2, 51.2, 0.8)  # min, max, cell size (m)
    y_bound: Triple = (-51.2, 51.2, 0.8)
    z_bound: Triple = (-5.0, 3.0, 8.0)
    d_bound: Triple = (2.0, 58.0, 0.5)  # depth bins: min, max, step (m)

    @property
    def size_x(self) -> int:
        return round((self.x_bound[1] - self.x_bound[0]) / self.x_bound[2])

    @property
    def size_y(self) -> int:
        return round((self.y_bound[1] - self.y_bound[0]) / self.y_bound[2])

    @property
    def num_depth_bins(self) -> int:
        return round((self.d_bound[1] - self.d_bound[0]) / self.d_bound[2])


@dataclass(frozen=True)
class ImageAugConfig:
    """Image-view augmentation (METHOD.md 3.3). Resize factors refer to a 1600-pixel-wide source
    image; for other source widths they are multiplied by 1600 / width (identical on nuScenes)."""

    resize_lim: tuple[float, float] = (0.386, 0.55)
    rot_lim: tuple[float, float] = (-5.4, 5.4)  # degrees
    rand_flip: bool = True
    bot_pct_lim: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class BevAugConfig:
    """BEV augmentation (METHOD.md 3.3)."""

    rot_lim: tuple[float, float] = (-22.5, 22.5)  # degrees
    scale_lim: tuple[float, float] = (0.95, 1.05)
    flip_dx_ratio: float = 0.5
    flip_dy_ratio: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    dataroot: str = "data/nuscenes"
    version: str = "v1.0-trainval"
    train_split: str = "train"
    val_split: str = "val"
    info_dir: str | None = None  # where the info files are; default: dataroot
    depth_gt_dir: str | None = (
        None  # where depth GT is (prepare --depth-out); default: dataroot/depth_gt
    )
    key_idxes: tuple[int, ...] = (-2, -4)  # offsets of previous key frames in the info list
    image_size: tuple[int, int] = (256, 704)  # network input H, W
    ida_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    bda_aug: BevAugConfig = field(default_factory=BevAugConfig)
    augment: bool = True  # ida + bda on the training split
    img_mean: Triple = (123.675, 116.28, 103.53)
    img_std: Triple = (58.395, 57.12, 57.375)
    bgr_quirk: bool = True  # feed BGR normalised with RGB statistics, as the original (quirk 16)
    return_depth: bool = True  # depth GT for the depth loss (training split only)
    return_lidar: bool = False  # multi-sweep LiDAR points (teacher input)
    # camera images; the datamodule switches them off for stages that read none (LiDAR teacher,
    # label encoder): their items then hold an empty [F, N, 3, 0, 0] image tensor
    return_images: bool = True
    lidar_sweeps: int = 8  # scans besides the key scan (METHOD.md 3.4: up to 9 scans in all)
    max_points: int = 320000
    lidar_range_cut: float = 58.0  # planar distance in the sensor frame (m)
    train_history_fallback: Literal["last_valid", "current"] = "last_valid"
    eval_history_fallback: Literal["last_valid", "current"] = "current"
    batch_size: int = 4  # per device
    num_workers: int = 4
    # Training / evaluation loaders ship uint8 images, normalised by the student on its device
    # (bit-identical to float32 loading, a quarter of the bytes to pin and copy).
    uint8_images: bool = True


@dataclass(frozen=True)
class ImageBackboneConfig:
    depth: int = 50  # 18, 34, 50, 101
    pretrained: bool = True  # torchvision IMAGENET1K_V1 (offline: fails clearly unless False)
    frozen_stages: int = 0  # 0: stem frozen (paper); -1: nothing frozen
    norm_eval: bool = False
    # With pretrained: a torchvision-layout ResNet state dict (.pth / .safetensors) to load
    # instead of the torch hub cache: an ImageNet file given offline, or the backbone of
    # `labeldistill pretrain-backbone` (stage 0). Empty: the hub cache.
    pretrained_path: str = ""


@dataclass(frozen=True)
class ImageNeckConfig:
    upsample_strides: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    out_channels: tuple[int, ...] = (128, 128, 128, 128)


@dataclass(frozen=True)
class DepthNetConfig:
    mid_channels: int = 512
    use_aspp: bool = True
    use_dcn: bool = True
    dcn_groups: int = 4


@dataclass(frozen=True)
class ViewTransformConfig:
    context_channels: int = 150  # C per frame
    downsample: int = 16
    pool_impl: Literal["fast", "reference", "scatter"] = "fast"
    # Frustum geometry (METHOD.md 14 quirk 28): "fp16_faithful" emulates the published model's
    # fp16 geometry under 16-mixed (far points whose u_orig * d overflows fp16 are dropped) on
    # every device and precision; "fp32" computes it in float32. Never the ambient autocast.
    # The paper configs set fp16_faithful (released weights were trained with the drop).
    geometry_precision: Literal["fp16_faithful", "fp32"] = "fp32"


@dataclass(frozen=True)
class BevEncoderConfig:
    """ResNet-18-style BEV trunk without max-pool + SECOND-FPN neck. Trunk input channels are
    derived (F * C)."""

    base_channels: int = 300
    num_stages: int = 3
    strides: tuple[int, ...] = (1, 2, 2)
    blocks_per_stage: int = 2
    neck_upsample_strides: tuple[int, ...] = (1, 2, 4, 8)
    neck_out_channels: tuple[int, ...] = (64, 64, 64, 64)


@dataclass(frozen=True)
class HeadConfig:
    """CenterPoint head (shared by student and teacher) with targets, loss and decoding."""

    share_conv_channels: int = 64
    head_conv: int = 64
    final_kernel: int = 3
    init_bias: float | None = None  # heatmap bias; None = PyTorch default (faithful, quirk 9)
    # targets
    max_objs: int = 500
    min_radius: int = 2
    gaussian_overlap: float = 0.1
    code_weights: tuple[float, ...] = (1.0,) * 10
    loss_bbox_weight: float = 0.25
    # decoding
    score_threshold: float = 0.1
    max_num: int = 500
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms_radii: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)  # squared metres per task
    post_max_size: int = 83


@dataclass(frozen=True)
class StudentConfig:
    """BEVDepth camera detector (METHOD.md 4)."""

    image_backbone: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    image_neck: ImageNeckConfig = field(default_factory=ImageNeckConfig)
    depth_net: DepthNetConfig = field(default_factory=DepthNetConfig)
    view_transform: ViewTransformConfig = field(default_factory=ViewTransformConfig)
    bev_encoder: BevEncoderConfig = field(default_factory=BevEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class LidarTeacherConfig:
    """CenterPoint LiDAR teacher (METHOD.md 5)."""

    point_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    voxel_size: Triple = (0.1, 0.1, 0.2)
    max_points_per_voxel: int = 10
    max_voxels_train: int = 90000
    max_voxels_eval: int = 120000
    in_channels: int = 5
    base_channels: int = 16
    encoder_out_channels: int = 128
    encoder_channels: tuple[tuple[int, ...], ...] = (
        (16, 16, 32),
        (32, 32, 64),
        (64, 64, 128),
        (128, 128),
    )
    encoder_paddings: tuple[tuple[Any, ...], ...] = (
        (0, 0, 1),
        (0, 0, 1),
        (0, 0, (0, 1, 1)),
        (0, 0),
    )
    second_out_channels: tuple[int, ...] = (128, 256)
    second_layer_nums: tuple[int, ...] = (5, 5)
    second_strides: tuple[int, ...] = (1, 2)
    neck_out_channels: tuple[int, ...] = (256, 256)
    neck_upsample_strides: tuple[int, ...] = (1, 2)
    sparse_backend: Literal["auto", "torch", "spconv"] = "auto"
    head: HeadConfig = field(
        default_factory=lambda: HeadConfig(init_bias=-2.19, code_weights=(1.0,) * 8 + (0.5, 0.5))
    )


@dataclass(frozen=True)
class LabelEncoderConfig:
    """Label encoder (METHOD.md 6)."""

    hidden_channels: int = 256
    out_channels: tuple[int, ...] = (128, 256)
    strides: tuple[int, ...] = (1, 2)
    rasterize: Literal["faithful", "corrected"] = "faithful"


@dataclass(frozen=True)
class DistillConfig:
    """Stage-3 loss weights and switches (METHOD.md 7-8)."""

    use_lidar_teacher: bool = True
    use_label_teacher: bool = True
    partition: Literal["thirds", "none"] = "thirds"
    det_weight: float = 1.0
    depth_weight: float = 3.0
    lidar_feat_weight: float = 0.3
    label_feat_weight: float = 0.3
    response_weight: float = 1.0
    # False: the LiDAR slice of S0 (the BEV input) is detached before its adaptor, so the
    # level-0 LiDAR feature loss trains the adaptor only. That is what the published layouts do
    # implicitly (2key / 4key: the slice holds past frames computed under no_grad, METHOD.md 7);
    # with the key frame only (F = 1) the slice is the current frame's and, left True, the
    # level-0 LiDAR loss trains the image network too (docs/deviations.md, "5, 7 (F = 1)").
    # A no-op for the paper configs; no effect with partition "none".
    lidar_level0_grad: bool = True
    # False: the label slice of S0 is detached before its adaptor too, so no level-0 feature
    # loss reaches the image network (depth net, image neck); the level-1 terms still do,
    # through the BEV trunk. Unlike the LiDAR flag this is not the published topology at any F
    # (there the label slice is the current frame's and differentiable): an experiment that
    # tests whether the level-0 terms cost the camera student its depth (RESULTS.md). No effect
    # with partition "none".
    label_level0_grad: bool = True
    lidar_ckpt: str | None = None  # stage-1 checkpoint
    label_ckpt: str | None = None  # stage-2 checkpoint


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 4e-4
    weight_decay: float = 1e-2
    backbone_lr_mult: float = 0.5  # for every parameter whose name contains "backbone"
    milestones: tuple[int, ...] = (19, 23)  # epochs
    gamma: float = 0.1
    grad_clip: float = 5.0
    # The paper's learning rates were tuned for a global batch of 16 (4 GPUs x 4): with another
    # global batch, scale lr linearly (lr * batch / 16) or set it here explicitly.
    reference_batch: int = 16
    scale_lr_with_batch: bool = False


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 24
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for multi-GPU / multi-node
    # auto: 16-mixed on CUDA, 32 on CPU; fast: 16-mixed on CUDA, bf16-mixed on a CPU with
    # native bf16 (AMX / AVX512-BF16), else 32; or any Lightning precision ("bf16-mixed", ...)
    precision: str = "auto"
    # Convolution weights and activations in NHWC (``torch.channels_last``): oneDNN's fast path
    # on CPU (with bf16-mixed: AMX) and tensor cores on CUDA; the math is unchanged.
    channels_last: bool = False
    ema: bool = True
    ema_decay: float = 0.999
    ema_warmup_steps: int = 0  # > 0: decay * (1 - exp(-n / warmup)) at update n; 0: paper
    seed: int = 0
    deterministic: bool = False  # on CUDA: PyTorch's warn-only mode (docs/training.md)
    output_dir: str = "outputs"
    log_every_n_steps: int = 50
    limit_train_batches: float = 1.0
    check_val_every_n_epoch: int = 0  # 0: no validation during training (as the original)
    # Per-epoch files kept on disk (checkpoints/epoch_<n>.ckpt, ema/epoch_<n>.safetensors): the
    # newest N; -1 keeps every epoch (as the original). checkpoints/last.ckpt is always written.
    keep_epochs: int = -1
    # DDP: no stage has an unused trainable parameter, so the extra graph walk is off.
    find_unused_parameters: bool = False
    # CUDA numerics: TF32 for float32 matmuls would round the frustum geometry (a 4x4 chain)
    # like fp16, so it stays off; cuDNN convolutions in TF32 are PyTorch's default.
    matmul_tf32: bool = False
    cudnn_tf32: bool = True
    # cudnn.benchmark: null = on with CUDA unless deterministic (every stage has fixed shapes).
    cudnn_benchmark: bool | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    stage: Literal["student", "lidar_teacher", "label_encoder", "labeldistill"] = "student"
    grid: GridConfig = field(default_factory=GridConfig)
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    lidar_teacher: LidarTeacherConfig = field(default_factory=LidarTeacherConfig)
    label_encoder: LabelEncoderConfig = field(default_factory=LabelEncoderConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def num_frames(self) -> int:
        return 1 + len(self.data.key_idxes)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (without ``.yaml``; bases excluded)."""
    root = resources.files("labeldistill") / "configs"
    return sorted(
        p.name[:-5]
        for p in root.iterdir()
        if p.name.endswith(".yaml") and not p.name.startswith("_")
    )


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A shipped config name, or a path (absolute, or relative to ``relative_to`` / cwd)."""
    text = str(name_or_path)
    candidates: list[Path] = []
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates.append(Path(text))
    shipped = resources.files("labeldistill") / "configs"
    stem = text[:-5] if text.endswith(".yaml") else text
    candidates.append(Path(str(shipped / f"{stem}.yaml")))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"config '{text}' not found: give a YAML path or one of: {', '.join(shipped_configs())}"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"config {path}: circular 'base:' chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = resolve_config_path(base, relative_to=path.parent)
    return merge_dicts(_read_yaml(base_path, seen + (path,)), data)


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: dicts merge, everything else in ``over`` replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


class _NumberText(str):
    """An override value that YAML reads as a number, kept with the text as typed: a string
    field takes the text (``trainer.output_dir=2024``, ``name=007``), any other the number."""

    number: int | float


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML; a number keeps its text for
    string fields) to a nested dict."""
    out = merge_dicts({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = _NumberText(raw.strip())
            text.number = value
            value = text
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def resolve_references(data: dict[str, Any]) -> dict[str, Any]:
    """Replace ``${a.b}`` inside string values by the value of key ``a.b`` of the same config
    (after overrides), e.g. ``lidar_ckpt: ${trainer.output_dir}/centerpoint_tiny/...`` follows
    ``--set trainer.output_dir=...``. The referenced value must be a plain string or number."""

    def lookup(dotted: str, where: str) -> str:
        node: Any = data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"config key '{where}' refers to '${{{dotted}}}', which is not set"
                )
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, (str, int, float)):
            raise ConfigError(
                f"config key '{where}' refers to '${{{dotted}}}', which is not a string or number"
            )
        if isinstance(node, str) and _REFERENCE.search(node):
            raise ConfigError(f"config key '{where}': '${{{dotted}}}' holds a reference itself")
        return str(node)

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str) and _REFERENCE.search(node):
            return _REFERENCE.sub(lambda m: lookup(m.group(1), where), node)
        return node

    return walk(data, "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` (dataclasses, tuples, unions)."""
    origin = typing.get_origin(tp)
    if isinstance(value, _NumberText):
        takes_str = tp is str or (
            origin in (typing.Union, types.UnionType) and str in typing.get_args(tp)
        )
        value = str(value) if takes_str else value.number
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"config key '{path}' must be one of {list(typing.get_args(tp))}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key '{path}': bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{path}' must have {len(args)} entries, got {value!r}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is Any:
        return tuple(value) if isinstance(value, list) else value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a dict; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}' "
            f"(valid keys here: {', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain dict/list structure (YAML-serialisable)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config by shipped name or YAML path, with dotted overrides."""
    path = resolve_config_path(name_or_path)
    data = resolve_references(apply_overrides(_read_yaml(path), overrides or []))
    return validate_ranges(from_dict(ExperimentConfig, data))


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' must be {rule}, got {value!r}")


def validate_ranges(cfg: ExperimentConfig) -> ExperimentConfig:
    """Range checks of the numeric values the types cannot express -> ``cfg`` (ConfigError
    naming the dotted key otherwise)."""
    for axis in ("x_bound", "y_bound", "z_bound", "d_bound"):
        low, high, step = getattr(cfg.grid, axis)
        _require(step > 0, f"grid.{axis}[2]", "a positive step", step)
        _require(high > low, f"grid.{axis}", "[min, max, step] with max > min", [low, high, step])
    d = cfg.data
    _require(d.batch_size >= 1, "data.batch_size", "at least 1", d.batch_size)
    _require(d.num_workers >= 0, "data.num_workers", "0 (in-process) or more", d.num_workers)
    for i, n in enumerate(d.image_size):
        _require(n >= 1, f"data.image_size[{i}]", "a positive size in pixels", n)
    _require(d.lidar_sweeps >= 0, "data.lidar_sweeps", "0 or more", d.lidar_sweeps)
    _require(d.max_points >= 1, "data.max_points", "at least 1", d.max_points)
    o = cfg.optim
    _require(o.lr > 0, "optim.lr", "positive", o.lr)
    _require(o.weight_decay >= 0, "optim.weight_decay", "0 or more", o.weight_decay)
    _require(o.backbone_lr_mult >= 0, "optim.backbone_lr_mult", "0 or more", o.backbone_lr_mult)
    _require(o.gamma > 0, "optim.gamma", "positive", o.gamma)
    _require(o.grad_clip >= 0, "optim.grad_clip", "0 (off) or more", o.grad_clip)
    _require(o.reference_batch >= 1, "optim.reference_batch", "at least 1", o.reference_batch)
    t = cfg.trainer
    _require(t.devices >= 1 or t.devices == -1, "trainer.devices", "-1 (all) or >= 1", t.devices)
    _require(t.num_nodes >= 1, "trainer.num_nodes", "at least 1", t.num_nodes)
    _require(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", "-1 or >= 1", t.max_steps)
    _require(
        t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps >= 1),
        "trainer.max_epochs",
        ">= 1 (or -1 with trainer.max_steps set)",
        t.max_epochs,
    )
    _require(
        0 < t.limit_train_batches <= 1,
        "trainer.limit_train_batches",
        "a fraction in (0, 1] of the epoch's batches",
        t.limit_train_batches,
    )
    _require(
        t.log_every_n_steps >= 1, "trainer.log_every_n_steps", "at least 1", t.log_every_n_steps
    )
    _require(
        t.check_val_every_n_epoch >= 0,
        "trainer.check_val_every_n_epoch",
        "0 (off) or more",
        t.check_val_every_n_epoch,
    )
    _require(0 <= t.ema_decay < 1, "trainer.ema_decay", "in [0, 1)", t.ema_decay)
    _require(t.ema_warmup_steps >= 0, "trainer.ema_warmup_steps", "0 or more", t.ema_warmup_steps)
    _require(
        t.keep_epochs == -1 or t.keep_epochs >= 1,
        "trainer.keep_epochs",
        "-1 (keep every epoch) or >= 1",
        t.keep_epochs,
    )
    _require(bool(t.output_dir), "trainer.output_dir", "a directory", t.output_dir)
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
