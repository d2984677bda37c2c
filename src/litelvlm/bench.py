"""Stage-wise latency, memory and FLOPs of a grounding host (GLaMM, LISA) with token pruning, across methods and
budgets.

Timings: median of `runs` after `warmup` runs, configurations interleaved round robin; each run is one image
(texts not cached) through the whole pipeline (CLIP vision
pass, SAM image encoder, text tower, selection, projector, LLM prefill, SAM decoder, post-processing), CUDA
synchronised per stage. Memory: one more run under `litelvlm.memory.measure_memory`. FLOPs: `litelvlm.flops`.
Scaled runs (fewer LLM / SAM layers, every width kept) report measured times and, separately, an
extrapolation to full depth by each stage's FLOP ratio.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import replace

import torch
from PIL import Image
from tqdm import tqdm

from .flops import PipelineDims, pipeline_stages
from .hosts.sam import SAM_VIT_H
from .memory import ModuleMemoryProbe, measure_memory
from .prompts import clip_texts
from .selection import get_method

STAGES = ("clip_vision", "sam_encoder", "clip_text", "selection", "projector", "llm", "seg_projection",
          "sam_decoder", "postprocess")  # fmt: skip


def predictor_dims(predictor) -> PipelineDims:
    """The dimensions of the predictor's actual model (full size, or scaled / tiny)."""
    llm = predictor.model.llm.config
    sam = predictor.model.sam.config.vision_config
    clip = predictor.scorer.vision.config
    text = predictor.scorer.model.config.text_config
    linears = [m for m in predictor.model.projector.modules() if isinstance(m, torch.nn.Linear)]
    return PipelineDims(
        clip_width=clip.hidden_size, clip_mlp=clip.intermediate_size, clip_layers=clip.num_hidden_layers,
        clip_patches=predictor.scorer.num_patches, clip_patch_size=clip.patch_size,
        text_width=text.hidden_size, text_mlp=text.intermediate_size, text_layers=text.num_hidden_layers,
        projection=predictor.scorer.model.config.projection_dim,
        llm_width=llm.hidden_size, llm_mlp=llm.intermediate_size, llm_layers=llm.num_hidden_layers,
        projector_macs=sum(m.in_features * m.out_features for m in linears),
        sam_width=sam.hidden_size, sam_mlp=sam.mlp_dim, sam_layers=sam.num_hidden_layers,
        sam_global_layers=len(sam.global_attn_indexes), sam_window=sam.window_size,
        decoder_mlp=predictor.model.sam.config.mask_decoder_config.mlp_dim,
    )  # fmt: skip


def run_once(predictor, image, expressions, method, budget, options) -> tuple[dict, float, object]:
    """One image through the pipeline: (seconds per stage, wall-clock seconds, prediction)."""
    predictor.scorer.clear_text_cache()  # a new image usually comes with new texts: count the text tower
    start = time.perf_counter()
    predictor.set_image(image)
    prediction = predictor.predict(expressions, budget=budget, method=method, **options)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    wall = time.perf_counter() - start
    stages = {**predictor.image_timings, **prediction.timings}
    return stages, wall, prediction


def flops_of(
    predictor, dims: PipelineDims, method: str, expressions: list[str], prediction
) -> dict[str, float]:
    text_tokens = len(predictor.conversation_ids(expressions)) - 1
    uses_text = "similarity" in get_method(method).needs
    questions = clip_texts(expressions, templates=[predictor.host.default_question] * len(expressions))
    clip_tokens = max(len(ids) for ids in predictor.scorer.tokenizer(questions)["input_ids"])
    return pipeline_stages(
        dims,
        texts=len(expressions) if uses_text else 0,
        text_tokens=text_tokens,
        clip_text_tokens=clip_tokens,
        visual_per_layer=prediction.tokens_per_layer,
        segs=len(expressions),
    )


def benchmark(
    predictor,
    image: Image.Image,
    expressions: list[str],
    methods: list[str],
    budgets: list[int],
    *,
    runs: int = 3,
    warmup: int = 1,
    method_options: dict | None = None,
    progress: bool = True,
) -> list[dict]:
    """One row per (method, budget): median stage times, wall total, memory, FLOPs, speed-ups vs full."""
    dims = predictor_dims(predictor)
    full_llm_layers = predictor.host.full_size_llama()["num_hidden_layers"]
    scaled = dims.llm_layers != full_llm_layers or dims.sam_layers != SAM_VIT_H.num_hidden_layers
    full_dims = replace(dims, llm_layers=full_llm_layers, sam_layers=SAM_VIT_H.num_hidden_layers,
                        sam_global_layers=len(SAM_VIT_H.global_attn_indexes))  # fmt: skip
    rows = []
    combos = [(method, budget) for method in methods for budget in budgets]
    option_of = {method: (method_options or {}).get(method, {}) for method in methods}
    bar = tqdm(total=len(combos) * (warmup + runs), desc="bench", unit="run", disable=not progress)
    for method, budget in combos:
        for _ in range(warmup):
            run_once(predictor, image, expressions, method, budget, option_of[method])
            bar.update()
    samples = {combo: [] for combo in combos}
    for _ in range(runs):  # round robin, so slow drifts of the machine hit every configuration alike
        for method, budget in combos:
            samples[(method, budget)].append(
                run_once(predictor, image, expressions, method, budget, option_of[method])
            )
            bar.update()
    bar.close()
    for method, budget in combos:
        options = option_of[method]
        with measure_memory(predictor.device) as memory:
            _, _, prediction = run_once(predictor, image, expressions, method, budget, options)
        with (
            measure_memory(predictor.device) as predict_memory,  # image work already cached
            ModuleMemoryProbe(predictor.model.llm.model, predictor.device) as llm_memory,
        ):
            predictor.predict(expressions, budget=budget, method=method, **options)
        measured = samples[(method, budget)]
        stages = {name: statistics.median(s[0].get(name, 0.0) for s in measured) for name in STAGES}
        flops = flops_of(predictor, dims, method, expressions, prediction)
        row = {
            "method": method,
            "budget": budget,
            "num_visual_tokens": prediction.num_visual_tokens,
            "average_visual_tokens": prediction.average_visual_tokens,
            "stages": stages,
            "total_s": statistics.median(s[1] for s in measured),
            "peak_mem_bytes": memory.peak_bytes,
            "activation_mem_bytes": memory.activation_bytes,
            "predict_activation_mem_bytes": predict_memory.activation_bytes,
            "llm_activation_mem_bytes": llm_memory.activation_bytes,
            "flops": flops,
            "total_flops": sum(flops.values()),
        }
        if scaled:  # measured per-layer costs, and each stage's time scaled by its FLOP ratio to full depth
            row["llm_seconds_per_layer"] = stages["llm"] / dims.llm_layers
            row["sam_seconds_per_block"] = stages["sam_encoder"] / dims.sam_layers
            full_flops = flops_of(predictor, full_dims, method, expressions, prediction)
            full_flops["llm"] = full_flops["llm"] * full_llm_layers / dims.llm_layers
            row["extrapolated_stages"] = {
                name: stages[name] * (full_flops.get(name, 0.0) / flops[name] if flops.get(name) else 1.0)
                for name in STAGES
            }
            row["extrapolated_total_s"] = (
                row["total_s"] - sum(stages.values()) + sum(row["extrapolated_stages"].values())
            )
        rows.append(row)
    add_speedups(rows, predictor.scorer.num_patches)
    return rows


def add_speedups(rows: list[dict], num_patches: int) -> None:
    """speedup_vs_full (measured) and ideal_speedup (FLOPs) against the unpruned row."""
    full = next((r for r in rows if r["average_visual_tokens"] >= num_patches), None)
    for row in rows:
        if full is None:
            row["speedup_vs_full"] = row["ideal_speedup"] = None
            continue
        row["speedup_vs_full"] = full["total_s"] / row["total_s"]
        row["ideal_speedup"] = full["total_flops"] / row["total_flops"]
        row["realized_over_ideal"] = row["speedup_vs_full"] / row["ideal_speedup"]
        row["activation_mem_reduction"] = (
            full["activation_mem_bytes"] / row["activation_mem_bytes"]
            if row["activation_mem_bytes"]
            else None
        )
        pruned_total = row["total_s"]
        row["selection_overhead"] = (row["stages"]["clip_text"] + row["stages"]["selection"]) / pruned_total
        if "extrapolated_total_s" in row:
            row["extrapolated_speedup_vs_full"] = full["extrapolated_total_s"] / row["extrapolated_total_s"]


def throughput(
    predictor, image: Image.Image, expressions: list[str], method: str, budget: int, options=None
) -> dict:
    """Expressions/s for one image with several expressions, one conversation each (LISA style): recomputing
    everything per expression (the authors' pipeline shape) vs caching the image's work (expressions one after
    another, as one batch, and as one batch whose shared prefix runs once), in one run; also the LLM's seconds
    per expression batched with and without the shared prefix."""
    options = dict(options or {})
    run_once(predictor, image, expressions[:1], method, budget, options)  # warm-up
    start = time.perf_counter()
    for expression in expressions:
        run_once(predictor, image, [expression], method, budget, options)
    recompute = time.perf_counter() - start
    start = time.perf_counter()
    predictor.set_image(image)
    for expression in expressions:
        predictor.predict([expression], budget=budget, method=method, **options)
    sequential = time.perf_counter() - start
    timed = {}
    for shared in (False, True):
        start = time.perf_counter()
        predictor.set_image(image)
        prediction = predictor.predict(
            expressions,
            budget=budget,
            method=method,
            turns_per_conversation=1,
            share_prefix=shared,
            **options,
        )
        timed[shared] = (time.perf_counter() - start, prediction.timings["llm"])
    (batched, llm_batched), (batched_shared, llm_shared) = timed[False], timed[True]
    count = len(expressions)
    return {
        "method": method,
        "budget": budget,
        "expressions": count,
        "recompute_expr_per_s": count / recompute,
        "cached_sequential_expr_per_s": count / sequential,
        "cached_batched_expr_per_s": count / batched,
        "cached_batched_shared_expr_per_s": count / batched_shared,
        "cached_over_recompute": recompute / min(sequential, batched),
        "shared_over_recompute": recompute / batched_shared,
        "shared_prefix_tokens": predictor.last_shared_prefix,
        "llm_s_per_expr_batched": llm_batched / count,
        "llm_s_per_expr_shared": llm_shared / count,
    }


def machine() -> dict:
    import transformers

    return {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        f"# {_host(config)} benchmark ({'SCALED: ' + config['scale'] if config['scaled'] else 'full size'})",
        "",
        f"{config['device']}, {config['dtype']}, {config['machine']['threads']} threads, torch "
        f"{config['machine']['torch']}, transformers {config['machine']['transformers']}; median of "
        f"{config['runs']} runs after {config['warmup']} warm-up; {config['date']}.",
        f"Command: `{config['command']}`",
        "",
        "| method | budget | visual tokens/layer | total s | speed-up | FLOP-ideal | realized/ideal | peak mem GiB "
        "| activation MiB (image) | activation MiB (after set_image) | activation MiB (LLM) | selection overhead "
        "| TFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['average_visual_tokens']:.0f} | {r['total_s']:.2f} | "
            f"{_x(r.get('speedup_vs_full'))} | {_x(r.get('ideal_speedup'))} | {_f(r.get('realized_over_ideal'))} | "
            f"{r['peak_mem_bytes'] / 2**30:.2f} | {r['activation_mem_bytes'] / 2**20:.0f} | "
            f"{r['predict_activation_mem_bytes'] / 2**20:.0f} | {r['llm_activation_mem_bytes'] / 2**20:.0f} | "
            f"{_percent(r.get('selection_overhead'))} | "
            f"{r['total_flops'] / 1e12:.2f} |"
        )
    lines += ["", "Seconds per stage (median):", "", "| method | budget | " + " | ".join(STAGES) + " |",
              "|---|---|" + "---|" * len(STAGES)]  # fmt: skip
    for r in report["runs"]:
        lines.append(
            f"| {r['method']} | {r['budget']} | " + " | ".join(f"{r['stages'][s]:.3f}" for s in STAGES) + " |"
        )
    if config["scaled"]:
        lines += ["", "Measured per-layer cost, and the extrapolation to full depth (each stage scaled by its FLOP "
                  "ratio; not measured):", "",
                  "| method | budget | LLM s/layer | SAM s/block (mixed windowed/global) | extrapolated total s "
                  "| extrapolated speed-up |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["runs"]:
            lines.append(f"| {r['method']} | {r['budget']} | {r['llm_seconds_per_layer']:.3f} | "
                         f"{r['sam_seconds_per_block']:.3f} | {r['extrapolated_total_s']:.2f} | "
                         f"{_x(r.get('extrapolated_speedup_vs_full'))} |")  # fmt: skip
    if report.get("throughput"):
        t = report["throughput"]
        lines += ["", f"Multi-expression throughput ({t['expressions']} expressions on one image, one conversation "
                  f"each, {t['method']} @ {t['budget']}): recompute everything {t['recompute_expr_per_s']:.3f} expr/s; "
                  f"cached image work {t['cached_sequential_expr_per_s']:.3f} expr/s one by one, "
                  f"{t['cached_batched_expr_per_s']:.3f} expr/s batched: {t['cached_over_recompute']:.2f}x."]  # fmt: skip
        if "cached_batched_shared_expr_per_s" in t:
            lines[-1] += (f" Batched with the shared prefix ({t['shared_prefix_tokens']} tokens run once): "
                          f"{t['cached_batched_shared_expr_per_s']:.3f} expr/s, {t['shared_over_recompute']:.2f}x; "
                          f"LLM {t['llm_s_per_expr_batched']:.3f} -> {t['llm_s_per_expr_shared']:.3f} s per "
                          "expression.")  # fmt: skip
    lines += ["", f"Memory: {config['memory_method']}. Activation = peak minus what was resident before: 'image' "
              "for the whole pipeline of one image (SAM ViT-H's encoder dominates it), 'after set_image' for "
              "predict() with the image work cached (text tower, selection, LLM, SAM decoder), 'LLM' inside the "
              "LLM's forward only. Selection overhead: text tower + scoring + selection, share of the total."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict) -> bytes:
    """PNG: latency (measured, and the FLOP-ideal) and activation memory against the budget, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import figure_png

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    runs = report["runs"]
    full = next((r for r in runs if r.get("speedup_vs_full") == 1.0), None)
    for number, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        colour = f"C{number}"  # one colour per method in both panels
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["budget"])
        budgets = [r["budget"] for r in mine]
        left.plot(
            budgets, [r["total_s"] for r in mine], marker="o", color=colour, label=f"{method} (measured)"
        )
        if full is not None:
            left.plot(budgets, [full["total_s"] / r["ideal_speedup"] for r in mine], ls="--", alpha=0.6,
                      color=colour, label=f"{method} (FLOP-ideal)")  # fmt: skip
        right.plot(
            budgets,
            [r["predict_activation_mem_bytes"] / 2**20 for r in mine],
            marker="o",
            color=colour,
            label=method,
        )
    budgets = sorted({r["budget"] for r in runs})
    for axis, label in ((left, "seconds per image"), (right, "activation memory after set_image (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(budgets, [str(b) for b in budgets])
        axis.set_xlabel("visual tokens (budget)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    config = report["config"]
    figure.suptitle(f"{_host(config)} {'scaled (' + config['scale'] + ')' if config['scaled'] else 'full size'}, "
                    f"{config['device']}, {config['dtype']}")  # fmt: skip
    figure.tight_layout()
    return figure_png(figure)


def _host(config: dict) -> str:
    return config.get("host", "GLaMM")  # reports written before LISA existed name no host


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _f(value) -> str:
    return "—" if value is None else f"{value:.2f}"
