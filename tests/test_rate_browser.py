"""`genlab rate` end to end in a real headless browser (Debian's chromium, driven by Selenium):
the server in its own process, keys pressed on the page, the judgements read back from SQLite,
then the server killed with SIGKILL and every answered judgement still there.

Skipped, saying why, only where no chromium/chromedriver is installed (`.ci/run` installs them).
With GENLAB_SCREENSHOT=PATH, the page showing the pictures is saved there as a PNG (the README's).
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO
from rate_workdirs import make_run, translations

from launch.rate.store import Store

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
DRIVER = shutil.which("chromedriver")
WAIT_S = 120  # only catches a hang: a loaded 2-core machine can be slow
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BROWSER is None or DRIVER is None,
        reason="no headless browser here (chromium and chromedriver not on PATH): "
        "apt-get install chromium chromium-driver",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,860")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    yield driver
    driver.quit()


def _digits(noise: float, seed: int) -> np.ndarray:
    """32 MNIST test digits in [0, 1] with `noise` of uniform noise mixed in: a better and a
    worse "model" (random pixels where the data is absent)."""
    rng = np.random.default_rng(seed)
    file = DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
    if file.is_file():
        with gzip.open(file) as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16)
        images = raw[: 32 * 784].reshape(32, 28, 28, 1) / 255.0
    else:
        images = rng.random((32, 28, 28, 1))
    return (1 - noise) * images + noise * rng.random(images.shape)


def _runs(trained_lm: Path, root: Path) -> list[Path]:
    """The real trained run and a second LM (its config, other text), two translation runs and
    two image runs: 4 comparisons."""
    other_lm = root / "other_lm"
    (other_lm / "samples").mkdir(parents=True)
    shutil.copy(trained_lm / "config.json", other_lm)
    newest = sorted((trained_lm / "samples").glob("step_*.txt"))[-1]
    (other_lm / "samples" / newest.name).write_text("ROMEO:\nWhat light through yonder breaks")
    return [
        trained_lm,
        other_lm,
        make_run(
            root, "mt_a", "seq2seq", {"step_0000020.txt": translations(["Hund.", "Zwei Schach."])}
        ),
        make_run(
            root,
            "mt_b",
            "seq2seq",
            {
                "step_0000020.txt": translations(
                    ["Ein Hund rennt über das Gras.", "Zwei Männer spielen Schach."]
                )
            },
        ),
        make_run(root, "gan_sharp", "gan", {"samples_0000020.png": _digits(0.05, 0)}),
        make_run(root, "gan_noisy", "gan", {"samples_0000020.png": _digits(0.6, 1)}),
    ]


def _serve(runs: list[Path], store: Path) -> tuple[subprocess.Popen, str]:
    """`genlab rate` in its own process on a free port; the process and its address."""
    flags = ["--runs", *map(str, runs), "--store", str(store), "--port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "rate", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()  # printed once it listens (EOF if it failed)
    if "serving http://127.0.0.1:" not in line:
        server.kill()
        pytest.fail(f"genlab rate did not start: {line}{server.stderr.read()}")
    return server, line.split("serving ")[1].split()[0]


def _offer(driver) -> str | None:
    found = driver.find_elements(By.NAME, "offer")
    return found[0].get_attribute("value") if found else None


def test_rating_in_a_browser_with_the_keyboard(browser, trained_lm, tmp_path):
    runs = _runs(trained_lm, tmp_path / "runs")
    store = tmp_path / "ratings.sqlite"
    server, url = _serve(runs, store)
    try:
        browser.get(url + "?rater=tester")
        assert "0 of 4 judged" in browser.find_element(By.ID, "progress").text
        keys = [Keys.ARROW_LEFT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN, "1"]
        for key in keys:
            page = browser.page_source
            assert not any(run.name in page for run in runs)  # names hidden
            screenshot = os.environ.get("GENLAB_SCREENSHOT")
            if screenshot and browser.find_elements(By.CSS_SELECTOR, ".side img"):
                WebDriverWait(browser, WAIT_S).until(
                    lambda d: d.execute_script(
                        "return [...document.images].every(i => i.complete && i.naturalWidth)"
                    )
                )
                browser.save_screenshot(screenshot)
            shown = _offer(browser)
            browser.find_element(By.TAG_NAME, "body").send_keys(key)
            WebDriverWait(browser, WAIT_S).until(lambda d, shown=shown: _offer(d) != shown)
        assert "Nothing left to rate" in browser.find_element(By.ID, "done").text
        browser.refresh()
        assert browser.find_elements(By.ID, "done")  # never the same pair twice

        judged = Store(store).judgements()
        assert [j.choice for j in judged] == ["left", "right", "tie", "left"]
        assert {j.rater for j in judged} == {"tester"}
        items = {j.item for j in judged}
        assert {i.split(":")[0] for i in items} == {"prompt", "source", "image"} and len(items) == 4
        assert all({j.left_run, j.right_run} <= {str(r.resolve()) for r in runs} for j in judged)
    finally:
        server.send_signal(signal.SIGKILL)  # as if killed: nothing answered may be lost
        server.wait()
        server.stdout.close()
        server.stderr.close()
    assert [j.choice for j in Store(store).judgements()] == ["left", "right", "tie", "left"]

    again, url = _serve(runs, store)  # the same rater after a restart: nothing left
    try:
        browser.get(url + "?rater=tester")
        assert browser.find_elements(By.ID, "done")
    finally:
        again.send_signal(signal.SIGKILL)
        again.wait()
        again.stdout.close()
        again.stderr.close()
