"""The web page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
against a real `masterocr serve` on 127.0.0.1: give the API key, pick images, see their text and a heat-map."""

import pytest
from pagedriver import hover_char, missing_browser, served, upload_and_read
from wordimages import render_word

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


def test_page_reads_uploads_and_shows_a_heat_map(tiny_weights, tmp_path, monkeypatch):
    from pagedriver import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("MASTEROCR_PAGE_KEY", "page-key")
    paths = []
    for word in ("home", "road"):
        paths.append(tmp_path / f"{word}.png")
        render_word(word).save(paths[-1])
    paths.append(tmp_path / "broken.png")
    paths[-1].write_bytes(b"this is not a png")
    with served(tiny_weights, "--api-key-env", "MASTEROCR_PAGE_KEY") as url, chromium() as driver:
        # The server wants a key: the page asks for it, and keeps it for the tab (the reload below).
        driver.get(url + "/")
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "key-box").is_displayed())
        assert driver.find_element(By.ID, "model-info").text == "API key needed"
        driver.find_element(By.ID, "api-key").send_keys("page-key")
        driver.find_element(By.ID, "key-save").click()
        cards = upload_and_read(driver, url, paths)
        assert not driver.find_element(By.ID, "key-box").is_displayed()
        assert "model tiny (torch, input 32x64)" in driver.find_element("id", "model-info").text
        # One request, one card per file; the three cards show, newest first, in reverse upload order.
        assert [c["text"] for c in cards] == ["", "road", "home"]
        assert cards[0]["error"] == "broken.png: not an image file (unknown format)"
        for card in cards[1:]:
            assert card["error"] is None and len(card["titles"]) == 4
            assert all(t.startswith(f"'{ch}'  p = ") for t, ch in zip(card["titles"], card["text"]))
            assert "confidence" in card["element"].text
        assert hover_char(driver, cards[2]["element"], 0) > 0  # 'h' of home: its attention is drawn
        assert hover_char(driver, cards[1]["element"], 3) > 0  # 'd' of road
        logs = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        expected = [m for m in logs if "/v1/models" in m and "401" in m]  # the first look, before the key
        assert len(expected) == 1 and logs == expected, logs
