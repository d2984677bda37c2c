"""Independent check of `litelvlm select` against the DESIGN §1 method definition.

Written by a reviewer from DESIGN.md alone, without reading the project's selection or scoring code; it does
NOT import litelvlm: the CLI is called through subprocess only, and the reference computes everything with
transformers' CLIPModel (forward hooks for q/k/v, float64 context scores). Not part of the test suite: it takes
~13 minutes (268 CLI calls). Near-ties of float32 context scores (relative gap ~1e-7) may swap two adjacent
context tokens; the report flags those.

Usage:  python checks/independent_select_check.py [WORK_DIR]   (needs a tiny CLIP in WORK_DIR/clip:
        python -c "from litelvlm.testing import make_tiny_clip; make_tiny_clip('WORK_DIR/clip', seed=3)")
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

HERE = sys.argv[1] if len(sys.argv) > 1 else "/tmp/independent_check"
CLIP_DIR = os.path.join(HERE, "clip")
CLI = os.path.join(os.path.dirname(sys.executable), "litelvlm")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 336

torch.set_grad_enabled(False)


# ---------------------------------------------------------------- images
def make_images():
    specs = [
        ("landscape_500x375.png", 500, 375, 11),
        ("square_400x400.png", 400, 400, 12),
        ("portrait_300x640.png", 300, 640, 13),
    ]
    paths = []
    for name, w, h, seed in specs:
        p = os.path.join(HERE, name)
        if not os.path.exists(p):
            rng = np.random.default_rng(seed)
            small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            arr = np.asarray(img).astype(np.float32)
            yy, xx = np.mgrid[0:h, 0:w]
            arr += 40 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 53.0)[..., None]
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def preprocess(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = SIZE, int(SIZE * h / w)
    else:
        nw, nh = int(SIZE * w / h), SIZE
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    img = img.crop((left, top, left + SIZE, top + SIZE))
    a = np.asarray(img).astype(np.float32) / 255.0
    a = (a - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


# ---------------------------------------------------------------- model
model = CLIPModel.from_pretrained(CLIP_DIR, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(CLIP_DIR)
VM = model.vision_model


def image_features(path, select_layer=-2):
    px = preprocess(path)
    out = VM(pixel_values=px, output_hidden_states=True)
    H = out.hidden_states[select_layer][0]  # [1+N, C]
    patches = H[1:]
    proj = model.visual_projection(VM.post_layernorm(patches))  # [N, P]

    # context: recompute q/k/v of the LAST encoder layer from its input (= H)
    last = VM.encoder.layers[-1]
    x = last.layer_norm1(H)
    q = last.self_attn.q_proj(x)
    k = last.self_attn.k_proj(x)
    v = last.self_attn.v_proj(x)
    # cross-check with forward hooks on the real forward pass
    got = {}
    hs = [
        getattr(last.self_attn, n).register_forward_hook(
            lambda m, i, o, n=n: got.__setitem__(n, o[0].detach().clone())
        )
        for n in ("q_proj", "k_proj", "v_proj")
    ]
    VM(pixel_values=px, output_hidden_states=True)
    for h_ in hs:
        h_.remove()
    for n, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
        assert torch.allclose(got[n], t, atol=1e-5), n
    qc = q[0].double()
    kp = k[1:].double()
    vp = v[1:].double()
    D = kp.shape[1]
    N = kp.shape[0]
    cos = torch.tensor(
        [float(torch.dot(qc, kp[i]) / (qc.norm() * kp[i].norm())) for i in range(N)], dtype=torch.float64
    )
    a = torch.softmax(cos / math.sqrt(D), dim=0)
    context = torch.stack([(a[i] * vp[i]).norm() for i in range(N)])
    return proj, context, q, k, v


def text_embeds(texts):
    enc = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return model.text_projection(out.pooler_output)  # [T, P]


def reference(proj, context, texts, budget, order):
    N = proj.shape[0]
    if budget >= N:
        return list(range(N)), None
    te = text_embeds(texts)
    sim = te.double() @ proj.double().T  # [T, N], raw dot
    T = len(texts)
    k = budget // T
    U = set()
    for t in range(T):
        vals = sim[t].tolist()
        idx = sorted(range(N), key=lambda i: (vals[i], i))[:k]
        U.update(idx)
    U = sorted(U)
    ctx = context.tolist()
    rank = sorted(range(N), key=lambda i: (-ctx[i], i))
    fill = [i for i in rank if i not in set(U)][: budget - len(U)]
    if order == "paper":
        out = fill + U
    else:
        out = sorted(fill + U)
    # margin info for near-tie diagnosis
    return out, dict(sim=sim, ctx=context, k=k, U=U, fill=fill)


def explain(ref, got, ctx):
    """For a same-set/different-order mismatch: which entries swap, and how close their context scores are."""
    d = [(i, ref[i], got[i]) for i in range(len(ref)) if ref[i] != got[i]]
    idx = sorted({x for _, a, b in d for x in (a, b)})
    vals = [float(ctx[i]) for i in idx]
    rel = (max(vals) - min(vals)) / max(abs(v_) for v_ in vals) if vals else 0.0
    return dict(positions=d[:10], ctx=dict(zip(idx, vals)), rel_gap=rel, near_tie=rel < 1e-6)


def question(e):
    return f"Please segment {e.strip().lower()} in this image."


# ---------------------------------------------------------------- CLI
def run_cli(image, texts, budget, order="paper", source=None, method=None, seed=None):
    fd, out = tempfile.mkstemp(suffix=".json", dir=os.path.join(HERE, "out"))
    os.close(fd)
    cmd = [CLI, "select", "--clip", CLIP_DIR, "--image", image]
    for t in texts:
        cmd += ["--text", t]
    cmd += ["--budget", str(budget), "--json", out, "--device", "cpu"]
    if method:
        cmd += ["--method", method]
    if method in (None, "litelvlm"):
        cmd += ["--order", order]
    if source:
        cmd += ["--text-source", source]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if r.returncode != 0:
        return cmd, None, r.stderr[-2000:]
    with open(out) as f:
        js = json.load(f)
    os.remove(out)
    return cmd, js, None


def main():
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    t0 = time.time()
    images = make_images()
    TEXTS = ["the man in red", "  White Car on the LEFT ", "a small dog"]
    ALL_B = [1, 2, 3, 5, 17, 63, 64, 100, 128, 191, 192, 288, 500, 575, 576, 600]
    SUB_B = [1, 2, 5, 64, 191, 288, 575, 576, 600]

    feats = {im: image_features(im) for im in images}

    jobs = []  # (image, texts, budget, order, source)
    for ii, im in enumerate(images):
        budgets = ALL_B if ii == 0 else SUB_B
        for T in (1, 2, 3):
            texts = TEXTS[:T] if ii != 2 else TEXTS[3 - T :]
            for order in ("paper", "raster"):
                for B in budgets:
                    jobs.append((im, texts, B, order, "questions"))
                if ii == 0 and T in (2, 3):
                    for B in budgets:
                        jobs.append((im, texts, B, order, "expressions"))

    def one(job):
        im, texts, B, order, source = job
        cmd, js, err = run_cli(im, texts, B, order, source)
        proj, ctx = feats[im][0], feats[im][1]
        scored = [question(t) for t in texts] if source == "questions" else list(texts)
        ref, info = reference(proj, ctx, scored, B, order)
        res = dict(cmd=" ".join(repr(c) if " " in c else c for c in cmd), ref=ref, err=err)
        if js is None:
            res["ok"] = False
            return res
        res["got"] = js["indices"]
        res["texts_ok"] = js.get("texts") == scored
        res["meta_ok"] = (
            js.get("num_patches") == 576
            and js.get("budget") == B
            and list(js.get("grid", [])) == [24, 24]
            and js.get("method") == "litelvlm"
        )
        res["meta"] = {k_: js.get(k_) for k_ in ("method", "budget", "num_patches", "grid")}
        res["ok"] = js["indices"] == ref
        if not res["ok"]:
            res["set_ok"] = set(js["indices"]) == set(ref)
            if res["set_ok"]:
                res["why"] = explain(ref, js["indices"], ctx)
        return res

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(one, jobs))

    n_ok = sum(r["ok"] for r in results)
    n_texts = sum(r.get("texts_ok", False) for r in results)
    n_meta = sum(r.get("meta_ok", False) for r in results)
    n_tie = sum(1 for r in results if not r["ok"] and r.get("why", {}).get("near_tie"))
    print(f"mismatches explained as float near-ties (same set, context scores within 1e-6 rel): {n_tie}")
    print(
        f"litelvlm comparisons: {len(results)}; exact matches (set+order): {n_ok}; "
        f"texts field matches: {n_texts}; meta ok: {n_meta}"
    )
    for r in results:
        if not r["ok"] or not r.get("texts_ok") or not r.get("meta_ok"):
            print("MISMATCH:", r["cmd"])
            print("  err:", r["err"])
            print("  meta:", r.get("meta"), "texts_ok", r.get("texts_ok"))
            print("  ref[:20]:", r["ref"][:20])
            print("  got[:20]:", (r.get("got") or [])[:20], "set_ok:", r.get("set_ok"))
            if "why" in r:
                print("  diagnosis:", r["why"])

    # random determinism + topk_similarity disjointness
    im = images[0]
    B = 64
    _, r1, e1 = run_cli(im, TEXTS[:1], B, method="random", seed=1)
    _, r2, e2 = run_cli(im, TEXTS[:1], B, method="random", seed=1)
    rand_ok = (
        r1 is not None
        and r2 is not None
        and r1["indices"] == r2["indices"]
        and len(r1["indices"]) == B
        and len(set(r1["indices"])) == B
    )
    print("random seed=1 twice identical:", rand_ok, e1 or "", e2 or "")
    for B in (17, 64, 191):
        _, tk, e3 = run_cli(im, TEXTS[:1], B, method="topk_similarity")
        _, lv, e4 = run_cli(im, TEXTS[:1], B)
        if tk is None or lv is None:
            print("topk/litelvlm failed", e3, e4)
            continue
        s1, s2 = set(tk["indices"]), set(lv["indices"])
        # with T=1: topk = B highest-sim, litelvlm U = B lowest-sim -> disjoint if B <= N/2
        ref_top = None
        sim = text_embeds([question(TEXTS[0])]).double() @ feats[im][0].double().T
        ref_top = set(torch.argsort(sim[0], descending=True)[:B].tolist())
        print(
            f"topk_similarity B={B}: |topk|={len(s1)} |litelvlm|={len(s2)} "
            f"disjoint={s1.isdisjoint(s2)} topk==ref_highest_sim={s1 == ref_top}"
        )
    print(f"elapsed {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
