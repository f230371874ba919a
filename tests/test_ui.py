"""The web UI at /ui, in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromium-driver, against a running API with a catalog, two nodes and an
alias history. Screenshots of each page go to the test's temp dir (and to
$MODELCAR_UI_SCREENSHOTS when set: that is how docs/ui-*.png are made)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

EVIL = '<script>alert("owned")</script> 8B chat model & <b>friends</b>'
V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def catalog(make_api):
    api = make_api(stale_after=3600)
    admin = api.client(api.admin)
    assert (
        admin.put(
            "/v1/models/llama", json={"description": EVIL, "owner": "ml-platform"}
        ).status_code
        == 201
    )
    for digest, n in ((V1, 1), (V2, 2)):
        r = admin.post(
            "/v1/models/llama/versions",
            json={
                "digest": digest,
                "repository": "registry.example/models/llama",
                "source_uri": f"hf://meta-llama/Llama-3.1-8B@{COMMIT}",
                "size": n * 16 << 30,
                "file_count": 7,
            },
        )
        assert r.status_code == 201, r.text
    admin.put("/v1/models/llama/aliases/prod", json={"version": 1, "reason": "first release"})
    admin.put("/v1/models/llama/aliases/prod", json={"version": 2, "reason": "eval passed"})
    admin.put(
        "/v1/policies/gpus",
        json={
            "models": ["llama@prod"],
            "rollout": {"origin_concurrency": 2, "wave_timeout": "10m"},
        },
    )
    for node, state, error in (
        ("gpu-1", "ready", None),
        ("gpu-2", "failed", "no space left on the cache filesystem"),
    ):
        c = api.client(api.token("node", node, node))
        r = c.put(
            f"/v1/nodes/{node}/status",
            json={
                "models": [
                    {
                        "digest": V2,
                        "state": state,
                        "bytes_done": 32 << 30 if error is None else 1 << 30,
                        "bytes_total": 32 << 30,
                        "error": error,
                        "sources": {"origin": 32 << 30} if error is None else {},
                    }
                ],
                "disk": {
                    "used_bytes": 40 << 30,
                    "capacity_bytes": 100 << 30,
                    "budget_bytes": 80 << 30,
                },
            },
        )
        assert r.status_code == 200, r.text
    return api


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"ui-{name}.png"
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if out := os.environ.get("MODELCAR_UI_SCREENSHOTS"):
        shutil.copy(path, Path(out) / path.name)
    return path


def _go(d, element) -> None:
    """Click a link or a submit button and wait for the next page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(d, 15).until(ec.staleness_of(old))


def test_every_page_in_a_browser(catalog, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api, d = catalog, browser
    # no token: the page asks for one and shows no data
    d.get(f"{api.url}/ui")
    assert d.find_element(By.TAG_NAME, "h1").text == "Sign in"
    assert "llama" not in d.page_source and "gpu-1" not in d.page_source
    _shot(d, tmp_path, "login")
    # a wrong token is refused in words
    d.find_element(By.ID, "token").send_keys("mct_not-a-token")
    _go(d, d.find_element(By.CSS_SELECTOR, "form.login button"))
    assert "Not signed in" in d.find_element(By.CSS_SELECTOR, "[role=alert]").text
    # the token is entered once and kept for the session
    d.find_element(By.ID, "token").send_keys(api.admin)
    _go(d, d.find_element(By.CSS_SELECTOR, "form.login button"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Models"
    row = d.find_element(By.XPATH, "//tbody/tr[th/a[text()='llama']]")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == EVIL  # the description, shown as text
    assert d.find_elements(By.TAG_NAME, "script") == []  # and never run
    assert "prod → 2" in cells[3] and "not signed" in cells[4]
    _shot(d, tmp_path, "models")
    # keyboard: the first Tab stop is the skip link, and it leads to the content
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert d.switch_to.active_element.text == "Skip to content"
    # a model: its versions, the source's commit, and the alias history as a timeline
    _go(d, d.find_element(By.LINK_TEXT, "llama"))
    assert d.find_element(By.TAG_NAME, "h1").text == "llama"
    versions = d.find_elements(
        By.XPATH, "//h2[@id='versions']/following-sibling::table[1]/tbody/tr"
    )
    assert [v.find_element(By.TAG_NAME, "th").text.split()[0] for v in versions] == ["2", "1"]
    assert f"commit {COMMIT[:12]}" in versions[0].text
    assert "hf://meta-llama/Llama-3.1-8B" in versions[0].text
    history = [li.text for li in d.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
    assert "moved prod from 1 to 2" in history[0] and "eval passed" in history[0]
    assert "set prod to 1" in history[1] and "root" in history[1]
    _shot(d, tmp_path, "model")
    # the fleet: one node ready, one failed with its reason, disk against the budget
    _go(d, d.find_element(By.LINK_TEXT, "Fleet"))
    rows = {
        r.find_element(By.TAG_NAME, "th").text.split()[0]: r
        for r in d.find_elements(By.CSS_SELECTOR, "table.grid tbody tr")
    }
    assert set(rows) == {"gpu-1", "gpu-2"}
    assert rows["gpu-1"].find_elements(By.TAG_NAME, "td")[-1].text == "ready"
    failed = rows["gpu-2"].find_elements(By.TAG_NAME, "td")[-1].text
    assert failed.startswith("failed") and "no space left" in failed
    assert "40.0 GiB / 80.0 GiB" in rows["gpu-1"].text and "50%" in rows["gpu-1"].text
    assert d.find_element(By.CSS_SELECTOR, "table.grid thead").text.count("llama:2") == 1
    _shot(d, tmp_path, "fleet")
    # rollouts: the policy's, with bytes from the origin
    _go(d, d.find_element(By.LINK_TEXT, "Rollouts"))
    row = d.find_element(By.CSS_SELECTOR, "tbody tr")
    assert row.find_element(By.TAG_NAME, "th").text == "llama:2"
    assert "0 of 2" in row.text and "1 of 2" in row.text and "32.0 GiB" in row.text
    _shot(d, tmp_path, "rollouts")
    # forgetting the token ends the session's access
    _go(d, d.find_element(By.CSS_SELECTOR, "form.logout button"))
    d.get(f"{api.url}/ui/fleet")
    assert d.find_element(By.TAG_NAME, "h1").text == "Sign in" and "gpu-1" not in d.page_source


def test_pages_without_a_browser(catalog):
    api = catalog
    anon = httpx.get(f"{api.url}/ui/models/llama")
    assert (
        anon.status_code == 401
        and "llama" not in anon.text.split("<main", 1)[1].split('name="next"')[0]
    )
    h = {"Authorization": f"Bearer {api.admin}"}
    page = httpx.get(f"{api.url}/ui/models/llama", headers=h)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    missing = httpx.get(f"{api.url}/ui/models/nope", headers=h)
    assert missing.status_code == 404 and "unknown model" in missing.text
    # after login, only a page of this UI: never another site
    r = httpx.post(
        f"{api.url}/ui/login", data={"token": api.admin, "next": "https://evil.example/"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    # a node token cannot read the catalog through the UI either
    r = httpx.post(f"{api.url}/ui/login", data={"token": api.token("node", "gpu-9", "gpu-9")})
    assert r.status_code == 401
    # the UI is not part of the API's contract
    assert not [p for p in httpx.get(f"{api.url}/openapi.json").json()["paths"] if "/ui" in p]


def test_open_reads_show_the_pages_without_a_token(make_api):
    api = make_api(open_reads=True)
    r = httpx.get(f"{api.url}/ui/fleet")
    assert r.status_code == 200 and "No node has reported yet" in r.text


def test_the_cookie_holds_a_session_id_not_the_token_and_is_secure_when_told(make_api):
    api = make_api(secure_cookies=True)
    r = httpx.post(f"{api.url}/ui/login", data={"token": api.admin})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    session = r.cookies["modelcar_ui_session"]
    assert api.admin not in cookie and session.startswith("mcs_")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    jar = {"modelcar_ui_session": session}
    assert httpx.get(f"{api.url}/ui/fleet", cookies=jar).status_code == 200
    # a session id is no bearer token: the API refuses it, for reads and writes
    bearer = {"Authorization": f"Bearer {session}"}
    assert httpx.get(f"{api.url}/v1/models", headers=bearer).status_code == 401
    assert (
        httpx.post(
            f"{api.url}/v1/tokens", headers=bearer, json={"name": "x", "role": "admin"}
        ).status_code
        == 401
    )
    # signing out ends the session on the server, not only in the browser
    httpx.post(f"{api.url}/ui/logout", cookies=jar)
    assert httpx.get(f"{api.url}/ui/fleet", cookies=jar).status_code == 401
    # revoking the token ends its sessions
    admin = {"Authorization": f"Bearer {api.admin}"}
    reader = httpx.post(
        f"{api.url}/v1/tokens", headers=admin, json={"name": "r", "role": "read"}
    ).json()
    r = httpx.post(f"{api.url}/ui/login", data={"token": reader["token"]})
    jar = {"modelcar_ui_session": r.cookies["modelcar_ui_session"]}
    assert httpx.get(f"{api.url}/ui/fleet", cookies=jar).status_code == 200
    httpx.delete(f"{api.url}/v1/tokens/{reader['id']}", headers=admin).raise_for_status()
    deadline = time.monotonic() + 60  # reads may be cached for the token cache's ttl
    while httpx.get(f"{api.url}/ui/fleet", cookies=jar).status_code != 401:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_a_client_that_never_finishes_its_request_head_is_cut_off(api):
    """Both ports speak the same protocol: half a request head, then silence, and the
    API hangs up (HEADER_TIMEOUT, 10 s) instead of holding the connection."""
    import socket

    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server, well before the socket's 60 s
        assert time.monotonic() - started < 59
    with socket.create_connection((host, int(port)), timeout=60) as s:  # a whole head is fine
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
