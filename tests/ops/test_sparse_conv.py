"""Sparse convolution against a dense ``Conv3d`` reference (masked to the active output sites),
the spconv active-site rule on hand-made cases, weight layouts, and spconv where it runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labeldistill.ops.sparse_conv import (
    SparseBasicBlock,
    SparseConv3d,
    SparseSequential,
    SparseTensor,
    SubMConv3d,
    convert_state_dict,
    convert_weight,
    spconv_module,
)

# (kernel, stride, padding) of the strided convs of METHOD.md 5
STRIDED = [
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (0, 1, 1)),
    ((3, 1, 1), (2, 1, 1), (0, 0, 0)),
]


def _random_sparse(
    batch: int, channels: int, shape, occupancy: float, seed: int, dtype=torch.float64
):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *shape, generator=g) < occupancy
    dense = torch.zeros(batch, channels, *shape, dtype=dtype)
    feats = torch.randn(int(mask.sum()), channels, generator=g, dtype=dtype)
    dense.permute(0, 2, 3, 4, 1)[mask] = feats
    indices = torch.nonzero(mask)
    x = SparseTensor(feats.clone(), indices, shape, batch)
    return x, dense, mask


def _active_outputs(mask: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """Dense reference of the active-site rule: outputs reached by >= 1 active input."""
    hits = F.conv3d(
        mask[:, None].double(),
        torch.ones(1, 1, *kernel, dtype=torch.float64),
        None,
        stride,
        padding,
    )
    return hits[:, 0] > 0


def _check_against_dense(conv, x, dense, out_mask, stride, padding):
    x.features.requires_grad_(True)
    dense.requires_grad_(True)
    weight_t = convert_weight(conv.weight.detach(), "ours", "torch").requires_grad_(True)
    bias = None if conv.bias is None else conv.bias.detach().clone().requires_grad_(True)

    y = conv(x)
    ref = F.conv3d(dense, weight_t, bias, stride, padding)
    # forward: same active set, same values
    expected_sites = torch.nonzero(out_mask)
    assert sorted(map(tuple, y.indices.tolist())) == sorted(map(tuple, expected_sites.tolist()))
    torch.testing.assert_close(y.to_dense(), ref * out_mask[:, None])

    # backward: upstream gradient only at active output sites
    g = torch.Generator().manual_seed(11)
    up = torch.randn(ref.shape, generator=g, dtype=ref.dtype) * out_mask[:, None]
    up_sparse = up.permute(0, 2, 3, 4, 1)[tuple(y.indices.t())]
    (y.features * up_sparse).sum().backward()
    (ref * up).sum().backward()
    in_grad_ref = dense.grad.permute(0, 2, 3, 4, 1)[tuple(x.indices.t())]
    torch.testing.assert_close(x.features.grad, in_grad_ref)
    torch.testing.assert_close(convert_weight(conv.weight.grad, "ours", "torch"), weight_t.grad)
    if bias is not None:
        torch.testing.assert_close(conv.bias.grad, bias.grad)


@pytest.mark.parametrize("shape", [(9, 10, 11), (6, 7, 5)])
def test_submanifold_equals_dense_conv(shape):
    x, dense, mask = _random_sparse(2, 4, shape, 0.15, seed=1)
    conv = SubMConv3d(4, 6, 3, bias=True, backend="torch").double()
    _check_against_dense(conv, x, dense, mask, 1, 1)
    assert conv(x).indices is x.indices  # same sites, same order


@pytest.mark.parametrize("kernel,stride,padding", STRIDED)
@pytest.mark.parametrize("shape", [(9, 10, 11), (11, 8, 8)])
def test_strided_equals_dense_conv(kernel, stride, padding, shape):
    x, dense, mask = _random_sparse(2, 3, shape, 0.1, seed=2)
    conv = SparseConv3d(3, 5, kernel, stride, padding, bias=False, backend="torch").double()
    out_mask = _active_outputs(mask, kernel, stride, padding)
    _check_against_dense(conv, x, dense, out_mask, stride, padding)
    y = conv(x)
    assert y.spatial_shape == tuple(out_mask.shape[1:])


def test_strided_active_site_rule_hand_made():
    # a voxel at (0, 0, 0): with 3^3 stride 2 pad 1, only output (0, 0, 0) sees it (k = 1)
    x = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 0, 0, 0]]), (5, 5, 5), 1)
    y = SparseConv3d(1, 1, 3, 2, 1)(x)
    assert y.indices.tolist() == [[0, 0, 0, 0]] and y.spatial_shape == (3, 3, 3)
    # a voxel at (1, 1, 1): outputs {0, 1}^3 (k = 2 - 2q)
    x = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 1, 1, 1]]), (5, 5, 5), 1)
    y = SparseConv3d(1, 1, 3, 2, 1)(x)
    assert y.indices.tolist() == [[0, z, yy, xx] for z in (0, 1) for yy in (0, 1) for xx in (0, 1)]
    # x in {0, 4} on a width-5 line, kernel (1, 1, 3) stride (1, 1, 2) pad (0, 0, 1):
    # outputs x' = 0, 2
    x = SparseTensor(torch.ones(2, 1), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 4]]), (1, 1, 5), 1)
    y = SparseConv3d(1, 1, (1, 1, 3), (1, 1, 2), (0, 0, 1))(x)
    assert y.indices.tolist() == [[0, 0, 0, 0], [0, 0, 0, 2]] and y.spatial_shape == (1, 1, 3)
    # conv_out rule: kernel (3, 1, 1) stride (2, 1, 1) pad 0 on D = 5: z = 2 feeds z' = 0 and 1
    x = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 2, 3, 3]]), (5, 4, 4), 1)
    y = SparseConv3d(1, 1, (3, 1, 1), (2, 1, 1), 0)(x)
    assert y.indices.tolist() == [[0, 0, 3, 3], [0, 1, 3, 3]] and y.spatial_shape == (2, 4, 4)


def test_batches_do_not_mix():
    # the same site in two samples; a submanifold conv must see only its own sample
    idx = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 2]])
    x = SparseTensor(torch.tensor([[1.0], [10.0]]), idx, (3, 3, 3), 2)
    conv = SubMConv3d(1, 1, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    assert conv(x).features.flatten().tolist() == [1.0, 10.0]


def test_submanifold_kernel_map_is_cached_and_shared():
    x, _, _ = _random_sparse(1, 4, (6, 6, 6), 0.2, seed=4, dtype=torch.float32)
    block = SparseBasicBlock(4)
    y = block(x)
    assert len(x.cache) == 1 and y.cache is x.cache


def test_sequential_and_basic_block_match_dense_reference():
    x, dense, mask = _random_sparse(1, 4, (6, 7, 8), 0.25, seed=5)
    block = SparseBasicBlock(4).double().eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
    m = mask[:, None]

    def dense_conv(conv, t):
        return F.conv3d(t, convert_weight(conv.weight, "ours", "torch"), None, 1, 1) * m

    def dense_bn(bn, t):
        return (
            F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            * m
        )

    ref = torch.relu(dense_bn(block.bn1, dense_conv(block.conv1, dense)))
    ref = torch.relu(dense_bn(block.bn2, dense_conv(block.conv2, ref)) + dense)
    with torch.no_grad():
        torch.testing.assert_close(block(x).to_dense(), ref)

    seq = SparseSequential(SubMConv3d(4, 2, 3), torch.nn.ReLU()).double()
    with torch.no_grad():
        expected = torch.relu(dense_conv(seq[0], dense))
        torch.testing.assert_close(seq(x).to_dense(), expected)


def test_weight_layout_round_trips():
    w = torch.randn(3, 1, 1, 7, 5)  # ours = mmcv / spconv-1.x: [kD, kH, kW, in, out]
    sp2 = convert_weight(w, "ours", "spconv2")
    assert sp2.shape == (5, 3, 1, 1, 7)
    assert convert_weight(w, "ours", "torch").shape == (5, 7, 3, 1, 1)
    assert torch.equal(convert_weight(sp2, "spconv2", "mmcv"), w)
    assert torch.equal(convert_weight(convert_weight(w, "mmcv", "torch"), "torch", "spconv1"), w)
    assert sp2[4, 2, 0, 0, 6] == w[2, 0, 0, 6, 4]
    sd = {"a.weight": w, "a.bias": torch.ones(5)}
    back = convert_state_dict(convert_state_dict(sd, "mmcv", "spconv2"), "spconv2", "mmcv")
    assert torch.equal(back["a.weight"], w) and torch.equal(back["a.bias"], sd["a.bias"])
    with pytest.raises(ValueError):
        convert_weight(w, "ours", "nhwc")  # type: ignore[arg-type]


def test_to_dense_and_from_dense_round_trip():
    x, dense, _ = _random_sparse(2, 3, (4, 5, 6), 0.3, seed=6)
    torch.testing.assert_close(x.to_dense(), dense)
    back = SparseTensor.from_dense(dense)
    assert torch.equal(back.indices, x.indices) and torch.equal(back.features, x.features)


def test_equals_spconv_forward():
    sp = spconv_module()
    if sp is None:
        pytest.skip("spconv 2.x is not installed (optional backend)")
    if not torch.cuda.is_available():
        # measured with spconv 2.3.8 (CPU wheel): its CPU path disagrees with dense Conv3d
        pytest.skip("spconv comparison needs CUDA (spconv's CPU path is not a valid reference)")
    device = torch.device("cuda")
    x, _, mask = _random_sparse(2, 4, (9, 10, 11), 0.15, seed=7, dtype=torch.float32)
    x = SparseTensor(x.features.to(device), x.indices.to(device), x.spatial_shape, x.batch_size)
    for conv in [SubMConv3d(4, 6, 3)] + [SparseConv3d(4, 6, k, s, p) for k, s, p in STRIDED]:
        conv = conv.to(device)
        conv.backend = "torch"
        ref = conv(x).to_dense()
        conv.backend = "spconv"
        torch.testing.assert_close(conv(x).to_dense(), ref, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Issue 13: CUDA readiness of the sparse convolution (CPU tests)
# --------------------------------------------------------------------------------------------


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_scatter_is_index_add_and_equals_index_put_reference():
    """Item 6: forward and backward scatter with index_add_ (no accumulating index_put_, which
    sorts on CUDA); values identical to the index_put_ reference."""
    from labeldistill.ops.sparse_conv import (
        _gather_gemm_scatter,
        gather_gemm_scatter_reference,
        submanifold_kernel_map,
    )

    x, _, _ = _random_sparse(2, 4, (7, 8, 9), 0.2, seed=21, dtype=torch.float32)
    kmap = submanifold_kernel_map(x.indices, x.spatial_shape, (3, 3, 3))
    w = torch.randn(27, 4, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(
        _gather_gemm_scatter(x.features, w, kmap),
        gather_gemm_scatter_reference(x.features, w, kmap),
    )
    block = SparseBasicBlock(4, backend="torch")
    feats = x.features.clone().requires_grad_(True)
    with _OpCounter() as counter:
        block(x.replace_feature(feats)).features.sum().backward()
    assert counter.counts.get("index_put_", 0) == 0 and counter.counts.get("index_put", 0) == 0
    assert counter.counts["index_add_"] >= 2 * 27


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_fp32_layer_ignores_autocast(amp_dtype):
    """Item 3: the first layer (5 raw point channels) runs in fp32 under autocast."""
    x, _, _ = _random_sparse(1, 5, (6, 7, 8), 0.3, seed=22, dtype=torch.float32)
    x = x.replace_feature(x.features * 50.0)  # metres / intensities: fp16 would round them
    conv = SubMConv3d(5, 16, 3, backend="torch", fp32=True)
    plain = SubMConv3d(5, 16, 3, backend="torch")
    plain.load_state_dict(conv.state_dict())
    with torch.no_grad():
        ref = conv(x).features
        with torch.autocast("cpu", dtype=amp_dtype):
            amp = conv(x).features
            rounded = plain(x).features
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, rtol=0, atol=0)
    assert not torch.equal(rounded, ref)  # without the flag autocast rounds the products


def test_encoder_first_layer_is_fp32():
    from labeldistill.config import LidarTeacherConfig
    from labeldistill.models.sparse_encoder import SparseEncoder

    enc = SparseEncoder(LidarTeacherConfig())
    assert enc.conv_input[0].fp32 is True
    assert not any(
        m.fp32 for m in enc.modules() if hasattr(m, "fp32") and m is not enc.conv_input[0]
    )


@pytest.mark.parametrize(
    "spconv_version,torch_version,ok",
    [
        ("2.3.8", "2.4.0", True),
        ("2.3.6", "2.4.0", False),  # SIGFPE with torch >= 2.3
        ("2.3.6", "2.2.2", True),
        ("2.2.6", "2.1.0", True),
        ("2.1.25", "2.1.0", False),  # older weight layout
        ("1.2.1", "1.8.0", False),
        ("2.3.8", "2.14.1+cu130", True),
        ("garbage", "2.4.0", False),
    ],
)
def test_spconv_version_rules(spconv_version, torch_version, ok):
    from labeldistill.ops.sparse_conv import spconv_incompatibility

    reason = spconv_incompatibility(spconv_version, torch_version)
    assert (reason is None) == ok
    if not ok:
        assert "spconv" in reason


class _FakeTensor:
    """Stand-in of spconv.pytorch.SparseConvTensor (features, indices, indice_dict)."""

    def __init__(self, features, indices, spatial_shape, batch_size):
        self.features, self.indices = features, indices
        self.spatial_shape, self.batch_size = list(spatial_shape), batch_size
        self.indice_dict: dict = {}

    def replace_feature(self, features):
        new = _FakeTensor(features, self.indices, self.spatial_shape, self.batch_size)
        new.indice_dict = self.indice_dict
        return new


def _fake_spconv(pair_builds: list, weight_layout: str = "spconv2"):
    import types

    class _Conv(torch.nn.Module):
        subm = True

        def __init__(self, cin, cout, k, stride=1, padding=0, bias=False, indice_key=None):
            super().__init__()
            k = (k, k, k) if isinstance(k, int) else tuple(k)
            shape = (cout, *k, cin) if weight_layout == "spconv2" else (*k, cin, cout)
            self.weight = torch.nn.Parameter(torch.zeros(shape))
            self.indice_key, self.cout = indice_key, cout

        def forward(self, st):
            key = self.indice_key
            if key is None or key not in st.indice_dict:
                pair_builds.append(key)
                if key is not None:
                    st.indice_dict[key] = "pairs"
            out = st.replace_feature(st.features.new_zeros(st.features.shape[0], self.cout))
            return out

    sp = types.SimpleNamespace(SubMConv3d=_Conv, SparseConv3d=_Conv, SparseConvTensor=_FakeTensor)
    return sp


def test_spconv_submanifold_layers_of_a_level_share_index_pairs(monkeypatch):
    """Item 6: one index-pair computation per level (indice_key), not one per layer."""
    from labeldistill.ops import sparse_conv as sc

    builds: list = []
    monkeypatch.setattr(sc, "spconv_module", lambda: _fake_spconv(builds))
    x, _, _ = _random_sparse(1, 4, (6, 6, 6), 0.2, seed=23, dtype=torch.float32)
    net = SparseSequential(
        SparseBasicBlock(4, backend="spconv"), SparseBasicBlock(4, backend="spconv")
    )
    net(x)
    assert len(builds) == 1 and builds[0].startswith("subm_k3x3x3_6x6x6")


def test_spconv_weight_layout_is_checked(monkeypatch):
    from labeldistill.ops import sparse_conv as sc

    monkeypatch.setattr(sc, "spconv_module", lambda: _fake_spconv([], weight_layout="spconv1"))
    x, _, _ = _random_sparse(1, 4, (6, 6, 6), 0.2, seed=24, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="weight layout"):
        SubMConv3d(4, 6, 3, backend="spconv")(x)


def test_auto_warns_once_when_falling_back_on_cuda(monkeypatch, caplog):
    """Item 3: 'auto' on CUDA without a usable spconv warns once (not at debug level)."""
    import types

    from labeldistill.ops import sparse_conv as sc

    monkeypatch.setattr(sc, "spconv_module", lambda: None)
    monkeypatch.setattr(sc, "_SPCONV_REASON", "ImportError: spconv 2.3.6 crashes (SIGFPE)")
    monkeypatch.setattr(sc, "_FALLBACK_WARNED", False)
    conv = SubMConv3d(4, 6, 3, backend="auto")
    fake_cuda = types.SimpleNamespace(features=types.SimpleNamespace(is_cuda=True))
    with caplog.at_level("WARNING", logger=sc.__name__):
        assert conv._use_spconv(fake_cuda) is False
        assert conv._use_spconv(fake_cuda) is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "SIGFPE" in warnings[0].getMessage()
    cpu = types.SimpleNamespace(features=types.SimpleNamespace(is_cuda=False))
    assert conv._use_spconv(cpu) is False
    with pytest.raises(RuntimeError, match="SIGFPE"):
        SubMConv3d(4, 6, 3, backend="spconv")._use_spconv(cpu)
