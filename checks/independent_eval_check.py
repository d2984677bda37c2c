#!/usr/bin/env python
"""Independent checker of `litelvlm eval` (RefCOCO protocol + metrics, spec glamm.md §9).

Written by a reviewer from the spec alone, without reading the project's data or metric code. Builds its own
REFER/COCO-format data set (own polygons / own RLE encoders), runs the CLI, recomputes everything from its own
ground truth. Does not import litelvlm (except `litelvlm.testing.make_tiny_glamm` for a random model).
Not part of the test suite (~4 minutes). Run: python checks/independent_eval_check.py --live
(the default runs a snapshot of the source tree, which was being edited while the check was written).
"""

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
from PIL import Image
from pycocotools import mask as cmask

BASE = "/tmp/eval_check"
DATA = f"{BASE}/DATA"
MODEL = f"{BASE}/glamm"
SNAP = f"{BASE}/src_snapshot"
# The project tree was being edited while this checker ran, so by default the CLI runs from a frozen copy of
# /work/main/src taken at the start (same venv). Pass --live to run /work/main/.venv/bin/litelvlm directly.
LIVE = "--live" in sys.argv
CLI_LIVE = [os.path.join(os.path.dirname(sys.executable), "litelvlm")]
CLI_SNAP = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {SNAP!r}); sys.argv[0] = 'litelvlm'; "
    "from litelvlm.cli import main; sys.exit(main())",
]
PY = sys.executable
RUNS = f"{BASE}/runs"

LINES = []
RESULTS = []  # (name, ok, detail)


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LINES.append(s)


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok), detail))
    log(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f" -- {detail}" if detail else ""))


# ---------------------------------------------------------------- own RLE encoders
def rle_counts(m):
    """Uncompressed COCO RLE counts: column-major runs, starting with zeros."""
    f = np.asarray(m, dtype=np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in f:
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def rle_string(counts):
    """COCO compressed counts string (maskApi.c rleToString)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def poly_gt(polys, h, w):
    """Reference GT for polygons: frPyObjects -> decode -> sum over polygons (uint8)."""
    rles = cmask.frPyObjects(polys, h, w)
    m = cmask.decode(rles)
    return np.sum(m, axis=2).astype(np.uint8)


def rect_poly(x0, y0, x1, y1):
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def circle_poly(cx, cy, r, n=24):
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        pts += [round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)]
    return pts


def ellipse_mask(h, w, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.uint8)


def box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


# ---------------------------------------------------------------- data set
def build_data():
    """Returns (refs, gt) where gt[ref_id] = uint8 mask (values may be 0/1/2)."""
    if os.path.exists(DATA):
        shutil.rmtree(DATA)
    os.makedirs(f"{DATA}/refcoco")
    os.makedirs(f"{DATA}/coco_2014/train2014")
    rng = np.random.RandomState(123)

    # image_id: (W, H)
    images = {
        1: (320, 240),
        2: (40, 30),
        3: (640, 480),
        581563: (200, 300),
        17: (256, 256),
        99: (123, 77),
        4242: (300, 180),
    }
    # each object: (ann_id, image_id, ref_id, split, sentences, kind, spec, color)
    # kinds: poly (list of polygons), rle_u (uncompressed dict), rle_c (compressed dict),
    #        rle_list (list of compressed dicts, as GLaMM's loader also accepts), empty
    objs = []
    objs.append(
        (
            101,
            1,
            1001,
            "val",
            ["red box on left", "the red square"],
            "poly",
            [rect_poly(20, 40, 110, 150)],
            (220, 30, 30),
        )
    )
    objs.append(
        (
            102,
            1,
            1002,
            "val",
            ["blue cross", "Blue Shape  ", "blue cross"],
            "poly",
            [rect_poly(150, 60, 290, 100), rect_poly(200, 20, 240, 200)],
            (30, 30, 220),
        )
    )
    objs.append((103, 1, 1003, "train", ["green ball"], "poly", [circle_poly(80, 200, 30)], (30, 200, 30)))
    objs.append((201, 2, 2001, "val", ["tiny thing"], "rle_c", ("box", 8, 5, 27, 22), (250, 250, 0)))
    objs.append(
        (
            301,
            3,
            3001,
            "val",
            ["big yellow ellipse", "yellow blob"],
            "rle_u",
            ("ellipse", 250, 260, 170, 110),
            (240, 220, 20),
        )
    )
    objs.append(
        (
            302,
            3,
            3002,
            "testA",
            ["triangle top right", "pointy thing", "orange triangle"],
            "poly",
            [[500.0, 30.0, 620.5, 200.0, 430.25, 180.0]],
            (250, 140, 0),
        )
    )
    objs.append((303, 3, 3003, "val", ["nothing here"], "empty", None, None))
    objs.append(
        (
            5801,
            581563,
            58001,
            "testA",
            ["man on left"],
            "poly",
            [rect_poly(10, 60, 80, 280), circle_poly(45, 40, 20, 16)],
            (200, 100, 50),
        )
    )
    objs.append(
        (
            5802,
            581563,
            58002,
            "testA",
            ["man on right", "right guy"],
            "rle_c",
            ("ellipse", 150, 170, 35, 110),
            (60, 120, 200),
        )
    )
    objs.append(
        (
            5803,
            581563,
            58003,
            "testA",
            ["two overlapping boxes"],
            "poly",
            [rect_poly(60, 200, 140, 260), rect_poly(100, 230, 190, 295)],
            (20, 200, 200),
        )
    )
    objs.append((5804, 581563, 58004, "testB", ["the sky"], "rle_u", ("box", 0, 0, 200, 25), (140, 200, 250)))
    objs.append(
        (
            1701,
            17,
            17001,
            "testA",
            ["white square", "square in the middle"],
            "poly",
            [rect_poly(90, 90, 170, 170)],
            (255, 255, 255),
        )
    )
    objs.append(
        (1702, 17, 17002, "testB", ["purple thing"], "poly", [circle_poly(40, 40, 25)], (160, 40, 200))
    )
    objs.append(
        (
            9901,
            99,
            9901,
            "val",
            ["odd sized thing", "stripe"],
            "rle_c",
            ("box", 10, 30, 113, 45),
            (10, 10, 10),
        )
    )
    objs.append(
        (9902, 99, 9902, "testB", ["listed rle"], "rle_list", ("ellipse", 90, 20, 15, 12), (200, 0, 0))
    )
    objs.append((9903, 99, 9903, "val", ["everything"], "rle_u", ("box", 0, 0, 123, 77), None))
    objs.append(
        (424201, 4242, 424201, "train", ["train only box"], "poly", [rect_poly(5, 5, 100, 100)], (0, 0, 0))
    )

    # draw images
    canvases = {}
    for iid, (W, H) in images.items():
        base = rng.randint(60, 200, size=3)
        arr = np.zeros((H, W, 3), np.uint8) + base.astype(np.uint8)
        arr = np.clip(arr.astype(int) + rng.randint(-15, 16, size=(H, W, 3)), 0, 255).astype(np.uint8)
        canvases[iid] = arr

    gt = {}
    anns = []
    for ann_id, iid, ref_id, split, sents, kind, spec, color in objs:
        W, H = images[iid]
        if kind == "poly":
            seg = spec
            m = poly_gt(seg, H, W)
        elif kind == "empty":
            seg = []
            m = np.zeros((H, W), np.uint8)
        else:
            if spec[0] == "box":
                m = box_mask(H, W, *spec[1:])
            else:
                m = ellipse_mask(H, W, *spec[1:])
            cnt = rle_counts(m)
            if kind == "rle_u":
                seg = {"size": [H, W], "counts": cnt}
            elif kind == "rle_c":
                seg = {"size": [H, W], "counts": rle_string(cnt)}
            else:
                seg = [{"size": [H, W], "counts": rle_string(cnt)}]
            # validate own encoders against pycocotools
            chk = seg[0] if isinstance(seg, list) else seg
            if isinstance(chk["counts"], list):
                dec = cmask.decode(cmask.frPyObjects(chk, H, W))
            else:
                dec = cmask.decode({"size": chk["size"], "counts": chk["counts"].encode()})
            assert np.array_equal(dec, m), f"own RLE encoder wrong for ann {ann_id}"
        gt[ref_id] = m
        if color is not None:
            c = canvases[iid]
            c[m > 0] = np.array(color, np.uint8)
        ys, xs = np.nonzero(m)
        bbox = (
            [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            if len(xs)
            else [0.0, 0.0, 0.0, 0.0]
        )
        anns.append(
            {
                "id": ann_id,
                "image_id": iid,
                "category_id": 1 + ann_id % 3,
                "segmentation": seg,
                "area": float((m > 0).sum()),
                "bbox": bbox,
                "iscrowd": 0,
            }
        )

    imgs = []
    for iid, (W, H) in images.items():
        fn = "COCO_train2014_%012d.jpg" % iid
        Image.fromarray(canvases[iid]).save(f"{DATA}/coco_2014/train2014/{fn}", quality=92)
        imgs.append({"id": iid, "width": W, "height": H, "file_name": fn})
    cats = [{"id": k, "name": n, "supercategory": "thing"} for k, n in [(1, "a"), (2, "b"), (3, "c")]]
    with open(f"{DATA}/refcoco/instances.json", "w") as f:
        json.dump({"images": imgs, "annotations": anns, "categories": cats}, f)

    refs = []
    sid = 5000
    for ann_id, iid, ref_id, split, sents, kind, spec, color in objs:
        sl = []
        for s in sents:
            sl.append({"sent": s, "raw": "RAW " + s, "tokens": s.split(), "sent_id": sid})
            sid += 1
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": iid,
                "split": split,
                "sentences": sl,
                "sent_ids": [x["sent_id"] for x in sl],
                "file_name": "COCO_train2014_%012d_%d.jpg" % (iid, ann_id),
                "category_id": 1 + ann_id % 3,
            }
        )
    # not sorted by ref id / image id on disk
    order = rng.permutation(len(refs))
    refs = [refs[i] for i in order]
    with open(f"{DATA}/refcoco/refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return refs, gt, images


def split_match(ref_split, split):
    if split in ("testA", "testB"):
        return split[-1] in ref_split
    return ref_split == split


# ---------------------------------------------------------------- running
def run(args, tag):
    t = time.time()
    p = subprocess.run(CLI + args, capture_output=True, text=True)
    log(f"  ran [{tag}] rc={p.returncode} in {time.time() - t:.1f}s: litelvlm {' '.join(args)}")
    return p


def run_eval(out, split, protocol, seed, methods="litelvlm,random", budgets="576,64", root=DATA, extra=()):
    if os.path.exists(out):
        shutil.rmtree(out)
    args = [
        "eval",
        "--model",
        MODEL,
        "--data-root",
        root,
        "--dataset",
        "refcoco",
        "--split",
        split,
        "--methods",
        methods,
        "--budgets",
        budgets,
        "--protocol",
        protocol,
        "--seed",
        str(seed),
        "--out",
        out,
        "--dtype",
        "float32",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]
    return run(args, f"{protocol}/{split}/seed{seed}")


def load_records(out):
    with open(f"{out}/records.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]


# ---------------------------------------------------------------- metric recomputation
THR = ["0.5", "0.6", "0.7", "0.8", "0.9"]


def recompute(recs):
    I = sum(r["intersection"] for r in recs)
    U = sum(r["union"] for r in recs)
    ious = []
    for r in recs:
        iou = r["intersection"] / (r["union"] + 1e-5)
        if r["union"] == 0:
            iou += 1.0
        ious.append(iou)
    n = len(recs)
    return {
        "ciou": I / (U + 1e-10),
        "giou": sum(ious) / n if n else float("nan"),
        "precision": {t: sum(1 for v in ious if v >= float(t)) / n for t in THR},
        "count": n,
        "_ious": ious,
    }


def close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check_results(out, recs, tag):
    res = json.load(open(f"{out}/results.json"))
    groups = defaultdict(list)
    for r in recs:
        groups[(r["method"], int(r["budget"]))].append(r)
    rows = {(x["method"], int(x["budget"])): x for x in res["results"]}
    check(
        f"{tag}: results.json rows == record groups",
        set(rows) == set(groups),
        f"rows={sorted(rows)} groups={sorted(groups)}",
    )
    bad = []
    for key, rs in sorted(groups.items()):
        if key not in rows:
            continue
        mine, theirs = recompute(rs), rows[key]
        diffs = []
        for k in ("ciou", "giou"):
            if not close(mine[k], theirs[k]):
                diffs.append(f"{k} mine={mine[k]!r} theirs={theirs[k]!r}")
        for t in THR:
            tv = theirs["precision"].get(
                t, theirs["precision"].get(float(t)) if isinstance(theirs["precision"], dict) else None
            )
            if tv is None or not close(mine["precision"][t], tv):
                diffs.append(f"P@{t} mine={mine['precision'][t]} theirs={tv}")
        if mine["count"] != theirs["count"]:
            diffs.append(f"count mine={mine['count']} theirs={theirs['count']}")
        log(
            f"    {key}: n={mine['count']} ciou={mine['ciou']:.6f} giou={mine['giou']:.6f} "
            f"P={[round(mine['precision'][t], 4) for t in THR]} | theirs ciou={theirs['ciou']:.6f} "
            f"giou={theirs['giou']:.6f}"
        )
        if diffs:
            bad.append((key, diffs))
    check(
        f"{tag}: results.json ciou/giou/P@X/count == recomputation from records",
        not bad,
        str(bad) if bad else f"{len(groups)} groups",
    )
    return res


def check_record_metrics(recs, gt, images_by_ref, tag):
    """(b) gt_area and (d) identities."""
    bad_gt, bad_id = [], []
    for r in recs:
        g = gt[r["ref_id"]]
        mine_gt = int((g == 1).sum())
        if r["gt_area"] != mine_gt:
            bad_gt.append(
                (
                    r["image_id"],
                    r["ref_id"],
                    r["sentence"],
                    r["method"],
                    r["budget"],
                    r["gt_area"],
                    mine_gt,
                    int((g > 0).sum()),
                )
            )
        H, W = g.shape
        n2 = int((g > 1).sum())
        I, U, M, G = r["intersection"], r["union"], r["mask_area"], r["gt_area"]
        errs = []
        # exact identity from the 2-class histogram definition: U1 = #pred==1 + #gt==1 - I1
        if U != M + G - I:
            errs.append(f"U!=M+G-I ({U} vs {M + G - I})")
        if not (0 <= I <= min(M, G)):
            errs.append("I not in [0,min(M,G)]")
        if not (max(M, G) <= U <= H * W):
            errs.append("U not in [max(M,G),HW]")
        # union counts at most pixels not on gt>1 plus predicted ones there
        if not (U <= H * W):
            errs.append("U>HW")
        if not (0 <= M <= H * W):
            errs.append("M out of range")
        # I <= #gt==1 & also I <= M - (pred on gt>1) which we can't see; bound: I <= M
        if errs:
            bad_id.append(
                (r["image_id"], r["ref_id"], r["sentence"], r["method"], r["budget"], I, U, M, G, errs)
            )
    check(
        f"{tag}: (b) record gt_area == own #(gt==1)",
        not bad_gt,
        f"{len(recs)} records"
        if not bad_gt
        else f"{len(bad_gt)} bad, e.g. (img,ref,sent,method,budget,theirs,mine_eq1,mine_gt0)={bad_gt[:4]}",
    )
    check(
        f"{tag}: (d) U == mask_area + gt_area - I, 0<=I<=min(M,G), max(M,G)<=U<=HW",
        not bad_id,
        f"{len(recs)} records" if not bad_id else f"{len(bad_id)} bad, e.g. {bad_id[:4]}",
    )


def expected_lisa(refs, split):
    exp = Counter()
    for ref in refs:
        if split_match(ref["split"], split):
            for i, s in enumerate(ref["sentences"]):
                exp[(ref["image_id"], ref["ref_id"], s["sent"])] += 1
    return exp


# ---------------------------------------------------------------- segment-based approximate cross-check
def segment_mask(iid, text="the object"):
    """Predicted mask of `segment` (template 1 / answer 0, NOT the eval's templates): only approximately
    the eval's mask for this text-insensitive random model."""
    img = f"{DATA}/coco_2014/train2014/COCO_train2014_%012d.jpg" % iid
    out = f"{BASE}/seg/img{iid}.png"
    os.makedirs(f"{BASE}/seg", exist_ok=True)
    p = subprocess.run(
        CLI
        + [
            "segment",
            "--model",
            MODEL,
            "--image",
            img,
            "--text",
            text,
            "--budget",
            "576",
            "--method",
            "litelvlm",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--out",
            out,
            "--json",
            f"{BASE}/seg/img{iid}.json",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    f = out if os.path.exists(out) else out.replace(".png", "_0.png")
    return np.array(Image.open(f)) > 0


def approx_crosscheck(recs, gt, segm, tag):
    """Compare eval's I/U/M with those of segment's mask vs own GT under the spec rule and under the
    naive rule (gt>0). Pass if the spec rule is within tolerance and closer than the naive one."""
    worst, bad = 0.0, []
    for r in recs:
        P = segm[r["image_id"]]
        g = gt[r["ref_id"]]
        if P.shape != g.shape:
            bad.append((r["ref_id"], "shape", P.shape, g.shape))
            continue
        M = int(P.sum())
        I_rule = int((P & (g == 1)).sum())
        I_naive = int((P & (g > 0)).sum())
        dM = abs(r["mask_area"] - M)
        tol = dM + 0.005 * max(M, 1) + 5
        dev = abs(r["intersection"] - I_rule)
        worst = max(worst, dev / max(M, 1))
        if dev > tol or (I_rule != I_naive and abs(r["intersection"] - I_naive) < dev):
            bad.append(
                (
                    r["image_id"],
                    r["ref_id"],
                    r["sentence"],
                    r["method"],
                    r["budget"],
                    dict(I=r["intersection"], M=r["mask_area"]),
                    dict(I_rule=I_rule, I_naive=I_naive, M=M),
                )
            )
    check(
        f"{tag}: approx I vs segment-mask x own GT (spec gt==1 rule)",
        not bad,
        f"{len(recs)} records, worst |dI|/M={worst:.5f}" if not bad else f"{len(bad)} bad: {bad[:4]}",
    )


# ---------------------------------------------------------------- main
def main():
    global CLI
    t0 = time.time()
    os.makedirs(RUNS, exist_ok=True)
    if LIVE:
        CLI = CLI_LIVE
        log("running the live CLI /work/main/.venv/bin/litelvlm")
    else:
        if os.path.exists(SNAP):
            shutil.rmtree(SNAP)
        shutil.copytree(
            "/work/main/src/litelvlm", f"{SNAP}/litelvlm", ignore=shutil.ignore_patterns("__pycache__")
        )
        CLI = CLI_SNAP
        chk = subprocess.run(CLI + ["--help"], capture_output=True, text=True)
        assert chk.returncode == 0, (
            "snapshot of /work/main/src does not import (tree mid-edit?): " + chk.stderr[-800:]
        )
        log(
            f"running the CLI from a snapshot of /work/main/src taken {time.strftime('%H:%M:%S UTC', time.gmtime())}"
        )
    if not os.path.exists(f"{MODEL}/config.json"):
        subprocess.run(
            [PY, "-c", f"from litelvlm.testing import make_tiny_glamm; make_tiny_glamm('{MODEL}', seed=1)"],
            check=True,
            cwd="/work/main",
        )
    refs, gt, images = build_data()
    n2_refs = [rid for rid, g in gt.items() if (g > 1).any()]
    log(
        f"built data: {len(images)} images {sorted(images.items())}, {len(refs)} refs, "
        f"{sum(len(r['sentences']) for r in refs)} sentences; refs with gt>1 pixels: "
        f"{[(rid, int((gt[rid] > 1).sum())) for rid in n2_refs]}"
    )
    ref_by_id = {r["ref_id"]: r for r in refs}

    segm = {iid: segment_mask(iid) for iid in images if iid != 4242}
    log(
        f"segment mask areas (template 1/answer 0, litelvlm@576): {[(i, int(m.sum()), m.size) for i, m in segm.items()]}"
    )
    # ---- 1/2: lisa on val and testA
    for split in ("val", "testA"):
        out = f"{RUNS}/lisa_{split}"
        p = run_eval(out, split, "lisa", 0)
        check(f"lisa/{split}: exit 0", p.returncode == 0, p.stderr[-2000:] if p.returncode else "")
        if p.returncode:
            continue
        recs = load_records(out)
        exp = expected_lisa(refs, split)
        groups = defaultdict(list)
        for r in recs:
            groups[(r["method"], int(r["budget"]))].append(r)
        check(
            f"lisa/{split}: 4 (method,budget) groups",
            set(groups) == {(m, b) for m in ("litelvlm", "random") for b in (576, 64)},
            str(sorted(groups)),
        )
        for key, rs in sorted(groups.items()):
            got = Counter((r["image_id"], r["ref_id"], r["sentence"]) for r in rs)
            missing = exp - got
            extra = got - exp
            dupidx = [
                k for k, v in Counter((r["ref_id"], r.get("sentence_index")) for r in rs).items() if v > 1
            ]
            check(
                f"lisa/{split} {key}: (a) records == every sentence of every ref (multiset)",
                not missing and not extra and not dupidx,
                f"{sum(got.values())} records / {sum(exp.values())} expected; missing={dict(missing)} "
                f"extra={dict(extra)} dup(ref,sentence_index)={dupidx}",
            )
        # sentence_index consistency & templates
        bad_si, bad_tpl = [], []
        for r in recs:
            ref = ref_by_id[r["ref_id"]]
            si = r.get("sentence_index")
            if ref["image_id"] != r["image_id"] or not (
                isinstance(si, int)
                and 0 <= si < len(ref["sentences"])
                and ref["sentences"][si]["sent"] == r["sentence"]
            ):
                bad_si.append((r["ref_id"], si, r["sentence"]))
            if r["question_template"] != 3 or r["answer_template"] != 4:
                bad_tpl.append((r["ref_id"], r["question_template"], r["answer_template"]))
        check(
            f"lisa/{split}: sentence == ref.sentences[sentence_index]['sent'] and image_id matches ref",
            not bad_si,
            str(bad_si[:5]),
        )
        check(f"lisa/{split}: question_template==3, answer_template==4", not bad_tpl, str(bad_tpl[:5]))
        check_record_metrics(recs, gt, None, f"lisa/{split}")
        # records touching gt>1 refs: show them
        for r in recs:
            if r["ref_id"] in n2_refs and r["method"] == "litelvlm" and int(r["budget"]) == 576:
                log(
                    f"    gt>1 ref {r['ref_id']}: I={r['intersection']} U={r['union']} M={r['mask_area']} "
                    f"G={r['gt_area']} own #gt==1={int((gt[r['ref_id']] == 1).sum())} "
                    f"#gt>1={int((gt[r['ref_id']] > 1).sum())}"
                )
        check_results(out, recs, f"lisa/{split}")
        approx_crosscheck(recs, gt, segm, f"lisa/{split}")
        # mask sanity: not every mask trivially empty
        log(f"    mask_area distribution: {sorted(Counter(r['mask_area'] for r in recs).items())[:8]} ...")
        for fn in ("results.md", "budget_vs_ciou.png"):
            check(f"lisa/{split}: {fn} exists and non-empty", os.path.getsize(f"{out}/{fn}") > 0)

    # ---- extra: testB holds a list-of-RLE-dicts segmentation (GLaMM loader accepts this)
    out = f"{RUNS}/lisa_testB"
    p = run_eval(out, "testB", "lisa", 0, methods="random", budgets="64")
    check(
        "lisa/testB (list-of-RLE seg, uncompressed RLE, overlap image): exit 0",
        p.returncode == 0,
        p.stderr[-1500:] if p.returncode else "",
    )
    if p.returncode == 0:
        recs = load_records(out)
        exp = expected_lisa(refs, "testB")
        got = Counter((r["image_id"], r["ref_id"], r["sentence"]) for r in recs)
        check("lisa/testB: (a) records == every sentence", got == exp, f"got={dict(got)} exp={dict(exp)}")
        check_record_metrics(recs, gt, None, "lisa/testB")
        approx_crosscheck(recs, gt, segm, "lisa/testB")
        check_results(out, recs, "lisa/testB")

    # ---- precision exercise: DATA2 with GT built from segment's masks at chosen IoU targets
    data1 = DATA
    DATA2 = f"{BASE}/DATA2"
    if os.path.exists(DATA2):
        shutil.rmtree(DATA2)
    os.makedirs(f"{DATA2}/refcoco")
    shutil.copytree(f"{data1}/coco_2014", f"{DATA2}/coco_2014")
    inst = json.load(open(f"{data1}/refcoco/instances.json"))
    targets = [0.97, 0.88, 0.78, 0.68, 0.58, 0.45, 0.3]
    anns2, refs2, gt2, expect = [], [], {}, {}
    rid = 700000
    for iid, P in segm.items():
        H, W = P.shape
        idx = np.flatnonzero(P.ravel())
        nidx = np.flatnonzero(~P.ravel())
        if len(idx) < 200:
            continue
        for t in targets:
            rid += 1
            g = np.zeros(H * W, np.uint8)
            if rid % 2 == 0:  # subset of P
                g[idx[: int(round(t * len(idx)))]] = 1
            else:  # superset of P
                extra = int(round(len(idx) * (1 / t - 1)))
                if extra > len(nidx):
                    g[idx[: int(round(t * len(idx)))]] = 1
                else:
                    g[idx] = 1
                    g[nidx[:extra]] = 1
            g = g.reshape(H, W)
            gt2[rid] = g
            Pm = P
            expect[rid] = (Pm & (g == 1)).sum() / ((Pm | (g == 1)).sum())
            seg = {"size": [H, W], "counts": rle_string(rle_counts(g))}
            anns2.append(
                {
                    "id": rid,
                    "image_id": iid,
                    "category_id": 1,
                    "segmentation": seg,
                    "area": float(g.sum()),
                    "bbox": [0.0, 0.0, float(W), float(H)],
                    "iscrowd": 0,
                }
            )
            refs2.append(
                {
                    "ref_id": rid,
                    "ann_id": rid,
                    "image_id": iid,
                    "split": "val",
                    "sentences": [
                        {"sent": f"thing {rid}", "raw": f"thing {rid}", "tokens": ["thing"], "sent_id": rid}
                    ],
                    "sent_ids": [rid],
                    "file_name": "COCO_train2014_%012d_%d.jpg" % (iid, rid),
                    "category_id": 1,
                }
            )
    json.dump(
        {"images": inst["images"], "annotations": anns2, "categories": inst["categories"]},
        open(f"{DATA2}/refcoco/instances.json", "w"),
    )
    pickle.dump(refs2, open(f"{DATA2}/refcoco/refs(unc).p", "wb"))
    out = f"{RUNS}/lisa_prec"
    p = run_eval(out, "val", "lisa", 0, methods="litelvlm", budgets="576", root=DATA2)
    check(
        "precision data set (GT from segment masks, IoU targets 0.3..0.97): exit 0",
        p.returncode == 0,
        p.stderr[-1500:] if p.returncode else "",
    )
    if p.returncode == 0:
        recs = load_records(out)
        got = Counter((r["image_id"], r["ref_id"], r["sentence"]) for r in recs)
        check(
            "precision set: (a) all expressions", got == expected_lisa(refs2, "val"), f"{len(recs)} records"
        )
        check_record_metrics(recs, gt2, None, "precision set")
        approx_crosscheck(recs, gt2, segm, "precision set")
        res = check_results(out, recs, "precision set")
        mine = recompute(recs)
        dev = max(abs(v - expect[r["ref_id"]]) for v, r in zip(mine["_ious"], recs))
        exp_prec = {t: sum(1 for r in recs if expect[r["ref_id"]] >= float(t)) / len(recs) for t in THR}
        log(
            f"    IoUs from records vs designed (segment-mask) IoUs: max |diff|={dev:.5f}; designed P@X={exp_prec}; "
            f"reported P@X={res['results'][0]['precision']}"
        )
        check(
            "precision set: reported P@X == designed P@X (IoUs kept >=1% away from thresholds)",
            all(close(exp_prec[t], res["results"][0]["precision"][t]) for t in THR) and dev < 0.01,
        )

    # ---- 3: glamm protocol determinism
    outs = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = f"{RUNS}/glamm_val_seed{seed}{tag}"
        p = run_eval(out, "val", "glamm", seed)
        check(
            f"glamm/val seed{seed} run {tag}: exit 0",
            p.returncode == 0,
            p.stderr[-1500:] if p.returncode else "",
        )
        outs[tag] = out
    if all(os.path.exists(f"{o}/records.jsonl") for o in outs.values()):

        def strip(r):
            return {k: v for k, v in r.items() if "timing" not in k}

        ra, rb, rc = (load_records(outs[t]) for t in "abc")
        ja, jb, jc = (json.load(open(f"{outs[t]}/results.json")) for t in "abc")

        def strip_res(j):
            j = json.loads(json.dumps(j))
            j.get("config", {}).pop("out", None)
            return j

        check("glamm seed0 x2: results.json 'results' identical", ja["results"] == jb["results"])
        ca, cb = strip_res(ja), strip_res(jb)
        diffkeys = [
            k
            for k in set(ca.get("config", {})) | set(cb.get("config", {}))
            if ca.get("config", {}).get(k) != cb.get("config", {}).get(k)
        ]
        check("glamm seed0 x2: results.json config identical (except out dir)", not diffkeys, str(diffkeys))
        key = lambda r: (
            r["method"],
            int(r["budget"]),
            r["image_id"],
            r["ref_id"],
            r.get("sentence_index"),
            r["sentence"],
        )
        sa = sorted((strip(r) for r in ra), key=key)
        sb = sorted((strip(r) for r in rb), key=key)
        check(
            "glamm seed0 x2: records identical except *timing* fields (as multiset)",
            sa == sb,
            f"{len(sa)} vs {len(sb)}",
        )
        check(
            "glamm seed0 x2: records identical in file order too",
            [strip(r) for r in ra] == [strip(r) for r in rb],
        )
        log(
            f"    timing-like fields stripped: {sorted({k for r in ra for k in r if 'timing' in k})}; "
            f"record fields: {sorted(ra[0].keys())}"
        )
        # sampling checks on each run
        for tag, rs in (("seed0a", ra), ("seed1", rc)):
            per = defaultdict(list)
            for r in rs:
                per[(r["method"], int(r["budget"]), r["image_id"])].append(r)
            img_sents = defaultdict(list)  # (ref_id, idx, sent)
            for ref in refs:
                if split_match(ref["split"], "val"):
                    for i, s in enumerate(ref["sentences"]):
                        img_sents[ref["image_id"]].append((ref["ref_id"], i, s["sent"]))
            problems = []
            for (m, b, iid), lst in per.items():
                picks = [(r["ref_id"], r.get("sentence_index"), r["sentence"]) for r in lst]
                n_all = len(img_sents[iid])
                if len(picks) != min(3, n_all):
                    problems.append(((m, b, iid), f"{len(picks)} picks, expected {min(3, n_all)}"))
                if any(p not in img_sents[iid] for p in picks):
                    problems.append(((m, b, iid), f"pick not from image's sentences: {picks}"))
                if len(set(picks)) != len(picks):
                    problems.append(((m, b, iid), f"repeat: {picks}"))
                tq = [(r["question_template"], r["answer_template"]) for r in lst]
                if any(not (0 <= q < 16 and 0 <= a < 5) for q, a in tq):
                    problems.append(((m, b, iid), f"template out of range {tq}"))
            check(
                f"glamm/val {tag}: per image min(3,#sents) picks, all from image's val sentences, no repeats",
                not problems and set(i for _, _, i in per) == set(img_sents),
                str(problems[:4]) + f" images={sorted(set(i for _, _, i in per))} exp={sorted(img_sents)}",
            )
            # are picks the same across methods/budgets for one image? (report only)
            same = all(
                len(
                    {
                        tuple(sorted((r["ref_id"], r.get("sentence_index")) for r in per[(m, b, iid)]))
                        for (m, b) in {(k[0], k[1]) for k in per}
                    }
                )
                == 1
                for iid in img_sents
            )
            log(f"    {tag}: same sample across methods/budgets per image: {same}")
            for iid in sorted(img_sents):
                k = ("litelvlm", 576, iid)
                log(
                    f"    {tag} img {iid}: picks={[(r['ref_id'], r.get('sentence_index'), r['question_template'], r['answer_template']) for r in per.get(k, [])]}"
                )
            check_record_metrics(rs, gt, None, f"glamm/val {tag}")
        check_results(outs["a"], ra, "glamm/val seed0a")
        check_results(outs["c"], rc, "glamm/val seed1")
        sc = sorted((strip(r) for r in rc), key=key)
        check("glamm seed1 differs from seed0 somewhere (records)", sc != sa)

    # ---- 4: error behaviour
    bad_root = f"{BASE}/DATA_missing"
    if os.path.exists(bad_root):
        shutil.rmtree(bad_root)
    shutil.copytree(DATA, bad_root)
    missing = "COCO_train2014_%012d.jpg" % 3  # a val image
    os.remove(f"{bad_root}/coco_2014/train2014/{missing}")
    p = run_eval(f"{RUNS}/err_missing", "val", "lisa", 0, root=bad_root)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    log(f"    stderr: {p.stderr!r}"[:1500])
    check("missing image: exit code 2", p.returncode == 2, f"rc={p.returncode}")
    check(
        "missing image: exactly one stderr line naming the file, no traceback",
        len(lines) == 1 and missing in lines[0] and "Traceback" not in p.stderr,
        f"{len(lines)} lines",
    )
    p = run_eval(f"{RUNS}/err_split", "testC", "lisa", 0)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    log(f"    stderr: {p.stderr!r}"[:1500])
    check("split testC: exit code 2", p.returncode == 2, f"rc={p.returncode}")
    check(
        "split testC: message lists val, testA, testB; no traceback",
        all(s in p.stderr for s in ("val", "testA", "testB")) and "Traceback" not in p.stderr,
        f"{len(lines)} stderr lines",
    )

    n_fail = sum(1 for _, ok, _ in RESULTS if not ok)
    log(f"\nSUMMARY: {len(RESULTS) - n_fail} pass, {n_fail} fail, total time {time.time() - t0:.0f}s")
    for name, ok, d in RESULTS:
        if not ok:
            log(f"  FAIL {name}: {d[:3000]}")
    with open(f"{BASE}/report.txt", "w") as f:
        f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
