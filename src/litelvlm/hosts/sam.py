"""The SAM ViT-H of pixel-grounding hosts, built from transformers' SAM modules and driven by `[SEG]` embeddings.

Hosts store SAM under a prefix of their own with Meta `segment_anything` key names; `meta_to_hf_sam_key` renames
them to the transformers module tree used here. Only the pieces a host runs for referring segmentation are wired
up: the image encoder, `no_mask_embed` as the dense prompt, the dense positional encoding and the mask decoder
fed with one text embedding per `[SEG]` as its single sparse token. The point/box/mask prompt modules are still
built so that every checkpoint tensor has a home (strict loading catches missing or misnamed keys).

Numerics: the module runs in its own dtype (bf16 for parity with the hosts' bf16 inference), including the dense
positional encoding, without autocast; only `postprocess_masks` works in fp32. The image encoder runs through
`sam_encoder.encode_image` (same weights and mathematics as transformers' forward, 1.8x faster on a 2-core CPU; softmax
in the module dtype, as Meta's bf16 SAM) unless `fused_encoder=False`; the mask decoder's attention is eager
(explicit softmax, as in Meta's code). Which encoder forward is the default depends on the device:
`default_sam_attention`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import SamConfig
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPromptEncoder,
    SamVisionEncoder,
)

from ..errors import LiteLVLMError
from .sam_encoder import encode_image


@dataclass(frozen=True)
class SamSizes:
    """Sizes of a SAM image encoder (and the mask decoder's MLP); the defaults are ViT-H (`build_sam_vit_h`)."""

    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    mlp_dim: int = 5120
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    decoder_mlp_dim: int = 2048


SAM_VIT_H = SamSizes()
SAM_IMAGE_SIZE = 1024  # input side; the image embedding is SAM_IMAGE_SIZE / 16 = 64 cells a side

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

# The overrides `sam_vit_h_config` accepts (all shrink the image encoder; the 256-wide prompt encoder and mask
# decoder, the 1024 image and the 16 patch stay fixed because the hosts' `[SEG]` projection outputs 256 channels).
_VISION_OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_dim", "window_size")


def sam_vit_h_config(vision_attention: str = "sdpa", **overrides) -> SamConfig:
    """The `SamConfig` of SAM ViT-H as the hosts use it (Meta's `build_sam_vit_h`).

    vision_attention: the attention of transformers' image-encoder layers, used when `GroundingSam` runs
    transformers' forward (`fused_encoder=False`): "sdpa" (default: the relative-position bias goes in as SDPA's mask) or
    "eager" (Meta's explicit matmul-softmax). Supported overrides, for tiny test models with the same key names:
    `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `mlp_dim` (default 4 * hidden_size),
    `window_size`, `global_attn_indexes` (image encoder) and `decoder_mlp_dim` (mask-decoder MLP, default 2048).
    """
    unknown = set(overrides) - {*_VISION_OVERRIDES, "global_attn_indexes", "decoder_mlp_dim"}
    if unknown:
        raise TypeError(f"sam_vit_h_config: unsupported overrides {sorted(unknown)}")
    hidden = overrides.get("hidden_size", SAM_VIT_H.hidden_size)
    vision = {
        "hidden_size": SAM_VIT_H.hidden_size,
        "num_hidden_layers": SAM_VIT_H.num_hidden_layers,
        "num_attention_heads": SAM_VIT_H.num_attention_heads,
        "mlp_dim": SAM_VIT_H.mlp_dim * hidden // SAM_VIT_H.hidden_size,  # 4 x the width
        "window_size": SAM_VIT_H.window_size,
        "image_size": SAM_IMAGE_SIZE,
        "patch_size": 16,
        "output_channels": 256,
        "num_pos_feats": 128,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "use_abs_pos": True,
        "use_rel_pos": True,
        "hidden_act": "gelu",
    }
    vision.update({k: overrides[k] for k in _VISION_OVERRIDES if k in overrides})
    vision["global_attn_indexes"] = list(overrides.get("global_attn_indexes", SAM_VIT_H.global_attn_indexes))
    prompt = {
        "hidden_size": 256,
        "image_size": SAM_IMAGE_SIZE,
        "patch_size": 16,
        "mask_input_channels": 16,
        "num_point_embeddings": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    }
    decoder = {
        "hidden_size": 256,
        "hidden_act": "relu",
        "mlp_dim": overrides.get("decoder_mlp_dim", SAM_VIT_H.decoder_mlp_dim),
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "attention_downsample_rate": 2,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
        # Meta's TwoWayTransformer norms are plain nn.LayerNorm (eps 1e-5); transformers' default here is 1e-6.
        "layer_norm_eps": 1e-5,
    }
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    # The decoder's attention is eager, as Meta's explicit matmul-softmax. transformers' image-encoder layers
    # use SDPA with the decomposed relative-position bias as its mask: the same mathematics (fp32 parity with
    # Meta ~1e-5), faster than eager on a CPU (eager materialises 16 x 4096 x 4096 fp32 scores per global block).
    for cfg in (config, config.prompt_encoder_config, config.mask_decoder_config):
        cfg._attn_implementation = "eager"
    config.vision_config._attn_implementation = vision_attention
    return config


# ---------------------------------------------------------------------------------------------------------------
# Key mapping. Each rule maps a Meta key prefix to ours ({i}, {j} match integers); the first matching rule wins
# and the rest of the key is kept. Keys no rule matches are named the same on both sides (e.g. attn.qkv, mlp.lin1,
# iou_token, mask_tokens, no_mask_embed, the decoder's *_attn.{q,k,v,out}_proj). The table is used both ways.
# ---------------------------------------------------------------------------------------------------------------
_PE_META = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_PE_OURS = (
    "prompt_encoder.shared_embedding.positional_embedding",
    "shared_image_embedding.positional_embedding",
)

_RULES = [
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.blocks.{i}.norm{j}.", "vision_encoder.layers.{i}.layer_norm{j}."),
    ("image_encoder.blocks.{i}.", "vision_encoder.layers.{i}."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    # 3-layer MLPs: Meta's layers.0/1/2 are transformers' proj_in / layers.0 / proj_out.
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.0.",
        "mask_decoder.output_hypernetworks_mlps.{i}.proj_in.",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.1.",
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.0.",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.layers.2.",
        "mask_decoder.output_hypernetworks_mlps.{i}.proj_out.",
    ),
    ("mask_decoder.iou_prediction_head.layers.0.", "mask_decoder.iou_prediction_head.proj_in."),
    ("mask_decoder.iou_prediction_head.layers.1.", "mask_decoder.iou_prediction_head.layers.0."),
    ("mask_decoder.iou_prediction_head.layers.2.", "mask_decoder.iou_prediction_head.proj_out."),
]


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)"))


_FORWARD = [(_pattern(meta), ours) for meta, ours in _RULES]
_BACKWARD = [(_pattern(ours), meta) for meta, ours in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end() :]
    return key


def meta_to_hf_sam_key(key: str) -> str | list[str]:
    """Meta `segment_anything` key (host prefix stripped) -> our key; the PE matrix -> both PE parameters."""
    if key == _PE_META:
        return list(_PE_OURS)
    return _rename(key, _FORWARD)


def hf_to_meta_sam_key(key: str) -> str:
    """Inverse of `meta_to_hf_sam_key` (both PE parameters map back to the one Meta buffer)."""
    return _PE_META if key in _PE_OURS else _rename(key, _BACKWARD)


def meta_sam_state_dict_keys(config: SamConfig) -> dict[str, tuple[int, ...]]:
    """Meta-named keys (no prefix) and shapes of a SAM checkpoint for `config`, derived from our module tree."""
    with torch.device("meta"):
        module = GroundingSam(config)
    return {hf_to_meta_sam_key(k): tuple(v.shape) for k, v in module.state_dict().items()}


def infer_sam_overrides(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict:
    """SAM image-encoder sizes from a checkpoint's tensor shapes (Meta key names under `prefix`), as
    `sam_vit_h_config` overrides: {} for ViT-H itself, the differing sizes for a smaller SAM (tiny test models).
    Hosts' config.json files do not describe SAM. Raises `LiteLVLMError` when the encoder's weights are absent."""
    encoder = prefix + "image_encoder."
    try:
        hidden = shapes[encoder + "patch_embed.proj.weight"][0]
        blocks = sorted(
            {int(m.group(1)) for k in shapes if (m := re.match(re.escape(encoder) + r"blocks\.(\d+)\.", k))}
        )
        rel_pos = [shapes[f"{encoder}blocks.{i}.attn.rel_pos_h"] for i in blocks]
        mlp_dim = shapes[encoder + "blocks.0.mlp.lin1.weight"][0]
        decoder_mlp = shapes[prefix + "mask_decoder.transformer.layers.0.mlp.lin1.weight"][0]
        grid = shapes[encoder + "pos_embed"][1]
    except (KeyError, IndexError):
        raise LiteLVLMError(f"the checkpoint lacks SAM image-encoder weights ({prefix}*).") from None
    try:
        head_dim = rel_pos[0][1]
        heads, remainder = divmod(hidden, head_dim)
    except (IndexError, ZeroDivisionError):
        heads, remainder = 0, 1
    if remainder or not heads:  # the shapes contradict each other: a damaged or hand-edited checkpoint
        raise LiteLVLMError(
            f"the checkpoint's SAM image-encoder shapes ({prefix}image_encoder.*) do not describe a SAM ViT "
            "(no head width divides the patch-embedding width); re-download the checkpoint."
        )
    windowed = [shape[0] for shape in rel_pos if shape[0] != 2 * grid - 1]
    found = SamSizes(
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        mlp_dim=mlp_dim,
        window_size=(windowed[0] + 1) // 2 if windowed else SAM_VIT_H.window_size,
        global_attn_indexes=tuple(i for i, shape in zip(blocks, rel_pos) if shape[0] == 2 * grid - 1),
        decoder_mlp_dim=decoder_mlp,
    )
    defaults = asdict(SAM_VIT_H)
    return {name: value for name, value in asdict(found).items() if value != defaults[name]}


def _preview(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


SAM_ATTENTIONS = ("fused", "sdpa", "eager")


def default_sam_attention(device: str | torch.device) -> str:
    """The SAM image-encoder forward that runs fastest on `device`'s type: "fused" (litelvlm's own forward) or
    "sdpa" (transformers' layers with SDPA), as `build_grounding_sam(vision_attention=...)` takes it.

    CPU: "fused", measured 1.80x faster than "sdpa" for ViT-H in bf16 on 2 cores
    (`benchmarks/results/sam_encoder_cpu_bf16.md`); its gains (cache-sized score blocks, GELU inside oneDNN's
    GEMM) are CPU-specific. CUDA: "sdpa" until a CUDA measurement says otherwise (`benchmarks/gpu_check.sh`
    measures both and its summary line says which was faster): there SDPA runs the global blocks' attention as one
    memory-efficient kernel with the bias as its mask, where the fused forward issues one small GEMM + softmax per
    head and query block. Other device types (not measured): "fused", the forward tested most.
    """
    return "sdpa" if torch.device(device).type == "cuda" else "fused"


def build_grounding_sam(vision_attention: str = "fused", **overrides) -> GroundingSam:
    """GroundingSam of SAM ViT-H (`sam_vit_h_config` overrides). vision_attention: "fused" (litelvlm's own
    image-encoder forward, the default), or "sdpa" / "eager" (transformers' layers with that attention); the
    checkpoint loader passes `default_sam_attention(device)`."""
    if vision_attention not in SAM_ATTENTIONS:
        raise ValueError(f"vision_attention must be 'fused', 'sdpa' or 'eager', not {vision_attention!r}")
    fused = vision_attention == "fused"
    config = sam_vit_h_config("sdpa" if fused else vision_attention, **overrides)
    return GroundingSam(config, fused_encoder=fused)


class GroundingSam(nn.Module):
    """SAM image encoder + prompt encoder + mask decoder, driven the way the hosts drive them for `[SEG]` tokens.

    fused_encoder: run the image encoder through `sam_encoder.encode_image` (default) rather than transformers'
    `SamVisionEncoder.forward`; both use the same modules and weights and can be switched at any time.
    """

    def __init__(self, config: SamConfig, fused_encoder: bool = True):
        super().__init__()
        self.config = config
        self.fused_encoder = fused_encoder
        self.vision_encoder = SamVisionEncoder(config.vision_config)
        # Only no_mask_embed is used; the point/box/mask modules are kept so every checkpoint key has a home.
        self.prompt_encoder = SamPromptEncoder(config)
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        # The dense-PE matrix; the prompt encoder keeps its own copy (for points/boxes), both loaded from one key.
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    def load_meta_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load Meta-named SAM tensors (host prefix stripped), cast to each parameter's dtype.

        Works on a module built under `torch.device("meta")`: tensors are assigned, not copied (a parameter on a
        real device receives a copy on that device). A shape mismatch always raises `ValueError`; with `strict`,
        missing and unexpected keys do too. With `strict=False` several partial dicts can be loaded in turn.
        """
        own = self.state_dict()
        new: dict[str, Tensor] = {}
        unexpected, mismatched = [], []
        for key, value in state_dict.items():
            targets = meta_to_hf_sam_key(key)
            for target in [targets] if isinstance(targets, str) else targets:
                if target not in own:
                    unexpected.append(key)
                    break
                param = own[target]
                if tuple(value.shape) != tuple(param.shape):
                    mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(param.shape)}")
                    break
                device = value.device if param.device.type == "meta" else param.device
                new[target] = value.to(device=device, dtype=param.dtype)
        missing = [k for k in own if k not in new]
        errors = [f"shape mismatch: {_preview(mismatched)}"] if mismatched else []
        if strict and missing:
            errors.append(f"missing keys: {_preview([hf_to_meta_sam_key(k) for k in missing])}")
        if strict and unexpected:
            errors.append(f"unexpected keys: {_preview(unexpected)}")
        if errors:
            raise ValueError("cannot load SAM weights; " + "; ".join(errors))
        self.load_state_dict(new, strict=False, assign=True)

    @torch.no_grad()  # inference only; ViT-H activations would otherwise be kept for backward
    def embed_image(self, pixel_values: Tensor) -> Tensor:
        """[B,3,1024,1024] normalised, padded pixels -> image embeddings [B,256,64,64] (module dtype)."""
        pixel_values = pixel_values.to(self.dtype)
        if self.fused_encoder:
            return encode_image(self.vision_encoder, pixel_values)
        return self.vision_encoder(pixel_values)[0]

    def dense_pe(self) -> Tensor:
        """Dense positional encoding of the 64x64 embedding grid, [1,256,64,64], computed in the PE's dtype.

        Cell centres (i+0.5)/64 go through the random-Fourier PE (2x-1, @ gaussian matrix, *2pi, [sin, cos]); the
        grid is built in the PE dtype as in the hosts' SAM, so a bf16 module computes it in bf16.
        """
        size = self.config.prompt_encoder_config.image_embedding_size
        matrix = self.shared_image_embedding.positional_embedding
        grid = torch.ones((size, size), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / size
        x = (grid.cumsum(dim=1) - 0.5) / size
        return self.shared_image_embedding(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    @torch.no_grad()
    def decode(self, image_embedding: Tensor, prompt_embeddings: Tensor) -> Tensor:
        """One image's embedding [1,256,64,64] + n `[SEG]` embeddings [n,256] -> low-res mask logits [n,256,256].

        Each embedding is the single sparse token of its own prompt (no padding point, no point/box embeddings),
        the dense prompt is `no_mask_embed` everywhere and only mask token 0 is kept (`multimask_output=False`).
        """
        n = prompt_embeddings.shape[0]
        if n == 0:
            return image_embedding.new_zeros((0, 256, 256), dtype=self.dtype)
        dtype = self.dtype
        image_embedding = image_embedding.to(dtype)
        height, width = image_embedding.shape[-2:]
        # transformers' decoder layout: [image batch 1, prompt batch n, tokens 1, 256]; the decoder repeats the
        # image (+ dense prompt) per prompt itself, which gives the same values as Meta's repeat-then-add.
        sparse = prompt_embeddings.to(dtype)[None, :, None, :]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        masks, _ = self.mask_decoder(
            image_embeddings=image_embedding,
            image_positional_embeddings=self.dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks[0, :, 0]  # [1, n, 1, 256, 256] -> [n, 256, 256]


def sam_preprocess(
    image: Image.Image, size: int = SAM_IMAGE_SIZE
) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """SAM's input as the hosts prepare it: ResizeLongestSide (PIL bilinear on uint8), normalise in 0-255, pad
    right/bottom with zeros (after normalisation). Other modes are converted to RGB first.

    Returns (pixels [3,size,size] float32, resized (h, w), original (H, W)). Cast to the model dtype is left to
    `GroundingSam.embed_image`.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = size * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)  # as ResizeLongestSide rounds
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    out = torch.zeros((3, size, size), dtype=torch.float32)  # padding is 0 after normalisation
    out[:, :new_h, :new_w] = (pixels - mean) / std
    return out, (new_h, new_w), (height, width)


def postprocess_masks(
    low_res: Tensor, resized: tuple[int, int], original: tuple[int, int], size: int = SAM_IMAGE_SIZE
) -> Tensor:
    """Low-res logits [n,256,256] -> fp32 logits [n,H,W]: upsample to size x size, crop to `resized`, resize to
    `original` (bilinear, align_corners=False, as the hosts' `postprocess_masks`). Thresholding (> 0) is the
    caller's job."""
    masks = low_res.float()[:, None]
    masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
    masks = masks[..., : resized[0], : resized[1]]
    masks = F.interpolate(masks, (int(original[0]), int(original[1])), mode="bilinear", align_corners=False)
    return masks[:, 0]
