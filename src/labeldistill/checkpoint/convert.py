"""Conversion between the original LabelDistill / BEVDepth / mmdet3d checkpoints and ours.

The original layout (METHOD.md 12): a ``state_dict`` whose keys are prefixed ``model.`` (the
LightningModule attribute), inside an EMA ``.pth`` (``{'epoch', 'global_step', 'state_dict'}``)
or a Lightning ``.ckpt``; the official mmdet3d CenterPoint checkpoint has bare keys
(``pts_middle_encoder.*``). Our stage models mirror the original module names, so the mapping
is a prefix table per stage model (:func:`prefix_rules`):

================================  ===============================
ours (stage model keys)           original (after ``model.``)
================================  ===============================
student stage: ``backbone.*``,    ``backbone.*``, ``head.*``
``head.*``
lidar_teacher stage: ``pts_*``    ``centerpoint.pts_*``
``student.backbone/head.*``       ``backbone.*``, ``head.*``
``lidar_teacher.*``               ``centerpoint.*``
``label_encoder.*``,              same names
``distill_encoder_{lidar,label}``
================================  ===============================

Sparse-conv weights: ours and the published files use [kD, kH, kW, in, out] (mmcv /
spconv 1.x); checkpoints written with spconv 2.x ([out, kD, kH, kW, in]) are recognised by
their shape and permuted (``layout='auto'``).

Derived buffers (``backbone.voxel_size``, ``voxel_coord``, ``voxel_num``, ``frustum``): they
follow from the config, so on the way in they are checked against the freshly built model
(a mismatch means the checkpoint was made for another grid / image size: CheckpointError) and
ours are kept; when a file lacks them they are derived; on the way out they are written.

Files are read with ``torch.load(weights_only=True)``: nothing pickled is ever executed, and a
file holding any object other than tensors and plain containers is refused with one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from labeldistill.checkpoint.weights import (
    atomic_torch_save,
    compare_state,
    read_weights,
    safe_torch_load,
    save_safetensors,
)
from labeldistill.config import ExperimentConfig
from labeldistill.errors import CheckpointError
from labeldistill.models.build import build_stage_model
from labeldistill.models.label_encoder import LabelEncoder
from labeldistill.models.lidar_teacher import LidarTeacher
from labeldistill.models.student import BEVDepthStudent
from labeldistill.ops.sparse_conv import convert_weight

log = logging.getLogger(__name__)

ORIGINAL_PREFIX = "model."
#: Original prefix of the LiDAR teacher (``CenterPoint.centerpoint``).
CENTERPOINT = "centerpoint."
#: BatchNorm statistics: buffers that are state, not derived from the config.
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

SparseLayout = Literal["auto", "mmcv", "spconv2"]


# --------------------------------------------------------------------------------------------
# Stage model and key mapping
# --------------------------------------------------------------------------------------------


def prefix_rules(model: nn.Module) -> list[tuple[str, str]]:
    """(our prefix, original prefix) pairs of a stage model (METHOD.md 12).

    The camera student's modules sit at the top of the original model (``backbone``,
    ``head``), the LiDAR teacher under ``centerpoint``; everything else keeps its name.
    """
    if isinstance(model, BEVDepthStudent):
        return [("", "")]
    if isinstance(model, LidarTeacher):
        return [("", CENTERPOINT)]
    if isinstance(model, LabelEncoder):
        return [("", "label_encoder.")]
    rules = []
    for name, child in model.named_children():
        if isinstance(child, BEVDepthStudent):
            rules.append((f"{name}.", ""))
        elif isinstance(child, LidarTeacher):
            rules.append((f"{name}.", CENTERPOINT))
        else:
            rules.append((f"{name}.", f"{name}."))
    return rules


def to_original_key(key: str, rules: list[tuple[str, str]]) -> str:
    """Our stage-model key -> the original key (without ``model.``)."""
    for ours, orig in sorted(rules, key=lambda r: -len(r[0])):
        if key.startswith(ours):
            return orig + key[len(ours) :]
    raise KeyError(f"no original name for key {key}")


def from_original_key(key: str, rules: list[tuple[str, str]]) -> str | None:
    """Original key (without ``model.``) -> ours, or None when no rule covers it.

    The longest matching original prefix wins, so ``centerpoint.*`` is not taken for a student
    key when the student's prefix is empty.
    """
    for ours, orig in sorted(rules, key=lambda r: -len(r[1])):
        if key.startswith(orig):
            return ours + key[len(orig) :]
    return None


def derived_buffers(model: nn.Module) -> set[str]:
    """Buffers computed from the config (not BatchNorm statistics), e.g. the frustum."""
    return {name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] not in _BN_BUFFERS}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class OriginalFile:
    """A state dict read from an original checkpoint, keys without ``model.``; ``kind`` is
    'ema' (EMA ``.pth``), 'raw' (Lightning ``.ckpt``) or 'mmdet3d' (bare-key checkpoint)."""

    state_dict: dict[str, Tensor]
    kind: str
    skipped: list[str] = field(default_factory=list)  # entries that are not tensors


def read_original(path: str | Path) -> OriginalFile:
    """The ``state_dict`` of an original checkpoint (EMA .pth, Lightning .ckpt, mmdet3d .pth)."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict: not a model checkpoint")
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict': not a model checkpoint")
    skipped = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if all(k.startswith(ORIGINAL_PREFIX) for k in tensors):
        tensors = {k[len(ORIGINAL_PREFIX) :]: v for k, v in tensors.items()}
        kind = "raw" if ("optimizer_states" in obj or "pytorch-lightning_version" in obj) else "ema"
    elif any(k.startswith("pts_") for k in tensors):
        # the official mmdet3d CenterPoint checkpoint: bare keys of the detector
        tensors = {CENTERPOINT + k: v for k, v in tensors.items()}
        kind = "mmdet3d"
    else:
        kind = "raw"
    return OriginalFile(tensors, kind, skipped)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


@dataclass
class ConvertReport:
    """What a conversion did. ``unmapped``: keys of the source without a place in the target;
    ``missing``: keys of the target the source lacks; ``sparse_converted``: weights permuted
    from the spconv-2 layout; ``derived``: config buffers checked / filled in."""

    mapped: int = 0
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    sparse_converted: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.mapped} tensors mapped, {len(self.unmapped)} unmapped, {len(self.missing)} "
            f"missing, {len(self.sparse_converted)} sparse weights re-laid out, "
            f"{len(self.derived)} derived buffers"
        )

    def log(self, source: str | Path) -> None:
        for k in self.unmapped:
            log.warning("%s: unmapped key %s (not used by this config's stage model)", source, k)
        for k in self.missing:
            log.warning("%s: missing key %s", source, k)
        for k in self.sparse_converted:
            log.info("%s: %s converted from the spconv-2 layout", source, k)
        log.info("%s: %s", source, self.summary())


@dataclass
class Converted:
    """A converted state dict (our stage-model keys) and its report."""

    state_dict: dict[str, Tensor]
    report: ConvertReport


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _sparse_in(key: str, value: Tensor, expected: Tensor, layout: SparseLayout) -> Tensor | None:
    """A 5-d source weight in our layout, or None if it fits neither layout."""
    if layout in ("auto", "mmcv") and value.shape == expected.shape:
        return value
    if layout in ("auto", "spconv2"):
        candidate = convert_weight(value, "spconv2", "ours")
        if candidate.shape == expected.shape:
            return candidate
    return None


def from_original_state(
    state: dict[str, Tensor],
    model: nn.Module,
    *,
    layout: SparseLayout = "auto",
    allow_missing: bool = False,
    source: str | Path = "<state dict>",
) -> Converted:
    """Original keys (with or without the ``model.`` prefix) -> our stage-model keys.

    Raises CheckpointError on a shape mismatch (naming the key and both shapes), on a derived
    buffer that disagrees with the config, and on missing keys unless ``allow_missing``.
    """
    if state and all(k.startswith(ORIGINAL_PREFIX) for k in state):
        state = {k[len(ORIGINAL_PREFIX) :]: v for k, v in state.items()}
    rules = prefix_rules(model)
    own = model.state_dict()
    derived = derived_buffers(model)
    report = ConvertReport()
    out: dict[str, Tensor] = {}
    for key in sorted(state):
        value = state[key]
        ours = from_original_key(key, rules)
        if ours is None or ours not in own:
            report.unmapped.append(key)
            continue
        expected = own[ours]
        if value.dim() == 5 and expected.dim() == 5:
            converted = _sparse_in(key, value, expected, layout)
            if converted is None:
                raise CheckpointError(
                    f"checkpoint {source}: key model.{key} has shape {_shape(value)}, the config "
                    f"needs {_shape(expected)} (sparse layout [kD, kH, kW, in, out]): use the "
                    "config the checkpoint was trained with"
                )
            if converted is not value:
                report.sparse_converted.append(key)
            value = converted
        elif value.shape != expected.shape:
            raise CheckpointError(
                f"checkpoint {source}: key model.{key} has shape {_shape(value)}, the config needs "
                f"{_shape(expected)}: use the config the checkpoint was trained with"
            )
        if ours in derived:
            if not torch.allclose(value.double(), expected.double(), atol=1e-4, rtol=0):
                raise CheckpointError(
                    f"checkpoint {source}: buffer model.{key} differs from the one the config "
                    "derives (grid / data.image_size / downsample): use the config the checkpoint "
                    "was trained with"
                )
            value = expected  # ours, derived from the config
            report.derived.append(ours)
        out[ours] = value.to(expected.dtype) if value.dtype != expected.dtype else value
        report.mapped += 1
    for ours in sorted(set(own) - set(out)):
        if ours in derived:
            out[ours] = own[ours]
            report.derived.append(ours)
        else:
            report.missing.append(to_original_key(ours, rules))
    if report.missing and not allow_missing:
        report.log(source)
        raise CheckpointError(
            f"checkpoint {source} lacks {len(report.missing)} keys the config's stage model needs "
            f"(e.g. model.{report.missing[0]}): use a checkpoint of this stage, or allow missing "
            "keys (--allow-missing)"
        )
    return Converted(out, report)


def to_original_state(
    state: dict[str, Tensor], model: nn.Module, *, layout: SparseLayout = "mmcv"
) -> dict[str, Tensor]:
    """Our stage-model keys -> original keys with the ``model.`` prefix (METHOD.md 12).

    ``state`` must fit ``model`` exactly (CheckpointError otherwise). Sparse weights are written
    in ``layout`` ('mmcv' = the published [kD, kH, kW, in, out]; 'spconv2' = [out, kD, ...]).
    """
    report = compare_state(model, state)
    if not report.ok:
        detail = ""
        if report.shape_mismatch:
            k = report.shape_mismatch[0]
            detail = (
                f": {k} has shape {_shape(state[k])}, the config needs "
                f"{_shape(model.state_dict()[k])}"
            )
        raise CheckpointError(
            f"weights do not fit the config's stage model ({report.summary()}){detail}: use the "
            "config they were trained with"
        )
    rules = prefix_rules(model)
    out = {}
    for key in sorted(state):
        value = state[key].detach().cpu()
        if value.dim() == 5 and layout == "spconv2":
            value = convert_weight(value, "ours", "spconv2")
        out[ORIGINAL_PREFIX + to_original_key(key, rules)] = value.contiguous()
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def convert_from_original(
    cfg: ExperimentConfig,
    src: str | Path,
    out: str | Path,
    *,
    layout: SparseLayout = "auto",
    allow_missing: bool = False,
) -> ConvertReport:
    """Original checkpoint ``src`` -> our safetensors ``out`` (stage-model keys) for ``cfg``."""
    original = read_original(src)
    model = build_stage_model(cfg)
    converted = from_original_state(
        original.state_dict, model, layout=layout, allow_missing=allow_missing, source=src
    )
    report = converted.report
    report.unmapped += [f"{k} (not a tensor)" for k in original.skipped]
    report.log(src)
    meta = {
        "kind": "ema" if original.kind == "ema" else "raw",
        "source": str(src),
        "source_format": original.kind,
        "stage": cfg.stage,
        "config": cfg.name,
    }
    save_safetensors(out, converted.state_dict, meta)
    return report


def convert_to_original(
    cfg: ExperimentConfig,
    src: str | Path,
    out: str | Path,
    *,
    layout: SparseLayout = "mmcv",
    prefer_ema: bool = True,
) -> int:
    """Our checkpoint ``src`` (.ckpt / .safetensors) -> original-layout ``.pth`` ``out``
    (``{'state_dict': {'model.<...>': tensor}}``). Returns the number of tensors written."""
    weights = read_weights(src, prefer_ema=prefer_ema)
    model = build_stage_model(cfg)
    state = to_original_state(weights.state_dict, model, layout=layout)
    atomic_torch_save(out, {"state_dict": state})
    log.info("%s -> %s: %d tensors in the original layout", src, out, len(state))
    return len(state)


def state_shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict (for comparing layouts)."""
    return {k: tuple(v.shape) for k, v in state.items()}


__all__ = (
    "convert_from_original",
    "convert_to_original",
    "from_original_state",
    "prefix_rules",
    "read_original",
    "to_original_state",
)
