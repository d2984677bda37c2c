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
