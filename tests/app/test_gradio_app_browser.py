"""The web app in a real headless Chromium: start it on 127.0.0.1 (a free port), run the bundled reconstruction example
at tiny size through the page, and check that the page shows the orbit video and the 3D model. A screenshot is
saved as <tmp>/app.png. Needs gradio, selenium, chromium and chromium-driver (the README's install line)."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TINY = [
    "data.height=32", "data.width=32", "data.batch_size=512", "data.n_test_views=4", "data.n_val_views=1",
    "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=1000",
    "system.geometry.pos_encoding_config.log2_hashmap_size=14", "system.renderer.num_samples_per_ray=64",
    "system.exporter.isosurface_resolution=40", "system.exporter.texture_size=128",
    "system.exporter.decimate_target_faces=2000", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]
pytestmark = pytest.mark.slow


def require_browser_stack():
    missing = [m for m in ("gradio", "selenium") if importlib.util.find_spec(m) is None]
    missing += [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        message = f"browser test needs {missing}: run the README's install line"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tmp_path):
    require_browser_stack()
    port = free_port()
    outputs = tmp_path / "outputs"
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "gradio_app.py"), "--port", str(port), "--outputs",
                             str(outputs)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                raise AssertionError(f"the app did not start:\n{(tmp_path / 'app.log').read_text()[-4000:]}")
            time.sleep(1)
    yield url, outputs
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
def browser(tmp_path):
    require_browser_stack()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--window-size=1400,2200",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_for(predicate, timeout, what, driver=None, tmp_path=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is still changing
            value = None
        if value:
            return value
        time.sleep(1)
    if driver is not None and tmp_path is not None:
        driver.save_screenshot(str(tmp_path / "timeout.png"))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_reconstruction_example_through_the_page(app_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, outputs = app_server
    driver = browser
    driver.get(url)
    wait_for(lambda: driver.find_element(By.ID, "start"), 120, "the page")
    # the default recipe is the reconstruction of the bundled example; tiny size through the advanced box
    driver.find_element(By.CSS_SELECTOR, "#steps input").clear()
    driver.find_element(By.CSS_SELECTOR, "#steps input").send_keys("6")
    driver.find_element(By.CSS_SELECTOR, "#extra textarea").send_keys("\n".join(TINY))
    driver.find_element(By.ID, "start").click()
    wait_for(lambda: "Queued job 1" in driver.find_element(By.ID, "notice").text, 60, "the job to be queued",
             driver, tmp_path)
    # live progress: the status line shows the stage and the step count while the job runs
    wait_for(lambda: "step" in driver.find_element(By.ID, "status").text, 240, "live progress", driver, tmp_path)
    wait_for(lambda: "done" in driver.find_element(By.ID, "status").text, 600, "the job to finish", driver, tmp_path)
    status = driver.find_element(By.ID, "status").text
    assert "step 6/6" in status, status

    # the orbit video is loaded in a <video> element
    def video_ready():
        return driver.execute_script(
            "const v = document.querySelector('#video video');"
            "return v && v.readyState >= 1 && v.duration > 0 ? [v.currentSrc, v.duration] : null;")
    src, duration = wait_for(video_ready, 120, "the orbit video", driver, tmp_path)
    assert src.startswith(url) and src.endswith(".mp4") and duration > 0
    # the 3D model viewer has a canvas and was given the GLB
    wait_for(lambda: driver.execute_script("return document.querySelector('#model3d canvas') !== null"), 120,
             "the 3D viewer", driver, tmp_path)
    html = driver.find_element(By.ID, "model3d").get_attribute("innerHTML")
    downloads = driver.find_element(By.ID, "downloads").text.replace("\n", "")
    assert "model.glb" in downloads and "last.ckpt" in downloads, downloads
    time.sleep(3)  # let the viewer draw the model before the screenshot
    driver.save_screenshot(str(tmp_path / "app.png"))
    assert (tmp_path / "app.png").stat().st_size > 10_000

    # the page only ever talked to the app on 127.0.0.1
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [r for r in resources if not r.startswith(url) and not r.startswith(("data:", "blob:"))]
    assert not outside, outside

    # an ordinary trial folder, resumable from the command line
    trials = [os.path.join(outputs, "reconstruction-example", d)
              for d in os.listdir(os.path.join(outputs, "reconstruction-example"))]
    assert len(trials) == 1 and "job1" in trials[0]
    trial = trials[0]
    for rel in ("ckpts/last.ckpt", "configs/parsed.yaml", "save/it6-test.mp4", "save/it6-export/model.glb"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    assert json.load(open(os.path.join(trial, "progress.json")))["stage"] == "done"
    assert html  # the viewer element rendered something
