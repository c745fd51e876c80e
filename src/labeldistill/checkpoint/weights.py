"""The one door into weight files (no Lightning here).

Files we read:
* our Lightning ``.ckpt`` (``state_dict`` with keys ``model.<...>`` and, when EMA was on,
  ``ema_state_dict`` with the stage model's own keys; the EMA weights are preferred);
* our ``.safetensors`` files (stage-model keys; ``kind`` in the metadata);
* the original's ``.pth`` files (``{'state_dict': {'model.<...>': ...}}``) and torchvision
  ResNet state dicts (bare tensors).

Every ``torch.load`` goes through :func:`safe_torch_load` (``weights_only=True``: no code is
executed from a file; one message per failure naming the file and the fix), every key check
through :func:`compare_state` (one missing / unexpected / wrong-shape report).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from labeldistill.errors import CheckpointError
from labeldistill.io import atomic_path
from labeldistill.models.common import freeze

log = logging.getLogger(__name__)

#: Prefix of the stage model's keys in a Lightning ``state_dict`` (``self.model``).
MODEL_PREFIX = "model."
#: Where a stage module keeps its EMA weights in a ``.ckpt``.
EMA_KEY = "ema_state_dict"


def _first_sentence(exc: BaseException, limit: int = 120) -> str:
    """The first sentence of an exception message (never cut inside a word), or its type."""
    text = " ".join(str(exc).split())
    if not text or text.isdigit():
        return type(exc).__name__
    end = text.find(". ")
    sentence = text if end < 0 else text[:end]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence.rstrip(".")


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that is missing, holds
    pickled objects or cannot be read becomes a one-line :class:`CheckpointError` naming the
    file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # a pickled reference to code ("Unsupported global"), not a file that is merely corrupt
        if "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers, "
                "which could run code: not loaded; give a .ckpt/.pth written by labeldistill or "
                "the original code, or a .safetensors file"
            ) from None
        reason = _first_sentence(exc)
    except Exception as exc:
        reason = _first_sentence(exc)
    raise CheckpointError(
        f"checkpoint {path} is unreadable, truncated or corrupt ({reason}): "
        "re-download or retrain it"
    )


def save_safetensors(path: str | Path, state: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``state`` (contiguous CPU copies) to ``path`` atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@dataclass
class LoadedWeights:
    """A state dict read from a file, and which weights they are ('ema' or 'raw')."""

    state_dict: dict[str, Tensor]
    kind: str


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys starting with ``prefix`` without it; other keys are dropped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_weights(path: str | Path, prefer_ema: bool = True) -> LoadedWeights:
    """The model weights in ``path`` (keys of the stage model, no ``model.`` prefix).

    EMA weights are returned when the file has them and ``prefer_ema``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: check the path")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {path} is not a valid safetensors file ({exc})"
            ) from None
        return LoadedWeights(state, meta.get("kind", "raw"))
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    if prefer_ema and isinstance(obj.get(EMA_KEY), dict):
        return LoadedWeights(dict(obj[EMA_KEY]), "ema")
    if isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        if state and all(k.startswith(MODEL_PREFIX) for k in state):
            state = strip_prefix(state, MODEL_PREFIX)
        return LoadedWeights(dict(state), "raw")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return LoadedWeights(dict(obj), "raw")
    raise CheckpointError(f"checkpoint {path} has no 'state_dict': not a model checkpoint")


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a Lightning training checkpoint was written at (its ``global_step``)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning training checkpoint (no 'global_step'): "
            "give a .ckpt that labeldistill train wrote"
        )
    return int(ckpt["global_step"])


@dataclass
class LoadReport:
    """Keys of a state dict that did not fit a module."""

    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.shape_mismatch),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        return ", ".join(parts) if parts else "all keys match"


def compare_state(module: nn.Module, state: dict[str, Tensor]) -> LoadReport:
    """Which keys of ``state`` are missing, unexpected or of another shape for ``module``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatch = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    return LoadReport(missing, unexpected, mismatch)


def check_resume_checkpoint(module: nn.Module, path: Path) -> None:
    """One-line CheckpointError unless ``path`` is a readable (safe) Lightning training
    checkpoint whose ``state_dict`` fits ``module`` (the stage module, keys ``model.<...>``):
    the same checks and messages as the weights read by ``eval``."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(
            f"cannot resume from {path}: not a Lightning training checkpoint (no 'state_dict'); "
            "resume from a .ckpt that labeldistill train wrote"
        )
    if "loops" not in obj or "optimizer_states" not in obj:
        raise CheckpointError(
            f"cannot resume from {path}: it holds weights but no training state "
            "(loops, optimizer); resume from a .ckpt that labeldistill train wrote"
        )
    report = compare_state(module, obj["state_dict"])
    if not report.ok:
        raise CheckpointError(
            f"cannot resume from {path}: it does not fit the model: {report.summary()}; "
            "use the config it was trained with"
        )


def load_into(module: nn.Module, state: dict[str, Tensor], source: str | Path) -> LoadReport:
    """Load ``state`` strictly into ``module``; log a report and raise CheckpointError on any
    missing, unexpected or wrongly shaped key."""
    report = compare_state(module, state)
    if not report.ok:
        for label, keys in (
            ("missing", report.missing),
            ("unexpected", report.unexpected),
            ("wrong shape", report.shape_mismatch),
        ):
            for k in keys[:20]:
                log.error("checkpoint %s: %s key %s", source, label, k)
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {report.summary()}; "
            "use the config it was trained with"
        )
    module.load_state_dict(state, strict=True)
    return report


def load_weights(module: nn.Module, path: str | Path, prefer_ema: bool = True) -> LoadedWeights:
    """Read ``path`` (EMA preferred) and load it strictly into ``module``."""
    weights = read_weights(path, prefer_ema=prefer_ema)
    load_into(module, weights.state_dict, path)
    log.info("loaded %s weights from %s", weights.kind, path)
    return weights


def load_teacher(
    module: nn.Module, path: str | Path, prefixes: Iterable[str] = (), prefer_ema: bool = True
) -> nn.Module:
    """Load a trained teacher from ``path`` into ``module`` and freeze it.

    ``prefixes`` are tried in order: the first one that every key of ``module`` can be found
    under is stripped (e.g. ``"centerpoint."`` for the original's stage-1 file, whose
    ``model.`` prefix is already removed). Without a match the keys are used as they are.
    """
    weights = read_weights(path, prefer_ema=prefer_ema)
    state = weights.state_dict
    own = set(module.state_dict())
    for prefix in prefixes:
        candidate = strip_prefix(state, prefix)
        if own <= set(candidate):
            state = candidate
            break
    load_into(module, state, path)
    log.info("teacher %s: %s weights from %s (frozen)", type(module).__name__, weights.kind, path)
    return freeze(module)


def atomic_torch_save(path: str | Path, obj: object) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a temporary name, then ``os.replace``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
