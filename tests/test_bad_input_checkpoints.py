"""Bad checkpoints, devices and texts end in one sentence naming the file, field or value and the fix.

Every broken checkpoint is a copy of a tiny one with one small corruption (the session fixtures stay intact):
damaged weight files (CLIP and host), config.json fields of the wrong kind, config sizes or tokenizers that
contradict the weights (which loaded before and gave wrong results), hub ids that are not cached when the hub
cannot be reached, devices this machine lacks, and texts no prompt should hold. CLI cases also check that files
written before stay byte-identical.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import litelvlm.checkpoints
from bad_input import assert_one_sentence, run_cli, snapshot
from conftest import random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts import GroundingPredictor
from litelvlm.scoring import ClipScorer, check_text

CLIP_WEIGHTS = "model.safetensors"
SHARD_1, SHARD_2 = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
CLI_FLAGS = ("--clip", "--model", "--device")


# ------------------------------------------------------------------------------------------------------ helpers
def copy_of(source: Path, tmp_path: Path, name: str = "checkpoint") -> Path:
    """A private copy of a tiny checkpoint (without a host's bundled CLIP) to break."""
    return Path(shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("clip")))


def assert_api_sentence(error: LiteLVLMError, *names: str) -> str:
    """The Python API's contract: one sentence naming `names` (case-insensitive), in Python terms (no flags)."""
    message = str(error)
    assert "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.;] [A-Z][a-z]", message), f"more than one sentence: {message}"
    assert not any(flag in message for flag in CLI_FLAGS), f"a CLI flag in an API message: {message}"
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not in {message!r}"
    return message


def set_field(directory: Path, field: str, value) -> None:
    """Set a (dotted) field of directory/config.json."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    *parents, last = field.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[last] = value
    path.write_text(json.dumps(config))


def field_edit(field: str, value):
    return lambda directory: set_field(directory, field, value)


def garbage(name: str):
    """Replace a weight file by bytes of something else (a pickle opcode, then text)."""
    return lambda directory: (directory / name).write_bytes(b"\x80\x02not a checkpoint at all " * 40)


def truncated(name: str):
    """Cut a weight file to a third, as an interrupted download leaves it."""

    def edit(directory):
        path = directory / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])

    return edit


def edit_clip_weights(change):
    """Rewrite the CLIP safetensors file after `change(state)`."""

    def edit(directory):
        state = load_file(directory / CLIP_WEIGHTS)
        change(state)
        save_file(state, directory / CLIP_WEIGHTS, metadata={"format": "pt"})

    return edit


def clip_as_bin(damage):
    """The CLIP weights as pytorch_model.bin (the layout of openai's own repos), then damaged."""

    def edit(directory):
        torch.save(load_file(directory / CLIP_WEIGHTS), directory / "pytorch_model.bin")
        (directory / CLIP_WEIGHTS).unlink()
        damage(directory)

    return edit


def host_as_safetensors(damage):
    """The host shards merged into model.safetensors (what users convert to), then damaged."""

    def edit(directory):
        state = {}
        for shard in (SHARD_1, SHARD_2):
            state.update(torch.load(directory / shard, weights_only=True))
            (directory / shard).unlink()
        (directory / "pytorch_model.bin.index.json").unlink()
        save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
        damage(directory)

    return edit


def edit_shard(name: str, change):
    def edit(directory):
        state = torch.load(directory / name, weights_only=True)
        change(state)
        torch.save(state, directory / name)

    return edit


def add_token(directory: Path) -> None:
    """One more added token than the checkpoint's embedding has rows (a tokenizer from another checkpoint)."""
    path = directory / "added_tokens.json"
    added = json.loads(path.read_text())
    added["<extra>"] = max(added.values()) + 1
    path.write_text(json.dumps(added))


@pytest.fixture
def earlier(tmp_path):
    """A directory holding the outputs of an earlier run, which a failing command must leave untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "selection.json").write_text('{"earlier": true}\n')
    Image.new("L", (4, 4)).save(out / "mask.png")
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    random_image(3, 64, 48).save(path)
    return path


def select_cli(capsys, clip, photo, earlier, *extra):
    return run_cli(capsys, "select", "--clip", clip, "--image", photo, "--text", "the dog", "--budget", "64",
                   "--json", earlier / "selection.json", *extra)  # fmt: skip


def segment_cli(capsys, model, photo, earlier, *extra, text="the dog"):
    return run_cli(capsys, "segment", "--model", model, "--image", photo, "--text", text, "--out",
                   earlier / "mask.png", "--dtype", "float32", "--device", "cpu", *extra)  # fmt: skip


# ------------------------------------------------------------------------------------------- CLIP checkpoints
CLIP_CASES = {
    "garbage safetensors": (garbage(CLIP_WEIGHTS), [CLIP_WEIGHTS, "cannot be read", "re-download"]),
    "truncated safetensors": (truncated(CLIP_WEIGHTS), [CLIP_WEIGHTS, "SafetensorError", "re-download"]),
    "garbage bin": (clip_as_bin(garbage("pytorch_model.bin")), ["pytorch_model.bin", "re-download"]),
    "truncated bin": (clip_as_bin(truncated("pytorch_model.bin")), ["pytorch_model.bin", "re-download"]),
    "tensor of the wrong shape": (
        edit_clip_weights(lambda s: s.__setitem__("vision_model.post_layernorm.weight", torch.zeros(7))),
        ["vision_model.post_layernorm.weight", CLIP_WEIGHTS, "(7,)", "(32,)", "re-download"],
    ),
    "missing tensor": (
        edit_clip_weights(lambda s: s.pop("text_projection.weight")),
        ["lack 1 tensor", "text_projection.weight", "re-download"],
    ),
    "hidden_size a word": (
        field_edit("vision_config.hidden_size", "sixty-four"),
        [
            "config.json",
            "vision_config.hidden_size",
            "'sixty-four'",
            "positive whole number",
            "fix that field",
        ],
    ),
    "zero layers": (
        field_edit("vision_config.num_hidden_layers", 0),
        ["vision_config.num_hidden_layers = 0", "positive whole number"],
    ),
    "negative layers": (
        field_edit("text_config.num_hidden_layers", -1),
        ["text_config.num_hidden_layers = -1", "positive whole number"],
    ),
    "a list for a number": (
        field_edit("projection_dim", [16]),
        ["projection_dim = [16]", "positive whole number"],
    ),
    "fewer layers than the weights hold": (
        field_edit("vision_config.num_hidden_layers", 2),
        [
            "vision_config.num_hidden_layers = 2",
            "hold 3 vision encoder layers",
            "set vision_config.num_hidden_layers to 3",
        ],
    ),
    "heads that do not divide the width": (
        field_edit("text_config.num_attention_heads", 5),
        ["text_config.hidden_size = 32", "text_config.num_attention_heads = 5", "does not divide"],
    ),
    "unknown activation": (
        field_edit("vision_config.hidden_act", "wiggle"),
        ["config.json", "describes no CLIP model", "'wiggle'", "fix config.json"],
    ),
    "config.json not an object": (
        lambda d: (d / "config.json").write_text("[1, 2]"),
        ["config.json", "no JSON object", "re-download"],
    ),
}


@pytest.mark.parametrize("case", CLIP_CASES)
def test_broken_clip_checkpoint_through_the_api(tiny_clip_dir, tmp_path, case):
    edit, names = CLIP_CASES[case]
    broken = copy_of(tiny_clip_dir, tmp_path)
    edit(broken)
    with pytest.raises(LiteLVLMError) as error:
        ClipScorer.from_pretrained(broken)
    assert_api_sentence(error.value, *names)


@pytest.mark.parametrize(
    "case", ["garbage safetensors", "hidden_size a word", "fewer layers than the weights hold"]
)
def test_broken_clip_checkpoint_through_the_cli(tiny_clip_dir, tmp_path, photo, earlier, capsys, case):
    edit, names = CLIP_CASES[case]
    broken = copy_of(tiny_clip_dir, tmp_path)
    edit(broken)
    before = snapshot(earlier)
    code, out, err = select_cli(capsys, broken, photo, earlier)
    assert_one_sentence(code, err, *names)
    assert out == "" and snapshot(earlier) == before


def test_clip_tokenizer_larger_than_the_text_embeddings(tiny_clip_dir, tmp_path):
    """Consistent config and weights with 1000 text-embedding rows, and the real 49408-token tokenizer: ids
    beyond row 999 would fail deep in torch.embedding."""
    broken = copy_of(tiny_clip_dir, tmp_path)
    key = "text_model.embeddings.token_embedding.weight"
    edit_clip_weights(lambda s: s.__setitem__(key, s[key][:1000].clone()))(broken)
    set_field(broken, "text_config.vocab_size", 1000)
    with pytest.raises(LiteLVLMError) as error:
        ClipScorer.from_pretrained(broken)
    assert_api_sentence(error.value, "49408 tokens", "1000 rows", key, CLIP_WEIGHTS, "tokenizer files")


# ------------------------------------------------------------------------------------------- host checkpoints
def host_cases(vocab: int) -> dict:
    """Breakages of a tiny host checkpoint whose embedding has `vocab` rows (64 wide, 4 layers, CLIP 32 wide)."""
    return {
        "garbage shard": (garbage(SHARD_2), [SHARD_2, "cannot be read", "re-download"]),
        "truncated shard": (truncated(SHARD_1), [SHARD_1, "re-download"]),
        "shard holding a list": (lambda d: torch.save([1, 2], d / SHARD_1), [SHARD_1, "not a dictionary"]),
        "garbage safetensors": (host_as_safetensors(garbage("model.safetensors")), ["model.safetensors"]),
        "truncated safetensors": (
            host_as_safetensors(truncated("model.safetensors")),
            ["model.safetensors", "SafetensorError", "re-download"],
        ),
        "tensor of the wrong shape": (
            edit_shard(SHARD_2, lambda s: s.__setitem__("model.text_hidden_fcs.0.2.bias", torch.zeros(7))),
            ["model.text_hidden_fcs.0.2.bias", SHARD_2, "(7,)", "(256,)", "re-download"],
        ),
        "hidden_size a word": (
            field_edit("hidden_size", "sixty-four"),
            ["config.json", "hidden_size = 'sixty-four'", "positive whole number", "fix that field"],
        ),
        "zero layers": (
            field_edit("num_hidden_layers", 0),
            ["num_hidden_layers = 0", "positive whole number"],
        ),
        "negative layers": (field_edit("num_hidden_layers", -2), ["num_hidden_layers = -2", "positive"]),
        "a list for mm_hidden_size": (
            field_edit("mm_hidden_size", [32]),
            ["mm_hidden_size = [32]", "whole number"],
        ),
        "a string for out_dim": (field_edit("out_dim", "256"), ["out_dim = '256'", "positive whole number"]),
        "true for vocab_size": (
            field_edit("vocab_size", True),
            ["vocab_size = True", "positive whole number"],
        ),
        "a word for select layer": (
            field_edit("mm_vision_select_layer", "penultimate"),
            ["mm_vision_select_layer"],
        ),
        "heads that do not divide": (
            field_edit("num_attention_heads", 5),
            ["hidden_size = 64", "num_attention_heads = 5", "does not divide"],
        ),
        "unknown activation": (
            field_edit("hidden_act", "wiggle"),
            ["config.json", "cannot be built", "'wiggle'", "fix config.json"],
        ),
        # config sizes the weights contradict
        "mm_hidden_size against the projector": (
            field_edit("mm_hidden_size", 48),
            ["mm_hidden_size = 48", "model.mm_projector", "32-wide", "set mm_hidden_size to 32"],
        ),
        "hidden_size against the embedding": (
            field_edit("hidden_size", 128),
            ["hidden_size = 128", "model.embed_tokens.weight", "64 wide", "set hidden_size to 64"],
        ),
        "fewer layers than the weights hold": (
            field_edit("num_hidden_layers", 3),
            ["num_hidden_layers = 3", "hold 4 decoder layers", "set num_hidden_layers to 4"],
        ),
        # a tokenizer from another checkpoint: its last id is past the embedding
        "tokenizer larger than the embedding": (
            add_token,
            [
                "tokenizer.model",
                "added_tokens.json",
                f"{vocab + 1} tokens",
                f"{vocab} rows",
                "[SEG] = id",
                "model.embed_tokens.weight",
                "tokenizer files that came with this checkpoint",
            ],
        ),
    }


GLAMM_CASES = host_cases(vocab=407)
LISA_CASES = host_cases(vocab=404)


@pytest.mark.parametrize("case", GLAMM_CASES)
def test_broken_glamm_checkpoint(tiny_glamm_dir, tmp_path, case):
    edit, names = GLAMM_CASES[case]
    broken = copy_of(tiny_glamm_dir, tmp_path)
    edit(broken)
    with pytest.raises(LiteLVLMError) as error:
        GroundingPredictor.from_pretrained(
            broken, clip=tiny_glamm_dir / "clip", dtype=torch.float32, device="cpu"
        )
    assert_api_sentence(error.value, *names)


LISA_SUBSET = ["garbage shard", "truncated safetensors", "hidden_size a word", "mm_hidden_size against the projector",
               "tokenizer larger than the embedding"]  # fmt: skip


@pytest.mark.parametrize("case", LISA_SUBSET)
def test_broken_lisa_checkpoint(tiny_lisa_dir, tmp_path, case):
    edit, names = LISA_CASES[case]
    broken = copy_of(tiny_lisa_dir, tmp_path)
    edit(broken)
    with pytest.raises(LiteLVLMError) as error:
        GroundingPredictor.from_pretrained(
            broken, clip=tiny_lisa_dir / "clip", dtype=torch.float32, device="cpu"
        )
    message = assert_api_sentence(error.value, *names)
    if "projector" in case:
        assert "model.mm_projector.weight" in message  # LISA's one Linear


@pytest.mark.parametrize("case", ["garbage shard", "zero layers", "tokenizer larger than the embedding"])
def test_broken_glamm_checkpoint_through_the_cli(tiny_glamm_dir, tmp_path, photo, earlier, capsys, case):
    edit, names = GLAMM_CASES[case]
    broken = copy_of(tiny_glamm_dir, tmp_path)
    edit(broken)
    before = snapshot(earlier)
    code, out, err = segment_cli(capsys, broken, photo, earlier, "--clip", tiny_glamm_dir / "clip")
    assert_one_sentence(code, err, *names)
    assert out == "" and snapshot(earlier) == before


def test_a_config_vocab_size_the_embedding_contradicts_is_a_warning(tiny_glamm_dir, tmp_path):
    """A config that missed the tokenizer's resize must not block good weights: the model takes the embedding's
    rows (and the tokenizer is checked against those)."""
    broken = copy_of(tiny_glamm_dir, tmp_path)
    field_edit("vocab_size", 32000)(broken)
    with pytest.warns(
        UserWarning, match="vocab_size = 32000 but model.embed_tokens.weight .* has 407 rows; using 407"
    ):
        loaded = GroundingPredictor.from_pretrained(
            broken, clip=tiny_glamm_dir / "clip", dtype=torch.float32, device="cpu"
        )
    assert loaded.model.llm.model.embed_tokens.num_embeddings == 407


def test_the_tokenizer_that_fits_still_loads(tiny_glamm_dir, predictor):
    """The check compares the right numbers: the intact checkpoint's tokenizer fills its embedding exactly."""
    rows = predictor.model.llm.model.embed_tokens.num_embeddings
    assert predictor.tokenizer.vocab_size == rows == 407 and predictor.tokenizer.seg_id < rows


# -------------------------------------------------------------------------------------------- hub ids offline
@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it (whatever this machine has cached)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, source: Path, files=None) -> Path:
    """Put `source` (or only `files` of it) into the hub cache layout as repo_id's main revision."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot_dir = repo / "snapshots" / ("0" * 40)
    snapshot_dir.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and (files is None or path.name in files):
            shutil.copy(path, snapshot_dir / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot_dir


OFFLINE_NAMES = [
    "not in the local Hugging Face cache",
    "hub cannot be reached",
    "HF_HUB_OFFLINE=1",
    "local directory",
]


def test_uncached_clip_id_offline_is_one_sentence_at_once(empty_hub_cache, photo, earlier, capsys):
    before = snapshot(earlier)
    start = time.perf_counter()
    code, out, err = select_cli(capsys, "openai/clip-vit-large-patch14-336", photo, earlier)
    assert time.perf_counter() - start < 5
    assert_one_sentence(code, err, "'openai/clip-vit-large-patch14-336'", *OFFLINE_NAMES, "with --clip")
    assert "Retrying" not in err and out == "" and snapshot(earlier) == before


def test_uncached_host_id_offline_through_the_cli(empty_hub_cache, photo, earlier, capsys):
    code, _, err = segment_cli(capsys, "MBZUAI/GLaMM-RefSeg", photo, earlier)
    assert_one_sentence(code, err, "'MBZUAI/GLaMM-RefSeg'", *OFFLINE_NAMES, "with --model")


@pytest.mark.parametrize("load", ["clip", "host", "host's clip"])
def test_uncached_ids_offline_through_the_api(empty_hub_cache, tiny_lisa_dir, load):
    calls = {
        "clip": lambda: ClipScorer.from_pretrained("openai/clip-vit-large-patch14"),
        "host": lambda: GroundingPredictor.from_pretrained("xinlai/LISA-7B-v1", device="cpu"),
        "host's clip": lambda: GroundingPredictor.from_pretrained(
            tiny_lisa_dir, clip="openai/clip-vit-large-patch14", device="cpu"
        ),
    }
    with pytest.raises(LiteLVLMError) as error:
        calls[load]()
    assert_api_sentence(error.value, *OFFLINE_NAMES)


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset, as on a machine whose user did not set it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_an_unreachable_hub_is_probed_once_and_briefly(empty_hub_cache, online, monkeypatch):
    """Without HF_HUB_OFFLINE, one quick probe of the endpoint decides; a closed port answers at once."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    probes = []
    real_probe = litelvlm.checkpoints.probe_endpoint

    def probe(url, timeout):
        probes.append(timeout)
        return real_probe(url, timeout)

    monkeypatch.setattr(litelvlm.checkpoints, "probe_endpoint", probe)
    start = time.perf_counter()
    with pytest.raises(LiteLVLMError) as error:
        ClipScorer.from_pretrained("openai/clip-vit-large-patch14-336")
    assert time.perf_counter() - start < 5 and probes == [litelvlm.checkpoints.HUB_PROBE_TIMEOUT] == [3.0]
    assert_api_sentence(
        error.value, "http://127.0.0.1:9 did not answer", "HF_HUB_OFFLINE=1", "local directory"
    )


def test_a_host_id_with_a_silent_hub(empty_hub_cache, online, monkeypatch):
    monkeypatch.setattr(litelvlm.checkpoints, "probe_endpoint", lambda url, timeout: False)
    with pytest.raises(LiteLVLMError) as error:
        GroundingPredictor.from_pretrained("MBZUAI/GLaMM-RefSeg", device="cpu")
    assert_api_sentence(error.value, "'MBZUAI/GLaMM-RefSeg'", *OFFLINE_NAMES)


def test_a_cached_hub_id_loads_offline(empty_hub_cache, tiny_clip_dir):
    directory = cache_repo(empty_hub_cache, "someone/tiny-clip", tiny_clip_dir)
    scorer = ClipScorer.from_pretrained("someone/tiny-clip")
    assert scorer.num_patches == 576
    assert litelvlm.checkpoints.cached_snapshot("someone/tiny-clip") == str(directory)


def test_a_partly_cached_hub_id_is_not_taken_for_cached(empty_hub_cache, tiny_clip_dir):
    cache_repo(empty_hub_cache, "someone/tiny-clip", tiny_clip_dir, files={"config.json"})
    with pytest.raises(LiteLVLMError) as error:
        ClipScorer.from_pretrained("someone/tiny-clip")
    assert_api_sentence(error.value, "'someone/tiny-clip'", *OFFLINE_NAMES)


def test_path_errors_name_no_cli_flag_in_the_api(tmp_path, tiny_clip_dir):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "file", tmp_path):
        for load in (ClipScorer.from_pretrained, GroundingPredictor.from_pretrained):
            with pytest.raises(LiteLVLMError) as error:
                load(path)
            assert_api_sentence(error.value, repr(str(path)))


# ---------------------------------------------------------------------------------------------------- devices
def _absent(device: str) -> bool:
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return torch.cuda.device_count() <= int(index or 0)
    if kind == "mps":
        return not torch.backends.mps.is_available()
    return True


DEVICE_CASES = {
    "cuda": ["'cuda'", "not available", 'use "cpu"'],
    "cuda:7": ["'cuda:7'", 'use "cpu"'],
    "mps": ["'mps'", "not available", 'use "cpu"'],
    "gpu": ["'gpu'", "not a torch device", 'use "cpu"'],
    "meta": ["'meta'", 'use "cpu"'],
}


@pytest.mark.parametrize("device", DEVICE_CASES)
@pytest.mark.parametrize("loader", ["clip", "host"])
def test_a_device_this_machine_lacks(tiny_clip_dir, tiny_glamm_dir, loader, device):
    if not _absent(device):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(LiteLVLMError) as error:
        if loader == "clip":
            ClipScorer.from_pretrained(tiny_clip_dir, device=device)
        else:
            GroundingPredictor.from_pretrained(tiny_glamm_dir, dtype=torch.float32, device=device)
    assert_api_sentence(error.value, *DEVICE_CASES[device])


# ------------------------------------------------------------------------------------------------------ texts
TEXT_CASES = {
    "a number": (5, ["text 5", "is a int, not a string"]),
    "None": (None, ["text None", "not a string"]),
    "bytes": (b"the dog", ["b'the dog'", "not a string", "str"]),
    "a nested list": (["the dog"], ["['the dog']", "not a string"]),
    "undecodable bytes": (
        "the d\udcffg",
        ["'the d\\udcffg'", "not valid UTF-8", "pass the expression as UTF-8"],
    ),
    "the image placeholder": ("the <image> dog", ["'the <image> dog'", "contains <image>", "remove it"]),
    "only the placeholder": ("<image>", ["contains <image>", "remove it"]),
    "blank": ("  ", ["empty", "referring expression"]),
}


@pytest.mark.parametrize("case", TEXT_CASES)
def test_check_text_refuses(case):
    text, names = TEXT_CASES[case]
    with pytest.raises(LiteLVLMError) as error:
        check_text(text)
    assert_api_sentence(error.value, *names)


def test_check_text_accepts_ordinary_unicode():
    for text in ("the man in red", "le café à gauche", "左边的狗", "the [SEG]-free <img> tag"):
        assert check_text(text) == text


@pytest.mark.parametrize("case", ["undecodable bytes", "the image placeholder"])
def test_bad_text_through_the_cli(tiny_clip_dir, photo, earlier, capsys, case):
    text, names = TEXT_CASES[case]
    before = snapshot(earlier)
    code, out, err = select_cli(capsys, tiny_clip_dir, photo, earlier, "--text", text)
    assert_one_sentence(code, err, *names)
    assert out == "" and snapshot(earlier) == before


def test_image_placeholder_in_a_segment_expression(tiny_glamm_dir, photo, earlier, capsys):
    before = snapshot(earlier)
    code, _, err = segment_cli(capsys, tiny_glamm_dir, photo, earlier, text="<image> the dog")
    assert_one_sentence(code, err, "contains <image>", "remove it")
    assert snapshot(earlier) == before


def test_image_placeholder_in_predict(predictor):
    predictor.set_image(random_image(5, 64, 48))
    with pytest.raises(LiteLVLMError) as error:
        predictor.predict(["the <image>"])
    assert_api_sentence(error.value, "contains <image>")


def test_a_flat_list_of_texts_for_two_images(scorer, images):
    scorer.set_image(images[:2])
    with pytest.raises(LiteLVLMError) as error:
        scorer.score(["a", "b"])
    assert_api_sentence(error.value, "2 images", "one list of texts per image", "[['a'], ['b']]")
    assert scorer.score([["a"], ["b"]]).similarity.shape == (2, 1, 576)
    shared = scorer.score(["a", "b"], shared_texts=True)
    assert shared.similarity.shape == (2, 2, 576)


def test_a_flat_list_for_one_image_still_works(scorer, images):
    scorer.set_image(images[0])
    assert scorer.score(["a", "b"]).similarity.shape == (1, 2, 576)


def test_texts_mixing_strings_and_lists(scorer, images):
    scorer.set_image(images[:2])
    with pytest.raises(LiteLVLMError) as error:
        scorer.score(["a", ["b"]])
    assert_api_sentence(error.value, "mixes strings and lists", "one list of texts per image")


def test_non_string_texts_in_score(scorer, images):
    scorer.set_image(images[0])
    with pytest.raises(LiteLVLMError) as error:
        scorer.score([3])
    assert_api_sentence(error.value, "text 3", "not a string")
