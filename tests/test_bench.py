"""The benchmark on the tiny GLaMM (schema, speed-ups, FLOP formulas, memory measurement)."""

import json

import pytest
import torch

from litelvlm.cli import main
from litelvlm.flops import (
    PipelineDims,
    clip_vision,
    llm_prefill,
    pipeline_stages,
    sam_encoder,
    transformer_layer,
)
from litelvlm.memory import measure_memory


def test_bench_writes_report_table_and_plot(tiny_glamm_dir, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_glamm_dir), "--methods", "litelvlm,fastv", "--budgets", "576,64",
                 "--budget-mode", "final", "--runs", "1", "--warmup", "0", "--dtype", "float32", "--no-progress",
                 "--throughput", "2", "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md"),
                 "--plot", str(tmp_path / "b.png")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in report["runs"]}
    assert set(rows) == {("litelvlm", 576), ("litelvlm", 64), ("fastv", 576), ("fastv", 64)}
    for row in rows.values():
        assert {"stages", "total_s", "speedup_vs_full", "ideal_speedup", "peak_mem_bytes", "activation_mem_bytes",
                "flops"} <= set(row)  # fmt: skip
        assert row["total_s"] > 0 and row["peak_mem_bytes"] > 0
        assert {"clip_vision", "sam_encoder", "llm", "sam_decoder"} <= set(row["stages"])
    assert (
        rows[("litelvlm", 576)]["speedup_vs_full"] == 1.0 and rows[("litelvlm", 576)]["ideal_speedup"] == 1.0
    )
    assert rows[("litelvlm", 64)]["ideal_speedup"] > 1.0
    assert rows[("litelvlm", 64)]["flops"]["llm"] < rows[("litelvlm", 576)]["flops"]["llm"]
    assert rows[("fastv", 64)]["average_visual_tokens"] == (2 * 576 + 2 * 64) / 4
    assert report["throughput"]["expressions"] == 2 and report["throughput"]["cached_over_recompute"] > 0
    assert (
        report["throughput"]["shared_prefix_tokens"] > 0 and report["throughput"]["llm_s_per_expr_shared"] > 0
    )
    assert report["config"]["command"].startswith("litelvlm bench --model")
    assert "| litelvlm | 64 |" in (tmp_path / "b.md").read_text() and (tmp_path / "b.png").stat().st_size > 0


def test_flop_counts_match_the_parameter_counts():
    d = PipelineDims()
    # one token: every linear weight is used once per token (2 FLOPs per weight), plus a 1x1 attention
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert llm_prefill(d, 1, [0] * 32) == pytest.approx(32 * 2 * per_layer, rel=1e-3)
    assert transformer_layer(10, 8, 16, context=5) == 2 * (10 * (4 * 64 + 2 * 128) + 2 * 10 * 5 * 8)
    # orders of magnitude quoted for GLaMM-7B (issue: CLIP ~0.38, SAM-H ~5.6, LLM ~9.6 TFLOP at 576 + ~130 text)
    assert clip_vision(d) / 1e12 == pytest.approx(0.37, abs=0.02)
    assert sam_encoder(d) / 1e12 == pytest.approx(5.65, abs=0.1)
    assert llm_prefill(d, 130, [576] * 32) / 1e12 == pytest.approx(9.6, abs=0.5)
    full = pipeline_stages(
        d, texts=1, text_tokens=70, clip_text_tokens=16, visual_per_layer=[576] * 32, segs=1
    )
    pruned = pipeline_stages(
        d, texts=1, text_tokens=70, clip_text_tokens=16, visual_per_layer=[64] * 32, segs=1
    )
    assert 1.7 < sum(full.values()) / sum(pruned.values()) < 2.0


def test_measure_memory_sees_a_large_allocation():
    with measure_memory("cpu") as usage:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        del block
    assert usage.activation_bytes >= 48 * 2**20 and usage.peak_bytes >= usage.baseline_bytes


@pytest.mark.parametrize("attention", ["fused", "sdpa", "eager"])
def test_random_model_gets_the_requested_sam_encoder(attention, monkeypatch):
    """--sam-attention reaches the random full-size model (it once stopped at the predictor builder)."""
    from litelvlm.hosts import get_host
    from litelvlm.synthetic import models

    class Built(Exception):
        pass

    def capture(host, config, **_):
        raise Built(config.sam)

    monkeypatch.setattr(models, "random_grounding_model", capture)
    with pytest.raises(Built) as built:
        models.random_predictor(get_host("glamm"), llm_layers=1, sam_layers=2, sam_attention=attention)
    assert built.value.args[0]["vision_attention"] == attention


def test_bench_with_a_checkpoint_switches_the_sam_encoder(tiny_glamm_dir, tmp_path, capsys, monkeypatch):
    from litelvlm.hosts import predictor

    seen = []
    original = predictor.GroundingPredictor.set_image

    def spy(self, *args, **kwargs):
        seen.append(self.model.sam.fused_encoder)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(predictor.GroundingPredictor, "set_image", spy)
    common = ["bench", "--model", str(tiny_glamm_dir), "--budgets", "576", "--runs", "1", "--warmup", "0",
              "--dtype", "float32", "--no-progress"]  # fmt: skip
    assert main([*common, "--sam-attention", "sdpa"]) == 0
    assert seen and not any(seen)
    assert main([*common, "--sam-attention", "eager"]) == 2
    err = capsys.readouterr().err
    assert "--sam-attention eager" in err and "Traceback" not in err


def test_bench_on_lisa_runs_at_256_patches(tiny_lisa_dir, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_lisa_dir), "--methods", "litelvlm", "--runs", "1", "--warmup", "0",
                 "--dtype", "float32", "--no-progress", "--json", str(tmp_path / "b.json")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["config"]["host"] == "LISA"
    layers = json.loads((tiny_lisa_dir / "config.json").read_text())["num_hidden_layers"]
    # labels come from the model run: a tiny checkpoint is neither "full size" nor "32/32 layers"
    assert report["config"]["scaled"] and report["config"]["scale"].startswith(f"LLM {layers}/32 layers")
    rows = {r["budget"]: r for r in report["runs"]}
    assert list(rows) == [256, 192, 128, 64] and rows[256]["speedup_vs_full"] == 1.0
    hidden = json.loads((tiny_lisa_dir / "config.json").read_text())["hidden_size"]
    clip_width = json.loads((tiny_lisa_dir / "clip" / "config.json").read_text())["vision_config"][
        "hidden_size"
    ]
    for budget, row in rows.items():  # LISA's projector is one Linear: one multiply-add per weight and token
        assert row["flops"]["projector"] == 2 * budget * clip_width * hidden
    assert rows[64]["flops"]["llm"] < rows[256]["flops"]["llm"] and rows[64]["ideal_speedup"] > 1


def test_full_size_lisa_is_llama1_7b_with_a_linear_projector_and_clip_224(monkeypatch):
    from litelvlm.hosts import get_host
    from litelvlm.synthetic import models

    class Built(Exception):
        pass

    def capture(host, config, **_):
        raise Built(host, config)

    monkeypatch.setattr(models, "random_grounding_model", capture)
    with pytest.raises(Built) as built:
        models.random_predictor(get_host("lisa"))
    host, config = built.value.args
    assert host.clip_image_size == 224 and host.build_projector(1024, 4096).weight.shape == (4096, 1024)
    llama = config.llama
    assert (llama["vocab_size"], llama["max_position_embeddings"], llama["rms_norm_eps"]) == (
        32004,
        2048,
        1e-6,
    )
    assert (llama["hidden_size"], llama["num_hidden_layers"], config.mm_hidden_size) == (4096, 32, 1024)
