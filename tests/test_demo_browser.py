"""`litelvlm demo --tiny` served for real and used as a visitor would: a headless Chromium (the system's, driven
by Playwright; nothing downloads a browser) uploads, types, runs, moves the budget and uploads a non-image; then
20 concurrent requests through Gradio's Python client.

Outside CI the tests are skipped, with the reason printed, when Playwright or a Chromium binary is missing; in CI
(environment variable CI set) a missing browser is a failure. The page's screenshot is saved under
$LITELVLM_ARTIFACTS (default: pytest's temporary directory).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from litelvlm.demo.examples import draw_scene
from litelvlm.viz import display_copy

GLAMM = "tiny GLaMM (random)"
START_TIMEOUT = 180  # seconds for the tiny models to be built and the page served


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("LITELVLM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo on the tiny models in its own process: (url, seconds from the command to a served page)."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "litelvlm", "demo", "--tiny", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - start > START_TIMEOUT:
                pytest.fail(f"the demo did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        served = time.perf_counter() - start
        print(f"\nlitelvlm demo --tiny: page served {served:.1f} s after the command")
        yield url, served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        binary = None
    if binary is None:
        reason = "no Playwright or no Chromium binary (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        print(f"\nskipped: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def files(tmp_path):
    image = tmp_path / "shapes.png"
    draw_scene("shapes").save(image)
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    return image, text


def artifacts_dir(tmp_path) -> Path:
    directory = Path(os.environ.get("LITELVLM_ARTIFACTS", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def idle(page) -> None:
    """Wait until no output shows Gradio's pending state (its "processing | 1.2s" timer)."""
    page.wait_for_function("() => !document.body.innerText.includes('processing |')", timeout=60_000)


def test_page_in_a_real_browser(server, browser, files, tmp_path):
    url, _ = server
    image, text = files
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.get_by_text("Random weights: masks are meaningless").wait_for(timeout=30_000)

    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.locator("#expressions textarea").fill("the red circle\nthe blue square")
    page.locator("#run").click()  # the budget slider starts at 64
    info = page.locator("#info")
    info.get_by_text("64 / 576").wait_for(timeout=60_000)
    idle(page)
    assert page.locator("#overlay img").count() == 1 and page.locator("#masks img").count() == 1
    assert " ms" in info.inner_text() and "LLM" in info.inner_text()
    page.screenshot(path=str(artifacts_dir(tmp_path) / "demo_page.png"), full_page=True)

    start = time.perf_counter()
    page.locator("#budget input[type=number]").fill("32")
    page.locator("#budget input[type=number]").press("Enter")  # a new budget re-runs by itself
    info.get_by_text("32 / 576").wait_for(timeout=60_000)
    print(f"\nbudget change to an updated page: {time.perf_counter() - start:.2f} s")
    idle(page)
    assert "64 / 576" not in info.inner_text()

    page.get_by_role("tab", name="compare").click()
    page.locator("#compare").click()
    page.locator("#compare-info").get_by_text("IoU(A, B)").first.wait_for(timeout=60_000)
    idle(page)
    assert page.locator("#compare-a img").count() == 1 and page.locator("#compare-b img").count() == 1
    assert "litelvlm" in page.locator("#compare-info").inner_text()

    page.locator("#upload button[aria-label]").first.click()  # clear the file, then upload a non-image
    page.locator("#upload input[type=file]").set_input_files(str(text))
    page.locator("#run").click()
    page.locator("#status").get_by_text("is not an image this server can read").wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    assert errors == [], errors
    page.close()


def test_twenty_concurrent_requests_complete_and_the_server_still_answers(server, files):
    from gradio_client import Client, handle_file

    url, _ = server
    image, _ = files
    expected = display_copy(Image.open(image))[0].size

    def request(number):
        client = Client(url, verbose=False)
        budget = 16 + 8 * (number % 4)
        overlay, masks, info, status = client.predict(
            handle_file(str(image)), "the red circle", GLAMM, "litelvlm", budget, False, api_name="/run"
        )
        return budget, Image.open(overlay).size, Image.open(masks).size, info, status

    start = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(request, range(20)))
    seconds = time.perf_counter() - start
    print(f"\n20 concurrent requests: {seconds:.1f} s ({20 / seconds:.2f} requests/s)")
    for budget, overlay_size, masks_size, info, status in results:
        assert status == "done", status
        assert overlay_size == expected and masks_size == expected
        assert f"**{budget} / 576** visual tokens kept" in info
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
    lisa = Client(url, verbose=False).predict(
        handle_file(str(image)), "the red circle", "tiny LISA (random)", "fastv", 200, False, api_name="/run"
    )
    assert lisa[3] == "done" and "**256 / 256** visual tokens enter the LLM" in lisa[2]  # the other host
    assert "per decoder layer on average" in lisa[2]  # an in-LLM method prunes inside
