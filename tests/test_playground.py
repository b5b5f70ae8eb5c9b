"""The playground page at GET /, driven for real: uvicorn on loopback, the real default model, headless Chromium.

The browser is Debian's Chromium at /usr/bin/chromium (driven by Playwright for Python; no browser download).
Without it the browser test skips with a clear reason, and fails under CI=true; `.ci/run` installs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from memory_inception.serving.app import create_app
from servers import PIRATE, RunningServer

pytestmark = pytest.mark.real_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL_ID = "smollm2-135m-instruct"
API_KEY = "play-key-1"
SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "playground.png"


def test_page_is_served_without_the_api_key(model_and_tok, tmp_path):
    """GET / is a static, self-contained page: no key needed for it, the API itself still asks for one."""
    from fastapi.testclient import TestClient

    model, tok = model_and_tok
    with TestClient(create_app(model, tok, bank_dir=tmp_path, model_id=MODEL_ID, api_key=API_KEY)) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        for element_id in ("bank-select", "rho", "layers", "message", "send", "plain-log", "steered-log",
                           "new-bank-text", "create-bank", "api-key"):
            assert f'id="{element_id}"' in html
        assert "http://" not in html and "https://" not in html  # no CDN, no external fetch
        assert c.get("/v1/banks").status_code == 401
        assert c.get("/v1/banks", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_playground_in_chromium(model_and_tok, tmp_path):
    if not CHROMIUM.exists():
        reason = (f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium) to run the "
                  "playground's browser test")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason + " (CI must run it: .ci/run installs chromium)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    model, tok = model_and_tok
    app = create_app(model, tok, bank_dir=tmp_path / "banks", model_id=MODEL_ID, max_tokens_limit=64)
    running = RunningServer(app)
    try:
        r = httpx.post(running.url + "/v1/banks", json={"name": "pirate", "text": PIRATE}, timeout=120)
        assert r.status_code == 201, r.text

        outside: list[str] = []
        errors: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 820})
                page.set_default_timeout(60_000)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

                def only_our_server(route):
                    if route.request.url.startswith(running.url + "/"):
                        route.continue_()
                    else:
                        outside.append(route.request.url)
                        route.abort()

                page.route("**/*", only_our_server)
                chats: list[dict] = []
                page.on("request", lambda req: chats.append(json.loads(req.post_data))
                        if req.url.endswith("/v1/chat/completions") else None)
                page.goto(running.url + "/")
                assert page.title() == "Memory Inception playground"
                page.wait_for_selector("#bank-select option[value='pirate']", state="attached")
                assert page.locator("#model-name").inner_text() == f"model: {MODEL_ID}"

                # a bank made from text in the page is listed and picked at once
                page.locator("#create-bank-box summary").click()
                page.locator("#new-bank-name").fill("formal")
                page.locator("#new-bank-text").fill("Be terse and formal.")
                page.locator("#create-bank").click()
                page.wait_for_function("document.getElementById('bank-select').value === 'formal'")
                assert "Created bank formal" in page.locator("#bank-status").inner_text()
                assert sorted(b["name"] for b in httpx.get(running.url + "/v1/banks").json()["data"]) == [
                    "formal", "pirate"]

                page.select_option("#bank-select", "pirate")
                page.locator("#rho").fill("6")
                assert page.locator("#rho-value").inner_text() == "6"
                assert page.locator("#layers").input_value() == ""  # server default layers
                page.locator("#max-tokens").fill("24")
                page.locator("#message").fill("What is your favorite food?")
                page.locator("#send").click()

                page.wait_for_function(
                    "document.body.dataset.state === 'idle'"
                    " && document.querySelectorAll('#plain-log .msg.assistant:not(.pending)').length === 1"
                    " && document.querySelectorAll('#steered-log .msg.assistant:not(.pending)').length === 1"
                )
                assert page.locator(".msg.error").count() == 0, page.locator(".msg.error").all_inner_texts()
                plain = page.locator("#plain-log .msg.assistant .text").inner_text().strip()
                steered = page.locator("#steered-log .msg.assistant .text").inner_text().strip()
                assert plain and steered and "(empty reply)" not in (plain, steered)
                assert steered != plain
                assert page.locator("#plain-log .msg.user .text").inner_text() == "What is your favorite food?"
                assert page.locator("#steered-log .msg.user .text").inner_text() == "What is your favorite food?"

                # a second turn: each column keeps its own history
                page.locator("#message").fill("Where do you live?")
                page.locator("#message").press("Enter")
                page.wait_for_function(
                    "document.body.dataset.state === 'idle'"
                    " && document.querySelectorAll('#plain-log .msg.assistant:not(.pending)').length === 2"
                    " && document.querySelectorAll('#steered-log .msg.assistant:not(.pending)').length === 2"
                )
                assert page.locator(".msg.error").count() == 0, page.locator(".msg.error").all_inner_texts()
                for log in ("#plain-log", "#steered-log"):
                    assert page.locator(f"{log} .msg.user").count() == 2
                    assert all(t.strip() for t in page.locator(f"{log} .msg.assistant .text").all_inner_texts())

                # what went over the wire: twice per turn, at temperature 0, memory only on the steered column
                assert len(chats) == 4 and all(c["temperature"] == 0 and c["max_tokens"] == 24 for c in chats)
                assert ["memory" in c for c in chats] == [False, True, False, True]
                assert chats[1]["memory"] == {"banks": [{"name": "pirate", "role": "target"}], "rho": 6}
                assert [m["role"] for m in chats[3]["messages"]] == ["user", "assistant", "user"]
                assert chats[3]["messages"][1]["content"].strip() == steered
                assert chats[2]["messages"][1]["content"].strip() == plain

                shot = tmp_path / "playground.png"
                page.screenshot(path=str(shot), full_page=True)
                if os.environ.get("MI_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on request only
                    SCREENSHOT.write_bytes(shot.read_bytes())
            finally:
                browser.close()
        assert not outside, f"the page fetched outside the server: {outside}"
        assert not errors, f"errors in the page: {errors}"
        assert shot.stat().st_size > 10_000
    finally:
        running.stop()
