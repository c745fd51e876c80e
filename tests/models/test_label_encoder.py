"""Label rasterisation (faithful and corrected footprint rules) and the label-encoder network."""

from __future__ import annotations

import torch

from labeldistill.config import GridConfig, LabelEncoderConfig
from labeldistill.models.label_encoder import LabelEncoder, rasterize_labels
from labeldistill.structures import CLASSES

GRID = GridConfig()  # 128 x 128 cells of 0.8 m from -51.2 m
CAR, PED, CONE = CLASSES.index("car"), CLASSES.index("pedestrian"), CLASSES.index("traffic_cone")


def _box(x, y, l, w, yaw=0.0, z=0.5, h=1.5, vx=0.0, vy=0.0):
    return [x, y, z, l, w, h, yaw, vx, vy]


def _cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in mask.nonzero().tolist()}


def test_faithful_footprint_is_half_size_with_truncated_corners() -> None:
    # Centre (0, 0) m -> cell coordinates (64.0, 64.0); l = 4.0 m = 5 cells, w = 1.6 m = 2 cells.
    # Faithful half-extents: along 5/4 = 1.25, across 2/4 = 0.5 -> corners x in {62.75, 65.25},
    # y in {63.5, 64.5}, truncated to x in {62, 65}, y in {63, 64}: lattice points 4 x 2 = 8.
    boxes = [torch.tensor([_box(0.0, 0.0, 4.0, 1.6)])]
    maps = rasterize_labels(boxes, [torch.tensor([CAR])], GRID, mode="faithful")
    expected = {(r, c) for r in (63, 64) for c in range(62, 66)}
    assert _cells(maps.mask[0]) == expected
    r, c = 63, 62
    assert maps.label[0, r, c].tolist() == [1.0 if i == CAR else 0.0 for i in range(10)]
    assert torch.allclose(maps.box[0, r, c], boxes[0][0])
    assert maps.box.shape == (1, 128, 128, 9) and maps.label.shape == (1, 128, 128, 10)


def test_corrected_footprint_covers_the_true_rectangle() -> None:
    # l = 4.4 m, w = 2.0 m: half-extents 2.75 cells along, 1.25 across: x in [61.25, 66.75],
    # y in [62.75, 65.25]. Cell centres c + 0.5 inside -> c = 61..66; r + 0.5 -> r = 63, 64.
    boxes = [torch.tensor([_box(0.0, 0.0, 4.4, 2.0)])]
    maps = rasterize_labels(boxes, [torch.tensor([CAR])], GRID, mode="corrected")
    assert _cells(maps.mask[0]) == {(r, c) for r in (63, 64) for c in range(61, 67)}


def test_rotated_box_by_90_degrees_swaps_axes() -> None:
    boxes = [torch.tensor([_box(0.0, 0.0, 4.4, 2.0, yaw=torch.pi / 2)])]
    maps = rasterize_labels(boxes, [torch.tensor([CAR])], GRID, mode="corrected")
    assert _cells(maps.mask[0]) == {(r, c) for r in range(61, 67) for c in (63, 64)}


def test_out_of_range_objects_paint_the_border_only_in_faithful_mode() -> None:
    boxes = [torch.tensor([_box(60.0, 0.0, 4.0, 1.6)])]  # x beyond 51.2 m
    faithful = rasterize_labels(boxes, [torch.tensor([CAR])], GRID, mode="faithful")
    cells = _cells(faithful.mask[0])
    assert cells and all(c == 127 for _, c in cells)
    corrected = rasterize_labels(boxes, [torch.tensor([CAR])], GRID, mode="corrected")
    assert corrected.mask.sum() == 0


def test_faithful_negative_side_paints_nothing_and_crops() -> None:
    # METHOD.md 6.1 step 3 (corrected): scikit-image's polygon never returns negative indices,
    # the clip acts on the high side only. Beyond -x / -y: nothing; a tiny (degenerate) object
    # there neither; +y: row 127.
    for x, y, l, w in ((-60.0, 0.0, 4.0, 1.6), (0.0, -60.0, 4.0, 1.6), (-60.0, 5.0, 0.3, 0.3)):
        maps = rasterize_labels(
            [torch.tensor([_box(x, y, l, w)])], [torch.tensor([CONE])], GRID, mode="faithful"
        )
        assert maps.mask.sum() == 0 and maps.label.sum() == 0 and maps.box.abs().sum() == 0
    plus_y = rasterize_labels(
        [torch.tensor([_box(0.0, 60.0, 4.0, 1.6)])], [torch.tensor([CAR])], GRID, mode="faithful"
    )
    # x cells 62..65 as in the first test; every row index clipped onto 127
    assert _cells(plus_y.mask[0]) == {(127, c) for c in range(62, 66)}


def test_faithful_partly_outside_on_the_negative_side_is_cropped() -> None:
    # A square 8 x 8 m at yaw 45 deg centred at x = -53.12 m (cell -2.4), y = 0.32 m (cell
    # 64.4): half-extents 10 / 4 = 2.5 cells, corner offsets +-3.54 along x or y; corners
    # (-5.94, 64.4), (-2.4, 67.94), (1.14, 64.4), (-2.4, 60.86),
    # truncated to (-5, 64), (-2, 67), (1, 64), (-2, 60). Lattice points with col >= 0: col 0
    # between the edges y >= 60 + 4/3 * 2 = 62.67 and y <= 65 -> rows 63..65; col 1: the corner
    # (64, 1). Clamping instead would also paint rows 60..67 of column 0.
    box = torch.tensor([_box(-53.12, 0.32, 8.0, 8.0, yaw=torch.pi / 4)])
    maps = rasterize_labels([box], [torch.tensor([CAR])], GRID, mode="faithful")
    assert _cells(maps.mask[0]) == {(63, 0), (64, 0), (65, 0), (64, 1)}


def test_tiny_objects_get_at_least_one_cell_and_later_tasks_overwrite() -> None:
    # A cone (0.3 m) and a pedestrian on top of a car: car is drawn first (task 0), the
    # pedestrian/cone task last, whatever the annotation order.
    boxes = torch.tensor(
        [_box(0.3, 0.3, 0.6, 0.6), _box(0.0, 0.0, 4.0, 1.6), _box(20.0, 20.0, 0.3, 0.3)]
    )
    labels = torch.tensor([PED, CAR, CONE])
    for mode in ("faithful", "corrected"):
        maps = rasterize_labels([boxes], [labels], GRID, mode=mode)
        cone_cell = (int((20.0 + 51.2) / 0.8), int((20.0 + 51.2) / 0.8))
        assert maps.mask[0][cone_cell] == 1 and maps.label[0][cone_cell][CONE] == 1
        ped_cell = (int((0.3 + 51.2) / 0.8), int((0.3 + 51.2) / 0.8))
        assert maps.label[0][ped_cell].argmax() == PED, mode
        assert maps.label[0].sum(-1).max() == 1  # one-hot everywhere


def test_label_encoder_shapes_and_published_parameter_shapes() -> None:
    enc = LabelEncoder(LabelEncoderConfig(), GRID)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["mlp_box.fc1.weight"] == (256, 9)
    assert shapes["mlp_label.fc1.weight"] == (256, 10)
    assert shapes["mlp2.fc2.weight"] == (256, 256)
    assert shapes["ln2.weight"] == (256,)
    assert shapes["conv1.conv1.weight"] == (256, 256, 3, 3)
    assert shapes["conv_blocks.0.0.weight"] == (128, 256, 3, 3)
    assert shapes["conv_blocks.0.1.weight"] == (128, 128, 128)
    assert shapes["conv_blocks.1.0.weight"] == (256, 256, 3, 3)
    assert shapes["conv_blocks.1.1.weight"] == (256, 64, 64)


def test_label_encoder_forward_small_grid() -> None:
    grid = GridConfig(x_bound=(-12.8, 12.8, 0.8), y_bound=(-12.8, 12.8, 0.8))
    enc = LabelEncoder(LabelEncoderConfig(hidden_channels=16, out_channels=(8, 16)), grid)
    boxes = [torch.tensor([_box(0.0, 0.0, 4.0, 1.6)])]
    maps = rasterize_labels(boxes, [torch.tensor([CAR])], grid)
    f0, f1 = enc(maps.box, maps.label)
    assert f0.shape == (1, 8, 32, 32) and f1.shape == (1, 16, 16, 16)
    assert (f0 >= 0).all() and (f1 >= 0).all()  # ReLU outputs
    # The object changes the features (the encoder is not constant in its input).
    enc.eval()
    empty = rasterize_labels([torch.zeros(0, 9)], [torch.zeros(0, dtype=torch.long)], grid)
    e0, _ = enc(empty.box, empty.label)
    f0, _ = enc(maps.box, maps.label)
    assert (f0 - e0).abs().max() > 1e-3


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    d = x.dtype
    scale = bn.weight.to(d) / torch.sqrt(bn.running_var.to(d) + bn.eps)
    return (x - bn.running_mean.to(d)[:, None, None]) * scale[:, None, None] + bn.bias.to(d)[
        :, None, None
    ]


def test_label_encoder_against_a_written_out_forward() -> None:
    # METHOD.md 6.2 by hand in float64: row-major (y, x) tokens, box / label MLPs summed, mlp2,
    # LayerNorm(256) over channels, BasicBlock, then per level a replicate-padded 3x3 conv,
    # LayerNorm over the whole [C, H, W] with element-wise affine, ReLU.
    import torch.nn.functional as F

    grid = GridConfig(x_bound=(-4.8, 4.8, 0.8), y_bound=(-3.2, 3.2, 0.8))  # X = 12, Y = 8
    torch.manual_seed(5)
    enc = LabelEncoder(LabelEncoderConfig(hidden_channels=8, out_channels=(4, 6)), grid)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    enc.eval()
    boxes = torch.tensor([_box(1.0, -0.5, 4.0, 1.6, yaw=0.3, vx=2.0), _box(-3.0, 2.0, 0.6, 0.6)])
    maps = rasterize_labels([boxes], [torch.tensor([CAR, PED])], grid)
    assert maps.mask.shape == (1, 8, 12)
    f0, f1 = enc(maps.box, maps.label)

    d = torch.float64

    def lin(m, x):
        return x @ m.weight.to(d).T + m.bias.to(d)

    def mlp(m, x):
        return lin(m.fc2, torch.relu(lin(m.fc1, x)))

    Y, X = 8, 12
    # token n = y * X + x holds cell (y, x)
    box_tok = torch.stack([maps.box[0, n // X, n % X] for n in range(Y * X)]).to(d)
    lab_tok = torch.stack([maps.label[0, n // X, n % X] for n in range(Y * X)]).to(d)
    t = mlp(enc.mlp2, mlp(enc.mlp_box, box_tok) + mlp(enc.mlp_label, lab_tok))  # [N, 8]
    mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
    t = (t - mu) / torch.sqrt(var + enc.ln2.eps) * enc.ln2.weight.to(d) + enc.ln2.bias.to(d)
    x = t.T.reshape(1, 8, Y, X)
    blk = enc.conv1
    h = torch.relu(_bn(F.conv2d(x, blk.conv1.weight.to(d), padding=1), blk.bn1))
    x = torch.relu(_bn(F.conv2d(h, blk.conv2.weight.to(d), padding=1), blk.bn2) + x)
    refs = []
    for block, stride in zip(enc.conv_blocks, (1, 2)):
        conv, ln = block[0], block[1]
        y = F.conv2d(
            F.pad(x, (1, 1, 1, 1), mode="replicate"), conv.weight.to(d), conv.bias.to(d), stride
        )
        mu = y.mean(dim=(1, 2, 3), keepdim=True)
        var = y.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        y = (y - mu) / torch.sqrt(var + ln.eps) * ln.weight.to(d) + ln.bias.to(d)
        refs.append(torch.relu(y))
    assert f0.shape == (1, 4, 8, 12) and f1.shape == (1, 6, 4, 6)
    torch.testing.assert_close(f0.double(), refs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f1.double(), refs[1], rtol=1e-5, atol=1e-5)
