#!/usr/bin/env python3
"""The chat page at `/` in headless Chromium (Debian's chromium and chromedriver, driven by
Selenium), against a real `suanli serve` on SmolLM2-135M:

  1. it loads, lists the served model, and answers a message with a streamed reply and its
     token speed;
  2. its markdown renderer makes tables, highlighted code blocks with a copy button, emphasis
     and links, and never lets HTML through;
  3. Stop ends an answer and keeps what was written; Enter while an answer streams sends
     nothing and keeps what was typed; an input method's Enter (composition) sends nothing;
  4. regenerate replaces the last answer; edit puts the last question back in the box;
  5. an error is shown with a retry, the failed turn is not re-sent with the next one, and a
     `length` finish says how to get more;
  6. a reload finds the conversations and the settings again;
  7. the interface follows a Chinese browser; a phone-sized window gets the menu button;
  8. behind `--api-key` the page still opens, says the key is missing, and works once the key
     is entered in its settings.

Screenshots go to a temporary directory printed at the end (look at them; they are not kept).
Usage: page_test.py SUANLI_BIN MODEL_PATH
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

SUANLI, MODEL = sys.argv[1], sys.argv[2]
SHOTS = tempfile.mkdtemp(prefix="suanli-page-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def browser(lang="en-US", size=(1280, 900)):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--lang={lang}", f"--window-size={size[0]},{size[1]}"):
        o.add_argument(a)
    o.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def wait(d, cond, what, seconds=60):
    try:
        return WebDriverWait(d, seconds, poll_frequency=0.1).until(lambda _: cond())
    except Exception:
        d.save_screenshot(os.path.join(SHOTS, "failed.png"))
        raise AssertionError(f"timed out waiting for {what}")


def js(d, script, *args):
    return d.execute_script(script, *args)


def answers(d):
    return d.find_elements(By.CSS_SELECTOR, "#log .msg.assistant")


def users(d):
    return [e.text for e in d.find_elements(By.CSS_SELECTOR, "#log .msg.user")]


def set_field(d, id_, value):
    js(d, "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
          "e.dispatchEvent(new Event('change'));", id_, str(value))


def send(d, text):
    box = d.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def idle(d):
    return d.find_element(By.ID, "stop").get_attribute("disabled") is not None


def start_server(log, env=None):
    """`suanli serve` on a free port, once `/ready`: (process, page URL)."""
    port = free_port()
    proc = subprocess.Popen([SUANLI, "--threads", "2", "serve", "--model", MODEL, "--port", str(port),
                             "--model-name", "smol", "--ctx", "2048"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}/"
    t = time.time()
    while True:
        try:
            if urllib.request.urlopen(url + "ready", timeout=2).status == 200:
                return proc, url
        except Exception:
            pass
        if proc.poll() is not None or time.time() - t > 120:
            proc.kill()
            raise AssertionError(f"server on port {port} never ready")
        time.sleep(0.2)


def main():
    log = open(os.path.join(SHOTS, "server.log"), "w")
    server, url = start_server(log)
    passed = failed = 0
    d = None
    try:
        d = browser()

        # 1. Load, model listed, one answer with its speed.
        d.get(url)
        wait(d, lambda: js(d, "return document.getElementById('model').options.length") > 0, "the model list")
        assert d.find_element(By.ID, "model").get_attribute("value") == "smol"
        set_field(d, "temp", 0)
        send(d, "Hello!")
        wait(d, lambda: idle(d) and len(answers(d)) == 1, "the first answer")
        meta = answers(d)[0].find_element(By.CSS_SELECTOR, ".meta").text
        assert "tok/s" in meta, meta
        assert answers(d)[0].text.strip(), "an empty answer"
        d.save_screenshot(os.path.join(SHOTS, "1-answer.png"))
        print(f"answer shown with '{meta.splitlines()[0]}'")
        passed += 1

        # 2. Markdown, safely.
        md = ("# Title\n\nSome **bold**, *italic*, `code` and [a link](https://example.com).\n\n"
              "| name | n |\n|---|--:|\n| a | 1 |\n| b | 2 |\n\n```python\ndef f(x):\n    return 'hi'  # note\n```\n\n"
              "- one\n- two\n\n> quoted\n\n<script>alert(1)</script> <img src=x onerror=alert(1)>")
        html = js(d, "return renderMarkdown(arguments[0])", md)
        for want in ("<h1>", "<strong>bold</strong>", "<em>italic</em>", "<code>code</code>",
                     'href="https://example.com"', "<table>", 'text-align:right', "<td style=\"text-align:left\">a</td>",
                     '<pre><code data-lang="python">', '<span class="hl-k">def</span>', '<span class="hl-s">&#39;hi&#39;</span>',
                     '<span class="hl-c"># note</span>', 'class="copy"', "<ul><li>one</li><li>two</li></ul>", "<blockquote>"):
            assert want in html, (want, html)
        assert "<script" not in html and "<img" not in html, html
        assert "&lt;script&gt;" in html
        # A thinking model's reasoning is folded; tool calls are shown.
        shown = js(d, "const b = document.createElement('div'); renderAssistant(b, {content: 'Done.', "
                      "reasoning: 'Let me think <b>', tool_calls: [{function: {name: 'get_weather', "
                      "arguments: '{\"city\": \"Paris\"}'}}]}); return b.innerHTML")
        assert '<details class="think"><summary>Thinking</summary>Let me think &lt;b&gt;</details>' in shown, shown
        assert 'Tool call: get_weather({"city": "Paris"})' in shown.replace("&quot;", '"'), shown
        print("markdown: headings, emphasis, links, tables, highlighted code with copy, lists, quotes; HTML escaped;"
              " reasoning folded, tool calls shown")
        passed += 1

        # 3. Stop; Enter while streaming; an input method's Enter.
        set_field(d, "maxtok", 1500)
        send(d, "Write a very long story about a dragon who bakes bread, with many chapters.")
        wait(d, lambda: not idle(d) and len(answers(d)) == 2 and len(answers(d)[1].text) > 80, "the long answer to stream")
        box = d.find_element(By.ID, "input")
        box.send_keys("typed meanwhile")
        box.send_keys(Keys.ENTER)
        time.sleep(0.3)
        assert box.get_attribute("value") == "typed meanwhile", box.get_attribute("value")
        assert len(users(d)) == 2, users(d)
        assert not idle(d), "Enter stopped the answer"
        d.find_element(By.ID, "stop").click()
        wait(d, lambda: idle(d), "the stop")
        last = answers(d)[1]
        assert len(last.text) > 80 and "stopped" in last.find_element(By.CSS_SELECTOR, ".meta").text, last.text
        box.clear()
        js(d, "const e = document.getElementById('input'); e.value = '你好';"
              "e.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', isComposing: true, bubbles: true, cancelable: true}));")
        time.sleep(0.3)
        assert box.get_attribute("value") == "你好" and len(users(d)) == 2, "a composing Enter sent the message"
        box.clear()
        print(f"stop kept {len(last.text)} characters; Enter while streaming and a composing Enter sent nothing")
        passed += 1

        # 4. Regenerate and edit.
        set_field(d, "maxtok", 12)
        before = answers(d)[-1].text
        answers(d)[-1].find_element(By.CSS_SELECTOR, "button.regen").click()
        wait(d, lambda: idle(d) and len(answers(d)) == 2 and answers(d)[-1].text != before, "the regenerated answer")
        answers(d)[-1].find_element(By.CSS_SELECTOR, "button.edit").click()
        time.sleep(0.2)
        assert box.get_attribute("value").startswith("Write a very long story"), box.get_attribute("value")
        assert len(users(d)) == 1 and len(answers(d)) == 1
        box.clear()
        print("regenerate replaced the last answer; edit put the question back")
        passed += 1

        # 5. An error with a retry; a length finish explained.
        set_field(d, "maxtok", 100000)  # beyond the server's context: 400
        send(d, "Name a fruit.")
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#log .error"), "the error")
        err = d.find_element(By.CSS_SELECTOR, "#log .error")
        err_text = err.text
        assert "context" in err_text, err_text
        d.save_screenshot(os.path.join(SHOTS, "5-error.png"))
        set_field(d, "maxtok", 3)
        err.find_element(By.CSS_SELECTOR, "button.retry").click()
        wait(d, lambda: idle(d) and len(answers(d)) == 2, "the retried answer")
        assert not d.find_elements(By.CSS_SELECTOR, "#log .error")
        assert users(d) == ["Hello!", "Name a fruit."], users(d)
        note = answers(d)[-1].find_element(By.CSS_SELECTOR, ".note").text
        assert "max tokens" in note, note
        print(f"error shown ({err_text[:60]}…), retried once; a length finish says: {note}")
        passed += 1

        # 6. Reload: conversations and settings come back.
        d.find_element(By.ID, "new").click()
        send(d, "Second conversation here.")
        wait(d, lambda: idle(d) and len(answers(d)) == 1, "the second conversation's answer")
        d.refresh()
        wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#convs li")) == 2, "the conversation list")
        titles = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#convs li button.open")]
        assert titles == ["Second conversation here.", "Hello!"], titles
        assert users(d) == ["Second conversation here."], users(d)
        assert d.find_element(By.ID, "maxtok").get_attribute("value") == "3"
        d.find_elements(By.CSS_SELECTOR, "#convs li button.open")[1].click()
        assert users(d) == ["Hello!", "Name a fruit."], users(d)
        print(f"after a reload: conversations {titles}, settings kept")
        passed += 1
        d.quit()
        d = None

        # 7. A Chinese browser; a phone.
        d = browser(lang="zh-CN", size=(390, 844))
        d.get(url)
        assert d.find_element(By.ID, "send").text == "发送", d.find_element(By.ID, "send").text
        assert d.find_element(By.ID, "menu").is_displayed(), "no menu button on a phone"
        assert d.find_element(By.ID, "input").get_attribute("placeholder").startswith("输入消息")
        d.save_screenshot(os.path.join(SHOTS, "7-phone-zh.png"))
        d.find_element(By.ID, "menu").click()
        time.sleep(0.3)
        d.save_screenshot(os.path.join(SHOTS, "7-phone-menu.png"))
        print("Chinese interface on a zh-CN browser; a phone-sized window gets the menu")
        passed += 1
        d.quit()
        d = None

        # 8. A server that wants a key: the page opens, asks, then works with the key.
        keyed, kurl = start_server(log, env=dict(os.environ, SUANLI_API_KEY="sesame"))
        try:
            d = browser()
            d.get(kurl)
            wait(d, lambda: "key" in d.find_element(By.ID, "status").text.lower(), "the missing-key message")
            missing = d.find_element(By.ID, "status").text
            set_field(d, "key", "sesame")
            wait(d, lambda: js(d, "return document.getElementById('model').options.length") > 0, "the model list with the key")
            set_field(d, "maxtok", 4)
            send(d, "Hi")
            wait(d, lambda: idle(d) and len(answers(d)) == 1, "an answer with the key")
            assert not d.find_elements(By.CSS_SELECTOR, "#log .error")
            print(f"behind --api-key: the page opened and said '{missing}'; with the key it answered")
            passed += 1
        finally:
            keyed.terminate()
            keyed.wait(30)
    except Exception as e:  # an assertion, or the browser's own error
        failed += 1
        print(f"FAILED: {e!r}")
    finally:
        if d is not None:
            d.quit()
        server.terminate()
        server.wait(30)
    print(f"screenshots and the server log in {SHOTS}")
    print(f"test result: {'ok' if failed == 0 else 'FAILED'}. {passed} passed; {failed} failed; "
          f"0 ignored; 0 measured; 0 filtered out (chat page in headless Chromium)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
