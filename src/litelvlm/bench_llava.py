"""Speed, memory and FLOPs of the LLaVA host (`LlavaPredictor` on transformers' LlavaForConditionalGeneration)
with token pruning, across methods and budgets.

Each run is one image and its question(s) through `set_image` and `answer(..., max_new_tokens=N)` with the
end-of-sequence token suppressed, so every run generates exactly N tokens (text embeddings not cached). Median of
`runs` after `warmup` runs, configurations interleaved round robin. What is timed:

- `prefill`: the language model's decoder forward over the prompt (visual + text tokens), from hooks around its
  first call in the run: no LM head, no generated token. In-LLM methods (FastV, ...) score and drop inside it.
- `decode`: the rest of answer()'s `llm` stage: the LM head on each of the N tokens and the N - 1 one-token steps.
- `total`: wall clock of set_image + answer: the CLIP pass for scores, LLaVA's own tower, text tower and
  selection, projector, prefill, decode.

FLOP ideals (`litelvlm.flops.llava_stages`): FLOPs(full)/FLOPs(pruned) of the prefill alone, and of the whole run.
Memory: one more run under `litelvlm.memory.measure_memory`, with probes around its `answer` (the image cached).
A run with fewer LLM layers (`llm_layers`, every width kept) is labelled scaled; its full-depth extrapolation is
shown apart. Each row also has the machine's 1-minute load average after its timed runs (other processes on the
same cores show there).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .bench import _f, _x
from .flops import PipelineDims, llava_stages, lm_head
from .hosts.llava import LlavaPredictor, language_parts, vision_parts
from .memory import ModuleMemoryProbe, measure_memory
from .selection import get_method

STAGES = ("clip_vision", "llava_vision", "selection", "projector", "prefill", "decode")
DEFAULT_QUESTION = "What is the man in the red shirt on the left holding?"
DEFAULT_NEW_TOKENS = 8
FULL_SIZE_NAME = "LLaVA-1.5-7B architecture (llava-hf/llava-1.5-7b-hf), random weights"

# llava-hf/llava-1.5-7b-hf's config.json: Vicuna-7B-v1.5 (LLaMA-2 7B) with the vocabulary padded from 32,002
# (32,000 pieces, "<image>", "<pad>") to 32,064 rows; CLIP ViT-L/14-336's vision tower.
LLAVA_15_7B_TEXT = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_act="silu",
    vocab_size=32064,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
LLAVA_15_IMAGE_TOKEN_ID, LLAVA_15_PAD_TOKEN_ID = 32000, 32001


def llava_15_7b_config(llm_layers: int | None = None):
    """The `LlavaConfig` of llava-hf/llava-1.5-7b-hf, optionally with fewer LLM layers (every width kept)."""
    from transformers import LlavaConfig

    from .synthetic.clip import full_size_clip_config

    vision = full_size_clip_config(336).vision_config  # ViT-L/14-336: width 1024, 24 layers, quick_gelu
    text = dict(LLAVA_15_7B_TEXT)
    if llm_layers is not None:
        text["num_hidden_layers"] = llm_layers
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text,
        image_token_index=LLAVA_15_IMAGE_TOKEN_ID,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=LLAVA_15_PAD_TOKEN_ID,
        tie_word_embeddings=False,
    )


def random_llava_model(config, *, dtype: torch.dtype = torch.bfloat16, device="cpu", seed: int = 0):
    """A LlavaForConditionalGeneration with random weights made directly in `dtype` on `device`, one tensor at a
    time, as GLaMM's random model (`hosts.model.fill_random`): a full-size model never exists in float32."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from .hosts.model import fill_random

    with init_empty_weights(include_buffers=False):
        model = LlavaForConditionalGeneration(config)
    return fill_random(model, dtype=dtype, device=device, seed=seed)


def llava_15_processor(vocab_size: int = LLAVA_15_IMAGE_TOKEN_ID, seed: int = 0):
    """A LlavaProcessor as llava-1.5-7b-hf's: CLIP preprocessing at 336 px, its chat template, a LLaMA tokenizer
    with "<image>" and "<pad>" right after `vocab_size` pieces (32000 and 32001, as in the real one). The
    SentencePiece model is make_tiny_llava_hf's small one; the pieces up to `vocab_size` are unused fillers."""
    from transformers import AutoTokenizer, LlavaProcessor

    from .testing.llava_hf import IMAGE_TOKEN, LLAVA_1_5_CHAT_TEMPLATE, clip_image_processor, llava_tokenizer

    small, _ = llava_tokenizer(seed)
    with tempfile.TemporaryDirectory(prefix="litelvlm-llava-tokenizer-") as directory:  # read into memory
        small.save_pretrained(directory)
        path = Path(directory) / "tokenizer.json"
        tokenizer_json = json.loads(path.read_text())
        vocab = tokenizer_json["model"]["vocab"]
        pieces = len(vocab)
        vocab.update({f"<unused{index}>": index for index in range(pieces, vocab_size)})
        added = [token for token in tokenizer_json["added_tokens"] if token["id"] >= pieces]
        for offset, token in enumerate(added):
            token["id"] = vocab_size + offset
        path.write_text(json.dumps(tokenizer_json))
        tokenizer = AutoTokenizer.from_pretrained(directory)
    return LlavaProcessor(
        image_processor=clip_image_processor(336),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_1_5_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def random_llava_predictor(
    *,
    llm_layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LlavaPredictor:
    """A LlavaPredictor at llava-1.5-7b-hf's architecture with random weights, and a random CLIP ViT-L/14-336
    (vision and text towers, the real CLIP tokenizer) for the scores whose vision weights LLaVA's tower holds, as
    LLaVA-1.5's tower is that CLIP's."""
    from .synthetic.clip import random_clip
    from .testing.llava_hf import vision_tower

    model = random_llava_model(llava_15_7b_config(llm_layers), dtype=dtype, device=device, seed=seed)
    scorer = random_clip(336, dtype, device, seed)
    vision_tower(model).load_state_dict(scorer.model.vision_model.state_dict())
    return LlavaPredictor(model, llava_15_processor(seed=seed), scorer)


def llava_dims(predictor: LlavaPredictor) -> PipelineDims:
    """The dimensions of the predictor's model (LLaVA's tower stands for the scores' CLIP too: LLaVA-1.5's tower
    is that CLIP's vision tower)."""
    config = predictor.model.config
    vision, llm = config.vision_config, config.text_config
    text = predictor.scorer.model.config.text_config
    projector = vision_parts(predictor.model).projector
    linears = [m for m in projector.modules() if isinstance(m, torch.nn.Linear)]
    return PipelineDims(
        clip_width=vision.hidden_size, clip_mlp=vision.intermediate_size, clip_layers=vision.num_hidden_layers,
        clip_select_layer=config.vision_feature_layer, clip_patches=predictor.num_patches,
        clip_patch_size=vision.patch_size, text_width=text.hidden_size, text_mlp=text.intermediate_size,
        text_layers=text.num_hidden_layers, projection=predictor.scorer.model.config.projection_dim,
        llm_width=llm.hidden_size, llm_mlp=llm.intermediate_size, llm_layers=llm.num_hidden_layers,
        llm_vocab=language_parts(predictor.model).lm_head.out_features,
        projector_macs=sum(m.in_features * m.out_features for m in linears),
    )  # fmt: skip


@contextmanager
def decoder_calls(predictor: LlavaPredictor):
    """Seconds of every call of the language model's decoder while inside (the first is the prefill)."""
    decoder = predictor.language.model
    cuda = predictor.device.type == "cuda"
    seconds: list[float] = []
    started: list[float] = []

    def before(*_):
        if cuda:
            torch.cuda.synchronize(predictor.device)
        started.append(time.perf_counter())

    def after(*_):
        if cuda:
            torch.cuda.synchronize(predictor.device)
        seconds.append(time.perf_counter() - started.pop())

    hooks = [decoder.register_forward_pre_hook(before), decoder.register_forward_hook(after)]
    try:
        yield seconds
    finally:
        for hook in hooks:
            hook.remove()


def without_eos(eos_id: int):
    """Greedy choice that never picks end-of-sequence, so every run generates the same number of tokens."""

    def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
        eos = torch.tensor([eos_id], device=logits.device)
        return logits.index_fill(1, eos, float("-inf")).argmax(dim=-1)

    return choose


def run_once(
    predictor, image, questions, method, budget, options, new_tokens, around_answer=nullcontext
) -> tuple[dict, float, object]:
    """One image and its questions: (seconds per stage, wall-clock seconds, AnswerBatch). `around_answer()`: a
    context entered around answer() alone (memory probes)."""
    predictor.scorer.clear_text_cache()  # a new image usually comes with new questions: count the text tower
    choose = without_eos(predictor.tokenizer.eos_token_id)
    with decoder_calls(predictor) as calls:
        start = time.perf_counter()
        predictor.set_image(image)
        with around_answer():
            batch = predictor.answer(questions, method=method, budget=budget, max_new_tokens=new_tokens,
                                     decoding=choose, **options)  # fmt: skip
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        wall = time.perf_counter() - start
    stages = {**predictor.image_timings, **batch.timings}
    stages["prefill"] = calls[0]
    stages["decode"] = stages.pop("llm") - calls[0]
    return stages, wall, batch


def flops_of(predictor, dims: PipelineDims, method: str, budget: int, questions, batch, new_tokens) -> dict:
    """FLOPs per stage of one run: the image's work once, every question's conversation (padded to the longest,
    as the batch runs) through scoring, projector, prefill and decode."""
    entry = get_method(method)
    scored = entry.stage != "llm" and budget < predictor.num_patches and "similarity" in entry.needs
    count = len(questions)
    one = llava_stages(
        dims,
        texts=1 if scored else 0,
        text_tokens=max(len(predictor.prompt_ids(question)) - 1 for question in questions),
        clip_text_tokens=max(len(ids) for ids in predictor.scorer.tokenizer(list(questions))["input_ids"]),
        visual_per_layer=batch.tokens_per_layer,
        new_tokens=new_tokens,
    )
    once_per_image = ("clip_vision", "llava_vision")
    return {name: value * (1 if name in once_per_image else count) for name, value in one.items()}


def benchmark_llava(
    predictor: LlavaPredictor,
    image: Image.Image,
    questions: list[str],
    methods: list[str],
    budgets: list[int],
    *,
    runs: int = 3,
    warmup: int = 1,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    method_options: dict | None = None,
    full_llm_layers: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """One row per (method, budget): median stage times, prefill and total seconds, memory, FLOPs, speed-ups vs
    the full-budget run. `full_llm_layers`: the depth a scaled model stands for (its rows get an extrapolation)."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    dims = llava_dims(predictor)
    scaled = full_llm_layers is not None and full_llm_layers != dims.llm_layers
    combos = [(method, budget) for method in methods for budget in budgets]
    option_of = {method: (method_options or {}).get(method, {}) for method in methods}

    def once(method, budget, around_answer=nullcontext):
        options = option_of[method]
        return run_once(predictor, image, questions, method, budget, options, new_tokens, around_answer)

    answer_memory = {}

    @contextmanager
    def probe_answer():  # answer() with the image work cached, and inside the decoder's forward calls
        with (
            measure_memory(predictor.device) as answer,
            ModuleMemoryProbe(predictor.language.model, predictor.device) as llm,
        ):
            yield
        answer_memory.update(answer=answer.activation_bytes, llm=llm.activation_bytes)

    bar = tqdm(total=len(combos) * (warmup + runs), desc="bench", unit="run", disable=not progress)
    for combo in combos:
        for _ in range(warmup):
            once(*combo)
            bar.update()
    samples = {combo: [] for combo in combos}
    load = {combo: [] for combo in combos}
    for _ in range(runs):  # round robin, so slow drifts of the machine hit every configuration alike
        for combo in combos:
            samples[combo].append(once(*combo))
            load[combo].append(_load_average())
            bar.update()
    bar.close()
    rows = []
    for method, budget in combos:
        with measure_memory(predictor.device) as memory:  # one more run, untimed
            _, _, batch = once(method, budget, probe_answer)
        measured = samples[(method, budget)]
        stages = {name: statistics.median(s[0].get(name, 0.0) for s in measured) for name in STAGES}
        flops = flops_of(predictor, dims, method, budget, questions, batch, new_tokens)
        row = {
            "method": method,
            "budget": budget,
            "num_visual_tokens": batch.num_visual_tokens,
            "average_visual_tokens": sum(batch.tokens_per_layer) / len(batch.tokens_per_layer),
            "tokens_per_layer": batch.tokens_per_layer,
            "stages": stages,
            "prefill_s": stages["prefill"],
            "decode_s_per_step": stages["decode"] / max(1, new_tokens - 1),
            "total_s": statistics.median(s[1] for s in measured),
            "load_average": None
            if None in load[(method, budget)]
            else statistics.median(load[(method, budget)]),
            "peak_mem_bytes": memory.peak_bytes,
            "activation_mem_bytes": memory.activation_bytes,
            "answer_activation_mem_bytes": answer_memory["answer"],
            "llm_activation_mem_bytes": answer_memory["llm"],
            "flops": flops,
            "prefill_flops": flops["prefill"],
            "total_flops": sum(flops.values()),
        }
        if scaled:  # measured per-layer cost; each LLM stage scaled by its FLOP ratio to full depth
            ratio = full_llm_layers / dims.llm_layers
            row["llm_seconds_per_layer"] = stages["prefill"] / dims.llm_layers
            head = lm_head(dims, new_tokens) * len(questions)
            full_flops = {
                "prefill": flops["prefill"] * ratio,
                "decode": (flops["decode"] - head) * ratio + head,
            }
            row["extrapolated_stages"] = {
                name: stages[name] * (full_flops[name] / flops[name] if flops.get(name) else 1.0)
                if name in full_flops
                else stages[name]
                for name in STAGES
            }
            row["extrapolated_prefill_s"] = row["extrapolated_stages"]["prefill"]
            row["extrapolated_total_s"] = (
                row["total_s"] - sum(stages.values()) + sum(row["extrapolated_stages"].values())
            )
        rows.append(row)
    add_speedups(rows, predictor.num_patches)
    return rows


def add_speedups(rows: list[dict], num_patches: int) -> None:
    """Measured and FLOP-ideal speed-ups of the prefill and of the whole run against the first unpruned row."""
    full = next((r for r in rows if r["average_visual_tokens"] >= num_patches), None)
    for row in rows:
        for part in ("prefill", "total"):
            measured, ideal = f"{part}_speedup_vs_full", f"{part}_ideal_speedup"
            if full is None:
                row[measured] = row[ideal] = row[f"{part}_realized_over_ideal"] = None
                continue
            row[measured] = full[f"{part}_s"] / row[f"{part}_s"]
            row[ideal] = full[f"{part}_flops"] / row[f"{part}_flops"]
            row[f"{part}_realized_over_ideal"] = row[measured] / row[ideal]
            if f"extrapolated_{part}_s" in row:
                row[f"extrapolated_{part}_speedup_vs_full"] = (
                    full[f"extrapolated_{part}_s"] / row[f"extrapolated_{part}_s"]
                )
        row["llm_activation_mem_reduction"] = (
            full["llm_activation_mem_bytes"] / row["llm_activation_mem_bytes"]
            if full is not None and row["llm_activation_mem_bytes"]
            else None
        )


def markdown(report: dict) -> str:
    config = report["config"]
    new_tokens = config["max_new_tokens"]
    lines = [
        f"# LLaVA benchmark ({_kind(config)})",
        "",
        f"{config['model']}; {config['device']}, {config['dtype']}, {config['machine']['threads']} threads, torch "
        f"{config['machine']['torch']}, transformers {config['machine']['transformers']}; {_runs(config)}; "
        f"{config['date']}.",
        f"Command: `{config['command']}`",
        "",
        f"{len(config['questions'])} question(s) on one {config['image_size'][0]} x {config['image_size'][1]} "
        f"image ({', '.join(map(str, config['text_tokens']))} prompt text tokens), {new_tokens} generated tokens "
        "each (end-of-sequence suppressed).",
        "",
        f"| method | budget | visual tokens/layer | LLM prefill s | prefill speed-up | prefill FLOP-ideal | "
        f"prefill realized/ideal | total s ({new_tokens} tokens) | speed-up | FLOP-ideal | realized/ideal | "
        "decode s/step | peak mem GiB | activation MiB (answer) | activation MiB (LLM) | prefill TFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['average_visual_tokens']:.0f} | {r['prefill_s']:.2f} | "
            f"{_x(r['prefill_speedup_vs_full'])} | {_x(r['prefill_ideal_speedup'])} | "
            f"{_f(r['prefill_realized_over_ideal'])} | {r['total_s']:.2f} | {_x(r['total_speedup_vs_full'])} | "
            f"{_x(r['total_ideal_speedup'])} | {_f(r['total_realized_over_ideal'])} | "
            f"{r['decode_s_per_step']:.3f} | {r['peak_mem_bytes'] / 2**30:.2f} | "
            f"{r['answer_activation_mem_bytes'] / 2**20:.0f} | {r['llm_activation_mem_bytes'] / 2**20:.0f} | "
            f"{r['prefill_flops'] / 1e12:.2f} |"
        )
    lines += ["", "Seconds per stage (median), and the machine's 1-minute load average after the timed runs (this "
              "process alone keeps it near its thread count; more means other processes shared the cores):", "",
              "| method | budget | " + " | ".join(STAGES) + " | load |", "|---|---|" + "---|" * (len(STAGES) + 1)]  # fmt: skip
    for r in report["runs"]:
        stages = " | ".join(f"{r['stages'][s]:.3f}" for s in STAGES)
        lines.append(f"| {r['method']} | {r['budget']} | {stages} | {_f(r.get('load_average'))} |")
    if config["scaled"]:
        lines += ["", "Measured per-layer cost, and the extrapolation to full depth (prefill and decode scaled by their "
                  "FLOP ratio; not measured):", "",
                  "| method | budget | LLM prefill s/layer | extrapolated prefill s | extrapolated prefill speed-up "
                  "| extrapolated total s | extrapolated speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["runs"]:
            lines.append(f"| {r['method']} | {r['budget']} | {r['llm_seconds_per_layer']:.3f} | "
                         f"{r['extrapolated_prefill_s']:.2f} | {_x(r.get('extrapolated_prefill_speedup_vs_full'))} | "
                         f"{r['extrapolated_total_s']:.2f} | {_x(r.get('extrapolated_total_speedup_vs_full'))} |")  # fmt: skip
    lines += ["", "Timed: *LLM prefill* = the language model's decoder forward over the whole prompt (visual and "
              "text tokens; in-LLM methods score and drop inside it), from hooks around its first call: no LM head, "
              "no generated token. *decode* = the rest of answer()'s LLM stage (LM head on every generated token, the "
              "one-token steps; decode s/step = decode / (N - 1)). *total* = wall clock of set_image + answer (CLIP "
              "pass for the scores, LLaVA's own tower, text tower and selection, projector, prefill, decode). "
              "FLOP-ideal = FLOPs(full)/FLOPs(pruned) "
              "of the same part (`litelvlm.flops.llava_stages`); realized/ideal = speed-up / FLOP-ideal. Speed-ups "
              "are against the first full-budget row.",
              f"Memory: {config['memory_method']}. Activation = peak minus what was resident before: 'answer' for "
              "answer() with the image cached, 'LLM' inside the decoder's forward calls only."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict) -> bytes:
    """PNG: LLM prefill and total seconds (measured, and the FLOP-ideal) against the budget, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import figure_png

    figure, panels = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    runs = report["runs"]
    full = next((r for r in runs if r.get("total_speedup_vs_full") == 1.0), None)
    for number, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        colour = f"C{number}"
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["budget"])
        budgets = [r["budget"] for r in mine]
        for axis, part in zip(panels, ("prefill", "total")):
            axis.plot(budgets, [r[f"{part}_s"] for r in mine], marker="o", color=colour,
                      label=f"{method} (measured)")  # fmt: skip
            if full is not None:
                axis.plot(budgets, [full[f"{part}_s"] / r[f"{part}_ideal_speedup"] for r in mine], ls="--",
                          alpha=0.6, color=colour, label=f"{method} (FLOP-ideal)")  # fmt: skip
    budgets = sorted({r["budget"] for r in runs})
    new_tokens = report["config"]["max_new_tokens"]
    labels = ("LLM prefill seconds", f"seconds per image + question ({new_tokens} tokens)")
    for axis, label in zip(panels, labels):
        axis.set_xscale("log", base=2)
        axis.set_xticks(budgets, [str(b) for b in budgets])
        axis.set_xlabel("visual tokens (budget)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    config = report["config"]
    figure.suptitle(f"LLaVA ({_kind(config)}), {config['device']}, {config['dtype']}")
    figure.tight_layout()
    return figure_png(figure)


def _load_average() -> float | None:
    """The 1-minute load average (None where the system has none, e.g. Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _kind(config: dict) -> str:
    if config["scaled"]:
        return "SCALED: " + config["scale"]
    return "full size, random weights" if config["random_weights"] else "checkpoint"


def _runs(config: dict) -> str:
    if config["runs"] == 1:
        return f"measured once: one timed run per configuration after {config['warmup']} warm-up"
    return f"measured in one invocation: median of {config['runs']} runs after {config['warmup']} warm-up"
