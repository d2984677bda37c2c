"""GLaMM's SAM grounding encoder (litelvlm.hosts.sam) against Meta's segment-anything on the same random weights."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from litelvlm.hosts.sam import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    GroundingSam,
    meta_sam_state_dict_keys,
    meta_to_hf_sam_key,
    postprocess_masks,
    sam_preprocess,
    sam_vit_h_config,
)
from reference import meta_sam_modeling

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "global_attn_indexes": (1,)}
TINY_DECODER_MLP = 512


@pytest.fixture(scope="module")
def meta_sam():
    """A tiny Meta SAM (same layout as build_sam_vit_h, narrower/shallower encoder) with all weights random."""
    m = meta_sam_modeling()
    torch.manual_seed(0)
    encoder = m.ImageEncoderViT(
        img_size=1024,
        patch_size=16,
        embed_dim=TINY["hidden_size"],
        depth=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=TINY["global_attn_indexes"],
    )
    prompt = m.PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    transformer = m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=TINY_DECODER_MLP, num_heads=8)
    decoder = m.MaskDecoder(transformer_dim=256, transformer=transformer, num_multimask_outputs=3)
    sam = m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()
    with torch.no_grad():
        for (
            name,
            tensor,
        ) in sam.state_dict().items():  # includes the PE gaussian buffer; zero-init tensors too
            tensor.normal_(0.0, 1.0 if "gaussian" in name else 0.1)
            if name.endswith("weight") and tensor.ndim == 1:  # LayerNorm scales around 1
                tensor.add_(1.0)
    return sam


@pytest.fixture(scope="module")
def ours(meta_sam):
    model = GroundingSam(sam_vit_h_config(**TINY, decoder_mlp_dim=TINY_DECODER_MLP)).eval()
    model.load_meta_state_dict(meta_sam.state_dict())
    return model


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).resize((400, 300))
    pixels, resized, original = sam_preprocess(image)
    text = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    return pixels[None], resized, original, text


def _meta_forward(sam, pixels, text, resized, original):
    """GLaMM's use of SAM: text embeddings are the only sparse token, no_mask_embed the dense prompt."""
    with torch.no_grad():
        embedding = sam.image_encoder(pixels.to(sam.pixel_mean.dtype))
        none_sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat([none_sparse.expand(len(text), 0, 256), text[:, None]], dim=1).to(text.dtype)
        low_res, _ = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(len(text), -1, -1, -1),
            multimask_output=False,
        )
        masks = sam.postprocess_masks(low_res, resized, original)
    return embedding, low_res[:, 0], masks[:, 0]


@pytest.mark.parametrize("fused_encoder", [True, False])  # litelvlm's encoder forward and transformers' own
def test_parity_with_segment_anything(meta_sam, ours, inputs, fused_encoder):
    pixels, resized, original, text = inputs
    ref_embedding, ref_low, ref_masks = _meta_forward(meta_sam, pixels, text, resized, original)
    ours.fused_encoder = fused_encoder
    with torch.no_grad():
        embedding = ours.embed_image(pixels)
        low = ours.decode(embedding, text)
    ours.fused_encoder = True
    masks = postprocess_masks(low, resized, original)
    assert (
        embedding.shape == (1, 256, 64, 64) and low.shape == (3, 256, 256) and masks.shape == (3, *original)
    )
    torch.testing.assert_close(embedding, ref_embedding, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.dense_pe(), meta_sam.prompt_encoder.get_dense_pe(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(low, ref_low, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masks, ref_masks, rtol=1e-4, atol=1e-4)
    assert low.std() > 0.1 and not torch.allclose(low[0], low[1])  # the test is not trivially passing


def test_key_mapping_covers_both_sides(meta_sam, ours):
    meta_state = meta_sam.state_dict()
    own = ours.state_dict()
    covered = set()
    for key in meta_state:
        targets = meta_to_hf_sam_key(key)
        for target in [targets] if isinstance(targets, str) else targets:
            assert target in own, f"{key} -> {target} is not a key of GroundingSam"
            assert own[target].shape == meta_state[key].shape, key
            covered.add(target)
    assert covered == set(own), f"never loaded: {sorted(set(own) - covered)}"
    expected = {k: tuple(v.shape) for k, v in meta_state.items()}
    assert meta_sam_state_dict_keys(sam_vit_h_config(**TINY, decoder_mlp_dim=TINY_DECODER_MLP)) == expected


def test_key_mapping_examples():
    assert (
        meta_to_hf_sam_key("image_encoder.blocks.31.norm2.bias")
        == "vision_encoder.layers.31.layer_norm2.bias"
    )
    assert meta_to_hf_sam_key("image_encoder.neck.3.weight") == "vision_encoder.neck.layer_norm2.weight"
    assert meta_to_hf_sam_key("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix") == [
        "prompt_encoder.shared_embedding.positional_embedding",
        "shared_image_embedding.positional_embedding",
    ]
    assert (
        meta_to_hf_sam_key("mask_decoder.output_hypernetworks_mlps.3.layers.1.weight")
        == "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"
    )
    assert (
        meta_to_hf_sam_key("mask_decoder.transformer.layers.1.mlp.lin2.bias")
        == "mask_decoder.transformer.layers.1.mlp.lin2.bias"
    )


def test_full_size_checkpoint_layout():
    """The real ViT-H key set: its shapes and the 641,090,608 + 256 parameter count."""
    keys = meta_sam_state_dict_keys(sam_vit_h_config())
    assert keys["image_encoder.pos_embed"] == (1, 64, 64, 1280)
    assert keys["image_encoder.blocks.6.attn.rel_pos_h"] == (27, 80)
    assert keys["image_encoder.blocks.7.attn.rel_pos_w"] == (127, 80)
    assert keys["image_encoder.neck.2.weight"] == (256, 256, 3, 3)
    assert keys["mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.weight"] == (128, 256)
    assert keys["mask_decoder.output_upscaling.3.weight"] == (64, 32, 2, 2)
    assert keys["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] == (2, 128)
    assert sum(int(np.prod(shape)) for shape in keys.values()) == 641_090_608 + 256


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_key(meta_sam, case):
    state = dict(meta_sam.state_dict())
    key = "mask_decoder.iou_prediction_head.layers.1.bias"
    if case == "missing":
        del state[key]
    elif case == "unexpected":
        key = "mask_decoder.bogus.weight"
        state[key] = torch.zeros(1)
    else:
        state[key] = torch.zeros(7)
    model = GroundingSam(sam_vit_h_config(**TINY, decoder_mlp_dim=TINY_DECODER_MLP))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        model.load_meta_state_dict(state)
    if case != "shape":
        model.load_meta_state_dict(state, strict=False)  # tolerated when not strict


def test_load_into_meta_device_module(meta_sam, ours, inputs):
    with torch.device("meta"):
        model = GroundingSam(sam_vit_h_config(**TINY, decoder_mlp_dim=TINY_DECODER_MLP))
    model.load_meta_state_dict(meta_sam.state_dict())
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    _, _, _, text = inputs
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.decode(embedding, text), ours.decode(embedding, text))


def test_bf16_decode(meta_sam, ours, inputs):
    model = GroundingSam(sam_vit_h_config(**TINY, decoder_mlp_dim=TINY_DECODER_MLP)).to(torch.bfloat16)
    model.load_meta_state_dict(meta_sam.state_dict())  # fp32 tensors are cast to bf16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.dense_pe().dtype == torch.bfloat16
    _, _, _, text = inputs
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        low = model.decode(embedding, text)
        ref = ours.decode(embedding, text)
    assert low.dtype == torch.bfloat16 and low.shape == (3, 256, 256) and torch.isfinite(low).all()
    assert ((low.float() > 0) == (ref > 0)).float().mean() > 0.95  # bf16 noise only
    assert model.decode(embedding, text[:0]).shape == (0, 256, 256)


def _reference_preprocess(image: Image.Image, size: int = 1024):
    height, width = image.height, image.width
    scale = size * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR)).astype(np.float32)
    normalised = (resized - np.float32(SAM_PIXEL_MEAN)) / np.float32(SAM_PIXEL_STD)
    padded = np.zeros((size, size, 3), np.float32)
    padded[:new_h, :new_w] = normalised
    return padded.transpose(2, 0, 1), (new_h, new_w)


@pytest.mark.parametrize(
    "width, height, expected",
    [
        (1, 1, (1024, 1024)),
        (1000, 3, (3, 1024)),
        (3, 1000, (1024, 3)),
        (640, 480, (768, 1024)),
        (333, 500, None),
    ],
)
def test_sam_preprocess(width, height, expected):
    rng = np.random.default_rng(width * 7 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    pixels, resized, original = sam_preprocess(image)
    ref, ref_resized = _reference_preprocess(image)
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 1024, 1024)
    assert original == (height, width) and resized == ref_resized
    if expected is not None:
        assert resized == expected
    np.testing.assert_allclose(pixels.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert (pixels[:, resized[0] :, :] == 0).all() and (pixels[:, :, resized[1] :] == 0).all()


def test_sam_preprocess_converts_to_rgb():
    gray = Image.fromarray(np.full((10, 20), 200, np.uint8), mode="L")
    pixels, resized, original = sam_preprocess(gray)
    assert resized == (512, 1024) and original == (10, 20)
    torch.testing.assert_close(
        pixels[:, 0, 0], (200 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    )


@pytest.mark.parametrize("original", [(1, 1), (3, 1000), (480, 640)])
def test_postprocess_shapes(original):
    scale = 1024 / max(original)
    resized = (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))
    low = torch.randn(2, 256, 256, dtype=torch.bfloat16)
    masks = postprocess_masks(low, resized, original)
    assert masks.dtype == torch.float32 and masks.shape == (2, *original)
