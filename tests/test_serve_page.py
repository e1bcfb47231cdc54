"""The web page of `maemi serve` in a real headless Chromium, against a real `maemi serve` process on the tiny run of
test_assistant with an API key: enter the key, pick a micrograph, see it, its caption, its top classes as bars and
its measurements, ask a question in the chat and get the Assistant's answer; a 16-bit TIFF is previewed through the
server; a file that is not an image gets the server's message on the page.

Chromium and chromedriver come from Debian (`make test` installs them: see the Makefile's browser target); the test
skips, saying so, only where they are not installed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from maemi.assistant import Assistant, measurement_record
from serve_process import maemi_serve
from test_assistant import BRIGHT_Q, GREY_Q, tiny  # noqa: F401  (a fixture: the tiny trained run)
from tiny_text_models import one_thread  # noqa: F401

KEY = "page-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed; `make test` installs them with apt-get (Debian "
                    "packages chromium and chromium-driver), which needs root and a reachable apt repository")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """`maemi serve` as its own process on a free port, with an API key; its URL."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with maemi_serve(tiny["run"], log, "--api-key-env", "MAEMI_PAGE_TEST_KEY", env={"MAEMI_PAGE_TEST_KEY": KEY}) as url:
        yield url


@pytest.fixture(scope="module")
def assistant(tiny):
    return Assistant.load(tiny["run"], device="cpu")


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=f"page never showed {what}")


def open_page_with_key(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "/")
    wait_for(driver, lambda d: d.find_element(By.ID, "auth").is_displayed(), "the API key field")
    key = driver.find_element(By.ID, "key")
    key.clear()  # the page keeps the key for the browser session
    key.send_keys(KEY, Keys.TAB)  # TAB: the change event stores it


def test_page_shows_caption_classes_measurements_and_answers_a_question(browser, served, tiny, assistant):
    from selenium.webdriver.common.by import By

    image = sorted(tiny["images"].rglob("*.png"))[0]
    open_page_with_key(browser, served)
    browser.find_element(By.ID, "file").send_keys(str(image))

    caption = assistant.caption(image)[0]
    wait_for(browser, lambda d: d.find_element(By.ID, "caption").text == caption, f"the caption {caption!r}")
    ranked = [label for label, _ in assistant.classify(image)[0]]
    rows = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#classes .bar-row"), "the class bars")
    assert [row.find_element(By.CLASS_NAME, "label").text for row in rows] == ranked
    widths = [float(row.find_element(By.CSS_SELECTOR, ".bar > div").get_attribute("style").split(":")[1].strip(" %;"))
              for row in rows]
    assert widths == sorted(widths, reverse=True) and sum(widths) == pytest.approx(100, abs=0.3)
    table = wait_for(browser, lambda d: "object count" in d.find_element(By.ID, "measurements").text and
                     d.find_element(By.ID, "measurements"), "the measurements")
    assert "info bar px" in table.text
    # this field's grain is not two phases: the panel says its counts and sizes are uncertain
    assert measurement_record(assistant.image_facts(image))["objects_uncertain"]
    assert browser.find_element(By.ID, "objects-caveat").is_displayed()
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 40
    # what was counted: the outline overlay replaces the preview while the box is ticked
    original = browser.execute_script("return document.getElementById('preview').src")
    browser.find_element(By.ID, "show-counted").click()
    wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('preview'); return i.src.startsWith('data:image/png') && i.naturalWidth"
    ) == 40, "the overlay of what was counted")
    browser.find_element(By.ID, "show-counted").click()
    assert browser.execute_script("return document.getElementById('preview').src") == original

    browser.find_element(By.ID, "question").send_keys(BRIGHT_Q)
    browser.find_element(By.ID, "ask").click()
    answer = assistant.ask(image, BRIGHT_Q)[0]
    wait_for(browser, lambda d: [m.text for m in d.find_elements(By.CSS_SELECTOR, ".msg.assistant")] == [answer],
             f"the answer {answer!r}")
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [BRIGHT_Q]

    # a measured number in an answer is the measured panel's, and links to its row
    browser.find_element(By.ID, "question").send_keys(GREY_Q)
    browser.find_element(By.ID, "ask").click()
    grey = assistant.ask(image, GREY_Q)[0]
    wait_for(browser, lambda d: [m.text for m in d.find_elements(By.CSS_SELECTOR, ".msg.assistant")][-1:] == [grey],
             f"the answer {grey!r}")
    (number,) = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant:last-child a.num")
    row = browser.find_element(By.ID, "m-brightness_mean")
    assert number.get_attribute("href").endswith("#m-brightness_mean")
    assert number.text == row.find_elements(By.TAG_NAME, "td")[-1].text and number.text in grey


def test_page_previews_a_16_bit_tiff_and_reports_a_bad_file(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # a 16-bit Zeiss TIFF: previewed by the server, its scale read from its tags into the page's scale field
    tiff = tmp_path / "deep.tif"
    tag = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 4.75 nm\r\n"
    tifffile.imwrite(tiff, (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16),
                     extratags=[(34118, 2, len(tag), tag, True)])
    open_page_with_key(browser, served)
    browser.find_element(By.ID, "file").send_keys(str(tiff))
    wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('preview'); return i.src.startsWith('data:image/png') && i.naturalWidth"
    ) == 64, "the server-rendered preview of the TIFF")
    wait_for(browser, lambda d: d.find_element(By.ID, "nm").get_attribute("value") == "4.75", "the file's scale")
    assert "instrument's metadata" in browser.find_element(By.ID, "scale-source").text
    assert " nm" in browser.find_element(By.ID, "measurements").text
    # the user's own value overrides the file's
    field = browser.find_element(By.ID, "nm")
    field.send_keys(Keys.CONTROL, "a")  # select and overwrite: clear() would fire a change (and a re-measure) first
    field.send_keys("9.5", Keys.TAB)
    wait_for(browser, lambda d: "as you typed it" in d.find_element(By.ID, "scale-source").text, "the typed scale")
    assert "the instrument's metadata says 4.75 nm per pixel" in browser.find_element(By.ID, "scale-source").text
    field.send_keys(Keys.CONTROL, "a")  # a modifier stays down until the call ends: select in a call of its own
    field.send_keys(Keys.DELETE, Keys.TAB)  # emptied: the scale goes back to the file's
    wait_for(browser, lambda d: d.find_element(By.ID, "nm").get_attribute("value") == "4.75", "the file's scale again")

    # particles on a holey film: the vacuum left out, and said so
    from test_measurements import _film_with_vacuum

    holey, shown, vacuum = _film_with_vacuum(3, dark_field=False, lacey=False)
    Image.fromarray((holey * 255).astype(np.uint8)).save(tmp_path / "holey.png")
    assert browser.find_element(By.ID, "field-notes").text == ""
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "holey.png"))
    note = wait_for(browser, lambda d: d.find_element(By.ID, "field-notes").text, "the vacuum note")
    percent, rest = note.split("%", 1)
    assert int(percent) == pytest.approx(100 * vacuum, abs=2) and rest.startswith(" of the field is vacuum beyond")
    count = browser.find_element(By.ID, "m-object_count").find_elements(By.TAG_NAME, "td")[-1].text
    assert count == str(shown)

    # a TEM beam that does not fill the camera: the dark beyond it left out, and the black it is clipped to, said
    from test_measurements import _beyond_a_beam

    beam, shown, dark, _ = _beyond_a_beam(1, 0.42, 4, 0.0)
    Image.fromarray((beam * 255).astype(np.uint8)).save(tmp_path / "beam.png")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "beam.png"))
    notes = wait_for(browser, lambda d: "illumination" in d.find_element(By.ID, "field-notes").text and
                     d.find_elements(By.CSS_SELECTOR, "#field-notes div"), "the notes on the dark beyond the beam")
    assert [n.text.split("%")[1].split(" (")[0] for n in notes] == [
        " of the field is dark beyond the edge of the illumination",
        " of the pixels sit at the image's darkest or brightest level"]
    assert int(notes[0].text.split("%")[0]) == pytest.approx(100 * dark, abs=2)
    count = browser.find_element(By.ID, "m-object_count").find_elements(By.TAG_NAME, "td")[-1].text
    assert count == str(shown)

    not_image = tmp_path / "notes.png"
    not_image.write_text("these are notes, not a micrograph")
    browser.find_element(By.ID, "file").send_keys(str(not_image))
    wait_for(browser, lambda d: "415" in d.find_element(By.ID, "caption").text and
             "not a PNG, JPEG, BMP or TIFF" in d.find_element(By.ID, "caption").text, "the server's refusal")


def test_page_says_when_an_image_is_unfamiliar(browser, tiny, tmp_path):
    """A calibrated run: the page marks a foreign image unfamiliar above its class bars, a training image not."""
    from selenium.webdriver.common.by import By
    from typer.testing import CliRunner

    from maemi.cli import app
    from test_calibration import foreign

    run = tmp_path / "calibrated"
    shutil.copytree(tiny["run"], run)
    result = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(tiny["test_data"]), "--quiet",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    strange = foreign(tmp_path / "strange.png")
    with maemi_serve(run, tmp_path / "serve.log") as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(strange))
        note = wait_for(browser, lambda d: d.find_elements(By.ID, "flag"), "the unfamiliar note")
        assert note[0].text.startswith("Unfamiliar: this image is unlike the images the model was trained on")
        browser.find_element(By.ID, "file").send_keys(str(tiny["images"] / tiny["train"][0]))
        wait_for(browser, lambda d: not d.find_elements(By.ID, "flag") and
                 d.find_elements(By.CSS_SELECTOR, "#classes .bar-row"), "the bars without a note")
