import os

# Tests never touch the network: make hub lookups fail fast instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from litelvlm.testing import make_tiny_clip, make_tiny_glamm, make_tiny_lisa  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_glamm_dir(tmp_path_factory):
    return make_tiny_glamm(tmp_path_factory.mktemp("tiny-glamm"), seed=0)


@pytest.fixture(scope="session")
def tiny_lisa_dir(tmp_path_factory):
    """LISA-7B-v1's layout: [SEG] is the 4th added token; CLIP at 224 px, 256 patches."""
    return make_tiny_lisa(tmp_path_factory.mktemp("tiny-lisa"), seed=0)


@pytest.fixture(scope="session")
def lisa_predictor(tiny_lisa_dir):
    """The tiny LISA in float32, shared by the LISA tests."""
    from litelvlm.hosts import GroundingPredictor

    return GroundingPredictor.from_pretrained(tiny_lisa_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def predictor(tiny_glamm_dir):
    """The tiny GLaMM in float32, shared by the host tests (each test sets its own image)."""
    from litelvlm.hosts import GroundingPredictor

    return GroundingPredictor.from_pretrained(tiny_glamm_dir, dtype=torch.float32, device="cpu")


# The device of the tests marked `device`: "cpu" by default, "cuda" on a GPU machine (benchmarks/gpu_check.sh).
TEST_DEVICE_VARIABLE = "LITELVLM_TEST_DEVICE"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the `device`-marked tests run on (LITELVLM_TEST_DEVICE, default cpu); they compare with a CPU
    reference. CUDA's float32 matrix products are kept in full float32 (no TF32) so 1e-4 tolerances hold."""
    name = os.environ.get(TEST_DEVICE_VARIABLE, "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        pytest.fail(f"{TEST_DEVICE_VARIABLE}={name!r} is not a torch device; use cpu or cuda.")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            pytest.fail(
                f"{TEST_DEVICE_VARIABLE}={name!r} but this machine (or torch build) has no CUDA device."
            )
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return chosen


def device_tolerance(device: torch.device, rtol: float, atol: float) -> dict:
    """assert_close tolerances for a result on `device` against a CPU reference: the CPU test's own on a CPU,
    at least 1e-4 elsewhere (other kernels sum in other orders)."""
    if device.type == "cpu":
        return {"rtol": rtol, "atol": atol}
    return {"rtol": max(rtol, 1e-4), "atol": max(atol, 1e-4)}


@pytest.fixture(scope="session")
def device_predictor(device, predictor, tiny_glamm_dir):
    """The tiny GLaMM in float32 on the test device, loaded as a user would; on a CPU the shared `predictor`."""
    from litelvlm.hosts import GroundingPredictor

    if device.type == "cpu":
        return predictor
    return GroundingPredictor.from_pretrained(tiny_glamm_dir, dtype=torch.float32, device=device)


@pytest.fixture(scope="session")
def scorer(tiny_clip_dir):
    from litelvlm.scoring import ClipScorer

    return ClipScorer.from_pretrained(tiny_clip_dir)


def random_image(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A smooth random picture (noise blurred by upscaling), so neighbouring patches resemble each other."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 16 + 1, width // 16 + 1, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def images():
    return [random_image(seed, 320 + 16 * seed, 240 - 8 * seed) for seed in range(3)]


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.jpg"
    random_image(7).save(path, quality=95)
    return path


def capture_seg_states(predictor, expressions, **predict_options):
    """Run predict() and return (prediction, rows fed to text_hidden_fcs [n, H], final hidden states [L, H] of the
    first sequence)."""
    captured = {}
    model = predictor.model
    hooks = [
        model.text_hidden_fcs.register_forward_hook(lambda m, i, o: captured.__setitem__("seg", i[0])),
        model.llm.model.register_forward_hook(
            lambda m, i, o: captured.__setitem__("hidden", o.last_hidden_state)
        ),
    ]
    try:
        prediction = predictor.predict(expressions, **predict_options)
    finally:
        for hook in hooks:
            hook.remove()
    return prediction, captured["seg"], captured["hidden"][0]


def matching_rows(rows, hidden):
    """For each row, the index of the hidden state it equals (nearest in L1)."""
    return [int((hidden - row).abs().sum(dim=-1).argmin()) for row in rows]
