"""Checkpoint conversion original <-> ours (issue 6): METHOD.md 12.1 layout, round trips,
shape errors, refusal of pickled objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labeldistill.checkpoint.convert import (
    convert_from_original,
    convert_to_original,
    from_original_state,
    read_original,
    to_original_state,
)
from labeldistill.config import load_config
from labeldistill.errors import CheckpointError
from labeldistill.models.build import build_stage_model

# --------------------------------------------------------------------------------------------
# METHOD.md 12.1, transcribed as data (4key R50 LabelDistill student). Keys relative to
# ``model.``; a BN entry expands to weight/bias/running_mean/running_var [C] and
# num_batches_tracked []; an "LN" entry (LayerNorm) to weight/bias of the given shape.
# --------------------------------------------------------------------------------------------

BN = "BN"


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _basic_block(prefix: str, c_in: int, c: int, downsample: bool = False) -> dict:
    out = {f"{prefix}.conv1.weight": (c, c_in, 3, 3), f"{prefix}.conv2.weight": (c, c, 3, 3)}
    out |= _bn(f"{prefix}.bn1", c) | _bn(f"{prefix}.bn2", c)
    if downsample:
        out[f"{prefix}.downsample.0.weight"] = (c, c_in, 1, 1)
        out |= _bn(f"{prefix}.downsample.1", c)
    return out


def _task_heads(prefix: str) -> dict:
    out = {}
    n_cls = (
        1,
        2,
        2,
        1,
        2,
        2,
    )  # [car], [truck, c.v.], [bus, trailer], [barrier], [moto, bike], [ped, cone]
    for t, n in enumerate(n_cls):
        for name, k in (
            ("reg", 2),
            ("height", 1),
            ("dim", 3),
            ("rot", 2),
            ("vel", 2),
            ("heatmap", n),
        ):
            p = f"{prefix}.task_heads.{t}.{name}"
            out[f"{p}.0.conv.weight"] = (64, 64, 3, 3)
            out |= _bn(f"{p}.0.bn", 64)
            out[f"{p}.1.weight"] = (k, 64, 3, 3)
            out[f"{p}.1.bias"] = (k,)
    return out


def method_12_1_layout() -> dict[str, tuple[int, ...]]:
    """Every key of the released 4key R50 student checkpoint with its shape."""
    e: dict[str, tuple[int, ...]] = {}
    # backbone buffers
    e |= {
        "backbone.voxel_size": (3,),
        "backbone.voxel_coord": (3,),
        "backbone.voxel_num": (3,),
        "backbone.frustum": (112, 16, 44, 4),
    }
    # ResNet-50: stem + Bottleneck layers 3/4/6/3, planes 64/128/256/512, expansion 4
    ib = "backbone.img_backbone"
    e[f"{ib}.conv1.weight"] = (64, 3, 7, 7)
    e |= _bn(f"{ib}.bn1", 64)
    c_in = 64
    for i, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for j in range(blocks):
            p = f"{ib}.layer{i}.{j}"
            cin = c_in if j == 0 else 4 * planes
            e[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            e[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            e[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            e |= _bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", 4 * planes)
            if j == 0:
                e[f"{p}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                e |= _bn(f"{p}.downsample.1", 4 * planes)
        c_in = 4 * planes
    # image neck
    for i, shape in enumerate(
        ((128, 256, 4, 4), (128, 512, 2, 2), (1024, 128, 1, 1), (2048, 128, 2, 2))
    ):
        e[f"backbone.img_neck.deblocks.{i}.0.weight"] = shape
        e |= _bn(f"backbone.img_neck.deblocks.{i}.1", 128)
    # depth net
    dn = "backbone.depth_net"
    e |= {f"{dn}.reduce_conv.0.weight": (512, 512, 3, 3), f"{dn}.reduce_conv.0.bias": (512,)}
    e |= _bn(f"{dn}.reduce_conv.1", 512)
    e |= {f"{dn}.context_conv.weight": (150, 512, 1, 1), f"{dn}.context_conv.bias": (150,)}
    e |= _bn(f"{dn}.bn", 27)
    for branch in ("depth", "context"):
        e |= {
            f"{dn}.{branch}_mlp.fc1.weight": (512, 27),
            f"{dn}.{branch}_mlp.fc1.bias": (512,),
            f"{dn}.{branch}_mlp.fc2.weight": (512, 512),
            f"{dn}.{branch}_mlp.fc2.bias": (512,),
        }
        for conv in ("conv_reduce", "conv_expand"):
            e[f"{dn}.{branch}_se.{conv}.weight"] = (512, 512, 1, 1)
            e[f"{dn}.{branch}_se.{conv}.bias"] = (512,)
    for j in range(3):
        e |= _basic_block(f"{dn}.depth_conv.{j}", 512, 512)
    aspp = f"{dn}.depth_conv.3"
    for k, ks in ((1, 1), (2, 3), (3, 3), (4, 3)):
        e[f"{aspp}.aspp{k}.atrous_conv.weight"] = (512, 512, ks, ks)
        e |= _bn(f"{aspp}.aspp{k}.bn", 512)
    e[f"{aspp}.global_avg_pool.1.weight"] = (512, 512, 1, 1)
    e |= _bn(f"{aspp}.global_avg_pool.2", 512)
    e[f"{aspp}.conv1.weight"] = (512, 2560, 1, 1)
    e |= _bn(f"{aspp}.bn1", 512)
    e[f"{dn}.depth_conv.4.weight"] = (512, 128, 3, 3)
    e[f"{dn}.depth_conv.4.conv_offset.weight"] = (18, 512, 3, 3)
    e[f"{dn}.depth_conv.4.conv_offset.bias"] = (18,)
    e[f"{dn}.depth_conv.5.weight"] = (112, 512, 1, 1)
    e[f"{dn}.depth_conv.5.bias"] = (112,)
    # BEV trunk: in 750, base 300, stages 300 / 600 / 1200
    e["head.trunk.conv1.weight"] = (300, 750, 7, 7)
    e |= _bn("head.trunk.bn1", 300)
    for i, (cin, c) in enumerate(((300, 300), (300, 600), (600, 1200)), start=1):
        e |= _basic_block(f"head.trunk.layer{i}.0", cin, c, downsample=i > 1)
        e |= _basic_block(f"head.trunk.layer{i}.1", c, c)
    for i, shape in enumerate(
        ((750, 64, 1, 1), (300, 64, 2, 2), (600, 64, 4, 4), (1200, 64, 8, 8))
    ):
        e[f"head.neck.deblocks.{i}.0.weight"] = shape
        e |= _bn(f"head.neck.deblocks.{i}.1", 64)
    e["head.shared_conv.conv.weight"] = (64, 256, 3, 3)
    e |= _bn("head.shared_conv.bn", 64)
    e |= _task_heads("head")
    # adaptors: in 250 / 100, out 128 / 256
    for which in ("lidar", "label"):
        for i, (cin, c) in enumerate(((250, 128), (100, 256))):
            p = f"distill_encoder_{which}.blocks.{i}"
            e[f"{p}.0.weight"] = (c, cin, 3, 3)
            e[f"{p}.0.bias"] = (c,)
            e |= _bn(f"{p}.1", c)
            e |= _basic_block(f"{p}.3", c, c)
    # LiDAR teacher
    me = "centerpoint.pts_middle_encoder"
    e[f"{me}.conv_input.0.weight"] = (3, 3, 3, 5, 16)
    e |= _bn(f"{me}.conv_input.1", 16)
    for i, c in enumerate((16, 32, 64, 128), start=1):
        for j in range(2):
            p = f"{me}.encoder_layers.encoder_layer{i}.{j}"
            e[f"{p}.conv1.weight"] = (3, 3, 3, c, c)
            e[f"{p}.conv2.weight"] = (3, 3, 3, c, c)
            e |= _bn(f"{p}.bn1", c) | _bn(f"{p}.bn2", c)
        if i < 4:
            p = f"{me}.encoder_layers.encoder_layer{i}.2"
            e[f"{p}.0.weight"] = (3, 3, 3, c, 2 * c)
            e |= _bn(f"{p}.1", 2 * c)
    e[f"{me}.conv_out.0.weight"] = (3, 1, 1, 128, 128)
    e |= _bn(f"{me}.conv_out.1", 128)
    for b, (cin, c) in enumerate(((256, 128), (128, 256))):
        for j in range(6):
            e[f"centerpoint.pts_backbone.blocks.{b}.{3 * j}.weight"] = (
                c,
                cin if j == 0 else c,
                3,
                3,
            )
            e |= _bn(f"centerpoint.pts_backbone.blocks.{b}.{3 * j + 1}", c)
    e["centerpoint.pts_neck.deblocks.0.0.weight"] = (256, 128, 1, 1)
    e["centerpoint.pts_neck.deblocks.1.0.weight"] = (256, 256, 2, 2)
    e |= _bn("centerpoint.pts_neck.deblocks.0.1", 256) | _bn(
        "centerpoint.pts_neck.deblocks.1.1", 256
    )
    e["centerpoint.pts_bbox_head.shared_conv.conv.weight"] = (64, 512, 3, 3)
    e |= _bn("centerpoint.pts_bbox_head.shared_conv.bn", 64)
    e |= _task_heads("centerpoint.pts_bbox_head")
    # label encoder
    le = "label_encoder"
    for name, fin in (("mlp_box", 9), ("mlp_label", 10), ("mlp2", 256)):
        e |= {
            f"{le}.{name}.fc1.weight": (256, fin),
            f"{le}.{name}.fc1.bias": (256,),
            f"{le}.{name}.fc2.weight": (256, 256),
            f"{le}.{name}.fc2.bias": (256,),
        }
    e |= {f"{le}.ln2.weight": (256,), f"{le}.ln2.bias": (256,)}
    e |= _basic_block(f"{le}.conv1", 256, 256)
    e |= {
        f"{le}.conv_blocks.0.0.weight": (128, 256, 3, 3),
        f"{le}.conv_blocks.0.0.bias": (128,),
        f"{le}.conv_blocks.0.1.weight": (128, 128, 128),
        f"{le}.conv_blocks.0.1.bias": (128, 128, 128),
        f"{le}.conv_blocks.1.0.weight": (256, 256, 3, 3),
        f"{le}.conv_blocks.1.0.bias": (256,),
        f"{le}.conv_blocks.1.1.weight": (256, 64, 64),
        f"{le}.conv_blocks.1.1.bias": (256, 64, 64),
    }
    return {f"model.{k}": v for k, v in e.items()}


R50_4KEY = "labeldistill_r50_128x128_e24_4key"
NO_DOWNLOAD = ["student.image_backbone.pretrained=false"]


@pytest.fixture(scope="module")
def r50_4key():
    """The published 4key R50 LabelDistill model, freshly built (random init)."""
    cfg = load_config(R50_4KEY, NO_DOWNLOAD)
    return cfg, build_stage_model(cfg)


def _perturb_bn_stats(model: torch.nn.Module) -> None:
    """Non-trivial running stats so that eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith("num_batches_tracked"):
            buf.fill_(7)


def test_original_layout_equals_method_12_1(r50_4key):
    cfg, model = r50_4key
    original = to_original_state(model.state_dict(), model)
    expected = method_12_1_layout()
    got = {k: tuple(v.shape) for k, v in original.items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}
    assert len(got) == len(expected)
    # the voxel buffers carry the published values
    assert original["model.backbone.voxel_num"].tolist() == [128, 128, 1]
    assert torch.allclose(original["model.backbone.voxel_size"], torch.tensor([0.8, 0.8, 8.0]))
    assert torch.allclose(
        original["model.backbone.voxel_coord"], torch.tensor([-50.8, -50.8, -1.0])
    )


def test_r50_4key_round_trip_is_bit_identical(r50_4key):
    cfg, model = r50_4key
    ours = model.state_dict()
    back = from_original_state(to_original_state(ours, model), model)
    assert back.report.unmapped == [] and back.report.missing == []
    assert set(back.state_dict) == set(ours)
    for k, v in ours.items():
        assert back.state_dict[k].dtype == v.dtype, k
        assert torch.equal(back.state_dict[k], v), k


def test_spconv2_layout_recognised(r50_4key):
    cfg, model = r50_4key
    ours = model.state_dict()
    original = to_original_state(ours, model, layout="spconv2")
    original = {k[len("model.") :]: v for k, v in original.items()}
    key = "centerpoint.pts_middle_encoder.conv_input.0.weight"
    assert tuple(original[key].shape) == (16, 3, 3, 3, 5)  # [out, kD, kH, kW, in]
    back = from_original_state(original, model)
    # conv_input + 4 stages x 2 blocks x 2 convs + 3 strided convs + conv_out
    assert len(back.report.sparse_converted) == 1 + 4 * 2 * 2 + 3 + 1
    for k, v in ours.items():
        assert torch.equal(back.state_dict[k], v), k


def _write_original(path: Path, state: dict, ema: bool = True) -> Path:
    obj = (
        {"epoch": 29, "global_step": 1000, "state_dict": state}
        if ema
        else {"state_dict": state, "optimizer_states": [], "pytorch-lightning_version": "1.6.0"}
    )
    torch.save(obj, path)
    return path


def test_round_trip_files_tiny_student_outputs_identical(tmp_path):
    cfg = load_config("bevdepth_tiny")
    model = build_stage_model(cfg)
    _perturb_bn_stats(model)
    model.eval()
    from labeldistill.checkpoint.weights import read_weights, save_safetensors

    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, model.state_dict(), {"kind": "raw"})
    orig = tmp_path / "orig.pth"
    assert convert_to_original(cfg, ours, orig) == len(model.state_dict())
    raw = torch.load(orig, weights_only=True)
    assert set(raw) == {"state_dict"}
    assert all(
        k.startswith("model.backbone.") or k.startswith("model.head.") for k in raw["state_dict"]
    )
    back = tmp_path / "back.safetensors"
    report = convert_from_original(cfg, orig, back)
    assert report.missing == [] and report.unmapped == []
    state = read_weights(back).state_dict
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    fresh = build_stage_model(cfg)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    h, w = cfg.data.image_size
    f = cfg.num_frames
    torch.manual_seed(3)
    imgs = torch.randn(1, f, 6, 3, h, w)
    eye = torch.eye(4).expand(1, f, 6, 4, 4).clone()
    k = eye.clone()
    k[..., 0, 0] = k[..., 1, 1] = 300.0
    k[..., 0, 2], k[..., 1, 2] = w / 2, h / 2
    ego = eye.clone()
    ego[..., :3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # camera looks along +x
    with torch.no_grad():
        a = model(imgs, ego, k, eye, torch.eye(4).unsqueeze(0))
        b = fresh(imgs, ego, k, eye, torch.eye(4).unsqueeze(0))
    for ta, tb in zip(a.head.tasks, b.head.tasks):
        assert torch.equal(ta.heatmap, tb.heatmap) and torch.equal(ta.reg, tb.reg)
    assert a.head.tasks[0].heatmap.abs().sum() > 0


def test_lidar_teacher_original_and_mmdet3d_files(tmp_path):
    cfg = load_config("centerpoint_tiny")
    model = build_stage_model(cfg)
    _perturb_bn_stats(model)
    original = to_original_state(model.state_dict(), model)
    assert all(k.startswith("model.centerpoint.pts_") for k in original)
    # stage-1 file of the original: also an unused BEVDepthHead under model.head.* (METHOD 12.2)
    extra = {"model.head.trunk.conv1.weight": torch.zeros(160, 80, 7, 7)}
    src = _write_original(tmp_path / "stage1.ckpt", original | extra, ema=False)
    out = tmp_path / "teacher.safetensors"
    report = convert_from_original(cfg, src, out)
    assert report.unmapped == ["head.trunk.conv1.weight"]
    assert report.missing == []
    assert read_original(src).kind == "raw"
    # the official mmdet3d checkpoint: bare keys, spconv-2 layout
    bare = {
        k[len("model.centerpoint.") :]: v
        for k, v in to_original_state(model.state_dict(), model, layout="spconv2").items()
    }
    torch.save({"meta": {"epoch": 20}, "state_dict": bare}, tmp_path / "mmdet3d.pth")
    assert read_original(tmp_path / "mmdet3d.pth").kind == "mmdet3d"
    report = convert_from_original(cfg, tmp_path / "mmdet3d.pth", tmp_path / "t2.safetensors")
    assert report.missing == [] and report.unmapped == [] and report.sparse_converted
    from labeldistill.checkpoint.weights import read_weights

    state = read_weights(tmp_path / "t2.safetensors").state_dict
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    cfg = load_config("bevdepth_tiny")
    model = build_stage_model(cfg)
    original = to_original_state(model.state_dict(), model)
    key = "model.head.shared_conv.conv.weight"
    good = tuple(original[key].shape)
    original[key] = torch.zeros(good[0] + 1, *good[1:])
    src = _write_original(tmp_path / "bad.pth", original)
    with pytest.raises(CheckpointError) as info:
        convert_from_original(cfg, src, tmp_path / "x.safetensors")
    msg = str(info.value)
    assert "\n" not in msg
    assert key in msg
    assert str([good[0] + 1, *good[1:]]) in msg and str(list(good)) in msg
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_keys_and_wrong_frustum_refused(tmp_path):
    cfg = load_config("bevdepth_tiny")
    model = build_stage_model(cfg)
    original = to_original_state(model.state_dict(), model)
    del original["model.head.shared_conv.bn.running_var"]
    src = _write_original(tmp_path / "m.pth", original)
    with pytest.raises(CheckpointError, match="head.shared_conv.bn.running_var"):
        convert_from_original(cfg, src, tmp_path / "x.safetensors")
    report = convert_from_original(cfg, src, tmp_path / "x.safetensors", allow_missing=True)
    assert report.missing == ["head.shared_conv.bn.running_var"]
    # a frustum for another grid (different depth values) is refused; absent buffers are derived
    original = to_original_state(model.state_dict(), model)
    original["model.backbone.frustum"] = original["model.backbone.frustum"] + 0.5
    with pytest.raises(CheckpointError, match="backbone.frustum"):
        from_original_state({k[6:]: v for k, v in original.items()}, model)
    del original["model.backbone.frustum"]
    conv = from_original_state({k[6:]: v for k, v in original.items()}, model)
    assert "backbone.frustum" in conv.report.derived
    assert torch.equal(conv.state_dict["backbone.frustum"], model.backbone.frustum)


class _Evil:
    """Unpickling this would create a file (if the loader executed pickled code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_object_refused_not_executed(tmp_path):
    cfg = load_config("bevdepth_tiny")
    model = build_stage_model(cfg)
    target = tmp_path / "pwned.txt"
    original = to_original_state(model.state_dict(), model)
    original["model.evil"] = _Evil(target)
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": original}, src)
    assert not target.exists()
    with pytest.raises(CheckpointError) as info:
        convert_from_original(cfg, src, tmp_path / "x.safetensors")
    assert not target.exists()
    assert "\n" not in str(info.value) and str(src) in str(info.value)
    assert not (tmp_path / "x.safetensors").exists()
    # control: the same pickle executes when loaded unsafely (so the test can fail)
    torch.load(src, weights_only=False)
    assert target.exists()


def test_stage2_label_encoder_file(tmp_path):
    """Stage-2 file of the original: label_encoder.* + centerpoint.* + an unused head.*."""
    cfg = load_config("labeldistill_step1_tiny")
    model = build_stage_model(cfg)
    original = to_original_state(model.state_dict(), model)
    prefixes = {k.split(".")[1] for k in original}
    assert prefixes == {"label_encoder", "centerpoint"}
    extra = {"model.head.shared_conv.conv.weight": torch.zeros(64, 256, 3, 3)}
    src = _write_original(tmp_path / "le.pth", original | extra)
    report = convert_from_original(cfg, src, tmp_path / "le.safetensors")
    assert report.unmapped == ["head.shared_conv.conv.weight"] and report.missing == []


def test_cli_convert_both_ways(tmp_path, capsys):
    from labeldistill.checkpoint.weights import read_weights, save_safetensors
    from labeldistill.cli import main

    cfg = load_config("labeldistill_tiny")
    model = build_stage_model(cfg)
    _perturb_bn_stats(model)
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, model.state_dict(), {"kind": "ema"})
    orig = tmp_path / "orig.pth"
    assert (
        main(
            [
                "convert",
                "--to-original",
                str(ours),
                "--config",
                "labeldistill_tiny",
                "--out",
                str(orig),
            ]
        )
        == 0
    )
    keys = torch.load(orig, weights_only=True)["state_dict"]
    tops = {k.split(".")[1] for k in keys}
    assert {"backbone", "head", "centerpoint", "label_encoder"} <= tops
    assert not any(
        k.startswith("model.student.") or k.startswith("model.lidar_teacher.") for k in keys
    )
    back = tmp_path / "back.safetensors"
    assert (
        main(
            [
                "convert",
                "--from-original",
                str(orig),
                "--config",
                "labeldistill_tiny",
                "--out",
                str(back),
            ]
        )
        == 0
    )
    assert "0 unmapped, 0 missing" in capsys.readouterr().out
    state = read_weights(back).state_dict
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # a user error is one line on stderr, exit code 2
    assert (
        main(
            [
                "convert",
                "--from-original",
                str(tmp_path / "nope.pth"),
                "--config",
                "labeldistill_tiny",
                "--out",
                str(back),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
