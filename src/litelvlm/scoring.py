"""CLIP scoring for token selection, on transformers' `CLIPModel`.

One vision pass per image gives everything the selection methods need:
  * the select-layer hidden state H (default -2; CLS first, then N patches) that the LLM receives,
  * the context score of each patch, from the last layer's full-width q/k/v of the CLS query,
  * (lazily) the select layer's CLS attention and keys, for FasterVLM/VisionZip/VisPruner-style baselines,
  * (lazily) the last layer's full-width CLS attention and keys, for PruMerge,
  * (lazily) the patches projected into CLIP's joint space, to compare with text embeddings,
  * (on request) the select-layer patches of the same images resized to a coarser grid, for `downsample`.

The encoder layers are called one by one, so no hooks are installed, only the needed states are kept, and the
last layer's attention and MLP, whose output nobody reads, are never run.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoints import (
    COUNT,
    OBJECT,
    POSITIVE,
    TEXT,
    check_config_fields,
    check_device,
    check_dtype,
    check_path_argument,
    config_value,
    error_with_fix,
    hub_error,
    read_config,
    reason_of,
    resolve_checkpoint,
    shown,
    size_mismatch,
)
from .errors import LiteLVLMError
from .hosts.checkpoint_files import Shapes, check_weights, layer_count, tensor_index, weight_files
from .images import ClipPreprocess, image_list, load_image
from .patch_scores import cls_attention, context_contribution, text_patch_similarity
from .selection import TokenScores, get_method

DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"
CLIP_FLAG = "--clip"  # the CLI option that takes a CLIP checkpoint (named only in the CLI's messages)
IMAGE_PLACEHOLDER = "<image>"  # where the host prompts put the picture; an expression must not hold it
TEXT_CACHE_SIZE = 4096
ALL_SCORES = frozenset(
    {
        "similarity",
        "context",
        "cls_attention",
        "features",
        "keys",
        "last_cls_attention",
        "last_keys",
        "encode_grid",
    }
)


@dataclass
class VisionFeatures:
    """Text-independent CLIP results for a batch of B images (N patches on a rows x cols grid).

    hidden:       [B, 1+N, D] select-layer hidden state (CLS first), the LLM's visual input
    last_input:   [B, 1+N, D] input of the last encoder layer (the same tensor as `hidden` for layer -2)
    select_input: [B, 1+N, D] input of the select layer, kept for the CLS-attention baselines
    pixels:       [B, 3, S, S] the preprocessed images (None if not kept), for passes at a coarser grid
    Derived per-image scores, filled on demand by `ClipScorer` (float32, None until computed):
    context:       [B, N] LiteLVLM's context contribution (`patch_scores.context_contribution`)
    cls_attention: [B, N] head-averaged CLS -> patch attention at the select layer
    keys:          [B, N, D/heads] head-averaged select-layer patch keys
    last_cls_attention: [B, N] full-width (no head split) CLS -> patch attention in the last layer
    last_keys:     [B, N, D] full-width last-layer patch keys (raw `k_proj` outputs)
    projected:     [B, N, P] patches in CLIP's joint space (for text similarity)
    grids:         (rows, cols) -> [B, rows * cols, D] select-layer patches of the images resized to that grid
    """

    hidden: torch.Tensor
    last_input: torch.Tensor
    select_input: torch.Tensor | None
    grid: tuple[int, int]
    pixels: torch.Tensor | None = None
    context: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    last_cls_attention: torch.Tensor | None = None
    last_keys: torch.Tensor | None = None
    projected: torch.Tensor | None = None
    grids: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def num_patches(self) -> int:
        return self.hidden.shape[1] - 1

    @property
    def patch_features(self) -> torch.Tensor:
        """[B, N, D] select-layer patch states (CLS dropped)."""
        return self.hidden[:, 1:]


def _layer_call_style(layer: torch.nn.Module) -> bool:
    """True for transformers < 4.48-style layers that take `causal_attention_mask` positionally."""
    return "causal_attention_mask" in inspect.signature(layer.forward).parameters


# The kind of every CLIP config.json field the model's shapes follow, checked before transformers reads them.
TOWERS = {  # tower -> its size fields beyond the shared ones
    "vision": ("image_size", "patch_size", "num_channels"),
    "text": ("vocab_size", "max_position_embeddings"),
}
_TOWER_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
CLIP_CONFIG_FIELDS = {
    "vision_config": OBJECT,
    "text_config": OBJECT,
    "projection_dim": COUNT,
    **{f"{tower}_config.{name}": COUNT for tower, own in TOWERS.items() for name in (*_TOWER_SIZES, *own)},
    **{f"{tower}_config.hidden_act": TEXT for tower in TOWERS},
    **{f"{tower}_config.layer_norm_eps": POSITIVE for tower in TOWERS},
}
CLIP_DIVISIBLE = tuple(
    (f"{tower}_config.hidden_size", f"{tower}_config.num_attention_heads") for tower in TOWERS
)
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"


def check_clip_checkpoint(directory: str) -> Shapes:
    """Refuse a local CLIP checkpoint that transformers would load with a traceback or, worse, quietly wrong
    (unused layers dropped, missing ones initialised at random): config.json's kinds of fields, every weight
    file's bytes, the encoder depth and every tensor's shape against config.json. Returns the weights' index."""
    config = read_config(directory, "CLIP checkpoint", CLIP_FLAG)
    where = repr(str(Path(directory) / "config.json"))
    if config.get("model_type") != "clip" or "vision_config" not in config:
        raise error_with_fix(
            f"{directory!r} is not a CLIP checkpoint (config.json has model_type {config.get('model_type')!r}, "
            "expected 'clip')",
            "pass a CLIP checkpoint directory",
            CLIP_FLAG,
        )
    check_config_fields(config, CLIP_CONFIG_FIELDS, where, CLIP_DIVISIBLE)
    found = tensor_index(weight_files(directory), lambda key: True)
    for tower in TOWERS:
        depth = f"{tower}_config.num_hidden_layers"
        stated, layers = config_value(config, depth), layer_count(found, f"{tower}_model.encoder.layers.")
        if stated is not None and stated != layers:
            raise size_mismatch(
                where, depth, stated, layers, f"the weights hold {layers} {tower} encoder layers"
            )
    check_weights(found, _expected_shapes(config, where), where, "CLIP checkpoint")
    return found


def _expected_shapes(config: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the CLIPModel that `config` describes (built on the meta device: no memory, no time)."""
    from transformers import CLIPConfig, CLIPModel

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = CLIPModel(CLIPConfig.from_dict(config))
    except Exception as error:  # noqa: BLE001 - transformers' validation errors vary by version
        raise LiteLVLMError(
            f"{where} describes no CLIP model transformers can build ({reason_of(error)}); fix config.json or "
            "re-download it."
        ) from None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


class ClipScorer:
    """Scores patches of images against texts with a CLIP model; caches per-image work like SAM's predictor.

    >>> scorer = ClipScorer.from_pretrained("openai/clip-vit-large-patch14-336")
    >>> scorer.set_image(Image.open("photo.jpg"))
    >>> scores = scorer.score(["the man in red"])       # TokenScores with similarity [1, 1, 576]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer=None,
        preprocess: ClipPreprocess | None = None,
        select_layer: int = -2,
    ) -> None:
        self.model = model.eval()
        self.vision = model.vision_model
        self.tokenizer = tokenizer
        config = self.vision.config
        self.preprocess = preprocess or ClipPreprocess(
            config.image_size, config.image_size, config.image_size
        )
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.select_index = select_layer if select_layer >= 0 else self.num_layers + 1 + select_layer
        if not 1 <= self.select_index <= self.num_layers:
            raise LiteLVLMError(
                f"select_layer {select_layer} is outside this CLIP's {self.num_layers} layers; use e.g. -2."
            )
        side = config.image_size // config.patch_size
        self.grid = (side, side)
        self.num_patches = side * side
        self._legacy_layers = _layer_call_style(self.vision.encoder.layers[0])
        self._features: VisionFeatures | None = None
        self._warned_truncation = False
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike = DEFAULT_CLIP,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        select_layer: int = -2,
    ) -> ClipScorer:
        """Load a CLIP checkpoint directory (or hub id) in the layout of openai/clip-vit-large-patch14-336.

        A local directory (a hub id found in the local cache counts as one) is checked before transformers
        reads it: config.json's fields, every weight file's bytes, the weights against the config and the
        tokenizer against the text embeddings, each failure one sentence naming the file and the fix.
        """
        from transformers import AutoTokenizer, CLIPModel

        device, dtype = check_device(device), check_dtype(dtype)
        check_path_argument(path_or_id, "path_or_id")
        name = resolve_checkpoint(path_or_id, "CLIP checkpoint", CLIP_FLAG)
        is_local = os.path.isdir(name)
        embeddings = "its text embedding matrix"
        if is_local:
            found = check_clip_checkpoint(name)
            embeddings = f"{TOKEN_EMBEDDING} in {str(found[TOKEN_EMBEDDING][1])!r}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CLIPModel.from_pretrained(name, local_files_only=is_local)
                tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=is_local)
        except Exception as error:  # noqa: BLE001 - whatever transformers raises, the advice is the same
            if not is_local:
                raise hub_error(name, "CLIP checkpoint", CLIP_FLAG, error) from None
            raise LiteLVLMError(
                f"could not load the CLIP checkpoint in {name!r} ({reason_of(error)}); re-download it."
            ) from None
        rows = model.text_model.embeddings.token_embedding.num_embeddings
        if len(tokenizer) > rows:  # ids past the matrix: an IndexError deep in torch.embedding
            raise LiteLVLMError(
                f"the CLIP tokenizer in {name!r} has {len(tokenizer)} tokens but {embeddings} has only {rows} "
                "rows; use the tokenizer files that came with this checkpoint."
            )
        model = model.to(device=device, dtype=dtype)
        preprocess = ClipPreprocess.from_dir(
            name if is_local else _hub_dir(name), model.config.vision_config.image_size
        )
        return cls(model, tokenizer, preprocess, select_layer)

    @property
    def device(self) -> torch.device:
        return self.vision.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    # ------------------------------------------------------------------ vision
    def pixel_values(self, images: Sequence[Image.Image | str | os.PathLike] | Image.Image) -> torch.Tensor:
        """Preprocessed pixels [B, 3, S, S] on the model's device and dtype."""
        images = image_list(images, "set_image")  # (an array iterated row by row would pass as gray images)
        pixels = self.preprocess([load_image(image) for image in images])
        return pixels.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode_image(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """One vision pass over pixels [B, 3, S, S], keeping only the states selection needs."""
        vision = self.vision
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        # States are indexed like `output_hidden_states`: 0 = embeddings, i = output of layer i (1-based).
        wanted = {self.select_index, self.select_index - 1, self.num_layers - 1}
        states = {0: hidden} if 0 in wanted else {}
        for index, layer in enumerate(vision.encoder.layers[: max(wanted)], start=1):
            hidden = self._run_layer(layer, hidden)
            if index in wanted:
                states[index] = hidden
        return VisionFeatures(
            hidden=states[self.select_index],
            last_input=states[self.num_layers - 1],
            select_input=states[self.select_index - 1],
            grid=self.grid,
            pixels=pixel_values,
        )

    def _run_layer(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = layer(hidden, None, None) if self._legacy_layers else layer(hidden, None)
        return output[0] if isinstance(output, tuple) else output

    def set_image(self, images: Sequence[Image.Image | str | os.PathLike] | Image.Image) -> VisionFeatures:
        """Run the vision pass for one image (or a batch) and cache it for `score`."""
        self._features = self.encode_image(self.pixel_values(images))
        return self._features

    @property
    def features(self) -> VisionFeatures:
        if self._features is None:
            raise LiteLVLMError("no image is set; call set_image(image) before score(texts).")
        return self._features

    # ------------------------------------------------------------------ derived image scores
    @torch.inference_mode()
    def context_scores(self, features: VisionFeatures) -> torch.Tensor:
        """[B, N] float32 context contribution of each patch to the CLS token in the last layer (cached)."""
        if features.context is None:
            last = self.vision.encoder.layers[self.num_layers - 1]
            normed = last.layer_norm1(features.last_input)
            features.context = context_contribution(
                last.self_attn.q_proj(normed[:, :1]).float(),
                last.self_attn.k_proj(normed[:, 1:]).float(),
                last.self_attn.v_proj(normed[:, 1:]).float(),
            )
        return features.context

    @torch.inference_mode()
    def select_layer_attention(self, features: VisionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS -> patch attention [B, N] (head-averaged, softmax over CLS + patches) and head-averaged patch
        keys [B, N, D/heads], both of the select layer, float32 (cached)."""
        if features.cls_attention is None:
            layer = self.vision.encoder.layers[self.select_index - 1]
            normed = layer.layer_norm1(features.select_input)
            batch, tokens, width = normed.shape
            head_dim = width // self.num_heads
            query = layer.self_attn.q_proj(normed[:, :1]).float().view(batch, 1, self.num_heads, head_dim)
            keys = layer.self_attn.k_proj(normed).float().view(batch, tokens, self.num_heads, head_dim)
            features.cls_attention = cls_attention(query, keys)
            features.keys = keys[:, 1:].mean(dim=2)
        return features.cls_attention, features.keys

    @torch.inference_mode()
    def last_layer_attention(self, features: VisionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """PruMerge's scores from the last layer, without a head split: CLS -> patch attention [B, N]
        (softmax over CLS + patches of q k / sqrt(D)) and the raw patch keys [B, N, D], float32 (cached)."""
        if features.last_cls_attention is None:
            last = self.vision.encoder.layers[self.num_layers - 1]
            normed = last.layer_norm1(features.last_input)
            query = last.self_attn.q_proj(normed[:, :1]).float()
            keys = last.self_attn.k_proj(normed).float()
            # One "head" of full width: the same formula as the head-averaged select-layer attention.
            features.last_cls_attention = cls_attention(query.unsqueeze(2), keys.unsqueeze(2))
            features.last_keys = keys[:, 1:]
        return features.last_cls_attention, features.last_keys

    @torch.inference_mode()
    def grid_features(self, features: VisionFeatures, grid: tuple[int, int]) -> torch.Tensor:
        """[B, rows * cols, D] select-layer patches (CLS dropped) of a vision pass over the images resized
        (bicubic, antialiased) to rows x cols patches, with the position embeddings interpolated (cached per
        grid). The image-downsampling baseline: fewer tokens really go through the tower."""
        if grid not in features.grids:
            if features.pixels is None:
                raise LiteLVLMError(
                    "these features kept no pixels; encode the images with ClipScorer.encode_image."
                )
            rows, cols = grid
            patch = self.vision.config.patch_size
            # Resizing the normalised pixels equals normalising resized pixels: the filter weights sum to 1.
            pixels = F.interpolate(
                features.pixels.float(), size=(rows * patch, cols * patch), mode="bicubic", antialias=True
            )
            hidden = self.vision.embeddings(pixels.to(self.dtype), interpolate_pos_encoding=True)
            hidden = self.vision.pre_layrnorm(hidden)
            for layer in self.vision.encoder.layers[: self.select_index]:
                hidden = self._run_layer(layer, hidden)
            features.grids[grid] = hidden[:, 1:]
        return features.grids[grid]

    @torch.inference_mode()
    def projected_patches(self, features: VisionFeatures) -> torch.Tensor:
        """[B, N, P] float32: patches through `post_layernorm` and `visual_projection`, like the pooled CLS
        (cached)."""
        if features.projected is None:
            normed = self.vision.post_layernorm(features.patch_features)
            features.projected = self.model.visual_projection(normed).float()
        return features.projected

    # ------------------------------------------------------------------ text
    @property
    def max_text_tokens(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP `text_embeds` [T, P] (float32, not normalised); longer texts are truncated (one warning).

        Embeddings are cached by text (LRU), so an evaluation sweeping methods and budgets encodes each
        question once.
        """
        if self.tokenizer is None:
            raise LiteLVLMError("this ClipScorer has no tokenizer; load it with ClipScorer.from_pretrained.")
        texts = [check_text(text) for text in texts]
        missing = list(dict.fromkeys(text for text in texts if text not in self._text_cache))
        if missing:
            for text, embed in zip(missing, self._encode_uncached(missing)):
                self._text_cache[text] = embed
                if len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        for text in texts:
            self._text_cache.move_to_end(text)
        return torch.stack([self._text_cache[text] for text in texts])

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        limit = self.max_text_tokens
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        if max(lengths) > limit and not self._warned_truncation:
            self._warned_truncation = True
            longest = texts[lengths.index(max(lengths))]
            warnings.warn(
                f"text {longest[:40]!r}... has {max(lengths)} CLIP tokens; texts are truncated to {limit}.",
                stacklevel=3,
            )
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        inputs = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}
        pooled = self.model.text_model(**inputs).pooler_output
        return self.model.text_projection(pooled).float()

    # ------------------------------------------------------------------ scores
    def score(
        self,
        texts: Sequence[str] | Sequence[Sequence[str]] = (),
        needs: frozenset[str] | set[str] | str = ALL_SCORES,
        features: VisionFeatures | None = None,
        *,
        rows: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        shared_texts: bool = False,
    ) -> TokenScores:
        """Scores of the cached image(s) for the given texts, one row per image (or per entry of `rows`).

        texts: one list per row (lengths may differ; `text_mask` marks the real ones), or, for a single row, one
            flat list of T strings. Not needed when `needs` excludes "similarity".
        shared_texts: let one flat list go to every row (otherwise a flat list for several rows is refused, as
            it is usually one text per image meant).
        needs: the score fields to compute, or a method name whose needs to use.
        features: the images' features (default: those of `set_image`).
        rows: int64 [R], the image of each output row (e.g. several conversations about one image); the
            per-image scores are computed once per image and cached on `features`, then gathered.
        text_embeds: `encode_text` of the flattened texts, when the caller has it already.
        """
        features = features or self.features
        if isinstance(needs, str):
            needs = get_method(needs).needs
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        batch_size = features.batch_size if rows is None else len(rows)
        scores = TokenScores(batch_size, features.num_patches, features.grid)
        if "similarity" in needs:
            per_row = texts_per_image(texts, batch_size, shared=shared_texts)
            if text_embeds is None:
                text_embeds = self.encode_text([text for group in per_row for text in group])
            scores.similarity, scores.text_mask = _similarity(
                pick(self.projected_patches(features)), text_embeds, [len(group) for group in per_row]
            )
        if "context" in needs:
            scores.context = pick(self.context_scores(features))
        if needs & {"cls_attention", "keys"}:
            attention, keys = self.select_layer_attention(features)
            scores.cls_attention, scores.keys = pick(attention), pick(keys)
        if needs & {"last_cls_attention", "last_keys"}:
            attention, keys = self.last_layer_attention(features)
            scores.last_cls_attention, scores.last_keys = pick(attention), pick(keys)
        if "features" in needs:
            scores.features = pick(features.patch_features)
        if "encode_grid" in needs:
            scores.encode_grid = lambda grid: pick(self.grid_features(features, tuple(grid)))
        return scores


def _similarity(
    patches: torch.Tensor, embeds: torch.Tensor, counts: list[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """patches [B, N, P]; embeds [sum(counts), P], row b owning `counts[b]` of them -> similarity [B, T, N]
    (T = max count, missing texts zero) and text_mask [B, T] (None when every row has T texts)."""
    batch = patches.shape[0]
    most = max(counts)
    padded = embeds.new_zeros(batch, most, embeds.shape[-1])
    text_mask = torch.zeros(batch, most, dtype=torch.bool, device=embeds.device)
    start = 0
    for row, count in enumerate(counts):
        padded[row, :count] = embeds[start : start + count]
        text_mask[row, :count] = True
        start += count
    similarity = text_patch_similarity(padded, patches)
    return similarity, (None if bool(text_mask.all()) else text_mask)


def check_text(text: object) -> str:
    """`text` if it is a usable referring expression: a non-empty str of valid Unicode (no surrogate escapes,
    which Python makes of command-line bytes that are not UTF-8) without the prompt's image placeholder."""
    if not isinstance(text, str):
        raise LiteLVLMError(
            f"text {shown(text)} is a {type(text).__name__}, not a string; pass each referring expression as a "
            "str such as 'the man in red'."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LiteLVLMError(
            f"text {shown(text)} is not valid UTF-8 (it holds undecodable bytes); pass the expression as UTF-8 "
            "text."
        ) from None
    if not text.strip():
        raise LiteLVLMError(f"text {text!r} is empty; pass a referring expression such as 'the man in red'.")
    if IMAGE_PLACEHOLDER in text:
        raise LiteLVLMError(
            f"text {shown(text)} contains {IMAGE_PLACEHOLDER}, the prompt's placeholder for the picture; remove it "
            "from the expression."
        )
    return text


def texts_per_image(
    texts: Sequence[str] | Sequence[Sequence[str]], batch_size: int, *, shared: bool = False
) -> list[list[str]]:
    """Normalise `texts` to one non-empty list per image: one list of lists, one per image, or one flat list
    when a single image is set (or `shared`: the same texts for every image)."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise LiteLVLMError("no text given; pass at least one referring expression.")
    nested = [isinstance(group, (list, tuple)) for group in texts]
    if not any(nested):  # one flat list (its items are checked as texts when encoded)
        if batch_size != 1 and not shared:
            raise LiteLVLMError(
                f"got one flat list of {len(texts)} text(s) for {batch_size} images; pass one list of texts per "
                "image, e.g. [['a'], ['b']] (or shared_texts=True to score every image against the same texts)."
            )
        return [list(texts)] * batch_size
    if not all(nested):
        raise LiteLVLMError(
            f"texts {shown(list(texts))} mixes strings and lists; pass one list of texts per image, e.g. "
            "[['a'], ['b']], or a flat list of strings for one image."
        )
    groups = [list(group) for group in texts]
    if len(groups) != batch_size:
        raise LiteLVLMError(
            f"got texts for {len(groups)} images but {batch_size} images are set; pass one list per image."
        )
    for group in groups:
        if not group:
            raise LiteLVLMError("an image has no text; pass at least one referring expression per image.")
    return groups


def _hub_dir(name: str) -> str | None:
    """The local snapshot of a hub checkpoint, for its preprocessor_config.json (None if unavailable)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, allow_patterns=["preprocessor_config.json"], local_files_only=True)
    except Exception:  # noqa: BLE001 - the defaults are right for every OpenAI CLIP
        return None
