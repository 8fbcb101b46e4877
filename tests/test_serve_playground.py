"""The playground page in a real headless browser (Debian's chromium through selenium, offline): a chat reply
streams in, a fill-in-the-middle completion lands at the cursor, both equal to what the API gives; a screenshot
is kept (in the test's tmp dir, and in $CODELM_TEST_ARTIFACTS when set, for CI to keep)."""

import os
import shutil
from pathlib import Path

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_live import LiveServer, tiny_checkpoint

from codelm.inference.engine import Engine

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def live(tmp_path_factory, code_tok):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("playground") / "ckpt", code_tok)
    server = LiveServer(Engine.from_checkpoint(checkpoint, dtype="fp64"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, ("the playground test needs Debian's chromium and chromium-driver: `make test` "
                                 "installs them when run as root, else apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


def finished(browser, count: int):
    """Wait until the page has finished `count` streamed requests (it counts them on #stats)."""
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "stats").get_attribute("data-done") == str(count))


def test_playground_streams_a_chat_and_fills_in_the_middle(live, browser, tmp_path):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    browser.get(f"{live.url}/")
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "model").text == "tiny")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(MAX_TOKENS))

    ask = "Write a function that adds two numbers."
    browser.find_element(By.ID, "chat-input").send_keys(ask)
    browser.find_element(By.ID, "chat-send").click()
    finished(browser, 1)
    reply = browser.find_elements(By.CSS_SELECTOR, ".assistant")[-1]
    expected = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ask}],
                                              max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
    assert reply.get_attribute("textContent") == expected
    assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces, as a stream
    assert "tokens/s" in browser.find_element(By.ID, "stats").text
    assert browser.find_element(By.ID, "error").text == ""

    browser.find_element(By.ID, "tab-code").click()
    prefix, suffix = "def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n"
    code = browser.find_element(By.ID, "code")
    browser.execute_script("arguments[0].value = arguments[1]; arguments[0].focus();"
                           "arguments[0].setSelectionRange(arguments[2], arguments[2]);", code, prefix + suffix,
                           len(prefix))
    browser.find_element(By.ID, "fim-run").click()
    finished(browser, 2)
    middle = browser.find_element(By.ID, "code-middle").get_attribute("textContent")
    expected = client.completions.create(model="tiny", prompt=prefix, suffix=suffix, max_tokens=MAX_TOKENS,
                                         temperature=0).choices[0].text
    assert middle == expected and code.get_attribute("value") == prefix + middle + suffix
    assert browser.find_element(By.ID, "fim-where").text == f"prefix {len(prefix)} characters, suffix {len(suffix)}"

    shots = [tmp_path / "playground.png"]
    if os.environ.get("CODELM_TEST_ARTIFACTS"):
        shots.append(Path(os.environ["CODELM_TEST_ARTIFACTS"]) / "playground.png")
    for shot in shots:
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
