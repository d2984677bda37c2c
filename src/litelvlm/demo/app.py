"""The demo page (Gradio): upload an image, type expressions, pick a method and a budget, see the kept tokens,
the masks, the timings and the speed-up; compare two methods or budgets side by side.

Every handler returns a status line instead of raising: bad input (LiteLVLMError) is shown as its sentence,
anything else as one line naming the error, with the traceback in the server's log only. One model is shared by
every visitor through Gradio's queue with one request at a time on the model.
"""

from __future__ import annotations

import logging
import os

from ..errors import LiteLVLMError
from .engine import DemoEngine, RunResult, check_upload, mask_iou, parse_expressions
from .examples import write_examples

log = logging.getLogger("litelvlm.demo")
TINY_BANNER = "**Random weights: masks are meaningless; the page, the pruning and the timings are real.**"
DEFAULT_BUDGET = 64
QUEUE_SIZE = 64  # waiting requests beyond this are refused with Gradio's "queue full" message
STAGE_LABELS = {
    "clip_vision": "CLIP vision",
    "sam_encoder": "SAM encoder",
    "clip_text": "CLIP text",
    "selection": "selection",
    "projector": "projector",
    "llm": "LLM",
    "seg_projection": "[SEG] projection",
    "sam_decoder": "SAM decoder",
    "postprocess": "post-processing",
    "other": "other",
}


def method_choices() -> list[tuple[str, str]]:
    """Every registered method, before-LLM ones first, labelled with their stage."""
    from ..selection import list_methods

    before, inside = list_methods("vision"), list_methods("llm")
    first = ["litelvlm"] if "litelvlm" in before else []
    ordered = first + [name for name in before if name not in first]
    return [(f"before LLM · {name}", name) for name in ordered] + [
        (f"in LLM · {name}", name) for name in inside
    ]


def describe(result: RunResult, generate: bool) -> str:
    """The run's numbers as Markdown: tokens kept, speed-up, per-stage timings, answers, IoU to full."""
    if result.average_per_layer is None:
        lines = [f"**{result.kept} / {result.total}** visual tokens kept"]
    else:
        lines = [
            f"**{result.kept} / {result.total}** visual tokens enter the LLM, "
            f"**{result.average_per_layer:.1f}** per decoder layer on average (pruned inside the LLM)"
        ]
    if result.speedup is not None:
        lines.append(
            f"per-expression time **{1000 * result.predict_seconds:.0f} ms**; the full-token run of the same "
            f"image and text {1000 * result.full_seconds:.0f} ms: **{result.speedup:.2f}x**"
        )
    lines.append(
        "image work (CLIP vision, SAM encoder): "
        + ("cached, computed once for this image" if result.image_cached else "computed for this image")
    )
    stages = list(result.seconds.items())
    table = [
        "| " + " | ".join(STAGE_LABELS.get(k, k) for k, _ in stages) + " |",
        "|" + "---|" * len(stages),
        "| " + " | ".join(f"{1000 * v:.1f} ms" for _, v in stages) + " |",
    ]
    answers = []
    for number, iou in enumerate(result.iou_to_full):
        shown = "no mask" if iou is None else f"{iou:.3f}"
        answer = f" — answer: {result.answers[number]!r}" if generate else ""
        answers.append(f"- expression {number + 1}: IoU to the full-token mask {shown}{answer}")
    return "\n\n".join(lines) + "\n\n" + "\n".join(table) + "\n\n" + "\n".join(answers)


def _failure(error: Exception) -> str:
    if isinstance(error, LiteLVLMError):
        return f"⚠️ {error}"
    log.exception("demo request failed")
    return f"⚠️ internal error ({type(error).__name__}: {error}); the server keeps running — try other input."


def build_demo(engine: DemoEngine, *, banner: str | None = None, examples_dir: str | None = None):
    """The page as a `gradio.Blocks` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import tempfile

    import gradio as gr

    models = list(engine.predictors)
    first_total = engine.num_patches(models[0])
    choices = method_choices()

    def run(path, text, model, method, budget, generate):
        try:
            image = check_upload(path, engine.max_mb, engine.max_megapixels)
            expressions = parse_expressions(text)
            result = engine.run(model, image, expressions, method, int(budget), generate=bool(generate))
            return result.overlay, result.masks_image, describe(result, bool(generate)), "done"
        except Exception as error:  # noqa: BLE001 - the page shows one line, never a traceback
            return None, None, "", _failure(error)

    def compare(path, text, model, method_a, budget_a, method_b, budget_b):
        try:
            image = check_upload(path, engine.max_mb, engine.max_megapixels)
            expressions = parse_expressions(text)
            a = engine.run(model, image, expressions, method_a, int(budget_a), compare_to_full=False)
            b = engine.run(model, image, expressions, method_b, int(budget_b), compare_to_full=False)
            lines = [
                f"A: **{method_a}**, {a.kept} tokens, {1000 * a.predict_seconds:.0f} ms · "
                f"B: **{method_b}**, {b.kept} tokens, {1000 * b.predict_seconds:.0f} ms",
                "",
            ]
            for number, (mask_a, mask_b) in enumerate(zip(a.masks, b.masks)):
                iou = mask_iou(mask_a, mask_b)
                lines.append(
                    f"- expression {number + 1}: IoU(A, B) = {'no mask' if iou is None else f'{iou:.3f}'}"
                )
            return a.overlay, b.overlay, "\n".join(lines), "done"
        except Exception as error:  # noqa: BLE001
            return None, None, "", _failure(error)

    def budget_range(model):
        """The three budget sliders over the chosen model's patch count."""
        total = engine.num_patches(model)
        value = min(DEFAULT_BUDGET, total)
        return (
            gr.update(maximum=total, value=value, label=f"budget (of {total}; {total} = full)"),
            gr.update(maximum=total, value=value),
            gr.update(maximum=total, value=value),
        )

    example_rows = write_examples(examples_dir or tempfile.mkdtemp(prefix="litelvlm-examples-"))
    with gr.Blocks(title="litelvlm demo") as demo:
        gr.Markdown("# litelvlm — what token pruning keeps, and the mask that comes out")
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image (JPEG or PNG)", type="filepath", elem_id="upload")
                text = gr.Textbox(
                    label="referring expressions (one per line, up to 3)", lines=3, elem_id="expressions"
                )
                model = gr.Dropdown(models, value=models[0], label="model", visible=len(models) > 1)
                method = gr.Dropdown(choices, value="litelvlm", label="method", elem_id="method")
                budget = gr.Slider(
                    1,
                    first_total,
                    value=min(DEFAULT_BUDGET, first_total),
                    step=1,
                    label=f"budget (of {first_total}; {first_total} = full)",
                    elem_id="budget",
                )
                generate = gr.Checkbox(label="let the model write its answer (generation)", value=False)
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                gr.Examples([[str(path), texts] for path, texts in example_rows], inputs=[upload, text])
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                with gr.Tab("result"):
                    with gr.Row():
                        kept_image = gr.Image(label="kept tokens + masks", type="pil", elem_id="overlay")
                        masks_image = gr.Image(label="masks", type="pil", elem_id="masks")
                    info = gr.Markdown("", elem_id="info")
                with gr.Tab("compare"):
                    with gr.Row():
                        method_a = gr.Dropdown(choices, value="litelvlm", label="method A")
                        budget_a = gr.Slider(1, first_total, value=min(DEFAULT_BUDGET, first_total), step=1,
                                             label="budget A")  # fmt: skip
                        method_b = gr.Dropdown(choices, value="topk_similarity", label="method B")
                        budget_b = gr.Slider(1, first_total, value=min(DEFAULT_BUDGET, first_total), step=1,
                                             label="budget B")  # fmt: skip
                    compare_button = gr.Button("Compare", elem_id="compare")
                    with gr.Row():
                        image_a = gr.Image(label="A", type="pil", elem_id="compare-a")
                        image_b = gr.Image(label="B", type="pil", elem_id="compare-b")
                    compare_info = gr.Markdown("", elem_id="compare-info")
        inputs = [upload, text, model, method, budget, generate]
        outputs = [kept_image, masks_image, info, status]
        run_button.click(run, inputs, outputs, api_name="run", concurrency_id="model")
        # Dragging or typing a budget re-runs; "always_last" drops the values passed while a run is busy.
        budget.input(
            run, inputs, outputs, api_visibility="private", concurrency_id="model", trigger_mode="always_last"
        )
        compare_button.click(
            compare,
            [upload, text, model, method_a, budget_a, method_b, budget_b],
            [image_a, image_b, compare_info, status],
            api_name="compare",
            concurrency_id="model",
        )
        model.change(budget_range, model, [budget, budget_a, budget_b], api_visibility="private")
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def theme():
    """Gradio's default look with system fonts: the default theme would fetch web fonts (no internet here)."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
