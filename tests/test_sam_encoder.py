"""The fused SAM image-encoder forward (litelvlm.hosts.sam_encoder) against transformers' forward and plain math."""

import pytest
import torch
from transformers.models.sam.modeling_sam import SamVisionEncoder, SamVisionLayer

from conftest import device_tolerance
from litelvlm.hosts.sam import build_grounding_sam, default_sam_attention, sam_vit_h_config
from litelvlm.hosts.sam_encoder import attention, encode_image, layer_forward, relative_position_terms


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (the zero-initialised relative-position tables too), LayerNorm scales around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)


def _vision_config(**overrides):
    sizes = {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "global_attn_indexes": (1, 3),
    }
    return sam_vit_h_config(**{**sizes, **overrides}).vision_config


def _reference_attention(query, key, value, scale, grid, rel_h, rel_w):
    """Meta's attention written out: an explicit [N, L, L] bias, fp64 softmax."""
    n, length, _ = query.shape
    scores = (query.double() * scale) @ key.double().transpose(1, 2)
    if rel_h is not None:
        bias = rel_h.double()[:, :, :, None] + rel_w.double()[:, :, None, :]  # [N, L, gh, gw]
        scores = scores + bias.reshape(n, length, grid[0] * grid[1])
    return (scores.softmax(-1) @ value.double()).to(query.dtype)


@pytest.mark.parametrize("grid", [(3, 4), (8, 8)])  # gh + gw <= d folds the bias into the GEMM; > d adds it
@pytest.mark.parametrize("max_elements", [10**9, 300, 200])  # one block; uneven blocks of items; of queries
@pytest.mark.parametrize("with_bias", [True, False])
def test_attention_matches_explicit_softmax(grid, max_elements, with_bias):
    generator = torch.Generator().manual_seed(0)
    n, dim, length = 3, 8, grid[0] * grid[1]
    query, key, value = (torch.randn(n, length, dim, generator=generator) for _ in range(3))
    rel_h = torch.randn(n, length, grid[0], generator=generator) if with_bias else None
    rel_w = torch.randn(n, length, grid[1], generator=generator) if with_bias else None
    ours = attention(query, key, value, 0.3, grid, rel_h, rel_w, max_score_elements=max_elements)
    expected = _reference_attention(query, key, value, 0.3, grid, rel_h, rel_w)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_relative_position_terms_match_transformers_decomposition():
    layer = SamVisionLayer(_vision_config(), window_size=0).eval()
    _randomise(layer)
    attn = layer.attn
    query = torch.randn(4, 64 * 64, 16)
    rel_h, rel_w = relative_position_terms(attn, query, (64, 64))
    dense = attn.get_decomposed_rel_pos(
        query, attn.rel_pos_h, attn.rel_pos_w, (64, 64), (64, 64)
    )  # [N,H,W,H,W]
    ours = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(dense.shape)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [14, 8, 0])  # 64 = 4 x 14 + 8 padded; 64 = 8 x 8 unpadded; global
def test_layer_matches_transformers(window):
    layer = SamVisionLayer(_vision_config(window_size=max(window, 14)), window_size=window).eval()
    _randomise(layer, seed=window)
    hidden = torch.randn(2, 64, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = layer(hidden)
        ours = layer_forward(layer, hidden)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert (ours - hidden).abs().mean() > 0.05  # the block did something


def test_padding_tokens_get_the_qkv_of_a_zero_token():
    """Meta pads the LayerNorm output with zeros before `qkv`; the fused path pads `qkv`'s output with its bias
    (checked with a bias in test_layer_matches_transformers). Without a bias the padding must be zeros."""
    layer = SamVisionLayer(_vision_config(), window_size=14).eval()
    _randomise(layer, seed=3)
    layer.attn.qkv.bias = None  # transformers' forward works without a bias as well
    hidden = torch.randn(1, 64, 64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(layer_forward(layer, hidden), layer(hidden), rtol=1e-5, atol=1e-5)


def test_encoder_matches_transformers_and_batches_like_singles():
    encoder = SamVisionEncoder(_vision_config()).eval()
    _randomise(encoder, seed=5)
    pixels = torch.randn(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = encoder(pixels).last_hidden_state
        ours = encode_image(encoder, pixels)
        singles = torch.cat([encode_image(encoder, pixels[i : i + 1]) for i in range(2)])
    assert ours.shape == (2, 256, 64, 64)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, singles, rtol=1e-5, atol=1e-5)


def test_encoder_in_bfloat16_stays_within_bfloat16_rounding_of_float32():
    encoder = SamVisionEncoder(_vision_config()).eval()
    _randomise(encoder, seed=6)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = encode_image(encoder, pixels)
        transformers_bf16 = encoder.to(torch.bfloat16)(pixels.bfloat16()).last_hidden_state.float()
        fused_bf16 = encode_image(encoder, pixels.bfloat16()).float()
    error_transformers = (transformers_bf16 - reference).abs().mean()
    error_fused = (fused_bf16 - reference).abs().mean()
    assert error_fused < 1.5 * error_transformers + 1e-3, (error_fused, error_transformers)


def test_grounding_sam_switches_encoder_forward():
    sam = build_grounding_sam(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=(1,)
    )
    _randomise(sam.vision_encoder, seed=8)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(9))
    assert sam.fused_encoder
    fused = sam.embed_image(pixels)
    sam.fused_encoder = False
    torch.testing.assert_close(sam.embed_image(pixels), fused, rtol=1e-4, atol=1e-4)
    eager = build_grounding_sam("eager", hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    assert not eager.fused_encoder and eager.config.vision_config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="'flash'"):
        build_grounding_sam("flash")


@pytest.mark.device
def test_both_forwards_on_the_device_match_the_cpu(device):
    """A windowed (padded) and a global block on the test device: litelvlm's fused forward and transformers' SDPA
    forward equal transformers' forward on the CPU in float32, and stay within bfloat16 rounding of it in bf16."""
    sam = build_grounding_sam(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=(1,)
    )
    _randomise(sam.vision_encoder, seed=12)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = sam.vision_encoder(pixels).last_hidden_state
    sam.to(device)
    for fused in (True, False):
        sam.fused_encoder = fused
        float32 = sam.embed_image(pixels.to(device))
        assert float32.device.type == device.type
        torch.testing.assert_close(float32.cpu(), expected, **device_tolerance(device, 1e-4, 1e-4))
    sam.to(torch.bfloat16)
    errors = {}
    for fused in (True, False):
        sam.fused_encoder = fused
        errors[fused] = (sam.embed_image(pixels.to(device)).float().cpu() - expected).abs().mean()
    bound = 0.02 * expected.abs().mean()  # each error is 0.0066 of the mean on a CPU
    assert max(errors.values()) < bound, (errors, bound)


def test_the_default_forward_depends_on_the_device():
    assert default_sam_attention("cpu") == default_sam_attention(torch.device("cpu")) == "fused"
    assert default_sam_attention("cuda") == default_sam_attention("cuda:1") == "sdpa"  # no device needed
    assert build_grounding_sam(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).fused_encoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_private_kernel_switch_flips_the_mlp_path_and_both_agree(dtype, monkeypatch):
    """LITELVLM_PRIVATE_KERNELS=0 must keep the private oneDNN op out of the forward; both paths match the module."""
    from litelvlm.hosts import sam_encoder

    if not sam_encoder._onednn_supports(dtype):
        pytest.skip("no oneDNN kernel for this dtype here")
    layer = SamVisionLayer(_vision_config(), window_size=0).eval()
    _randomise(layer, seed=10)
    layer.to(dtype)
    hidden = torch.randn(2, 8, 8, 32, generator=torch.Generator().manual_seed(11)).to(dtype)
    private_calls = []
    original = torch.ops.mkldnn._linear_pointwise

    def spy(*args):
        private_calls.append(args[3])
        return original(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    with torch.no_grad():
        expected = layer.mlp(hidden)
        monkeypatch.setenv(sam_encoder.PRIVATE_KERNELS_VARIABLE, "1")
        fused = sam_encoder.mlp_forward(layer.mlp, hidden)
        assert private_calls == ["gelu"]
        monkeypatch.setenv(sam_encoder.PRIVATE_KERNELS_VARIABLE, "0")
        plain = sam_encoder.mlp_forward(layer.mlp, hidden)
        whole_plain = sam_encoder.layer_forward(layer, hidden)
        assert private_calls == ["gelu"]  # no private op once switched off, in the whole block either
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused, expected, rtol=tolerance, atol=tolerance)
    assert torch.equal(plain, expected)
    monkeypatch.setenv(sam_encoder.PRIVATE_KERNELS_VARIABLE, "1")
    with torch.no_grad():
        whole_fused = sam_encoder.layer_forward(layer, hidden)
    torch.testing.assert_close(whole_fused, whole_plain, rtol=tolerance, atol=tolerance)
