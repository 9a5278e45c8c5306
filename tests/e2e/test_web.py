"""The chat page in a real browser: Debian's Chromium driven by Playwright, against a real
server (uvicorn, the packaged MiniLM embedder and SmolLM2 generator) started by the test.

Screenshots of each state are written to ``test-artifacts/web/`` (``RAG_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SAMPLES
from tests.servers import REPO, serve_api

playwright_api = pytest.importorskip("playwright.sync_api")
Browser, Page, expect = playwright_api.Browser, playwright_api.Page, playwright_api.expect

pytestmark = pytest.mark.slow
CHROMIUM = Path(os.environ.get("RAG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("RAG_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
KEY = "web-test-key-42"
ANSWER_TIMEOUT = 180_000  # ms: SmolLM2 on two CPU cores, with the embedder beside it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_model: Path) -> Iterator[str]:
    with serve_api("web-serve", tmp_path_factory.mktemp("web-server"),
                   {"RAG_GENERATOR__MODEL": str(smollm2_model), "RAG_GENERATOR__MAX_TOKENS": "60",
                    "RAG_SERVER__API_KEYS": f'["{KEY}"]'}) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test does it "
                    "where apt-get is available), or point RAG_CHROMIUM at one")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Tab:
    """A page plus what went wrong in it: uncaught exceptions and console errors."""

    def __init__(self, browser: Any, server: str, locale: str = "en-US",
                 viewport: dict[str, int] | None = None, storage: dict[str, str] | None = None):
        self.context = browser.new_context(base_url=server, locale=locale,
                                           viewport=viewport or {"width": 1280, "height": 860})
        if storage:
            pairs = ";".join(f"localStorage.setItem({k!r}, {v!r})" for k, v in storage.items())
            self.context.add_init_script(f"if (!sessionStorage.getItem('seeded')) {{ {pairs}; "
                                         "sessionStorage.setItem('seeded', '1') }")
        self.page: Any = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        # A 401/404/415 the page asked for and then explained is not a page error.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(f"console: {msg.text}")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def api(server: str, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, server + path, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60, **kw)
    r.raise_for_status()
    return r.json() if r.content else None


def make_kb(server: str, name: str, files: list[tuple[str, bytes]]) -> None:
    api(server, "POST", "/v1/knowledge-bases", json={"name": name})
    job = api(server, "POST", f"/v1/knowledge-bases/{name}/documents",
              files=[("files", (n, data)) for n, data in files])["job"]
    for _ in range(600):
        state = api(server, "GET", f"/v1/jobs/{job['id']}")
        if state["status"] in ("done", "failed"):
            assert state["status"] == "done", state
            return
        time.sleep(0.1)
    raise AssertionError("ingestion did not finish")


def watch_stream(page: Any) -> None:
    """Record every text the last answer shows while it streams."""
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const last = [...document.querySelectorAll('.msg.assistant .md')].at(-1);
            if (last) window.__seen.push(last.textContent);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")


def ask(tab: Tab, question: str) -> Any:
    page = tab.page
    before = page.locator(".msg.assistant").count()
    page.get_by_label("Question").or_(page.get_by_label("问题")).fill(question)
    page.keyboard.press("Enter")
    answer = page.locator(".msg.assistant").nth(before)
    expect(answer).to_have_attribute("data-status", "done", timeout=ANSWER_TIMEOUT)
    return answer


def test_upload_chat_cite_delete_and_switch_language(browser: Any, server: str) -> None:
    tab = Tab(browser, server)
    page = tab.page
    page.goto("/")

    # The server wants a key: the page asks for it, and keeps it.
    key_dialog = page.locator("#key-dialog")
    expect(key_dialog).to_be_visible()
    expect(page.locator(".alert.error")).to_contain_text("requires an API key")
    tab.shot("01-api-key")
    key_dialog.locator("input").fill(KEY)
    key_dialog.get_by_role("button", name="Save").click()
    expect(page.locator("#kb-info")).to_have_text("No knowledge base yet: create one to start.")

    # Create a knowledge base.
    page.get_by_role("button", name="New").click()
    page.get_by_label("Name").fill("guide")
    page.get_by_label("Description").fill("visitor guides")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#kb-select")).to_have_value("guide", timeout=60_000)
    assert page.evaluate("localStorage.getItem('rag.apiKey')") == KEY

    # Upload two files through the picker; watch their rows go through their states.
    page.evaluate("""() => {
        window.__states = new Set();
        new MutationObserver(() => {
            for (const li of document.querySelectorAll('#uploads li, #doc-list li'))
                window.__states.add(li.className);
        }).observe(document.querySelector('.docs'), {subtree: true, childList: true});
    }""")
    page.locator("#file-input").set_input_files(
        [str(SAMPLES / "observatory-guide.md"), str(SAMPLES / "绿茶与红茶.md")])
    docs = page.locator("#doc-list li.doc.st-indexed")
    expect(docs).to_have_count(2, timeout=120_000)
    expect(page.locator("#uploads li")).to_have_count(0)
    states = set(page.evaluate("[...window.__states]"))
    assert "upload st-uploading" in states, states
    assert states & {"upload st-queued", "upload st-indexing", "doc st-indexing"}, states
    expect(page.locator("#doc-list")).to_contain_text("绿茶与红茶.md")
    guide = page.locator("#doc-list li", has_text="observatory-guide.md").locator(".muted")
    expect(guide).to_have_text(re.compile(r"^1\.1 KB · 1 chunk$"))  # one chunk, in the singular
    expect(page.locator("#kb-info")).to_contain_text(re.compile(r"^2 documents · 3 chunks · "))
    tab.shot("02-documents-indexed")

    # Ask: the answer streams in, then cites its source.
    watch_stream(page)
    answer = ask(tab, "How much is an adult ticket at the observatory?")
    seen = [s for s in page.evaluate("window.__seen") if s.strip() and s != "Searching…"]
    assert len(set(seen)) >= 3, f"the answer did not stream: {seen}"
    expect(answer.locator(".md")).to_contain_text("12")
    expect(answer.locator(".timings")).to_contain_text("tokens/s")
    expect(answer.locator(".sources .source").first).to_contain_text("observatory-guide.md")
    expect(answer.locator(".cut-off")).to_have_count(0)  # the model ended this answer
    tab.shot("03-answer")

    # A citation opens its passage, with the span the answer relies on highlighted.
    cite = answer.locator(".md a.cite").first
    expect(cite).to_be_visible()
    cite.click()
    dialog = page.locator("#source-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#source-title")).to_contain_text("observatory-guide.md")
    expect(dialog.locator("mark")).to_contain_text("12")
    tab.shot("04-source-passage")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # The conversation survives a reload.
    page.reload()
    expect(page.locator(".msg")).to_have_count(2)
    expect(page.locator(".msg.assistant .md a.cite").first).to_be_visible()

    # Shift+Enter writes a new line, and sends nothing.
    box = page.get_by_label("Question")
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"
    expect(page.locator(".msg")).to_have_count(2)
    box.fill("")

    # Switch to Chinese, and ask in Chinese.
    page.get_by_role("button", name="Switch to Chinese").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#send")).to_have_text("发送")
    expect(page.locator("#kb-info")).to_contain_text("2 个文档")
    answer = ask(tab, "西湖龙井产于哪里？")
    expect(answer.locator(".sources .source").first).to_contain_text("绿茶与红茶.md")
    expect(answer.locator(".timings")).to_contain_text("首字")
    # Greedy SmolLM2 runs this answer past RAG_GENERATOR__MAX_TOKENS (60): the page says so.
    expect(answer.locator(".cut-off")).to_have_text("回答达到长度上限，已被截断。")
    tab.shot("05-chinese")

    # Stop a generation part-way.
    box = page.get_by_label("问题")
    box.fill("Describe the observatory opening hours in detail.")
    page.keyboard.press("Enter")
    stopping = page.locator(".msg.assistant").last
    expect(page.locator("#stop")).to_be_visible()
    expect(stopping.locator(".sources .source").first).to_be_visible(timeout=60_000)
    page.locator("#stop").click()
    expect(stopping).to_have_attribute("data-status", "stopped")
    expect(stopping).to_contain_text("已停止")
    expect(page.locator("#send")).to_be_visible()

    # Delete a document, after confirming.
    row = page.locator("#doc-list li", has_text="绿茶与红茶.md")
    row.get_by_role("button", name="删除 绿茶与红茶.md").click()
    confirm = page.locator("#confirm-dialog")
    expect(confirm).to_contain_text("绿茶与红茶.md")
    tab.shot("06-confirm-delete")
    confirm.get_by_role("button", name="删除").click()
    expect(page.locator("#doc-list li")).to_have_count(1)
    expect(page.locator("#kb-info")).to_contain_text("1 个文档")
    assert [d["name"] for d in api(server, "GET", "/v1/knowledge-bases/guide/documents")[
        "documents"]] == ["observatory-guide.md"]
    tab.shot("07-after-delete")

    # Back to English; clear the conversation.
    page.get_by_role("button", name="切换到英文").click()
    expect(page.locator("#send")).to_have_text("Send")
    page.get_by_role("button", name="Clear conversation").click()
    expect(page.locator(".msg")).to_have_count(0)
    page.reload()
    expect(page.locator(".msg")).to_have_count(0)
    assert tab.errors == []
    tab.close()


def test_language_follows_the_browser_and_phone_layout(browser: Any, server: str) -> None:
    make_kb(server, "phone", [("faq.md", "# 常见问题\n\n开放时间是每天九点到五点。".encode())])
    tab = Tab(browser, server, locale="zh-CN", viewport={"width": 390, "height": 844},
              storage={"rag.apiKey": KEY, "rag.kb": "phone"})
    page = tab.page
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#send")).to_have_text("发送")
    expect(page.get_by_label("问题")).to_be_visible()
    docs = page.locator("#docs-panel")
    assert not docs.is_visible() or docs.bounding_box()["x"] < 0  # slid away
    tab.shot("08-phone")
    page.get_by_role("button", name="文档").click()
    expect(page.locator("#doc-list li")).to_contain_text("faq.md")
    page.wait_for_function("() => document.getElementById('docs-panel')"
                           ".getBoundingClientRect().x >= 0")
    assert docs.bounding_box()["width"] <= 390
    tab.shot("09-phone-documents")
    assert tab.errors == []
    tab.close()


XSS_DOC = """# Security notes

The parking code is 4417. <script>window.__pwned = 'script'</script>
Never trust <img src=x onerror="window.__pwned='img'"> in uploads.
<a href="javascript:window.__pwned='link'">click</a>
"""


def test_html_in_documents_and_answers_is_shown_as_text(browser: Any, server: str) -> None:
    make_kb(server, "xss", [("security.md", XSS_DOC.encode())])
    tab = Tab(browser, server, storage={"rag.apiKey": KEY, "rag.kb": "xss",
                                        "rag.settings": '{"mode":"keyword"}'})
    page = tab.page
    page.goto("/")
    expect(page.locator("#kb-select")).to_have_value("xss")
    answer = ask(tab, "What is the parking code? Quote the security notes.")
    answer.locator(".source-btn").first.click()
    source = page.locator("#source-text")
    expect(source).to_contain_text("<img src=x onerror=")
    expect(source).to_contain_text("<script>")
    tab.shot("10-xss-source")
    page.keyboard.press("Escape")

    # Model output with HTML in it goes through the same renderer as every answer.
    page.evaluate("""async () => {
        const { render } = await import('/js/markdown.js');
        const li = document.createElement('li');
        li.className = 'msg assistant';
        li.id = 'rendered';
        const md = document.createElement('div');
        md.className = 'md';
        md.append(render([
          'Sure: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>',
          '**bold** and [a link](javascript:alert(1)) and [ok](https://example.org) [1]',
          '```python', 'def f():  # comment', '    return "<b>x</b>"', '```',
        ].join('\\n'), { cite: (n) => {
            const a = document.createElement('a');
            a.className = 'cite';
            a.textContent = `[${n}]`;
            return a;
        } }));
        li.append(md);
        document.getElementById('messages').append(li);
    }""")
    rendered = page.locator("#rendered")
    expect(rendered).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(rendered).to_contain_text("<script>window.__pwned=2</script>")
    expect(rendered.locator("strong")).to_have_text("bold")
    expect(rendered.locator(".tok-keyword").first).to_have_text("def")
    expect(rendered.locator(".tok-comment")).to_have_text("# comment")
    expect(rendered.locator(".tok-string")).to_have_text('"<b>x</b>"')
    expect(rendered.locator("a.cite")).to_have_text("[1]")
    hrefs = rendered.locator("a[href]").evaluate_all("as => as.map(a => a.href)")
    assert hrefs == ["https://example.org/"], hrefs  # no javascript: link
    tab.shot("11-xss-rendered")
    page.wait_for_timeout(300)
    injected = page.evaluate("""() => ({
        pwned: window.__pwned ?? null,
        imgs: document.querySelectorAll('#messages img, #source-text img').length,
        scripts: document.querySelectorAll('#messages script, #source-text script').length,
    })""")
    assert injected == {"pwned": None, "imgs": 0, "scripts": 0}
    csp = httpx.get(server + "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert tab.errors == []
    tab.close()


def test_api_errors_are_readable(browser: Any, server: str) -> None:
    make_kb(server, "errors", [("a.md", b"# A\n\nSome text about apples.")])
    tab = Tab(browser, server, storage={"rag.apiKey": "wrong-key", "rag.kb": "errors"})
    page = tab.page
    page.goto("/")
    expect(page.locator(".alert.error")).to_contain_text("rejected the API key")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.locator("#key-input").fill(KEY)
    page.locator("#key-dialog").get_by_role("button", name="Save").click()
    expect(page.locator("#kb-select")).to_have_value("errors")

    # An unsupported file: its row says why, nothing else breaks.
    page.locator("#file-input").set_input_files(
        [{"name": "tool.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90\x00"}])
    failed = page.locator("#uploads li.st-failed")
    expect(failed).to_contain_text("tool.exe")
    expect(failed.locator(".doc-error")).to_have_text(re.compile(r"\S"))
    # Drag and drop works like the picker.
    drop = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(['# Dropped\\n\\nPears are green.'], 'dropped.md',
                              {type: 'text/markdown'}));
        return dt;
    }""")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    expect(page.locator("#doc-list li.st-indexed", has_text="dropped.md")).to_be_visible(
        timeout=60_000)
    # A knowledge base that already exists: the server's message, not a blank page.
    page.get_by_role("button", name="New").click()
    page.get_by_label("Name").fill("errors")
    page.get_by_role("button", name="Create").click()
    expect(page.locator(".alert.error").last).to_contain_text("errors")
    tab.shot("12-errors")

    # The server goes away: a readable network error.
    page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
    page.get_by_label("Question").fill("anything?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-status", "error")
    expect(page.locator(".msg.assistant").last).to_contain_text("Cannot reach the server")
    assert page.locator("#composer").is_visible()
    tab.shot("13-network-error")
    tab.close()
