"""Drive the served web page in Debian's headless Chromium (selenium + the system chromedriver, nothing
downloaded): used by tests/test_serve_page.py, and run as a script to take the README's screenshot:

    PYTHONPATH=. python tests/pagedriver.py docs/serve_page.png      # the bundled model reads examples/
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def missing_browser() -> str | None:
    """Why the page cannot be driven here (None when it can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is absent (Debian package {package}; setup.sh installs it when run as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model: str | os.PathLike | None = None, *extra: str, timeout: float = 60.0) -> Iterator[str]:
    """Run `masterocr serve` on 127.0.0.1 and a free port until the model is loaded; yields the base URL."""
    import httpx2

    port = free_port()
    cmd = [sys.executable, "-m", "masterocr.cli.main", "serve", "--port", str(port), "--log-level", "warning",
           *(["--model", str(model)] if model else []), *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"masterocr serve exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"masterocr serve not ready after {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chromium(width: int = 1000, height: int = 700) -> Iterator["object"]:
    """A headless Chromium with a fresh profile, driven through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    with tempfile.TemporaryDirectory(prefix="masterocr-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(20)
            yield driver
        finally:
            driver.quit()


HEAT_PIXELS_JS = """
const canvas = arguments[0];
if (canvas.hidden || !canvas.dataset.char) return 0;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
return n;
"""


def upload_and_read(driver, url: str, images: list[str | os.PathLike], timeout: float = 15.0) -> list[dict]:
    """Open the page, pick `images` with the file input, wait until every card shows its reading.

    Returns per card (newest first, as the page shows them) its text, its character spans' probabilities
    (title attributes) and its error, if any."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element((By.ID, "model-info"), "model "))
    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(Path(p).resolve()) for p in images))
    WebDriverWait(driver, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done, .card.failed")) == len(images))
    cards = []
    for card in driver.find_elements(By.CSS_SELECTOR, ".card"):
        chars = card.find_elements(By.CSS_SELECTOR, ".text .char")
        errors = card.find_elements(By.CSS_SELECTOR, ".error")
        cards.append({"text": "".join(c.text for c in chars), "titles": [c.get_attribute("title") for c in chars],
                      "error": errors[0].text if errors else None, "element": card})
    return cards


def hover_char(driver, card, index: int, timeout: float = 5.0) -> int:
    """Hover character `index` of a card; returns how many pixels of its heat-map are drawn."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    span = card.find_elements(By.CSS_SELECTOR, ".text .char")[index]
    ActionChains(driver).move_to_element(span).perform()
    canvas = card.find_element(By.CSS_SELECTOR, "canvas.heat")
    WebDriverWait(driver, timeout).until(lambda d: canvas.get_attribute("data-char") == str(index))
    return int(driver.execute_script(HEAT_PIXELS_JS, canvas))


def screenshot(out: str | os.PathLike, model: str | None = None) -> None:
    """The page with the bundled model reading the example images, a heat-map shown on the first one."""
    examples = [REPO / "examples" / f"word_{i}.png" for i in (1, 5, 7, 4)]  # shown newest first; 7 has a doubt
    with served(model) as url, chromium(900, 900) as driver:
        cards = upload_and_read(driver, url, examples)
        hover_char(driver, cards[0]["element"], 2)
        driver.save_screenshot(str(out))
    print(f"wrote {out}: " + ", ".join(c["text"] for c in cards))


if __name__ == "__main__":
    reason = missing_browser()
    if reason:
        sys.exit(f"pagedriver: {reason}")
    screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/serve_page.png")
