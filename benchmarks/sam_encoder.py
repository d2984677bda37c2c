"""Before/after of SAM ViT-H's image encoder: transformers' forward vs litelvlm's fused forward, same weights.

    python benchmarks/sam_encoder.py --runs 3 --json benchmarks/results/sam_encoder_cpu_bf16.json \
        --markdown benchmarks/results/sam_encoder_cpu_bf16.md

Variants, interleaved round robin (median of --runs after one warm-up each):
- transformers eager: `SamVisionEncoder` with eager attention (Meta's explicit matmul-softmax);
- transformers sdpa: the same with SDPA attention (litelvlm's encoder before the fused forward);
- transformers sdpa, contiguous: the same, with the residual stream made contiguous after the patch embedding
  (isolates transformers' permuted-view issue);
- litelvlm fused: `litelvlm.hosts.sam_encoder.encode_image`.
Random weights (normal, std 0.02) at ViT-H's exact architecture (speed does not depend on weight values); no download.
`--layers N` keeps ViT-H's width and cuts its depth (the last block stays global, as `litelvlm bench --sam-layers`);
`--tiny` runs a 2-block, 64-wide encoder, only to check this script quickly (`benchmarks/gpu_check.sh --dry-run`).
The report names the faster of "litelvlm fused" and "transformers sdpa", the two forwards
`litelvlm.hosts.sam.default_sam_attention` chooses between, and that function's choice for the device.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from transformers.models.sam.modeling_sam import SamVisionEncoder

from litelvlm.bench import machine
from litelvlm.hosts.sam import SAM_VIT_H, default_sam_attention, sam_vit_h_config
from litelvlm.hosts.sam_encoder import encode_image
from litelvlm.io import format_json, write_atomic
from litelvlm.memory import keep_freed_memory_for_reuse
from litelvlm.synthetic.models import sam_depth_overrides

# `--tiny`: two blocks (one windowed, one global) 64 wide, at SAM's 1024 px input.
TINY = {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2, "global_attn_indexes": (1,)}
# The variants `default_sam_attention` chooses between, by its names.
CHOICES = {"fused": "litelvlm fused", "sdpa": "transformers sdpa"}


def contiguous_stream_forward(encoder: SamVisionEncoder, pixels: torch.Tensor) -> torch.Tensor:
    hidden = encoder.patch_embed(pixels).contiguous() + encoder.pos_embed
    for layer in encoder.layers:
        hidden = layer(hidden)
    return encoder.neck(hidden)


def transformers_float32(encoder: SamVisionEncoder, pixels: torch.Tensor) -> torch.Tensor:
    dtype = encoder.pos_embed.dtype
    with torch.no_grad():
        out = encoder.float()(pixels.float()).last_hidden_state
    encoder.to(dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--layers", type=int, help="this many encoder blocks at ViT-H's width (default: all 32)"
    )
    parser.add_argument("--tiny", action="store_true", help="a 2-block, 64-wide encoder (checks the script)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if args.tiny and args.layers:
        parser.error("--tiny and --layers exclude each other")
    if args.layers is not None and not 1 <= args.layers <= SAM_VIT_H.num_hidden_layers:
        parser.error(f"--layers must be from 1 to {SAM_VIT_H.num_hidden_layers}")
    keep_freed_memory_for_reuse()  # as the litelvlm CLI does
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    sizes = TINY if args.tiny else sam_depth_overrides(args.layers)
    if args.tiny:
        scale = "tiny, 2 blocks 64 wide"
    else:
        scale = f"{args.layers or SAM_VIT_H.num_hidden_layers}/{SAM_VIT_H.num_hidden_layers} blocks of ViT-H"

    torch.manual_seed(0)
    encoders = {}
    for attention in ("eager", "sdpa"):
        with torch.device(device):
            config = sam_vit_h_config(attention, **sizes).vision_config
            encoders[attention] = SamVisionEncoder(config).to(dtype).eval()
    with torch.no_grad():  # transformers zero-initialises the position tables; random values keep the
        for name, param in encoders["sdpa"].named_parameters():  # differences column meaningful
            param.normal_(0.0, 0.02)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)
    encoders["eager"].load_state_dict(encoders["sdpa"].state_dict())
    sdpa = encoders["sdpa"]
    variants = {
        "transformers eager": lambda x: encoders["eager"](x).last_hidden_state,
        "transformers sdpa": lambda x: sdpa(x).last_hidden_state,
        "transformers sdpa, contiguous": lambda x: contiguous_stream_forward(sdpa, x),
        "litelvlm fused": lambda x: encode_image(sdpa, x),
    }
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = fn(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out

    # Each variant's relative difference from transformers' forward in float32 on the same weights.
    reference = transformers_float32(sdpa, pixels)
    seconds = {name: [] for name in variants}
    errors = {}
    for name, fn in variants.items():  # also the warm-up
        out = timed(fn)[1].float()
        errors[name] = ((out - reference).norm() / reference.norm()).item()
    for _ in range(args.runs):
        for name, fn in variants.items():
            seconds[name].append(timed(fn)[0])
    baseline = statistics.median(seconds["transformers sdpa"])
    rows = [
        {
            "variant": name,
            "median_s": statistics.median(times),
            "seconds": times,
            "speedup_vs_transformers_sdpa": baseline / statistics.median(times),
            "relative_difference_vs_float32": errors[name],
        }
        for name, times in seconds.items()
    ]
    command = "python benchmarks/sam_encoder.py " + " ".join(
        f"--{key}" if value is True else f"--{key} {value}"
        for key, value in vars(args).items()
        if value is not None and value is not False
    )
    medians = {choice: statistics.median(seconds[name]) for choice, name in CHOICES.items()}
    faster = min(medians, key=medians.get)
    slower = max(medians, key=medians.get)
    default = default_sam_attention(device)
    report = {
        "rows": rows,
        "faster": {
            "choice": faster,
            "variant": CHOICES[faster],
            "speedup_over_other": medians[slower] / medians[faster],
            "default_on_device": default,
        },
        "config": {
            "model": "SAM ViT-H image encoder, random weights",
            "scaled": bool(sizes),
            "scale": scale,
            "device": device.type,
            "dtype": args.dtype,
            "runs": args.runs,
            "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
        },
    }
    lines = [
        "# SAM ViT-H image encoder: transformers vs litelvlm's fused forward"
        + ("" if not sizes else f" (SCALED: {scale})"),
        "",
        f"{device.type}, {args.dtype}, {report['config']['machine']['threads']} threads, torch "
        f"{torch.__version__}; median of {args.runs} runs after a warm-up; {report['config']['date']}.",
        f"Command: `{command}`",
        "",
        "| variant | median s | speed-up vs transformers sdpa | relative difference vs transformers float32 |",
        "|---|---|---|---|",
        *(
            f"| {r['variant']} | {r['median_s']:.3g} | {r['speedup_vs_transformers_sdpa']:.2f}x | "
            f"{r['relative_difference_vs_float32']:.1e} |"
            for r in rows
        ),
        "",
        f"Faster of the two forwards litelvlm chooses between: {CHOICES[faster]} ({faster!r}), "
        f"{medians[slower] / medians[faster]:.2f}x; `default_sam_attention({device.type!r})` is {default!r}"
        + (
            " (a scaled run: it says nothing about ViT-H)."
            if sizes
            else " (agrees)."
            if default == faster
            else " (disagrees: this measurement says to change it)."
        ),
        "",
    ]
    print("\n".join(lines))
    if args.json:
        write_atomic(args.json, format_json(report).encode())  # (io.write_json was removed as unused)
    if args.markdown:
        write_atomic(args.markdown, "\n".join(lines).encode())


if __name__ == "__main__":
    main()
