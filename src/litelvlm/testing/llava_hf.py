"""A tiny random `LlavaForConditionalGeneration` checkpoint in the layout of llava-hf/llava-1.5-7b-hf, plus the
tiny CLIP whose vision weights its tower shares (LLaVA-1.5's tower is openai/clip-vit-large-patch14-336, frozen).

Written by transformers' own `save_pretrained` (model, then `LlavaProcessor`): config.json with llava-hf's fields
(a `clip_vision_model` vision_config with 14 px patches, a `llama` text_config, `image_token_index` = the id of
the added "<image>" token, `vision_feature_layer` -2, `vision_feature_select_strategy` "default", projector gelu,
`pad_token_id` = "<pad>", text vocabulary padded to a multiple of 64 as 32,002 -> 32,064 in the real one),
float16 weights in sharded safetensors files with their index, renamed to the keys of the real files
(`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`; transformers maps them to its own module names on load), generation_config.json,
the processor (CLIP image processing, patch size, `num_additional_image_tokens=1`, llava-1.5-hf's chat template),
and a LLaMA tokenizer: a tiny SentencePiece BPE with byte fallback (any text tokenizes) plus "<image>" and
"<pad>", padding side left, its tokenizer.json in the hub's older conversion, which prepends "▁" to the text
after an added token ("USER: <image>\nWhat" is <s> ▁USER : ▁ <image> ▁ <0x0A> W...). The processor and
tokenizer files are what this transformers' `save_pretrained` writes (on 5.x: processor_config.json with the
image processor nested, and chat_template.jinja, where the hub repository, saved by 4.x, has
preprocessor_config.json and chat_template.json); tokenizer.model is added as in the hub repository.

Sizes: 84 px images, 14 px patches (6 x 6 = 36 image tokens), vision width 32 with 2 layers, LLaMA width 64
with 2 layers and 4 heads, 512 embedding rows; it loads in well under a second.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..synthetic.clip import clip_config
from ..synthetic.clip_tokenizer import write_clip_tokenizer
from ..synthetic.llama_tokenizer import write_tiny_llama_tokenizer
from .clip import write_preprocessor_config

IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"
# The chat template of llava-hf/llava-1.5-7b-hf (its chat_template.json, as recalled): every image of a turn as
# "<image>\n", then its texts each followed by a space; roles upper-cased ("USER: ", "ASSISTANT: "), system turns
# without a prefix; the generation prompt is "ASSISTANT:". A user turn [image, "What is this?"] renders as
# "USER: <image>\nWhat is this? ASSISTANT:".
LLAVA_1_5_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TINY_VISION = dict(image_size=84, patch_size=14, vision_hidden=32, vision_layers=2, vision_heads=4)
TINY_TEXT = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4)
SENTENCEPIECE_VOCAB = 500  # pieces; "<image>" and "<pad>" follow (llava-hf: 32,000 pieces, <image> 32000)
# Module-name prefixes as transformers (4.52+) names them -> the key prefixes in llava-hf's safetensors files.
HUB_KEY_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def llava_hf_key(key: str) -> str:
    """The name llava-hf/llava-1.5-7b-hf's files give the weight saved as `key` by any transformers version
    (5.x saves the CLIP tower without its inner `vision_model.`)."""
    for prefix, hub in HUB_KEY_PREFIXES:
        if key.startswith(prefix):
            key = hub + key[len(prefix) :]
            break
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower.") :]
    return key


def vision_tower(model) -> torch.nn.Module:
    """The CLIP vision transformer of a `LlavaForConditionalGeneration`, keyed like `CLIPModel.vision_model`
    (transformers 4.x wraps it in `CLIPVisionModel.vision_model`; 5.x flattened that)."""
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower)


def llava_hf_config(vocab_size: int, image_token_id: int, pad_token_id: int, clip):
    """A `LlavaConfig` with llava-1.5-7b-hf's fields: `clip`'s vision config, a tiny LLaMA (TINY_TEXT)."""
    from transformers import LlavaConfig

    vision = clip.vision_config
    text = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=vocab_size,
        num_key_value_heads=TINY_TEXT["num_attention_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-05,
        initializer_range=0.02,
        **TINY_TEXT,
    )
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=patches,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def llava_tokenizer(seed: int):
    """llava-1.5-7b-hf's LLaMA tokenizer over a tiny SentencePiece vocabulary, and the tokenizer.model bytes."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="litelvlm-llava-tokenizer-") as source:
        source = Path(source)
        write_tiny_llama_tokenizer(
            source, vocab_size=SENTENCEPIECE_VOCAB, seed=seed, added_tokens=(IMAGE_TOKEN, PAD_TOKEN)
        )
        special = {
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        pieces = {
            0: "<unk>",
            1: "<s>",
            2: "</s>",
            SENTENCEPIECE_VOCAB: IMAGE_TOKEN,
            SENTENCEPIECE_VOCAB + 1: PAD_TOKEN,
        }
        config = {  # the fields of llava-1.5-7b-hf's tokenizer_config.json
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(index): {"content": text, **special} for index, text in pieces.items()
            },
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": PAD_TOKEN,
            "padding_side": "left",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        }
        (source / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (source / "special_tokens_map.json").unlink()
        tokenizer = AutoTokenizer.from_pretrained(source)
        # The hub's tokenizer.json is the older conversion: a "▁" prepended to every text piece between added
        # tokens (so "<image>\n" is "<image> ▁ <0x0A>", and decoding gives "USER:  \nWhat ..."), no pre-tokenizer.
        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
        return tokenizer, (source / "tokenizer.model").read_bytes()


def clip_image_processor(image_size: int):
    """CLIP preprocessing at `image_size`: resize the shortest edge, center crop, OpenAI mean/std, RGB."""
    try:  # transformers 5.x: the PIL backend (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor
    return ImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_convert_rgb=True,
    )


def _rename_to_hub_keys(directory: Path) -> None:
    """Rewrite the safetensors shards and their index under llava-hf's key names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(directory / name, "pt") as file:
            metadata = file.metadata()
            tensors = {llava_hf_key(key): file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not iterable)
        save_file(tensors, directory / name, metadata=metadata)
    index["weight_map"] = dict(sorted((llava_hf_key(k), v) for k, v in index["weight_map"].items()))
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def make_tiny_llava_hf(
    directory: str | Path,
    seed: int = 0,
    clip_directory: str | Path | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a tiny random llava-hf/llava-1.5-7b-hf-style checkpoint (model, processor, tokenizer) into
    `directory` and return its path. With `clip_directory`, also write the CLIP checkpoint its vision tower comes
    from there (openai/clip-vit-large-patch14-336's layout, loadable by `ClipScorer.from_pretrained`): the same
    vision config and vision weights (equal values: the CLIP's float32 weights are float16-representable), a
    random text tower and projections, the real CLIP tokenizer and preprocessor_config.json. The LLaVA weights
    are saved in `dtype` (float16, as in the hub files). Deterministic: the same seed writes the same tensors."""
    from transformers import CLIPModel, LlavaForConditionalGeneration, LlavaProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer, sentencepiece_model = llava_tokenizer(seed)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab_size = -(-len(tokenizer) // 64) * 64
    clip_cfg = clip_config(**TINY_VISION)
    config = llava_hf_config(vocab_size, image_token_id, tokenizer.pad_token_id, clip_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(clip_cfg).eval()
        with torch.no_grad():  # LLaVA's tower is CLIP in float16: keep the values both files can hold exactly
            for parameter in clip.vision_model.parameters():
                parameter.copy_(parameter.to(torch.float16))
        model = LlavaForConditionalGeneration(config).eval()
    vision_tower(model).load_state_dict(clip.vision_model.state_dict())
    model = model.to(dtype)
    total_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # Sharded, with model.safetensors.index.json, as the hub's files are.
    model.save_pretrained(directory, max_shard_size=total_bytes // 2 + 1)
    _rename_to_hub_keys(directory)

    processor = LlavaProcessor(
        image_processor=clip_image_processor(clip_cfg.vision_config.image_size),
        tokenizer=tokenizer,
        patch_size=clip_cfg.vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_1_5_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(sentencepiece_model)

    if clip_directory is not None:
        clip_directory = Path(clip_directory)
        clip_directory.mkdir(parents=True, exist_ok=True)
        clip.save_pretrained(clip_directory)
        write_clip_tokenizer(clip_directory)
        write_preprocessor_config(clip_directory, clip_cfg.vision_config.image_size)
    return directory
