"""The app in a real browser: `facet-vlm app` serves it on 127.0.0.1, headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs) opens it, uploads a BU-3DFE .wrl scan through the file input and waits for
the prediction, the rendered views and the 3D view; a screenshot is saved under the test's tmp_path."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from datasets_scripts.scan_writers import write_wrl
from tests.test_app import DEFAULT_LABELS
from tests.test_pipeline import face_mesh, save_tiny_model


REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SERVER_START_S = 90  # the CLI and the first page run import torch and transformers
PAGE_S = 90
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2200",
)  # fmt: skip
# Share of the 3D view's canvas pixels that differ from its background colour (#0e1117).
PAINTED_SHARE_JS = """
const canvas = document.getElementById("mesh");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 0; i < data.length; i += 4) painted += (data[i] !== 14 || data[i + 1] !== 17 || data[i + 2] !== 23);
return painted / (data.length / 4);
"""
IMAGES_LOADED_JS = (
    "return document.images.length >= 3 && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(server, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"facet-vlm app exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the app did not answer /_stcore/health within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(server) -> None:
    """SIGTERM to the server's process group (it runs in a session of its own), SIGKILL if it lingers."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_upload_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model_dir, scan = tmp_path / "model", tmp_path / "F0001_HA04WH_F3D.wrl"
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "app", "--model", str(model_dir), "--port", str(port)],
            cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    driver = None
    try:
        save_tiny_model(model_dir)  # while the server starts: the page reads the model when the browser opens it
        mesh = face_mesh(size=24)
        write_wrl(scan, mesh.vertices, mesh.faces)
        wait_until_healthy(server, port, log)
        driver = chromium(tmp_path / "chromium-profile")
        driver.set_page_load_timeout(PAGE_S)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, PAGE_S)
        file_input = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
        assert str(model_dir) in driver.find_element(By.TAG_NAME, "body").text
        file_input.send_keys(str(scan))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=stIFrame], iframe"))
        wait.until(lambda d: d.execute_script(IMAGES_LOADED_JS))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "Prediction" in page and "Latency" in page and "CVSA view weights" in page
        assert all(label in page for label in DEFAULT_LABELS)
        assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid=stException], [data-testid=stAlertContentError]")
        driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
        painted = WebDriverWait(driver, 30).until(lambda d: d.execute_script(PAINTED_SHARE_JS) or None)
        assert painted > 0.02  # the offline 3D view drew the face
        driver.switch_to.default_content()
        screenshot = tmp_path / "app.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        stop(server)
