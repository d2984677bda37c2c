"""Independent check of litelvlm's LISA v1 support against LISA's official inference.

Written from the team's LISA specification only (a restatement, with line references, of dvlab-research/LISA at
3cb2d43 and transformers 4.31; the § numbers below are its sections), without reading litelvlm's hosts, scoring,
selection or testing code.
The test builds its own tiny random LISA v1 checkpoints in the official layout (§3), implements LISA's
evaluation path on transformers' LLaMA/CLIP modules and Meta's `segment_anything` modules (§2, §4, §6),
and compares the masks written by `python -m litelvlm segment` with that reference.

The only litelvlm import is `litelvlm.synthetic.write_clip_tokenizer`; everything else goes through the CLI.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference import meta_sam_modeling

pytestmark = pytest.mark.slow

sentencepiece = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")


# ----------------------------------------------------------------------------------------------- constants
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)  # §4.1 conv_llava_v1
IMAGE_TOKEN_INDEX = -200  # §2.5
SP_VOCAB = 400
HIDDEN, INTERMEDIATE, LAYERS, HEADS = 64, 128, 2, 4
CLIP_WIDTH = 32
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # §2.10
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SAM_MEAN = [123.675, 116.28, 103.53]  # §2.8
SAM_STD = [58.395, 57.12, 57.375]
# §1: LISA-7B-v1 adds <im_patch>, <im_start>, <im_end> (LLaVA base) then [SEG]; 13B-llama2-v1 adds [SEG] first.
LAYOUTS = {
    "7b": ["<im_patch>", "<im_start>", "<im_end>", "[SEG]"],
    "13b": ["[SEG]", "<im_start>", "<im_end>"],
}
EXPRESSIONS = ["the red cup on the left", "a man in a blue shirt", "zebra in the back"]
MARGIN = 1e-3  # pixels whose reference logit is this close to 0 may flip
MAX_FLIPS = 25


def eval_prompt(text: str) -> str:
    """§4.3: the RefCOCO validation conversation, teacher-forced with the answer "[SEG]."."""
    question = f"<im_start><image><im_end>\n What is {text} in this image? Please output segmentation mask."
    return f"{SYSTEM} USER: {question} ASSISTANT: [SEG].</s>"


# ------------------------------------------------------------------------------------- checkpoint builder
def _corpus() -> list[str]:
    things = [
        "the red cup", "a man in a blue shirt", "zebra in the back", "the cat on the left", "white car",
        "a small dog", "person", "the left horse", "woman holding an umbrella", "green bowl", "bus",
        "the giraffe", "a plate of food", "pizza slice", "the tallest tree", "elephant near water",
    ]  # fmt: skip
    lines = [SYSTEM]
    for thing in things:
        lines += [
            f"USER: What is {thing} in this image? Please output segmentation mask. ASSISTANT:",
            f"Can you segment the {thing} in this image? Please segment the {thing} in this image.",
            f"What is {thing} in this image? Please respond with segmentation mask.",
            f"Sure, it is . It is . Sure, the segmentation result is . {thing}, 0123456789 .",
            "Please output segmentation mask and explain why. Please give some explanation.",
        ]
    return lines


def build_sentencepiece() -> bytes:
    """A tiny LLaMA-style SentencePiece BPE model, trained in memory (§3.4 item 7, §4.5)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus() * 4),
        model_writer=model,
        vocab_size=SP_VOCAB,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def build_clip(directory: Path, seed: int) -> Path:
    """A tiny random CLIP at 224 px / patch 14 (16x16 = 256 patches, §2.3) with its tokenizer and processor."""
    from litelvlm.synthetic import write_clip_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=224, patch_size=14, hidden_size=CLIP_WIDTH, intermediate_size=64,
            num_hidden_layers=3, num_attention_heads=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.CLIPModel(config).eval().save_pretrained(directory)
    write_clip_tokenizer(directory)
    processor = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": 224,
    }  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return directory


def build_tiny_sam(seed: int):
    """SAM with Meta's module classes, ViT-H's structure at a tiny width (§2.8), randomised."""
    modeling = meta_sam_modeling()
    from segment_anything.modeling.common import LayerNorm2d

    torch.manual_seed(seed)
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=2, embed_dim=32, img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
            window_size=14, out_chans=256,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=64, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=SAM_MEAN,
        pixel_std=SAM_STD,
    )  # fmt: skip
    norms = set()
    for name, module in sam.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, LayerNorm2d)):
            norms.add(f"{name}.weight")
    with torch.no_grad():
        for name, parameter in sam.named_parameters():
            if name in norms:
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return sam.eval()


def build_lisa(directory: Path, clip_dir: Path, layout: str, seed: int, sp_model: bytes) -> Path:
    """A tiny random LISA v1 checkpoint in the official layout (§3.1-§3.3)."""
    directory.mkdir(parents=True, exist_ok=True)
    added = {token: SP_VOCAB + i for i, token in enumerate(LAYOUTS[layout])}
    vocab = SP_VOCAB + len(added)
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=generator)

    llm: dict[str, torch.Tensor] = {"model.embed_tokens.weight": randn(vocab, HIDDEN, std=0.5)}
    head_dim = HIDDEN // HEADS
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            llm[f"{p}self_attn.{proj}_proj.weight"] = randn(HIDDEN, HIDDEN, std=0.15)
        llm[f"{p}mlp.gate_proj.weight"] = randn(INTERMEDIATE, HIDDEN, std=0.15)
        llm[f"{p}mlp.up_proj.weight"] = randn(INTERMEDIATE, HIDDEN, std=0.15)
        llm[f"{p}mlp.down_proj.weight"] = randn(HIDDEN, INTERMEDIATE, std=0.1)
        llm[f"{p}input_layernorm.weight"] = randn(HIDDEN, std=0.1, mean=1.0)
        llm[f"{p}post_attention_layernorm.weight"] = randn(HIDDEN, std=0.1, mean=1.0)
    llm["model.norm.weight"] = randn(HIDDEN, std=0.1, mean=1.0)
    llm["lm_head.weight"] = randn(vocab, HIDDEN, std=0.15)
    llm["model.mm_projector.weight"] = randn(HIDDEN, CLIP_WIDTH, std=0.3)
    llm["model.mm_projector.bias"] = randn(HIDDEN, std=0.05)
    shard1 = {k: v.to(torch.bfloat16) for k, v in llm.items() if k.startswith("model.embed_tokens")}
    shard1.update({k: v.to(torch.bfloat16) for k, v in llm.items() if k.startswith("model.layers.")})
    for i in range(LAYERS):  # a persistent buffer in tf 4.31 (§3.3), fp32
        shard1[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    shard2 = {k: v.to(torch.bfloat16) for k, v in llm.items() if k not in shard1}
    fcs = {
        "model.text_hidden_fcs.0.0.weight": randn(HIDDEN, HIDDEN, std=HIDDEN**-0.5),
        "model.text_hidden_fcs.0.0.bias": randn(HIDDEN, std=0.1),
        "model.text_hidden_fcs.0.2.weight": randn(256, HIDDEN, std=HIDDEN**-0.5),
        "model.text_hidden_fcs.0.2.bias": randn(256, std=0.1),
    }
    shard2.update(fcs)  # fp32 (§3.3)
    sam = build_tiny_sam(seed + 1000)
    shard2.update({f"model.visual_model.{k}": v.float().clone() for k, v in sam.state_dict().items()})

    shards = {"pytorch_model-00001-of-00002.bin": shard1, "pytorch_model-00002-of-00002.bin": shard2}
    weight_map, total = {}, 0
    for file, state in shards.items():
        torch.save(state, directory / file)
        for key, tensor in state.items():
            weight_map[key] = file
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))

    config = {
        "_name_or_path": f"tiny-lisa-{layout}",
        "architectures": ["LISAForCausalLM"],
        "model_type": "llava",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 2048 if layout == "7b" else 4096,
        "rms_norm_eps": 1e-6 if layout == "7b" else 1e-5,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "pretraining_tp": 1,
        "rope_scaling": None,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "use_cache": False,
        "mm_vision_tower": str(clip_dir),
        "vision_tower": str(clip_dir),
        "mm_hidden_size": CLIP_WIDTH,
        "use_mm_proj": True,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": True,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "square",
        "image_grid_pinpoints": None,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": True,
        "pretrain_mm_mlp_adapter": None,
        "train_mask_decoder": True,
        "out_dim": 256,
    }
    if layout == "7b":
        config["max_sequence_length"] = 2048
    else:
        config.update(
            mm_resampler_type=None, tune_mm_vision_resampler=False, freeze_mm_vision_resampler=False
        )
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    generation["transformers_version"] = "4.31.0"
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))

    (directory / "tokenizer.model").write_bytes(sp_model)
    (directory / "added_tokens.json").write_text(json.dumps(added))

    def token(content, typed=False):
        entry = {
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        }
        return {"__type": "AddedToken", **entry} if typed else entry

    special = {"bos_token": token("<s>"), "eos_token": token("</s>"), "pad_token": "<unk>"}
    special["unk_token"] = token("<unk>")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": token("<s>", True),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("</s>", True),
        "legacy": True,
        "model_max_length": 512,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": token("<unk>", True),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return directory


def smooth_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((5, 6, 3)) * 255).astype(np.uint8))
    return low.resize((width, height), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------- reference
class LisaReference:
    """LISA v1's evaluation path (§6.4, teacher-forced) on HF LLaMA/CLIP and Meta's SAM, float32 on CPU."""

    def __init__(self, directory: Path):
        config = json.loads((directory / "config.json").read_text())
        assert config["architectures"] == ["LISAForCausalLM"]
        state: dict[str, torch.Tensor] = {}
        index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
        for file in sorted(set(index["weight_map"].values())):
            state.update(torch.load(directory / file, map_location="cpu", weights_only=True))
        state = {k: v.float() for k, v in state.items()}

        # §3.4: plain LlamaConfig from the LLaMA fields; never AutoConfig (model_type "llava").
        llama_config = transformers.LlamaConfig(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"],
            num_key_value_heads=config["num_key_value_heads"],
            max_position_embeddings=config["max_position_embeddings"],
            rms_norm_eps=config["rms_norm_eps"],
            hidden_act=config["hidden_act"],
            tie_word_embeddings=False,
            attn_implementation="eager",
        )
        self.llm = transformers.LlamaForCausalLM(llama_config).eval()
        llm_state = {
            k: v
            for k, v in state.items()
            if (k.startswith(("model.embed_tokens", "model.layers.", "model.norm")) or k == "lm_head.weight")
            and not k.endswith("rotary_emb.inv_freq")
        }
        missing, unexpected = self.llm.load_state_dict(llm_state, strict=False)
        assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)

        self.projector = torch.nn.Linear(config["mm_hidden_size"], config["hidden_size"])  # §2.4
        self.projector.load_state_dict(
            {"weight": state["model.mm_projector.weight"], "bias": state["model.mm_projector.bias"]}
        )
        hidden = config["hidden_size"]
        self.fcs = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, config["out_dim"])
        )  # §2.7
        prefix = "model.text_hidden_fcs.0."
        self.fcs.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

        self.sam = build_tiny_sam(0)  # structure only; weights from the checkpoint (§2.8)
        prefix = "model.visual_model."
        self.sam.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

        clip_dir = config["vision_tower"]  # §2.3: not in the checkpoint, loaded from config.vision_tower
        clip = transformers.CLIPModel.from_pretrained(clip_dir, dtype=torch.float32)
        self.clip = clip.vision_model.eval()  # the vision transformer, unmodified (pre-projection)
        self.clip_processor = json.loads((Path(clip_dir) / "preprocessor_config.json").read_text())
        assert config["mm_vision_select_layer"] == -2

        # Tokenizer (§3.4 item 7, §4.5): SentencePiece + added_tokens.json, 4.31 legacy whitespace rule.
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        self.added = json.loads((directory / "added_tokens.json").read_text())
        self.seg_id = self.added["[SEG]"]
        self._clip_cache: dict[int, torch.Tensor] = {}
        self._sam_cache: dict[int, tuple] = {}
        self._logits_cache: dict[tuple, np.ndarray] = {}

    # ---------------------------------------------------------------- tokenization (§4.5)
    def _encode_chunk(self, chunk: str, strip: bool = True) -> list[int]:
        """`tokenizer(chunk).input_ids` under transformers 4.31: BOS, added tokens unsplit and stripped.

        strip=False is the transformers >= 4.34 behaviour (§4.5), kept only to show that it would be caught.
        """
        specials = {"<s>": 1, "</s>": 2, "<unk>": 0}
        pattern = "(" + "|".join(re.escape(t) for t in [*self.added, *specials]) + ")"
        pieces = re.split(pattern, chunk)
        for i, piece in enumerate(pieces):
            if strip and piece in self.added:  # "We strip left and right by default"
                if i > 0:
                    pieces[i - 1] = pieces[i - 1].rstrip()
                if i + 1 < len(pieces):
                    pieces[i + 1] = pieces[i + 1].lstrip()
        ids = [1]
        for piece in pieces:
            if piece in self.added:
                ids.append(self.added[piece])
            elif piece in specials:
                ids.append(specials[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))  # legacy: dummy prefix on every segment
        return ids

    def prompt_ids(self, text: str, strip: bool = True) -> list[int]:
        """LLaVA's `tokenizer_image_token`: chunks around <image>, first BOS only, -200 in between."""
        chunks = [self._encode_chunk(c, strip) for c in eval_prompt(text).split("<image>")]
        ids = chunks[0]
        for chunk in chunks[1:]:
            ids = ids + [IMAGE_TOKEN_INDEX] + chunk[1:]
        return ids

    # ---------------------------------------------------------------- images (§2.10)
    def clip_pixels(self, image: Image.Image) -> torch.Tensor:
        size, crop = self.clip_processor["size"], self.clip_processor["crop_size"]
        width, height = image.size
        if width <= height:
            new = (size, int(size * height / width))
        else:
            new = (int(size * width / height), size)
        resized = np.asarray(image.convert("RGB").resize(new, Image.Resampling.BICUBIC))
        top, left = (resized.shape[0] - crop) // 2, (resized.shape[1] - crop) // 2
        cropped = resized[top : top + crop, left : left + crop].astype(np.float32) / 255.0
        normalised = (cropped - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
        return torch.from_numpy(normalised).permute(2, 0, 1)[None].float()

    def clip_features(self, image: Image.Image) -> torch.Tensor:
        """§2.3: hidden_states[-2] without post-layernorm, CLS dropped: [256, width]."""
        key = id(image)
        if key not in self._clip_cache:
            with torch.no_grad():
                out = self.clip(pixel_values=self.clip_pixels(image), output_hidden_states=True)
            self._clip_cache[key] = out.hidden_states[-2][0, 1:]
        return self._clip_cache[key]

    def sam_input(self, image: Image.Image):
        width, height = image.size
        scale = 1024 / max(height, width)
        h_r, w_r = int(height * scale + 0.5), int(width * scale + 0.5)
        resized = np.asarray(image.convert("RGB").resize((w_r, h_r), Image.Resampling.BILINEAR))
        x = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)[None]
        return self.sam.preprocess(x), (h_r, w_r), (height, width)  # normalise, zero-pad right/bottom

    def sam_embedding(self, image: Image.Image):
        key = id(image)
        if key not in self._sam_cache:
            pixels, resized, original = self.sam_input(image)
            with torch.no_grad():
                self._sam_cache[key] = (self.sam.image_encoder(pixels), resized, original)
        return self._sam_cache[key]

    # ---------------------------------------------------------------- LLM (§2.5, §2.6)
    def hidden_states(self, image: Image.Image, text: str, indices=None, strip: bool = True):
        """Post-final-norm last-layer states of the spliced sequence, the ids, and the visual-token count."""
        ids = self.prompt_ids(text, strip)
        features = self.clip_features(image)
        if indices is not None:
            features = features[torch.as_tensor(indices, dtype=torch.long)]
        with torch.no_grad():
            visual = self.projector(features)
            place = ids.index(IMAGE_TOKEN_INDEX)
            embed = self.llm.model.embed_tokens
            before = embed(torch.tensor(ids[:place]))
            after = embed(torch.tensor(ids[place + 1 :]))
            sequence = torch.cat([before, visual, after])[None]
            states = self.llm.model(inputs_embeds=sequence).last_hidden_state[0]
        return states, ids, visual.shape[0]

    def seg_embedding(self, image: Image.Image, text: str, indices=None, rule: str = "spliced", strip=True):
        """The [SEG] prompt embedding for SAM.

        rule "literal255": LISA's mask: ids[1:] == [SEG], append False, prepend 255 False (full budget only).
        rule "spliced": the state before [SEG], [SEG] located in the spliced sequence from the token ids.
        rule "own": [SEG]'s own state (wrong; used to show the comparison can fail).
        """
        states, ids, n_visual = self.hidden_states(image, text, indices, strip)
        if rule == "literal255":
            mask = [False] * 255 + [t == self.seg_id for t in ids[1:]] + [False]
            assert len(mask) == states.shape[0], "the 255 offset only fits 256 visual tokens"
            rows = [i for i, m in enumerate(mask) if m]
        else:
            place = ids.index(IMAGE_TOKEN_INDEX)
            seg = [p for p, t in enumerate(ids) if t == self.seg_id]
            spliced = [p - 1 + n_visual if p > place else p for p in seg]
            rows = [p - 1 for p in spliced] if rule == "spliced" else spliced
        assert len(rows) == 1
        with torch.no_grad():
            return self.fcs(states)[rows]  # [1, 256]

    # ---------------------------------------------------------------- SAM (§2.8, §2.9)
    def mask_logits(self, image: Image.Image, embeddings: torch.Tensor) -> np.ndarray:
        image_embedding, resized, original = self.sam_embedding(image)
        n = embeddings.shape[0]
        with torch.no_grad():
            sparse = embeddings[:, None, :]
            dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, 64, 64)
            low, _ = self.sam.mask_decoder(
                image_embeddings=image_embedding,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits = self.sam.postprocess_masks(low.float(), resized, original)
        return logits[:, 0].numpy()

    def logits(self, image, text, indices=None, rule="spliced", strip=True) -> np.ndarray:
        """Float32 mask logits at the image's size for one expression (one conversation)."""
        key = (id(image), text, None if indices is None else tuple(indices), rule, strip)
        if key not in self._logits_cache:
            embedding = self.seg_embedding(image, text, indices, rule, strip)
            self._logits_cache[key] = self.mask_logits(image, embedding)[0]
        return self._logits_cache[key]


# ------------------------------------------------------------------------------------------------ CLI runs
@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict | None

    def masks(self) -> list[np.ndarray]:
        assert self.returncode == 0, self.stderr[-3000:]
        out = []
        for expression in self.report["expressions"]:
            path = Path(expression["mask_file"])
            array = np.asarray(Image.open(path))
            assert set(np.unique(array)) <= {0, 255}
            out.append(array == 255)
        return out


def run_cli(model: Path, image: Path, texts, out_dir: Path, name: str, *extra: str) -> CliRun:
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "litelvlm", "segment", "--model", str(model), "--image", str(image)]
    for text in texts:
        command += ["--text", text]
    json_path = out_dir / f"{name}.json"
    command += ["--out", str(out_dir / f"{name}.png"), "--json", str(json_path)]
    command += ["--dtype", "float32", "--device", "cpu", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=out_dir)
    report = json.loads(json_path.read_text()) if proc.returncode == 0 and json_path.exists() else None
    return CliRun(proc.returncode, proc.stdout, proc.stderr, report)


def compare(mask: np.ndarray, logits: np.ndarray) -> tuple[bool, str]:
    """The CLI mask equals `logits > 0`, except a few pixels whose reference logit is within MARGIN of 0."""
    if mask.shape != logits.shape:
        return False, f"shape {mask.shape} != {logits.shape}"
    differ = mask != (logits > 0)
    confident = differ & (np.abs(logits) > MARGIN)
    detail = (
        f"{int(differ.sum())} of {differ.size} pixels differ, {int(confident.sum())} with |logit| > {MARGIN}"
        + (f" (max |logit| there {np.abs(logits[differ]).max():.4g})" if differ.any() else "")
    )
    return bool(not confident.any() and differ.sum() <= MAX_FLIPS), detail


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lisa-independent")
    sp_model = build_sentencepiece()
    clip_dir = build_clip(root / "clip", seed=3)
    lisa7 = build_lisa(root / "lisa-7b-v1", clip_dir, "7b", seed=11, sp_model=sp_model)
    lisa13 = build_lisa(root / "lisa-13b-llama2-v1", clip_dir, "13b", seed=12, sp_model=sp_model)

    v0 = root / "lisa-v0"  # LISA v0's extra weight file (§1) next to an otherwise v1-looking layout
    v0.mkdir()
    for file in lisa7.iterdir():
        (v0 / file.name).symlink_to(file)
    torch.save({"text_hidden_fcs.0.0.weight": torch.zeros(2, 2)}, v0 / "pytorch_model-text_hidden_fcs.bin")
    llama = root / "plain-llama"
    llama.mkdir()
    for file in lisa7.iterdir():
        if file.name != "config.json":
            (llama / file.name).symlink_to(file)
    config = json.loads((lisa7 / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (llama / "config.json").write_text(json.dumps(config, indent=2))

    images = {
        "landscape": smooth_image(1, 320, 240),
        "portrait": smooth_image(2, 180, 300),
        "wide": smooth_image(3, 500, 170),
    }
    image_files = {}
    for name, image in images.items():
        image_files[name] = root / f"{name}.png"
        image.save(image_files[name])

    out = root / "runs"
    e0, e1, e2 = EXPRESSIONS
    paper32 = "--budget 32 --method litelvlm --order paper --low-similarity-share 0.5"
    jobs = {  # name: (checkpoint, image, expressions, options)
        "multi": (lisa7, "landscape", [e0, e1, e2], ""),
        "single": (lisa7, "landscape", [e2], ""),
        "portrait": (lisa7, "portrait", [e1], ""),
        "b32_litelvlm": (lisa7, "wide", [e0, e1], paper32),
        "b100_litelvlm": (lisa7, "portrait", [e2], "--budget 100 --method litelvlm --order raster"),
        "b100_random": (lisa7, "landscape", [e1], "--budget 100 --method random --seed 5"),
        "lisa13": (lisa13, "wide", [e0], ""),
        "v0": (v0, "landscape", [e0], ""),
        "llama": (llama, "landscape", [e0], ""),
    }
    # Two CLI processes at a time; the references are computed afterwards (no oversubscribed cores).
    with ThreadPoolExecutor(max_workers=2) as executor:
        futures = {
            name: executor.submit(run_cli, model, image_files[image], texts, out, name, *options.split())
            for name, (model, image, texts, options) in jobs.items()
        }
    runs = {name: future.result() for name, future in futures.items()}
    return types.SimpleNamespace(
        lisa7=lisa7, lisa13=lisa13, clip_dir=clip_dir, images=images, runs=runs, jobs=jobs
    )


@pytest.fixture(scope="module")
def ref7(world):
    return LisaReference(world.lisa7)


@pytest.fixture(scope="module")
def ref13(world):
    return LisaReference(world.lisa13)


def result(world, name) -> CliRun:
    return world.runs[name]


def job_image(world, name) -> Image.Image:
    return world.images[world.jobs[name][1]]


# ------------------------------------------------------------------------------------ reference self-checks
def test_the_built_checkpoints_have_the_official_layout(world):
    """§3.1-§3.3: two .bin shards + index, bf16 LLM and projector, fp32 SAM and fcs, inv_freq, no vision tower."""
    for directory, added in ((world.lisa7, LAYOUTS["7b"]), (world.lisa13, LAYOUTS["13b"])):
        names = {f.name for f in directory.iterdir()}
        assert names == {
            "config.json", "generation_config.json", "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "added_tokens.json",
            "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
        }  # fmt: skip
        assert json.loads((directory / "added_tokens.json").read_text()) == {
            token: SP_VOCAB + i for i, token in enumerate(added)
        }
        assert json.loads((directory / "tokenizer_config.json").read_text())["legacy"] is True
        weight_map = json.loads((directory / "pytorch_model.bin.index.json").read_text())["weight_map"]
        state = {}
        for file in set(weight_map.values()):
            state.update(torch.load(directory / file, map_location="cpu", weights_only=True))
        assert set(state) == set(weight_map)
        assert not [k for k in state if "vision_tower" in k]
        for key, tensor in state.items():
            if key.endswith("rotary_emb.inv_freq"):
                continue
            fp32 = key.startswith(("model.visual_model.", "model.text_hidden_fcs."))
            assert tensor.dtype == (torch.float32 if fp32 else torch.bfloat16), key
        assert state["model.mm_projector.weight"].shape == (HIDDEN, CLIP_WIDTH)
        assert state["model.embed_tokens.weight"].shape == (SP_VOCAB + len(added), HIDDEN)
        assert "model.layers.0.self_attn.rotary_emb.inv_freq" in state
        assert "model.visual_model.image_encoder.blocks.1.attn.rel_pos_h" in state
        assert "model.visual_model.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in state
        assert "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in state


def test_reference_tokenization_follows_the_spec_layout(ref7, ref13):
    """§4.5: [1] + sp(system USER:) + <im_start> -200 <im_end> + sp(What is ... ASSISTANT:) + [SEG] + sp(.) + [2]."""
    for ref, (start, end, seg) in ((ref7, (401, 402, 403)), (ref13, (401, 402, 400))):
        text = EXPRESSIONS[0]
        ids = ref.prompt_ids(text)
        question = f"What is {text} in this image? Please output segmentation mask. ASSISTANT:"
        expected = [1, *ref.sp.encode(f"{SYSTEM} USER:"), start, IMAGE_TOKEN_INDEX, end]
        expected += [*ref.sp.encode(question), seg, *ref.sp.encode("."), 2]
        assert ref.sp.get_piece_size() == SP_VOCAB
        assert ids == expected
        assert ref.seg_id == seg
        # The training form "\nWhat" and the eval form "\n What" collapse under 4.31 stripping (§7.9).
        assert ref._encode_chunk("<im_end>\n What is x") == ref._encode_chunk("<im_end>\nWhat is x")
        # The state fed to SAM is the one of ':' of "ASSISTANT:" (§4.5 consequence).
        assert ref.sp.id_to_piece(ids[ids.index(seg) - 1]).endswith(":")
        assert max(ids) < ref.llm.config.vocab_size and ids.count(IMAGE_TOKEN_INDEX) == 1


def test_reference_clip_preprocessing_matches_transformers(ref7, world):
    """§2.10: our resize-shortest-edge / centre-crop / normalise equals CLIPImageProcessor from the same file."""
    processor = transformers.CLIPImageProcessor.from_pretrained(world.clip_dir)
    for image in world.images.values():
        ours = ref7.clip_pixels(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 224, 224)
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert ref7.clip_features(world.images["wide"]).shape == (256, CLIP_WIDTH)


def test_reference_literal_255_equals_the_spliced_rule_at_full_budget(ref7, world):
    """§2.6: at 256 visual tokens LISA's literal offset picks the state before [SEG] in the spliced sequence."""
    image = world.images["landscape"]
    literal = ref7.seg_embedding(image, EXPRESSIONS[0], rule="literal255")
    spliced = ref7.seg_embedding(image, EXPRESSIONS[0], rule="spliced")
    own = ref7.seg_embedding(image, EXPRESSIONS[0], rule="own")
    assert torch.equal(literal, spliced)
    assert not torch.allclose(literal, own, atol=1e-3)


# --------------------------------------------------------------------------------------------- CLI parity
def by_conversation(run: CliRun):
    """(expression, its conversation's indices, mask) per expression."""
    conversations = run.report["conversations"]
    for expression, mask in zip(run.report["expressions"], run.masks()):
        yield expression, conversations[expression["conversation"]]["indices"], mask


@pytest.mark.parametrize("name", ["multi", "single", "portrait"])
def test_full_budget_masks_equal_the_official_reference(world, ref7, name):
    """§2.3-§2.10, §4.3, §6.4: all 256 tokens in raster order, state before [SEG] via LISA's literal 255."""
    run = result(world, name)
    image = job_image(world, name)
    texts = world.jobs[name][2]
    assert run.report["host"] == "lisa"
    assert run.report["num_patches"] == 256
    assert [e["text"] for e in run.report["expressions"]] == texts
    for expression, indices, mask in by_conversation(run):
        assert indices == list(range(256))
        assert expression["seg_found"] is True
        assert mask.shape == (image.height, image.width)
        logits = ref7.logits(image, expression["text"], rule="literal255")
        assert 0.02 < (logits > 0).mean() < 0.98, "degenerate reference mask: the comparison would be weak"
        ok, detail = compare(mask, logits)
        assert ok, f"{name}, {expression['text']!r}: CLI mask differs from the LISA reference: {detail}"


@pytest.mark.parametrize("name", ["b32_litelvlm", "b100_litelvlm", "b100_random"])
def test_pruned_masks_equal_the_reference_fed_the_reported_indices(world, ref7, name):
    """§2.5 splice with the kept tokens in the reported order; state before [SEG] in the spliced sequence."""
    run = result(world, name)
    options = world.jobs[name][3].split()
    budget = int(options[options.index("--budget") + 1])
    image = job_image(world, name)
    assert run.report["num_patches"] == 256
    for expression, indices, mask in by_conversation(run):
        assert len(indices) == budget and len(set(indices)) == budget
        assert all(0 <= i < 256 for i in indices)
        if "raster" in options:
            assert indices == sorted(indices)
        logits = ref7.logits(image, expression["text"], indices=indices)
        assert 0.02 < (logits > 0).mean() < 0.98, "degenerate reference mask: the comparison would be weak"
        ok, detail = compare(mask, logits)
        assert ok, (
            f"{name}, {expression['text']!r}: CLI mask differs from the reference fed its indices: {detail}"
        )


def test_the_comparison_can_fail(world, ref7):
    """Sanity: wrong variants of the reference are rejected by the same comparison."""
    # Full budget: [SEG]'s own state instead of the one before it (§2.6, §7.4).
    for name in ("single", "portrait"):
        (mask,) = result(world, name).masks()
        image, text = job_image(world, name), world.jobs[name][2][0]
        ok, detail = compare(mask, ref7.logits(image, text, rule="own"))
        assert not ok, f"{name}: [SEG]'s own state also matched ({detail})"
        # Newer transformers' tokenization (no stripping around the added tokens, §4.5) is a different input.
        assert ref7.prompt_ids(text, strip=False) != ref7.prompt_ids(text)
        ok, detail = compare(mask, ref7.logits(image, text, rule="spliced", strip=False))
        assert not ok, f"{name}: the unstripped tokenization also matched ({detail})"
    # Pruned: LISA's literal 255 offset no longer fits (what crashed in issues #119/#142, §7.2) ...
    run = result(world, "b32_litelvlm")
    image = job_image(world, "b32_litelvlm")
    expression, indices, mask = next(by_conversation(run))
    text = expression["text"]
    with pytest.raises(AssertionError, match="255 offset"):
        ref7.seg_embedding(image, text, indices=indices, rule="literal255")
    # ... and [SEG]'s own state, all 256 tokens, or the kept tokens in raster order are all rejected.
    assert not compare(mask, ref7.logits(image, text, indices=indices, rule="own"))[0]
    assert not compare(mask, ref7.logits(image, text, rule="literal255"))[0]
    assert indices != sorted(indices), "paper order should permute the kept tokens"
    assert not compare(mask, ref7.logits(image, text, indices=sorted(indices)))[0]


def test_each_expression_is_its_own_conversation(world, ref7):
    """§4.3, §5, §8: LISA is single-turn; one conversation (and one [SEG]) per expression."""
    run = result(world, "multi")
    masks = run.masks()
    assert len(run.report["conversations"]) == len(EXPRESSIONS)
    assert [e["conversation"] for e in run.report["expressions"]] == [0, 1, 2]
    assert [e["answer"] for e in run.report["expressions"]] == ["[SEG]."] * 3
    (single,) = result(world, "single").masks()
    logits = ref7.logits(world.images["landscape"], EXPRESSIONS[2], rule="literal255")
    differ = single != masks[2]
    assert differ.sum() <= MAX_FLIPS and not (differ & (np.abs(logits) > MARGIN)).any()
    assert not np.array_equal(masks[0], masks[2]), "two expressions gave one mask: the test would be weak"
    # Pruned with two expressions: the text-guided selection is per conversation.
    pruned = list(by_conversation(result(world, "b32_litelvlm")))
    assert len(pruned) == 2 and pruned[0][0]["conversation"] != pruned[1][0]["conversation"]


def test_13b_llama2_layout_matches_the_reference(world, ref13):
    """§1, §3.2: [SEG] is the first added token (id = SentencePiece size), no <im_patch>, rms_eps 1e-5."""
    run = result(world, "lisa13")
    (mask,) = run.masks()
    assert run.report["host"] == "lisa" and run.report["num_patches"] == 256
    assert run.report["conversations"][0]["indices"] == list(range(256))
    assert run.report["expressions"][0]["seg_found"] is True
    logits = ref13.logits(world.images["wide"], EXPRESSIONS[0], rule="literal255")
    assert 0.02 < (logits > 0).mean() < 0.98
    ok, detail = compare(mask, logits)
    assert ok, f"13B layout at full budget: {detail}"


def test_lisa_v0_is_refused_with_one_line(world):
    """§1: v0 checkpoints (extra pytorch_model-text_hidden_fcs.bin) are not loadable by v1 code."""
    run = result(world, "v0")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr
    assert len(lines) == 1, run.stderr
    assert "v0" in lines[0]


def test_a_non_lisa_architecture_is_refused_with_one_line(world):
    """§3.2: architectures must be ["LISAForCausalLM"]; the message names what was found."""
    run = result(world, "llama")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr
    assert len(lines) == 1, run.stderr
    assert "LlamaForCausalLM" in lines[0]
