/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
// The extension in a real VS Code (code-server + headless Chromium), used as a person would:
// the packaged .vsix installed, a workspace folder opened, the chat view driven by clicks and
// typing, two windows on one session, permission prompts, the diff editor, themes, a killed
// daemon and a failed autostart. A real crushd (private socket and XDG directories) answers,
// with the loopback model mock of the Node tests (test/support/mockLlm.ts) behind it.
// Each failing test leaves screenshots of every window in the artifacts directory.
import { after, before, describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Browser, Frame } from "puppeteer-core";
import { Daemon, TestEnv } from "../test/support/daemon";
import { MockLlm } from "../test/support/mockLlm";
import { artifactsDir, chatState, CodeServer, DEADLINE_MS, eventually, launchBrowser, send, THEMES, until, Window } from "./support/workbench";

const windows: Window[] = [];
const servers: CodeServer[] = [];

/** Resolves when the mock holds a stream started after this call, or fails at the deadline. */
function holding(mock: MockLlm): Promise<void> {
  return Promise.race([
    mock.whenHolding(),
    new Promise<void>((_, reject) => setTimeout(() => reject(new Error("the model mock was never asked for the held stream")), DEADLINE_MS).unref()),
  ]);
}

/** A test that leaves a screenshot of every open window when it fails. */
function step(name: string, fn: () => Promise<void>): void {
  // Each wait inside has its own deadline (DEADLINE_MS); this bounds a step that makes many.
  test(name, { timeout: 240_000 }, async () => {
    try {
      await fn();
    } catch (e) {
      const label = `FAILED-${name}`.slice(0, 80);
      for (const w of windows) {
        await w.screenshot(label).catch(() => undefined);
      }
      const logs = path.join(artifactsDir(), `${label.replace(/[^\w.-]+/g, "_")}-logs`);
      fs.mkdirSync(logs, { recursive: true });
      for (const s of servers) {
        try {
          s.saveLogs(logs);
        } catch {
          // Logs are a help, not the result.
        }
      }
      process.stderr.write(`screenshots of the failure are in ${artifactsDir()}\n`);
      throw e;
    }
  });
}

async function assistantTexts(chat: Frame): Promise<string[]> {
  return chat.$$eval(".msg.assistant .markdown", (es) => es.map((e) => (e as HTMLElement).innerText.trim()));
}

describe("the extension in a real VS Code (code-server)", () => {
  let mock: MockLlm;
  let env: TestEnv;
  let daemon: Daemon;
  let server: CodeServer;
  let browser: Browser;
  let w1: Window;
  let w2: Window;
  let chat1: Frame;
  let chat2: Frame;
  let sessionTitle = "";

  before(async () => {
    mock = await MockLlm.start();
    env = new TestEnv(mock.baseUrl);
    // A price for the mock model, so the chat's usage line has a cost to show: each step of the
    // mock reports 10 input and 3 output tokens, which at $100 / $400 per million is $0.0022.
    fs.appendFileSync(
      path.join(env.dir, "config", "crushd", "config.toml"),
      '\n[providers.mock.models."mock-1"]\ninput_price = 100.0\noutput_price = 400.0\n',
    );
    fs.writeFileSync(path.join(env.workspace, "notes.rs"), "// notes\n");
    daemon = await env.spawnDaemon();
    server = new CodeServer(env, "main", {
      "crush.crushctlPath": env.crushctl(),
      "workbench.colorTheme": THEMES.dark.id,
    });
    servers.push(server);
    await server.install();
    await server.start();
    browser = await launchBrowser(path.join(env.dir, "chromium-profile"));
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await daemon?.stop();
    // A daemon the extension started itself (after the kill below) is stopped the user's way.
    await promisify(execFile)(env.crushctl(), ["--socket", env.socket, "daemon", "stop"], { env: env.env() }).catch(() => undefined);
    await mock?.close();
    if (!process.env.CRUSH_E2E_KEEP) {
      env?.cleanup();
    }
  });

  step("the chat view opens from the activity bar, connects, and a prompt streams its answer", async () => {
    w1 = await Window.open(browser, server.url(env.workspace), "w1");
    windows.push(w1);
    chat1 = await w1.openChat();
    await w1.waitForStatusBar(/Crush: idle/, "connected and idle");
    await send(w1, chat1, "hello there");
    await until(chat1, "the streamed reply", () =>
      [...document.querySelectorAll(".msg.assistant")].some((e) => (e as HTMLElement).innerText.includes("Hello from the mock.")),
    );
    await until(chat1, "the run's end", () => document.querySelector("#status")?.getAttribute("data-state") === "idle");
    const user = await chat1.$eval(".msg.user .text", (e) => (e as HTMLElement).innerText);
    assert.equal(user, "hello there");
    // The daemon titles the session after its first prompt; usage and cost come from the run.
    await until(chat1, "the daemon's title", () => (document.querySelector("#sessionTitle") as HTMLElement).innerText === "hello there");
    sessionTitle = "hello there";
    await until(chat1, "the session's usage and cost", () =>
      /2 messages · 13 tokens · \$0\.0022/.test((document.querySelector("#usage") as HTMLElement).innerText),
    );
  });

  step("reloading the window shows the same session, not a new one (bug 3)", async () => {
    await w1.page.reload({ waitUntil: "domcontentloaded" });
    await w1.page.waitForSelector(".monaco-workbench .part.activitybar");
    chat1 = await w1.openChat();
    await until(chat1, "the remembered session's history", () =>
      [...document.querySelectorAll(".msg.user")].some((e) => (e as HTMLElement).innerText.includes("hello there")),
    );
    assert.equal(await chat1.$eval("#sessionTitle", (e) => (e as HTMLElement).innerText), sessionTitle);
    await send(w1, chat1, "still here?");
    await until(chat1, "the second reply in the same session", () => document.querySelectorAll(".msg.assistant").length === 2);
    await chat1.click("#sessionsToggle");
    await until(chat1, "the session list", () => document.querySelectorAll("#sessionList [data-session]").length > 0);
    const rows = await chat1.$$eval("#sessionList [data-session]", (es) => es.map((e) => (e as HTMLElement).innerText));
    assert.equal(rows.length, 1, `one session, not a second one after the reload: ${rows.join(" / ")}`);
    assert.match(rows[0], /just now|min ago/, "the row shows its last activity");
    await chat1.click("#sessionsToggle");
  });

  step("a second window follows the same session and sees the same stream; cancel stops it in both", async () => {
    w2 = await Window.open(browser, server.url(env.workspace), "w2");
    windows.push(w2);
    chat2 = await w2.openChat();
    await w2.waitForStatusBar(/Crush: idle/, "the second window connected");
    // The window may already show the folder's last session; if not, the user picks it. The
    // window may also restore it while the user is picking (the view is drawn again and the list
    // closes under the click): then it shows the session all the same.
    const title = () => chat2.$eval("#sessionTitle", (e) => (e as HTMLElement).innerText);
    if ((await title()) !== sessionTitle) {
      try {
        await chat2.click("#sessionsToggle");
        await until(chat2, "the session list", () => document.querySelectorAll("#sessionList [data-session]").length > 0);
        await chat2.click("#sessionList [data-session]");
      } catch (e) {
        if ((await title()) !== sessionTitle) {
          throw e;
        }
      }
    }
    await until(chat2, "the shared history", () => document.querySelectorAll(".msg.assistant").length === 2);

    // A model picked in one window shows in the other (bug 4), and back to the default.
    for (const [model, label] of [
      ["echo/echo", "echo/echo"],
      ["", "(default model)"],
    ] as const) {
      await w2.front();
      await chat2.select("#model", model);
      await until(
        chat1,
        `w1: the model ${label} picked in w2`,
        (want: string) => {
          const sel = document.querySelector("#model") as HTMLSelectElement;
          return sel.value === want && sel.selectedOptions[0]?.textContent === (want || "(default model)");
        },
        model,
      );
    }

    const held = holding(mock);
    await send(w1, chat1, "#hold on");
    await held;
    for (const [chat, name] of [
      [chat1, "w1"],
      [chat2, "w2"],
    ] as const) {
      await until(chat, `${name}: the first streamed words while the run is still going`, () =>
        document.querySelector("#status")?.getAttribute("data-state") === "running" &&
        [...document.querySelectorAll(".msg.assistant .markdown")].some((e) => (e as HTMLElement).innerText.trim() === "w0"),
      );
    }
    await w2.waitForStatusBar(/Crush: running/, "the other window's status bar");
    // The session list marks the running session busy, with its title and last activity.
    await w2.front();
    await chat2.click("#sessionsToggle");
    await until(chat2, "the busy mark in the session list", () =>
      [...document.querySelectorAll("#sessionList [data-session]")].some(
        (e) => !!e.querySelector(".busy") && /hello there/.test((e as HTMLElement).innerText) && /just now|min ago/.test((e as HTMLElement).innerText),
      ),
    );
    await chat2.click("#sessionsToggle");
    await chat2.click("#cancel");
    for (const [chat, name] of [
      [chat1, "w1"],
      [chat2, "w2"],
    ] as const) {
      await until(chat, `${name}: the cancelled turn`, () =>
        document.querySelector("#status")?.getAttribute("data-state") === "idle" &&
        [...document.querySelectorAll(".msg.assistant .note")].some((e) => (e as HTMLElement).innerText.includes("cancelled")),
      );
    }
    assert.deepEqual((await assistantTexts(chat1)).slice(-1), ["w0"]);

    // And a stream that completes reaches both windows whole.
    const heldAgain = holding(mock);
    await send(w2, chat2, "#hold again");
    await heldAgain;
    await until(chat1, "w1: the other window's prompt streaming", () =>
      [...document.querySelectorAll(".msg.user .text")].some((e) => (e as HTMLElement).innerText === "#hold again"),
    );
    mock.release();
    for (const chat of [chat1, chat2]) {
      await until(chat, "the completed stream", () => {
        const a = [...document.querySelectorAll(".msg.assistant .markdown")].map((e) => (e as HTMLElement).innerText.trim());
        return a[a.length - 1] === "w0 w1" && document.querySelector("#status")?.getAttribute("data-state") === "idle";
      });
    }
  });

  step("a steered prompt shows at once and joins the turn (bug 6)", async () => {
    const held = holding(mock);
    await send(w1, chat1, "#hold for a steer");
    await held;
    await until(chat1, "running", () => document.querySelector("#status")?.getAttribute("data-state") === "running");
    await send(w1, chat1, "and mind the tests", "#steer");
    await until(chat1, "the steer shown before it is folded in", () =>
      [...document.querySelectorAll("#pending .msg.pending")].some((e) => /and mind the tests[\s\S]*steering/.test((e as HTMLElement).innerText)),
    );
    mock.release();
    await until(chat1, "the steer in the conversation", () =>
      document.querySelectorAll("#pending .msg").length === 0 &&
      [...document.querySelectorAll("#log .msg.user .text")].some((e) => (e as HTMLElement).innerText === "and mind the tests") &&
      document.querySelector("#status")?.getAttribute("data-state") === "idle",
    );
  });

  step("a write prompt opens in the diff editor, is answered in one window and withdrawn in the other", async () => {
    await send(w1, chat1, "#write the file");
    for (const chat of [chat1, chat2]) {
      await until(chat, "the permission prompt", () => !!document.querySelector(".prompt [data-decision='allow']"));
    }
    await w1.waitForStatusBar(/waiting for permission/, "the status bar while asked");
    await w1.front();
    await chat1.click(".prompt [data-open-diff-request]");
    await w1.page.waitForSelector(".monaco-diff-editor", { visible: true });
    await w1.waitForTab(/hello\.txt \(proposed by Crush\)/, "the proposed change's diff tab");
    await w1.waitForEditorText("hello crush", "the proposed content in the diff editor", ".monaco-diff-editor .view-lines");
    assert.ok(!fs.existsSync(path.join(env.workspace, "hello.txt")), "nothing written before the answer");
    await w2.front();
    await chat2.click(".prompt [data-decision='allow']");
    await until(chat1, "w1: the prompt withdrawn", () => !document.querySelector(".prompt"));
    await until(chat1, "w1: the finished write", () =>
      [...document.querySelectorAll("details.tool summary")].some((e) => /write — (completed|success)/.test((e as HTMLElement).innerText)) &&
      document.querySelector("#status")?.getAttribute("data-state") === "idle",
    );
    assert.equal(fs.readFileSync(path.join(env.workspace, "hello.txt"), "utf8"), "hello crush\n");
    // The finished edit opens the same way.
    await chat1.$$eval("details.tool", (ds) => ds.forEach((d) => ((d as HTMLDetailsElement).open = true)));
    await w1.front();
    await chat1.click("[data-open-diff-tool]");
    await w1.waitForTab(/hello\.txt \(edited by Crush\)/, "the finished edit's diff tab");
    await w1.waitForEditorFocus("the diff editor opened");
  });

  step("with the chat view hidden the prompt is a quick pick that says what is asked and goes when answered elsewhere (bug 2)", async () => {
    await w1.command("View: Show Explorer");
    await w1.page.waitForSelector(".explorer-folders-view, .explorer-viewlet", { visible: true });
    await send(w2, chat2, "#write again");
    const title = await w1.waitForQuickInput((t) => !!t && /Crush wants to/.test(t), "the permission quick pick");
    assert.match(title!, /Crush wants to/);
    const rows = await w1.page.$$eval(".quick-input-widget .monaco-list-row", (es) => es.map((e) => (e as HTMLElement).innerText));
    assert.ok(rows.some((r) => /Allow once[\s\S]*hello\.txt/.test(r)), `the pick shows what is asked: ${rows.join(" / ")}`);
    assert.ok(rows.some((r) => /Open diff/.test(r)), `the pick offers the diff: ${rows.join(" / ")}`);
    await until(chat2, "w2: the prompt", () => !!document.querySelector(".prompt [data-decision='deny']"));
    await w2.front();
    await chat2.click(".prompt [data-decision='deny']");
    await w1.waitForQuickInput((t) => t === null, "the quick pick withdrawn after the other window answered");
    chat1 = await w1.openChat();
  });

  step("an edit prompt offers the proposed change in the diff editor; allowed, the file changes", async () => {
    await send(w1, chat1, "#edit the file");
    await until(chat1, "the edit's permission prompt", () =>
      [...document.querySelectorAll(".prompt")].some((e) => /edit/.test((e as HTMLElement).innerText) && !!e.querySelector("[data-open-diff-request]")),
    );
    await w1.front();
    await chat1.click(".prompt [data-open-diff-request]");
    await w1.waitForTab(/hello\.txt \(proposed by Crush\)/, "the proposed edit's diff tab", { active: true });
    // Both sides: the file as it is, and as the edit would leave it.
    await w1.waitForEditorText("hello crush", "the current content on the left", ".monaco-diff-editor .editor.original .view-lines");
    await w1.waitForEditorText("hello edited", "the proposed content on the right", ".monaco-diff-editor .editor.modified .view-lines");
    assert.equal(fs.readFileSync(path.join(env.workspace, "hello.txt"), "utf8"), "hello crush\n", "nothing written before the answer");
    await w1.waitForEditorFocus("the diff editor opened");
    chat1 = await w1.openChat();
    await chat1.click(".prompt [data-decision='allow']");
    await until(chat1, "the finished edit", () =>
      !document.querySelector(".prompt") &&
      [...document.querySelectorAll("details.tool summary")].some((e) => /edit — (completed|success)/.test((e as HTMLElement).innerText)) &&
      document.querySelector("#status")?.getAttribute("data-state") === "idle",
    );
    assert.equal(fs.readFileSync(path.join(env.workspace, "hello.txt"), "utf8"), "hello edited\n");
  });

  step("assistant Markdown is rendered and sanitised; a code block inserts at the cursor", async () => {
    // Open the file from the Explorer, as a user would.
    await w1.command("View: Show Explorer");
    const file = await w1.page.waitForSelector(".explorer-folders-view .monaco-list-row[aria-label^='notes.rs']", { visible: true });
    await file!.click();
    await w1.waitForTab(/^notes\.rs/, "the file opened from the Explorer", { active: true });
    chat1 = await w1.openChat();
    await send(w1, chat1, "#markdown please");
    await until(chat1, "the rendered Markdown", () => !!document.querySelector("#log .markdown pre.hljs code .hljs-keyword"));
    const md = await chat1.evaluate(() => {
      const last = [...document.querySelectorAll("#log .msg.assistant .markdown")].pop() as HTMLElement;
      return {
        strong: last.querySelector("ol li strong")?.textContent,
        link: last.querySelector("a")?.getAttribute("href"),
        imgs: document.querySelectorAll("#log img").length,
        keyword: last.querySelector("pre code .hljs-keyword")?.textContent,
        text: last.innerText,
      };
    });
    assert.equal(md.strong, "Build");
    assert.equal(md.link, "https://example.com/docs");
    assert.equal(md.imgs, 0, "raw HTML never becomes an element");
    assert.match(md.text, /<img src=x onerror=alert\(1\)>/, "it shows as text");
    assert.equal(md.keyword, "fn");
    await w1.front();
    await chat1.click("#log .msg.assistant:last-child [data-code-action='insert']");
    await w1.waitForEditorText("fn answer() -> u32 { 42 }", "the code block inserted into notes.rs");
    await w1.command("File: Save");
    const file2 = path.join(env.workspace, "notes.rs");
    await eventually("notes.rs saved with the inserted code", () => /fn answer\(\) -> u32 \{ 42 \}/.test(fs.readFileSync(file2, "utf8")));
    assert.match(fs.readFileSync(file2, "utf8"), /\/\/ notes/, "inserted at the cursor, the rest kept");
  });

  step("Send Selection shows the attachment in the sender's own window at once (bug 5)", async () => {
    await w1.front();
    await w1.page.click(".editor-instance .view-lines");
    await w1.page.keyboard.down("Control");
    await w1.page.keyboard.press("a");
    await w1.page.keyboard.up("Control");
    await w1.command("Crush: Send Selection");
    // The command's input box (not the palette it was run from) is up: it names the selection.
    await w1.page.waitForFunction(
      () => {
        const input = document.querySelector(".quick-input-widget input") as HTMLInputElement | null;
        return !!input && input.placeholder === "Explain this code" && input.value === "";
      },
      { timeout: DEADLINE_MS, polling: 100 },
    );
    await w1.page.keyboard.type("explain this");
    await w1.page.keyboard.press("Enter");
    await until(chat1, "the prompt with its attachment", () =>
      [...document.querySelectorAll("#log .msg.user")].some((e) => /explain this[\s\S]*notes\.rs/.test((e as HTMLElement).innerText)),
    );
  });

  step("New Session from the palette shows the chat view with the new session (bug 6)", async () => {
    await w1.command("View: Show Explorer");
    await w1.page.waitForSelector(".explorer-folders-view, .explorer-viewlet", { visible: true });
    await w1.command("Crush: New Session");
    await w1.page.waitForSelector(".activitybar .action-item.checked a[aria-label^='Crush'], .activitybar .action-item.checked[aria-label^='Crush']", { timeout: DEADLINE_MS });
    chat1 = await w1.chat();
    await until(chat1, "an empty new session", () => document.querySelectorAll("#log .msg").length === 0);
  });

  step("light, dark and high-contrast themes apply to the chat view (screenshots)", async () => {
    await send(w1, chat1, "#markdown for the screenshots");
    await until(chat1, "the rendered Markdown", () => !!document.querySelector("#log .markdown pre.hljs"));
    for (const [key, theme] of Object.entries(THEMES)) {
      // As a user switches themes: the palette's theme picker.
      await w1.command("Preferences: Color Theme");
      await w1.page.keyboard.type(theme.label);
      await w1.pickRow(theme.label);
      await w1.page.waitForSelector(`.monaco-workbench.${theme.workbench}`, { timeout: DEADLINE_MS });
      await until(chat1, `the webview in the ${key} theme`, (cls: string) => document.body.classList.contains(cls), theme.webview);
      const look = await chat1.evaluate(() => {
        const css = getComputedStyle(document.documentElement);
        const b = getComputedStyle(document.getElementById("send")!);
        const probe = document.createElement("div");
        probe.style.backgroundColor = css.getPropertyValue("--vscode-button-background");
        probe.style.color = css.getPropertyValue("--vscode-foreground");
        document.body.appendChild(probe);
        const want = getComputedStyle(probe);
        const r = { button: b.backgroundColor, themeButton: want.backgroundColor, text: getComputedStyle(document.body).color, themeText: want.color };
        probe.remove();
        return r;
      });
      // Code block text readable: each token's colour against the background it is drawn on.
      const contrasts = await chat1.evaluate(() => {
        const rgb = (c: string) => (c.match(/[\d.]+/g) ?? []).map(Number);
        const lum = (c: string) => {
          const [r, g, b] = rgb(c).map((v) => v / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
          return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const bg = (e: Element | null): string => {
          for (; e; e = e.parentElement) {
            const c = getComputedStyle(e).backgroundColor;
            if (rgb(c).length === 3 || (rgb(c).length === 4 && rgb(c)[3] > 0)) {
              return c;
            }
          }
          return "rgb(255, 255, 255)";
        };
        const code = [...document.querySelectorAll("#log pre.hljs code")].pop()!;
        return [code, ...code.querySelectorAll("span")].map((e) => {
          const [a, b] = [lum(getComputedStyle(e).color), lum(bg(e))];
          return { text: e.textContent, ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05) };
        });
      });
      for (const c of contrasts) {
        assert.ok(c.ratio >= 3, `${key}: ${JSON.stringify(c.text)} in a code block has contrast ${c.ratio.toFixed(2)}:1 with its background`);
      }
      assert.equal(look.button, look.themeButton, `${key}: Send is a themed button`);
      assert.equal(look.text, look.themeText, `${key}: text in the theme's foreground`);
      const file = await w1.screenshot(`theme-${key}`);
      assert.ok(fs.statSync(file).size > 10_000, `${file} is a real screenshot`);
    }
    await w1.command("Preferences: Color Theme");
    await w1.page.keyboard.type(THEMES.dark.label);
    await w1.pickRow(THEMES.dark.label);
    await w1.page.waitForSelector(`.monaco-workbench.${THEMES.dark.workbench}`, { timeout: DEADLINE_MS });
  });

  step("the daemon killed: the extension starts a new one, reconnects both windows and goes on", async () => {
    await w1.waitForStatusBar(/Crush: idle/, "idle before the kill");
    const before = daemon.child.pid;
    daemon.child.kill("SIGKILL");
    await daemon.exited;
    // The status bar said idle before the kill too, so first the daemon's side: a new daemon
    // (started by an extension) with both windows' extension hosts connected to it again (plus
    // this crushctl's own connection).
    const end = Date.now() + DEADLINE_MS;
    let last = "";
    for (;;) {
      const { stdout } = await promisify(execFile)(env.crushctl(), ["--socket", env.socket, "status", "--json"], { env: env.env() }).catch(
        (e: { stdout?: string }) => ({ stdout: e.stdout ?? "" }),
      );
      last = stdout.trim();
      const st = (() => {
        try {
          return JSON.parse(last) as { running?: boolean; pid?: number; connections?: number };
        } catch {
          return {};
        }
      })();
      if (st.running && st.pid && st.pid !== before && (st.connections ?? 0) >= 3) {
        break;
      }
      if (Date.now() > end) {
        throw new Error(`no new daemon with both windows connected after the kill of pid ${before}; crushctl status says ${last}`);
      }
      // Poll: nothing announces a reconnection to an outside observer.
      await new Promise((r) => setTimeout(r, 200));
    }
    for (const w of [w1, w2]) {
      await w.waitForStatusBar(/Crush: idle/, `${w.name}: connected again`);
    }
    await send(w1, chat1, "after the restart");
    await until(chat1, "a reply from the new daemon", () =>
      [...document.querySelectorAll(".msg.assistant .markdown")].some((e) => (e as HTMLElement).innerText.includes("Hello from the mock.")) &&
      document.querySelector("#status")?.getAttribute("data-state") === "idle",
    );
    assert.ok((await chatState(chat1)) === "idle");
    // The other window goes on too, in its own session.
    await send(w2, chat2, "and here?");
    await until(chat2, "w2: a reply from the new daemon", () =>
      [...document.querySelectorAll(".msg.user .text")].some((e) => (e as HTMLElement).innerText === "and here?") &&
      (document.querySelector("#log .msg:last-child") as HTMLElement | null)?.innerText.includes("Hello from the mock.") === true &&
      document.querySelector("#status")?.getAttribute("data-state") === "idle",
    );
  });

  step("no extension error in the extension host's logs, and no CSP violation in the webviews", async () => {
    assert.deepEqual(server.extensionHostErrors(), []);
    for (const w of windows) {
      const csp = w.consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e));
      assert.deepEqual(csp, [], `${w.name}: CSP violations`);
    }
  });
});

describe("a failed autostart (no crushctl)", () => {
  let env: TestEnv;
  let server: CodeServer;
  let browser: Browser;

  before(async () => {
    env = new TestEnv("http://127.0.0.1:9/v1");
    server = new CodeServer(env, "broken", { "crush.crushctlPath": path.join(env.dir, "no-such-crushctl") });
    servers.push(server);
    await server.install();
    await server.start();
    browser = await launchBrowser(path.join(env.dir, "chromium-profile"));
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    if (!process.env.CRUSH_E2E_KEEP) {
      env?.cleanup();
    }
  });

  step("the status bar and the view say disconnected, and the notification says which setting to fix (bug 1)", async () => {
    const w = await Window.open(browser, server.url(env.workspace), "broken");
    windows.push(w);
    const note = await w.waitForNotification(/Crush: could not start crushd/, "the autostart failure");
    assert.match(note, /set crush\.crushctlPath/);
    assert.match(note, /Open Settings/);
    await w.waitForStatusBar(/Crush: disconnected/, "disconnected, not connecting forever");
    const chat = await w.openChat();
    await until(chat, "the view saying so", () => document.querySelector("#status")?.getAttribute("data-state") === "disconnected");
  });
});
