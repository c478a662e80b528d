"""The web page at / in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
against a real `masterocr serve` on 127.0.0.1: pick images, see their text and a heat-map."""

import pytest
from pagedriver import hover_char, missing_browser, served, upload_and_read
from wordimages import render_word

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


def test_page_reads_uploads_and_shows_a_heat_map(tiny_weights, tmp_path):
    from pagedriver import chromium

    paths = []
    for word in ("home", "road"):
        paths.append(tmp_path / f"{word}.png")
        render_word(word).save(paths[-1])
    paths.append(tmp_path / "broken.png")
    paths[-1].write_bytes(b"this is not a png")
    with served(tiny_weights) as url, chromium() as driver:
        cards = upload_and_read(driver, url, paths)
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
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert logs == [], logs
