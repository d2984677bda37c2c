"""`litelvlm bench` on the LLaVA host: the report on a tiny llava-hf checkpoint, the full-size architecture, FLOPs."""

import json

import pytest
import torch

from litelvlm import bench_llava
from litelvlm.cli import main
from litelvlm.flops import PipelineDims, llava_stages, llm_decode, llm_prefill, lm_head, transformer_layer
from litelvlm.hosts.llava import LlavaPredictor
from litelvlm.testing.llava_hf import make_tiny_llava_hf

BENCH = ["--methods", "litelvlm,fastv", "--budgets", "36,9", "--budget-mode", "final", "--runs", "1", "--warmup",
         "0", "--max-new-tokens", "3", "--dtype", "float32", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-llava")
    return make_tiny_llava_hf(root / "llava", clip_directory=root / "clip"), root / "clip"


def test_bench_llava_checkpoint_reports_prefill_and_total_against_their_flop_ideals(
    tiny_llava, tmp_path, capsys
):
    directory, clip = tiny_llava
    out = {suffix: tmp_path / f"b.{suffix}" for suffix in ("json", "md", "png")}
    code = main(["bench", "--model", str(directory), "--clip", str(clip), *BENCH, "--json", str(out["json"]),
                 "--markdown", str(out["md"]), "--plot", str(out["png"])])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads(out["json"].read_text())
    config = report["config"]
    assert (config["host"], config["max_new_tokens"], config["scaled"], config["random_weights"]) == (
        "LLaVA", 3, False, False)  # fmt: skip
    assert config["command"].startswith("litelvlm bench --model") and config["num_patches"] == 36
    rows = {(r["method"], r["budget"]): r for r in report["runs"]}
    assert set(rows) == {("litelvlm", 36), ("litelvlm", 9), ("fastv", 36), ("fastv", 9)}
    for row in rows.values():
        assert set(row["stages"]) == set(bench_llava.STAGES) and set(row["flops"]) == set(bench_llava.STAGES)
        assert row["prefill_s"] > 0 and row["total_s"] > row["prefill_s"] and row["peak_mem_bytes"] > 0
        for part in ("prefill", "total"):
            speedup, ideal = row[f"{part}_speedup_vs_full"], row[f"{part}_ideal_speedup"]
            assert row[f"{part}_realized_over_ideal"] == pytest.approx(speedup / ideal)
    full, pruned = rows[("litelvlm", 36)], rows[("litelvlm", 9)]
    assert full["prefill_speedup_vs_full"] == full["total_ideal_speedup"] == 1.0
    assert pruned["prefill_ideal_speedup"] > pruned["total_ideal_speedup"] > 1.0
    assert pruned["prefill_speedup_vs_full"] == pytest.approx(full["prefill_s"] / pruned["prefill_s"])
    assert pruned["flops"]["selection"] > 0 == full["flops"]["selection"]  # the text tower runs when pruning

    # the FLOP ideal of the prefill is the ratio of the decoder's FLOPs on the two prompts
    llm = json.loads((directory / "config.json").read_text())["text_config"]
    dims = PipelineDims(llm_width=llm["hidden_size"], llm_mlp=llm["intermediate_size"])
    text = config["text_tokens"][0]
    assert pruned["prefill_ideal_speedup"] == pytest.approx(
        llm_prefill(dims, text, [36, 36]) / llm_prefill(dims, text, [9, 9])
    )
    fastv = rows[("fastv", 9)]  # in-LLM: every token in the first layer, 9 after it (--budget-mode final)
    assert fastv["tokens_per_layer"] == [36, 9] and fastv["average_visual_tokens"] == 22.5
    assert fastv["prefill_flops"] == pytest.approx(llm_prefill(dims, text, [36, 9]))
    assert rows[("fastv", 36)]["prefill_ideal_speedup"] == 1.0

    markdown = out["md"].read_text()
    assert "# LLaVA benchmark (checkpoint)" in markdown and "| litelvlm | 9 | 9 |" in markdown
    assert "LLM prefill s" in markdown and out["png"].stat().st_size > 0


def test_bench_host_llava_builds_the_random_model_and_labels_a_scaled_run(tiny_llava, monkeypatch, capsys):
    directory, clip = tiny_llava
    built = {}

    def tiny_random(**kwargs):  # the full-size build takes a minute: stand in the tiny model
        built.update(kwargs)
        return LlavaPredictor.from_pretrained(directory, clip=clip, dtype=torch.float32, device="cpu")

    monkeypatch.setattr(bench_llava, "random_llava_predictor", tiny_random)
    assert main(["bench", "--host", "llava", "--llm-layers", "2", *BENCH, "--methods", "litelvlm"]) == 0
    printed = capsys.readouterr().out
    assert built["llm_layers"] == 2
    assert "# LLaVA benchmark (SCALED: LLM 2/32 layers)" in printed and "extrapolated prefill s" in printed
    for flag in (["--sam-layers", "2"], ["--throughput", "2"]):
        assert main(["bench", "--host", "llava", *flag]) == 2
        assert "LLaVA has no SAM" in capsys.readouterr().err
    assert main(["bench", "--host", "lisa", "--max-new-tokens", "4"]) == 2
    assert "--max-new-tokens applies to LLaVA" in capsys.readouterr().err


def test_full_size_llava_is_llava_1_5_7b_hf():
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    config = bench_llava.llava_15_7b_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (
        4096, 11008, 32, 32)  # fmt: skip
    assert (text.vocab_size, text.max_position_embeddings, text.rms_norm_eps, text.hidden_act) == (
        32064, 4096, 1e-5, "silu")  # fmt: skip
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        1024, 24, 16, 4096)  # fmt: skip
    assert (vision.image_size, vision.patch_size, vision.projection_dim, vision.hidden_act) == (
        336, 14, 768, "quick_gelu")  # fmt: skip
    assert (config.image_token_id, config.vision_feature_layer, config.vision_feature_select_strategy) == (
        32000, -2, "default")  # fmt: skip
    assert config.projector_hidden_act == "gelu" and config.tie_word_embeddings is False
    assert bench_llava.llava_15_7b_config(8).text_config.num_hidden_layers == 8
    with init_empty_weights():  # no memory: parameters on the meta device
        model = LlavaForConditionalGeneration(config)
    llama_layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    clip_layer = 4 * (1024**2 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    # patch embedding, CLS, positions, layers, pre- and post-layernorm
    clip = 3 * 14**2 * 1024 + 1024 + 577 * 1024 + 24 * clip_layer + 4 * 1024
    projector = 1024 * 4096 + 4096 + 4096**2 + 4096
    expected = 32 * llama_layer + 4096 + 2 * 32064 * 4096 + clip + projector
    assert sum(p.numel() for p in model.parameters()) == expected == 7_063_427_072


def test_random_llava_weights_and_the_processor_of_the_full_size_model():
    from litelvlm.synthetic.clip import clip_config
    from litelvlm.testing.llava_hf import TINY_VISION, llava_hf_config

    config = llava_hf_config(512, 500, 501, clip_config(**TINY_VISION))
    model = bench_llava.random_llava_model(config, dtype=torch.bfloat16, seed=3)
    parameters = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in parameters.values())
    assert all(torch.isfinite(p.float()).all() for p in parameters.values())
    norm = next(p for name, p in parameters.items() if name.endswith("language_model.norm.weight"))
    assert bool((norm == 1).all())
    again = bench_llava.random_llava_model(config, dtype=torch.bfloat16, seed=3)
    assert all(torch.equal(p, again.get_parameter(name)) for name, p in parameters.items())

    processor = bench_llava.llava_15_processor()
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (image_id, tokenizer.pad_token_id, len(tokenizer)) == (32000, 32001, 32002)
    assert processor.image_processor.crop_size == {"height": 336, "width": 336}
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    ids = tokenizer(processor.apply_chat_template(conversation, add_generation_prompt=True))["input_ids"]
    assert ids.count(32000) == 1 and max(ids) < 32064


def test_llava_flops_count_the_prefill_the_decoding_steps_and_the_lm_head():
    d = PipelineDims(llm_layers=2)
    visual = [576, 64]
    sizes = dict(text_tokens=30, clip_text_tokens=14, visual_per_layer=visual, new_tokens=4)
    stages = llava_stages(d, texts=1, **sizes)
    assert stages["prefill"] == llm_prefill(d, 30, visual)
    steps = sum(  # step s: one token against the prompt and the s tokens generated before it
        transformer_layer(1, 4096, 11008, context=30 + v + s + 1, gated=True)
        for s in range(3)
        for v in visual
    )
    assert stages["decode"] == pytest.approx(steps + 4 * 2 * 4096 * 32064)
    assert llm_decode(d, 30, visual, 1) == 0 and lm_head(d, 1) == 2 * 4096 * 32064
    assert stages["projector"] == 2 * 576 * d.projector_macs
    assert stages["llava_vision"] > stages["clip_vision"]  # 24 whole layers against 23 and a last q/k/v
    without_text = llava_stages(d, texts=0, **sizes)
    assert without_text["selection"] == 0 < stages["selection"]
