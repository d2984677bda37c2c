"""Bad input to the commands and the Python API: one sentence naming the value and the fix, a non-zero exit
code (or `LiteLVLMError`), no traceback, and nothing written before lost or overwritten. Also the run-directory
guarantees (a lock, parents created, stale temporaries removed) and file permissions."""

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_input import assert_one_sentence, run_cli, snapshot
from litelvlm import cli
from litelvlm.cli import eval_command
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts import GroundingPredictor
from litelvlm.io import write_atomic
from litelvlm.scoring import ClipScorer
from litelvlm.selection import TokenScores, select_tokens
from litelvlm.selection.feasibility import check_combinations, synthetic_scores
from litelvlm.testing import make_tiny_refcoco


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_refcoco(tmp_path_factory.mktemp("refer"), dataset="refcoco", num_images=6, seed=0)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot create files in, even as root (chmod, then the immutable flag)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    if _writable(directory):
        immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    if _writable(directory):
        directory.chmod(0o755)
        pytest.skip("no way to make a directory unwritable here (root without chattr)")
    yield directory
    if immutable:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o755)


def _writable(directory) -> bool:
    probe = directory / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


# ---------------------------------------------------------------- refused by the parser, before any import of work
PARSE_TIME = {
    "select budget zero": (["select", "--image", "x.jpg", "--text", "a", "--budget", "0"], ["--budget", "at least 1"]),
    "select budget word": (["select", "--image", "x.jpg", "--text", "a", "--budget", "many"], ["'many'", "64"]),
    "select unknown method": (
        ["select", "--image", "x.jpg", "--text", "a", "--budget", "8", "--method", "fastvv"], ["fastvv", "choose"]),
    "select share above 1": (
        ["select", "--image", "x.jpg", "--text", "a", "--budget", "8", "--low-similarity-share", "2"], ["'2'", "[0, 1]"]),
    "select option without =": (
        ["select", "--image", "x.jpg", "--text", "a", "--budget", "8", "--option", "ratio"], ["'ratio'", "NAME=VALUE"]),
    "select no image": (["select", "--text", "a", "--budget", "8"], ["--image", "--help"]),
    "eval seed negative": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--seed", "-1"], ["--seed", "-1", ">= 0"]),
    "eval seed word": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--seed", "abc"], ["'abc'", "whole number"]),
    "eval limit zero": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--limit", "0"], ["--limit", ">= 1"]),
    "eval budgets twice": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--budgets", "64,64"],
                           ["budget 64 is listed twice", "once"]),
    "eval methods twice": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--methods", "random,random"],
                           ["method random", "once"]),
    "eval jsonl and data root": (["eval", "--model", "m", "--jsonl", "d", "--data-root", "r", "--out", "o"],
                                 ["--jsonl and --data-root cannot be combined", "only one"]),
    "eval dtype": (["eval", "--model", "m", "--jsonl", "d", "--out", "o", "--dtype", "float64"], ["float64", "choose"]),
    "bench threads negative": (["bench", "--threads", "-1"], ["--threads", "-1", ">= 1"]),
    "bench runs zero": (["bench", "--runs", "0"], ["--runs", ">= 1"]),
    "bench warmup negative": (["bench", "--warmup", "-1"], ["--warmup", ">= 0"]),
    "bench llm layers zero": (["bench", "--llm-layers", "0"], ["--llm-layers", ">= 1"]),
    "segment max new tokens": (["segment", "--model", "m", "--image", "x", "--text", "a", "--out", "m.png",
                                "--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    "analyze budget zero": (["analyze", "--jsonl", "d", "--out", "o", "--budgets", "64,0"], ["--budgets", "at least 1"]),
}  # fmt: skip


@pytest.mark.parametrize("case", PARSE_TIME)
def test_parse_time_refusals(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, names = PARSE_TIME[case]
    code, out, err = run_cli(capsys, *argv)
    assert_one_sentence(code, err, *names)
    assert out == "" and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- outputs: checked first, written last, together
def select_args(clip, image, *extra):
    return ["select", "--clip", clip, "--image", image, "--text", "a dog", "--budget", "8", *extra]


def test_select_with_one_unwritable_output_changes_no_other(
    tiny_clip_dir, image_file, unwritable_dir, tmp_path, capsys
):
    keep = tmp_path / "keep.json"
    keep.write_text("earlier result\n")
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *select_args(tiny_clip_dir, image_file, "--json", keep,
                                                  "--overlay", unwritable_dir / "o.png"))  # fmt: skip
    assert_one_sentence(
        code, err, "--overlay", str(unwritable_dir / "o.png"), "not writable", "writable location"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "flag, name, names",
    [
        ("--json", "{ro}/x.json", ["--json", "not writable"]),
        ("--json", "{tmp}", ["is a directory", "file name"]),
        ("--overlay", "{tmp}/o.gif", ["--overlay", ".png"]),
        ("--json", "/dev/null/x.json", ["/dev/null", "not a directory"]),
    ],
    ids=["unwritable json", "json is a directory", "overlay format", "json under a file"],
)
def test_select_bad_output_locations(
    tiny_clip_dir, image_file, unwritable_dir, tmp_path, capsys, flag, name, names
):
    path = name.format(ro=unwritable_dir, tmp=tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *select_args(tiny_clip_dir, image_file, flag, path))
    assert_one_sentence(code, err, *names)
    assert out == "" and snapshot(tmp_path) == before


def test_two_outputs_naming_one_file(tiny_clip_dir, image_file, tmp_path, capsys):
    same = tmp_path / "o.png"
    code, _, err = run_cli(capsys, *select_args(tiny_clip_dir, image_file, "--json", same, "--overlay", same))
    assert_one_sentence(code, err, "--json and --overlay", "own file")
    assert not same.exists()


def test_overlay_format_follows_the_name_and_parents_are_created(tiny_clip_dir, image_file, tmp_path, capsys):
    overlay = tmp_path / "new" / "dir" / "kept.jpg"
    code, _, err = run_cli(capsys, *select_args(tiny_clip_dir, image_file, "--overlay", overlay))
    assert code == 0, err
    assert overlay.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as named (not PNG bytes under a .jpg name)


def test_segment_failing_json_leaves_the_earlier_mask(
    tiny_glamm_dir, image_file, unwritable_dir, tmp_path, capsys
):
    mask = tmp_path / "m.png"
    mask.write_bytes(b"earlier mask")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "segment", "--model", tiny_glamm_dir, "--image", image_file, "--text", "a dog",
                           "--out", mask, "--json", unwritable_dir / "s.json", "--dtype", "float32")  # fmt: skip
    assert_one_sentence(code, err, "--json", "not writable")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "argv, names",
    [
        (["eval", "--model", "{model}", "--data-root", "{data}", "--out", "{ro}/run"], ["--out", "not writable"]),
        (["eval", "--model", "{model}", "--data-root", "{data}", "--out", "{image}"], ["--out", "is a file"]),
        (["analyze", "--clip", "{clip}", "--data-root", "{data}", "--out", "{ro}/an"], ["--out", "not writable"]),
        (["bench", "--json", "{ro}/b.json"], ["--json", "not writable"]),
        (["bench", "--plot", "{tmp}/b.jpg"], ["--plot", ".png"]),
    ],
    ids=["eval out unwritable", "eval out is a file", "analyze out unwritable", "bench json unwritable",
         "bench plot not png"],
)  # fmt: skip
def test_unwritable_outputs_are_refused_before_any_work(
    tiny_glamm_dir,
    tiny_clip_dir,
    data_root,
    image_file,
    unwritable_dir,
    tmp_path,
    capsys,
    monkeypatch,
    argv,
    names,
):
    import litelvlm.hosts.predictor as predictor_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(predictor_module.GroundingPredictor, "from_pretrained", no_model)
    values = {"model": tiny_glamm_dir, "clip": tiny_clip_dir, "data": data_root, "ro": unwritable_dir,
              "image": image_file, "tmp": tmp_path}  # fmt: skip
    before = snapshot(tmp_path)
    start = time.perf_counter()
    code, _, err = run_cli(capsys, *[arg.format(**values) for arg in argv])
    assert_one_sentence(code, err, *names)
    assert time.perf_counter() - start < 5  # bench would build a 16 GiB model first
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- method x budget x option: all checked up front
def eval_args(model, data_root, out, *extra):
    return ["eval", "--model", model, "--data-root", data_root, "--out", out, "--dtype", "float32",
            "--no-progress", "--limit", "1", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--methods", "random,fastv", "--budgets", "16"], ["fastv cannot average 16", "--budget-mode final"]),
        (["--methods", "vispruner", "--budgets", "64,16", "--option", "important_ratio=2"], ["important_ratio"]),
        (["--methods", "random", "--budgets", "16", "--option", "important_ratio=0.5"],
         ["--option 'important_ratio' is not an option of random"]),
        (["--methods", "trim", "--budgets", "16", "--option", "count_extra=maybe"], ["count_extra", "true or false"]),
    ],
    ids=["infeasible in-LLM budget", "option out of range", "option no method takes", "option of the wrong type"],
)  # fmt: skip
def test_infeasible_combinations_write_nothing(tiny_glamm_dir, data_root, tmp_path, capsys, extra, names):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *eval_args(tiny_glamm_dir, data_root, out, *extra))
    assert_one_sentence(code, err, *names)
    assert not out.exists()  # no run.json to block the corrected command


def test_analyze_refuses_an_in_llm_method(tiny_clip_dir, data_root, tmp_path, capsys):
    code, _, err = run_cli(capsys, "analyze", "--clip", tiny_clip_dir, "--data-root", data_root, "--out",
                           tmp_path / "an", "--methods", "litelvlm,pdrop", "--no-progress")  # fmt: skip
    assert_one_sentence(code, err, "'pdrop' prunes inside the LLM", "drop it")
    assert not (tmp_path / "an").exists()


def test_api_and_cli_word_the_budget_mode_fix_each_their_way():
    scores = {"pdrop": {"budget_mode": "average"}}
    with pytest.raises(LiteLVLMError) as caught:
        check_combinations(["pdrop"], [8], scores, grid=(24, 24), num_layers=32)
    assert "budget_mode='final'" in str(caught.value)
    assert "--budget-mode final" in caught.value.cli_message


# ---------------------------------------------------------------- the run directory
def test_run_json_that_is_not_json(tiny_glamm_dir, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    before = snapshot(out)
    code, _, err = run_cli(capsys, *eval_args(tiny_glamm_dir, data_root, out, "--budgets", "16"))
    assert_one_sentence(code, err, "run.json", "not valid JSON", "another --out")
    assert {name: digest for name, digest in snapshot(out).items() if name != ".lock.rank0"} == before


def test_a_second_run_into_a_held_directory_is_refused(tiny_glamm_dir, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    script = (
        "import sys, time; from pathlib import Path; from litelvlm.evaluation.run_directory import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, *eval_args(tiny_glamm_dir, data_root, out, "--budgets", "16"))
        assert_one_sentence(code, err, "another litelvlm run is writing into", "another --out")
        assert sorted(p.name for p in out.iterdir()) == [".lock.rank0"]
    finally:
        holder.kill()
        holder.wait()


def test_eval_creates_parents_removes_stale_temporaries_and_says_it_resumes(tiny_glamm_dir, data_root, tmp_path,
                                                                             capsys):  # fmt: skip
    out = tmp_path / "runs" / "refcoco" / "val"
    args = eval_args(tiny_glamm_dir, data_root, out, "--methods", "random", "--budgets", "16")
    args.remove("--no-progress")
    assert run_cli(capsys, *args)[0] == 0
    stale = out / ".results.json.abc123.tmp"  # what a kill during a final write leaves
    stale.write_text("half")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "1 of 1 image x method x budget units already done" in err
    assert not stale.exists()


def test_accelerate_cpu_with_several_processes_is_detected(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` starts one process; eval reads the launcher's command line."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--num_processes", "2"])
    try:
        while b"--num_processes" not in Path(f"/proc/{launcher.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the child has exec'd
        monkeypatch.setattr(os, "getppid", lambda: launcher.pid)
        monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
        assert eval_command._accelerate_cpu_processes_requested() == 2
        monkeypatch.delenv("ACCELERATE_USE_CPU")
        assert eval_command._accelerate_cpu_processes_requested() == 0
    finally:
        launcher.kill()
        launcher.wait()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "f.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- start-up, help
def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, _, err = run_cli(capsys, "select", "--help")
    assert code == 130 and err == "litelvlm: interrupted\n"


def test_importing_the_cli_does_not_import_torch():
    """So Ctrl-C during torch's (slow) import reaches main()'s handler, not the console script's import line."""
    result = subprocess.run([sys.executable, "-c", "import sys, litelvlm.cli; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == "False"


def test_help_shows_defaults(capsys):
    code, out, _ = run_cli(capsys, "eval", "--help")
    out = " ".join(out.split())  # as wrapped for any terminal width
    assert code == 0
    assert "(default: bfloat16)" in out and "(default: compact)" in out and "(default: 0)" in out


# ---------------------------------------------------------------- the Python API
def tiny_scores(similarity=None, grid=(4, 4)):
    count = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(0)
    return TokenScores(
        batch_size=1,
        num_patches=count,
        grid=grid,
        similarity=torch.rand(1, 1, count, generator=generator) if similarity is None else similarity,
        context=torch.rand(1, count, generator=generator),
    )


API_SELECT = {
    "seed as text": (dict(method="random", seed="7"), ["seed", "'7'", "whole number"]),
    "seed negative": (dict(method="random", seed=-1), ["seed", "-1", ">= 0"]),
    "share as text": (dict(method="litelvlm", low_similarity_share="half"), ["low_similarity_share", "a number"]),
    "nan scores": (dict(method="litelvlm", similarity=torch.full((1, 1, 16), float("nan"))), ["similarity", "NaN"]),
    "all +inf": (dict(method="topk_similarity", similarity=torch.full((1, 1, 16), float("inf"))), ["infinite"]),
    "one nan": (dict(method="litelvlm", similarity=torch.rand(1, 1, 16).index_fill(2, torch.tensor([3]), float("nan"))),
                ["1 NaN"]),
    "in-LLM method": (dict(method="fastv"), ["inside the LLM", "GroundingPredictor"]),
    "unknown option": (dict(method="litelvlm", budgte=8), ["'budgte'", "order"]),
}  # fmt: skip


@pytest.mark.parametrize("case", API_SELECT)
def test_select_tokens_refusals(case):
    options, names = API_SELECT[case]
    options = dict(options)
    method, similarity = options.pop("method"), options.pop("similarity", None)
    with pytest.raises(LiteLVLMError) as caught:
        select_tokens(method, tiny_scores(similarity), 4, **options)
    for name in names:
        assert name in str(caught.value)


API_PREDICT = {
    "a str, not a list": (lambda p: p.predict("red box"), ["the string 'red box'", "['red box']"]),
    "None in the list": (lambda p: p.predict([None]), ["[None]", "predict_batch"]),
    "budget as text": (lambda p: p.predict(["a dog"], budget="64"), ["'64'", "whole number"]),
    "budget zero": (lambda p: p.predict(["a dog"], budget=0), ["at least 1"]),
    "unknown keyword": (lambda p: p.predict(["a dog"], budgte=8), ["'budgte'", "its options are"]),
    "max_new_tokens text": (lambda p: p.predict(["a"], max_new_tokens="5"), ["max_new_tokens", "'5'"]),
    "text_source": (lambda p: p.predict(["a"], text_source="both"), ["text_source", "'both'"]),
    "positions": (lambda p: p.predict(["a"], positions="rope"), ["positions", "'rope'", "compact"]),
    "set_image empty": (lambda p: p.set_image([]), ["non-empty list", "list []"]),
    "set_image a number": (lambda p: p.set_image(3), ["int 3", "PIL image"]),
    "set_image 4-d array": (lambda p: p.set_image(np.zeros((1, 8, 8, 3), np.uint8)), ["(1, 8, 8, 3)"]),
}  # fmt: skip


@pytest.mark.parametrize("case", API_PREDICT)
def test_predictor_refusals(predictor, images, case):
    call, names = API_PREDICT[case]
    predictor.set_image(images[0])
    with pytest.raises(LiteLVLMError) as caught:
        call(predictor)
    for name in names:
        assert name in str(caught.value), str(caught.value)
    assert "--" not in str(caught.value)  # Python API messages name arguments, not CLI flags


def test_predictor_accepts_a_numpy_image_like_sams(predictor, images):
    predictor.set_image(np.asarray(images[0]))
    from_array = predictor.predict(["a dog"], budget=16).results[0].mask
    predictor.set_image(images[0])
    assert np.array_equal(from_array, predictor.predict(["a dog"], budget=16).results[0].mask)


# ---------------------------------------------------------------- found by a black-box review (253 cases)
API_MORE = {
    "text beyond the context": (lambda p, s: p.predict(["word " * 6000]), ["context of 4096", "shorten"]),
    "special token in the text": (lambda p, s: p.predict(["the [SEG] box"]), ["special token '[SEG]'", "remove"]),
    "generation beyond the context": (
        lambda p, s: p.predict(["a dog"], generate_answer=True, max_new_tokens=100_000),
        ["plus 100000 to generate", "lower max_new_tokens"],
    ),
    "scorer set_image None": (lambda p, s: s.set_image(None), ["NoneType None", "PIL image"]),
    "scorer set_image empty": (lambda p, s: s.set_image([]), ["non-empty list"]),
    "select_tokens without scores": (
        lambda p, s: select_tokens("litelvlm", None, 8), ["TokenScores", "NoneType", "scorer.score"]),
    "select_tokens on a tensor": (
        lambda p, s: select_tokens("litelvlm", torch.zeros(1, 576), 8), ["TokenScores", "Tensor"]),
    "option out of range says what to pass": (
        lambda p, s: select_tokens("vispruner", synthetic_scores((4, 4)), 4, important_ratio=2.0), ["pass a value in [0, 1]"]),
}  # fmt: skip


@pytest.mark.parametrize("case", API_MORE)
def test_more_api_refusals(predictor, scorer, images, case):
    call, names = API_MORE[case]
    predictor.set_image(images[0])
    with pytest.raises(LiteLVLMError) as caught:
        call(predictor, scorer)
    for name in names:
        assert name in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda clip: ClipScorer.from_pretrained(5), ["path_or_id", "int 5"]),
        (lambda clip: ClipScorer.from_pretrained(clip, dtype="int8"), ["'int8'", "torch.bfloat16"]),
        (lambda clip: ClipScorer.from_pretrained(clip, dtype=5), ["dtype 5"]),
        (lambda clip: GroundingPredictor.from_pretrained(clip, clip=3), ["clip must be", "int 3"]),
    ],
    ids=["checkpoint a number", "dtype int8", "dtype a number", "clip a number"],
)
def test_loading_arguments_of_the_wrong_type(tiny_clip_dir, call, names):
    with pytest.raises(LiteLVLMError) as caught:
        call(tiny_clip_dir)
    for name in names:
        assert name in str(caught.value), str(caught.value)


def test_dtype_names_are_accepted_as_the_cli_accepts_them(tiny_clip_dir):
    assert ClipScorer.from_pretrained(tiny_clip_dir, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("flag", ["--json", "--overlay"])
def test_an_output_may_not_replace_the_input_image(tiny_clip_dir, tmp_path, capsys, flag):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (90, 10, 10)).save(image)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, *select_args(tiny_clip_dir, image, flag, image))
    assert_one_sentence(code, err, flag, "would replace the --image file", "another name")
    assert snapshot(tmp_path) == before


def test_successful_commands_say_what_they_wrote(tiny_clip_dir, image_file, tmp_path, capsys):
    files = [tmp_path / "s.json", tmp_path / "s.png"]
    code, _, err = run_cli(
        capsys, *select_args(tiny_clip_dir, image_file, "--json", files[0], "--overlay", files[1])
    )
    assert code == 0 and err == f"litelvlm select: wrote {files[0]}, {files[1]}\n"


def test_a_directory_given_for_a_file_gets_a_useful_example(tiny_clip_dir, image_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, *select_args(tiny_clip_dir, image_file, "--json", tmp_path))
    assert_one_sentence(code, err, f"such as '{tmp_path / 'json.json'}'")


def test_a_garbage_preprocessor_config(tiny_clip_dir, image_file, tmp_path, capsys):
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    (clip / "preprocessor_config.json").write_text("[1")
    code, _, err = run_cli(capsys, *select_args(clip, image_file))
    assert_one_sentence(code, err, "preprocessor_config.json", "not valid JSON", "re-download")


def test_report_on_a_file_and_on_an_unwritable_run(image_file, unwritable_dir, capsys):
    code, _, err = run_cli(capsys, "report", image_file)
    assert_one_sentence(code, err, "is a file", "run directory")
    code, _, err = run_cli(capsys, "report", unwritable_dir)
    assert_one_sentence(code, err, "not writable")


def test_max_new_tokens_without_generate(tiny_glamm_dir, image_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "segment", "--model", tiny_glamm_dir, "--image", image_file, "--text", "a dog",
                           "--out", tmp_path / "m.png", "--max-new-tokens", "5")  # fmt: skip
    assert_one_sentence(code, err, "--max-new-tokens applies to --generate")
    assert list(tmp_path.iterdir()) == [image_file]


def test_an_undecodable_rle_in_jsonl_is_refused_at_load(tmp_path):
    from litelvlm.data import load_jsonl

    Image.new("RGB", (32, 24)).save(tmp_path / "a.jpg")
    (tmp_path / "refs.jsonl").write_text(
        '{"image": "a.jpg", "expression": "x", "mask": {"size": [24, 32], "counts": "!!!"}}\n'
    )
    with pytest.raises(LiteLVLMError, match=r"line 1 of .*cannot be decoded.*re-encode"):
        load_jsonl(tmp_path / "refs.jsonl")


@pytest.mark.parametrize("command", ["analyze", "bench", "eval", "segment"])
def test_every_option_with_a_default_shows_it(command, capsys):
    code, out, _ = run_cli(capsys, command, "--help")
    out = " ".join(out.split())
    expected = {
        "analyze": ["(default: litelvlm,topk_similarity,random)", "(default: 192,128,64)", "(default: glamm)",
                    "(default: questions)"],
        "bench": ["(default: litelvlm)", "(default: the full 32)", "(default: 'the man in the red shirt"],
        "eval": ["(default: refcoco)", "(default: val)", "(default: all)"],
        "segment": ["(default: 64)", "(default: litelvlm)", "(default: identity)"],
    }[command]  # fmt: skip
    assert code == 0 and all(text in out for text in expected), [t for t in expected if t not in out]
