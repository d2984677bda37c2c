"""Plain, obviously-correct reference implementations the fast code is tested against.

Written from DESIGN.md section 1/2 with Python loops and transformers' own forward pass (hooks and
`output_hidden_states`, the authors' way), sharing no code with `litelvlm.selection` or `litelvlm.scoring`.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch


def meta_sam_modeling():
    """Meta's `segment_anything.modeling`, imported without the package's `__init__` (which needs torchvision);
    skips the test when segment-anything is not installed."""
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        pytest.skip("segment_anything is not installed")
    if "segment_anything" not in sys.modules:
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec  # so that later find_spec calls keep working
        sys.modules["segment_anything"] = package
    import segment_anything.modeling as modeling

    return modeling


def litelvlm_reference(similarity, context, budget, order="paper", share=1.0):
    """similarity: list of T lists of N floats; context: list of N floats -> list of kept patch indices."""
    num_texts, num_patches = len(similarity), len(context)
    if budget >= num_patches:
        return list(range(num_patches))
    k = int(share * budget) // num_texts
    low = set()
    for row in similarity:
        ranked = sorted(range(num_patches), key=lambda i: (row[i], i))
        low.update(ranked[:k])
    low_sorted = sorted(low)
    by_context = sorted(range(num_patches), key=lambda i: (-context[i], i))
    fill = [i for i in by_context if i not in low][: budget - len(low)]
    if order == "paper":
        return fill + low_sorted
    return sorted(fill + low_sorted)


def clip_reference_scores(model, pixel_values, text_ids, text_mask, select_layer=-2):
    """The authors' computation with forward hooks on the last layer's q/k/v and output_hidden_states.

    Returns (hidden [B, 1+N, D], context [B, N], similarity [B, T, N]) for one shared list of texts.
    """
    captured = {}
    last = model.vision_model.encoder.layers[-1].self_attn
    handles = [
        getattr(last, name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
        for name in ("q_proj", "k_proj", "v_proj")
    ]
    try:
        with torch.no_grad():
            out = model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    hidden = out.hidden_states[select_layer]
    q = captured["q_proj"][:, 0].float()
    k = captured["k_proj"][:, 1:].float()
    v = captured["v_proj"][:, 1:].float()
    batch, num_patches, width = k.shape
    context = torch.zeros(batch, num_patches)
    for b in range(batch):
        logits = torch.tensor(
            [
                float(torch.dot(q[b], k[b, i]) / (q[b].norm() * k[b, i].norm())) / math.sqrt(width)
                for i in range(num_patches)
            ]
        )
        weights = torch.softmax(logits, dim=0)
        for i in range(num_patches):
            context[b, i] = (weights[i] * v[b, i]).norm()
    with torch.no_grad():
        patches = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:])).float()
        pooled = model.text_model(input_ids=text_ids, attention_mask=text_mask).pooler_output
        text = model.text_projection(pooled).float()
    similarity = torch.einsum("tp,bnp->btn", text, patches)
    return hidden, context, similarity


def divprune_reference(features, budget):
    """DivPrune's published loop (recomputing min distances each step) on features [N, D]."""
    unit = features.float() / features.float().norm(dim=-1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    chosen = []
    for step in range(budget):
        if step == 0:
            scores = distance.topk(2, dim=0, largest=False).values[1, :]
        else:
            scores = distance[chosen].min(dim=0).values
            scores[chosen] = float("-inf")
        chosen.append(int(scores.argmax()))
    return sorted(chosen)


def visionzip_reference(features, keys, cls_attention, dominant, contextual):
    """VisionZip for one image with explicit loops: features [N, D], keys [N, Dh], cls_attention [N]."""
    num_patches = features.shape[0]
    top = sorted(range(num_patches), key=lambda i: (-float(cls_attention[i]), i))[:dominant]
    dominant_idx = sorted(top)
    rest = [i for i in range(num_patches) if i not in set(top)]
    out_idx, out_feat = list(dominant_idx), [features[i] for i in dominant_idx]
    if contextual:
        step = max(1, len(rest) // contextual)
        targets = [rest[j] for j in range(0, len(rest), step)][:contextual]
        others = [i for i in rest if i not in set(targets)]
        unit = keys.float() / keys.float().norm(dim=-1, keepdim=True)
        groups = {t: [] for t in targets}
        for i in others:
            sims = [float(unit[i] @ unit[t]) for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
        for t in targets:
            members = groups[t]
            merged = sum(features[i] for i in members) / max(1, len(members)) if members else 0
            out_idx.append(t)
            out_feat.append(features[t] + merged)
    return out_idx, torch.stack(out_feat)


def glamm_reference_logits(predictor, image, expressions, question_templates, answer_templates):
    """GLaMM's unpruned path as its code does it (groundingLMM's model/GLaMM.py), for one image and one
    conversation: CLIP hidden_states[-2] patches -> projector -> splice all 576 -> LlamaModel -> the
    constant-offset [SEG] mask of GLaMM ([575 x False] + (ids[1:] == SEG) + [False]) -> text_hidden_fcs -> SAM.
    Returns mask logits [n, H, W]."""
    from litelvlm.hosts.conversation import build_turns, render_conversation

    turns = build_turns(expressions, question_templates, answer_templates)
    ids = predictor.tokenizer.encode_with_image(render_conversation(turns, predictor.host.image_prefix))
    return _constant_offset_logits(predictor, image, ids, offset=575)


def lisa_reference_logits(predictor, image, expression):
    """LISA's unpruned evaluation as its code does it, for one image and one sentence: CLIP (224 px)
    hidden_states[-2] patches -> linear projector -> splice all 256 -> LlamaModel -> LISA's constant-offset [SEG]
    mask ([255 x False] + (ids[1:] == SEG) + [False]) -> text_hidden_fcs -> SAM. The prompt is written out
    literally, with the "\\n " of LISA's validation set. Returns mask logits [1, H, W]."""
    from litelvlm.hosts.conversation import SYSTEM

    prompt = (
        f"{SYSTEM} USER: <im_start><image><im_end>\n What is {expression.strip().lower()} in this image? "
        "Please output segmentation mask. ASSISTANT: [SEG].</s>"
    )
    return _constant_offset_logits(
        predictor, image, predictor.tokenizer.encode_with_image(prompt), offset=255
    )


def _constant_offset_logits(predictor, image, ids, offset):
    """The hosts' own unpruned forward: every patch spliced at the image token, the [SEG] rows picked by their
    constant `offset` (number of visual tokens - 1) after a one-token shift, then text_hidden_fcs and SAM."""
    from litelvlm.hosts.sam import postprocess_masks, sam_preprocess

    model, tokenizer, clip = predictor.model, predictor.tokenizer, predictor.scorer.model
    with torch.no_grad():
        pixels = predictor.scorer.preprocess([image]).to(clip.dtype)
        hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        visual = model.projector(hidden[0, 1:].to(model.dtype))
        at = ids.index(-200)
        embed = model.llm.model.embed_tokens
        embeds = torch.cat([embed(torch.tensor(ids[:at])), visual, embed(torch.tensor(ids[at + 1 :]))])
        states = model.llm.model(inputs_embeds=embeds[None]).last_hidden_state[0]
        seg_mask = [False] * offset + [token == tokenizer.seg_id for token in ids[1:]] + [False]
        prompts = model.text_hidden_fcs(states[torch.tensor(seg_mask)])
        sam_pixels, resized, original = sam_preprocess(image)
        embedding = model.sam.embed_image(sam_pixels[None])
        return postprocess_masks(model.sam.decode(embedding, prompts), resized, original)


# Methods whose tokens are all made from a coarser grid: two cells may stand for the same patch.
MADE_TOKENS = {"downsample", "pool"}


def pooled_grid_encoder(features, grid):
    """A stand-in for a second vision pass at a coarser grid: the features average-pooled to it."""
    rows, cols = grid
    image = features.transpose(1, 2).reshape(features.shape[0], features.shape[2], rows, cols)
    return lambda coarse: torch.nn.functional.adaptive_avg_pool2d(image, coarse).flatten(2).transpose(1, 2)
