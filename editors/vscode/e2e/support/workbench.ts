/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
// A real VS Code for the end-to-end tests: code-server (VS Code's workbench served to a browser,
// with a real extension host running the installed .vsix) on 127.0.0.1, driven by Debian's
// Chromium through puppeteer-core, as a user would: the activity bar, the command palette, the
// chat webview, quick picks, notifications, the status bar. Every wait has a deadline; nothing
// sleeps to synchronize.
//
// What it needs comes from the environment (.ci/run sets it; see editors/vscode/README.md):
//   CRUSH_TEST_BIN_DIR       crushd and crushctl (cargo build --workspace --bins)
//   CRUSH_E2E_CODE_SERVER    the code-server npm package's directory (…/node_modules/code-server)
//   CRUSH_E2E_NODE           the Node 24 binary code-server runs on
//   CRUSH_E2E_CHROMIUM       the browser (default /usr/bin/chromium)
//   CRUSH_E2E_VSIX           the built extension (default ../crush-vscode.vsix)
//   CRUSH_E2E_ARTIFACTS      where screenshots go (default a temp dir, printed)
import { ChildProcess, execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import type { Browser, Frame, Page } from "puppeteer-core";
import { TestEnv } from "../../test/support/daemon";

// eslint-disable-next-line @typescript-eslint/no-var-requires
const puppeteer = require("puppeteer-core") as typeof import("puppeteer-core");

/**
 * How long any one wait may take. Generous: CI runs this on 2 cores, possibly beside a cargo
 * build, where code-server's first load of a view alone has been seen to take over 10 s.
 */
export const DEADLINE_MS = 60_000;

function need(name: string): string {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run the e2e suite through .ci/run's VS Code block or set it as editors/vscode/README.md says`);
  }
  return v;
}

export function artifactsDir(): string {
  const dir = process.env.CRUSH_E2E_ARTIFACTS || path.join(os.tmpdir(), "crush-vscode-e2e-artifacts");
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * The built-in themes the suite switches between: `id` is the `workbench.colorTheme` setting's
 * value, `label` what the theme picker lists (VS Code 1.139's theme-defaults extension), and the
 * classes the workbench and the webview's body get for its kind.
 */
export const THEMES = {
  light: { id: "Light Modern", label: "Light Modern", workbench: "vs", webview: "vscode-light" },
  dark: { id: "Dark Modern", label: "Dark Modern", workbench: "vs-dark", webview: "vscode-dark" },
  highContrast: { id: "Default High Contrast", label: "Dark High Contrast", workbench: "hc-black", webview: "vscode-high-contrast" },
  highContrastLight: { id: "Default High Contrast Light", label: "Light High Contrast", workbench: "hc-light", webview: "vscode-high-contrast-light" },
} as const;

/** One code-server with its own user data, extensions and settings, in a TestEnv's sandbox. */
export class CodeServer {
  readonly userData: string;
  readonly extensions: string;
  private child: ChildProcess | undefined;
  private log = "";
  port = 0;

  constructor(
    readonly env: TestEnv,
    readonly name: string,
    private settings: Record<string, unknown>,
  ) {
    this.userData = path.join(env.dir, `${name}-user-data`);
    this.extensions = path.join(env.dir, `${name}-extensions`);
    fs.mkdirSync(path.join(this.userData, "User"), { recursive: true });
    // VS Code puts its IPC sockets in XDG_RUNTIME_DIR, which the sandbox names but does not create.
    fs.mkdirSync(env.env().XDG_RUNTIME_DIR!, { recursive: true, mode: 0o700 });
    this.writeSettings({});
  }

  private node(): string {
    return need("CRUSH_E2E_NODE");
  }

  private entry(): string {
    return path.join(need("CRUSH_E2E_CODE_SERVER"), "out", "node", "entry.js");
  }

  /** The workbench settings (user settings.json); code-server applies a change while running. */
  writeSettings(extra: Record<string, unknown>): void {
    this.settings = { ...this.settings, ...extra };
    const all = {
      "workbench.startupEditor": "none",
      "workbench.tips.enabled": false,
      "workbench.enableExperiments": false,
      "telemetry.telemetryLevel": "off",
      "update.mode": "none",
      "extensions.autoCheckUpdates": false,
      "extensions.autoUpdate": false,
      "security.workspace.trust.enabled": false,
      "window.restoreWindows": "none",
      "chat.disableAIFeatures": true,
      ...this.settings,
    };
    fs.writeFileSync(path.join(this.userData, "User", "settings.json"), JSON.stringify(all, null, 2));
  }

  private args(): string[] {
    return [
      this.entry(),
      "--user-data-dir",
      this.userData,
      "--extensions-dir",
      this.extensions,
      "--disable-telemetry",
      "--disable-update-check",
      "--disable-workspace-trust",
      "--disable-getting-started-override",
      "--auth",
      "none",
      "--ignore-last-opened",
    ];
  }

  /** `code-server --install-extension X.vsix`: the packaged extension, as a user installs it. */
  async install(vsix = process.env.CRUSH_E2E_VSIX || path.join(__dirname, "..", "..", "..", "crush-vscode.vsix")): Promise<void> {
    if (!fs.existsSync(vsix)) {
      throw new Error(`${vsix} is missing: run \`npm run package\` in editors/vscode first`);
    }
    const config = path.join(this.env.dir, `${this.name}-config.yaml`);
    fs.writeFileSync(config, "auth: none\ncert: false\n");
    const { stdout } = await promisify(execFile)(this.node(), [...this.args(), "--config", config, "--install-extension", vsix, "--force"], {
      env: this.env.env(),
      timeout: 120_000,
    });
    if (!/was successfully installed/.test(stdout)) {
      throw new Error(`installing ${vsix} into code-server said:\n${stdout}`);
    }
  }

  /** Starts code-server on 127.0.0.1 (a free port) and waits until it listens. */
  async start(): Promise<void> {
    const config = path.join(this.env.dir, `${this.name}-config.yaml`);
    fs.writeFileSync(config, "auth: none\ncert: false\n");
    const child = spawn(this.node(), [...this.args(), "--bind-addr", "127.0.0.1:0", "--config", config], {
      env: this.env.env(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    const onData = (b: Buffer) => {
      this.log += b.toString("utf8");
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`code-server did not listen within ${DEADLINE_MS} ms; its output:\n${this.log}`));
      }, DEADLINE_MS);
      const check = () => {
        const m = /HTTP server listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(this.log);
        if (m) {
          clearTimeout(timer);
          this.port = Number(m[1]);
          resolve();
        }
      };
      child.stdout!.on("data", check);
      child.stderr!.on("data", check);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`code-server exited (${code}) before listening; its output:\n${this.log}`));
      });
    });
  }

  url(folder: string): string {
    return `http://127.0.0.1:${this.port}/?folder=${encodeURIComponent(folder)}`;
  }

  output(): string {
    return this.log;
  }

  /** Copies code-server's logs (the extension host's, and the Crush output channel) to `dest`. */
  saveLogs(dest: string): void {
    const logs = path.join(this.userData, "logs");
    if (fs.existsSync(logs)) {
      fs.cpSync(logs, path.join(dest, `${this.name}-code-server-logs`), { recursive: true });
    }
    fs.writeFileSync(path.join(dest, `${this.name}-code-server-output.log`), this.log);
  }

  /** The extension host's log lines about our extension (activation errors and the like). */
  extensionHostErrors(): string[] {
    const logs = path.join(this.userData, "logs");
    const out: string[] = [];
    const walk = (d: string) => {
      for (const e of fs.existsSync(d) ? fs.readdirSync(d, { withFileTypes: true }) : []) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) {
          walk(p);
        } else if (/exthost\.log$|remoteexthost\.log$/.test(e.name)) {
          for (const line of fs.readFileSync(p, "utf8").split("\n")) {
            if (/\[error\]/.test(line) && /crush\.crush-vscode|crush-vscode-[\d.]+\//.test(line)) {
              out.push(line);
            }
          }
        }
      }
    };
    walk(logs);
    return out;
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null) {
      const gone = new Promise((resolve) => c.once("exit", resolve));
      c.kill("SIGTERM");
      await gone;
    }
  }
}

/** Headless Chromium, a fresh profile, nothing but 127.0.0.1. */
export async function launchBrowser(profileDir: string): Promise<Browser> {
  fs.mkdirSync(profileDir, { recursive: true });
  return puppeteer.launch({
    executablePath: process.env.CRUSH_E2E_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    userDataDir: profileDir,
    defaultViewport: { width: 1400, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
}

/** A workbench window in the browser. */
export class Window {
  readonly consoleErrors: string[] = [];

  private constructor(
    readonly page: Page,
    readonly name: string,
  ) {
    page.on("console", (m) => {
      if (m.type() === "error") {
        this.consoleErrors.push(m.text());
      }
    });
  }

  static async open(browser: Browser, url: string, name: string): Promise<Window> {
    const page = await browser.newPage();
    const w = new Window(page, name);
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: DEADLINE_MS });
    await page.waitForSelector(".monaco-workbench .part.activitybar", { timeout: DEADLINE_MS });
    return w;
  }

  async screenshot(label: string): Promise<string> {
    const file = path.join(artifactsDir(), `${label}-${this.name}.png`.replace(/[^\w.-]+/g, "_"));
    await this.page.screenshot({ path: file as `${string}.png` });
    return file;
  }

  /** Brings this window's tab to the front: the one the user is looking at and typing into. */
  async front(): Promise<void> {
    await this.page.bringToFront();
  }

  /**
   * Runs a palette command by its label ("Crush: New Session"), as a user would with F1. Should
   * the palette close before the command is picked (focus moving to an editor that is still
   * opening closes it), the user opens it again: what was typed is checked to be in the palette.
   */
  async command(label: string): Promise<void> {
    const end = Date.now() + DEADLINE_MS;
    const open = ".quick-input-widget:not([style*='display: none']) input";
    for (let attempt = 1; ; attempt++) {
      await this.front();
      await this.page.keyboard.press("Escape");
      await this.page.keyboard.press("F1");
      const left = () => Math.max(1, Math.min(10_000, end - Date.now()));
      const input = await this.page.waitForSelector(open, { visible: true, timeout: left() }).catch(() => null);
      if (input) {
        await input.type(label);
        const typed = await input.evaluate((e) => (e as HTMLInputElement).value).catch(() => "");
        if (typed === `>${label}` || typed === label) {
          if (await this.pickRow(label, left()).then(() => true, () => false)) {
            return;
          }
        }
      }
      if (Date.now() > end) {
        throw new Error(`${this.name}: the command palette did not run ${JSON.stringify(label)} in ${attempt} tries`);
      }
    }
  }

  /** Clicks the first row of the shown quick input whose label starts with (or contains) `label`. */
  async pickRow(label: string, deadlineMs = DEADLINE_MS): Promise<void> {
    const row = await this.page.waitForFunction(
      (l: string) => {
        const rows = [...document.querySelectorAll(".quick-input-widget .monaco-list-row")] as HTMLElement[];
        return (
          rows.find((r) => (r.getAttribute("aria-label") ?? "").startsWith(l)) ??
          rows.find((r) => (r.getAttribute("aria-label") ?? "").includes(l) || r.innerText.includes(l)) ??
          false
        );
      },
      { timeout: deadlineMs, polling: 100 },
      label,
    );
    await (row as unknown as import("puppeteer-core").ElementHandle<Element>).click();
  }

  /** Waits until an editor (text or diff) has the keyboard focus, as after opening one. */
  async waitForEditorFocus(what: string): Promise<void> {
    await this.page
      .waitForFunction(() => !!document.activeElement?.closest(".editor-instance, .monaco-diff-editor"), { timeout: DEADLINE_MS, polling: 100 })
      .catch(async (e) => {
        const at = await this.page.evaluate(() => `${document.activeElement?.tagName}.${document.activeElement?.className}`).catch(() => "?");
        throw new Error(`${this.name}: ${what}: the focus is on ${at} (${(e as Error).message})`);
      });
  }

  /**
   * Shows the chat view from the activity bar, as a user would, and returns its webview's frame.
   * Should the webview not come up (after a reload the restored view can stay blank until it is
   * shown again), the icon is clicked off and on once more.
   */
  async openChat(): Promise<Frame> {
    await this.front();
    const icon = ".activitybar .action-item a[aria-label^='Crush'], .activitybar a.action-label[aria-label^='Crush']";
    const checked = ".activitybar .action-item.checked a[aria-label^='Crush'], .activitybar .action-item.checked[aria-label^='Crush']";
    await this.page.keyboard.press("Escape");
    await this.page.waitForSelector(icon, { timeout: DEADLINE_MS });
    if (!(await this.page.$(checked))) {
      await this.page.click(icon);
    }
    try {
      return await this.chat(DEADLINE_MS / 4);
    } catch {
      await this.page.click(icon);
      if (!(await this.page.$(checked))) {
        await this.page.click(icon);
      }
      return this.chat();
    }
  }

  /** The chat webview's document (the inner frame of VS Code's webview iframe). */
  async chat(deadlineMs = DEADLINE_MS): Promise<Frame> {
    const end = Date.now() + deadlineMs;
    for (;;) {
      for (const f of this.page.frames()) {
        if (await hasChat(f)) {
          return f;
        }
      }
      if (Date.now() > end) {
        throw new Error(
          `${this.name}: the Crush chat view never appeared; frames: ${this.page.frames().map((f) => f.url()).join(", ")}; console errors: ${this.consoleErrors.join(" | ")}`,
        );
      }
      // Poll: the webview's inner frame has no event of its own to wait for.
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The editor tabs: label (the text; VS Code puts a file's name and extension in two spans), active, dirty. */
  async tabs(): Promise<Array<{ label: string; active: boolean; dirty: boolean }>> {
    return this.page.$$eval(".tabs-container .tab", (es) =>
      es.map((e) => ({ label: (e.textContent ?? "").trim(), active: e.classList.contains("active"), dirty: e.classList.contains("dirty") })),
    );
  }

  /** Waits for a tab whose label matches `re` and, where given, whose active/dirty state is as asked. */
  async waitForTab(re: RegExp, what: string, want: { active?: boolean; dirty?: boolean } = {}): Promise<void> {
    await this.page
      .waitForFunction(
        (src: string, active: boolean | null, dirty: boolean | null) =>
          [...document.querySelectorAll(".tabs-container .tab")].some(
            (e) =>
              new RegExp(src).test((e.textContent ?? "").trim()) &&
              (active === null || e.classList.contains("active") === active) &&
              (dirty === null || e.classList.contains("dirty") === dirty),
          ),
        { timeout: DEADLINE_MS, polling: 100 },
        re.source,
        want.active ?? null,
        want.dirty ?? null,
      )
      .catch(async (e) => {
        throw new Error(`${this.name}: ${what}: the tabs are ${JSON.stringify(await this.tabs())} (${(e as Error).message})`);
      });
  }

  /** The text of the editors' visible lines (non-breaking spaces as spaces). */
  async waitForEditorText(needle: string, what: string, selector = ".editor-instance .view-lines"): Promise<void> {
    await this.page
      .waitForFunction(
        (sel: string, n: string) => [...document.querySelectorAll(sel)].some((e) => (e as HTMLElement).innerText.replace(/\u00a0/g, " ").includes(n)),
        { timeout: DEADLINE_MS, polling: 100 },
        selector,
        needle,
      )
      .catch(async (e) => {
        const shown = await this.page.$$eval(selector, (es) => es.map((x) => (x as HTMLElement).innerText)).catch(() => []);
        throw new Error(`${this.name}: ${what}: the editors show ${JSON.stringify(shown)} (${(e as Error).message})`);
      });
  }

  /** Text of the status bar item of the extension. */
  async statusBarText(): Promise<string> {
    return this.page.evaluate(() =>
      [...document.querySelectorAll(".statusbar-item")]
        .map((e) => (e as HTMLElement).innerText)
        .filter((t) => t.includes("Crush"))
        .join(" | "),
    );
  }

  async waitForStatusBar(pred: RegExp, what: string): Promise<void> {
    await this.page
      .waitForFunction(
        (src: string) =>
          [...document.querySelectorAll(".statusbar-item")].some((e) => new RegExp(src).test((e as HTMLElement).innerText)),
        { timeout: DEADLINE_MS, polling: 100 },
        pred.source,
      )
      .catch(async (e) => {
        throw new Error(`${this.name}: ${what}: status bar says ${JSON.stringify(await this.statusBarText())} (${(e as Error).message})`);
      });
  }

  /** Notifications' messages (toasts and the notification center). */
  async notifications(): Promise<string[]> {
    return this.page.evaluate(() =>
      [...document.querySelectorAll(".notification-list-item")].map((e) => (e as HTMLElement).innerText),
    );
  }

  async waitForNotification(pred: RegExp, what: string): Promise<string> {
    const handle = await this.page
      .waitForFunction(
        (src: string) => {
          const hit = [...document.querySelectorAll(".notification-list-item")].find((e) => new RegExp(src).test((e as HTMLElement).innerText));
          return hit ? (hit as HTMLElement).innerText : false;
        },
        { timeout: DEADLINE_MS, polling: 100 },
        pred.source,
      )
      .catch(async (e) => {
        throw new Error(`${this.name}: ${what}: notifications are ${JSON.stringify(await this.notifications())} (${(e as Error).message})`);
      });
    return (await handle.jsonValue()) as string;
  }

  /** The quick input's title while it is shown, else null. */
  async quickInputTitle(): Promise<string | null> {
    return this.page.evaluate(() => {
      const w = document.querySelector(".quick-input-widget") as HTMLElement | null;
      if (!w || getComputedStyle(w).display === "none" || w.getBoundingClientRect().height === 0) {
        return null;
      }
      return (w.querySelector(".quick-input-title") as HTMLElement | null)?.innerText ?? "";
    });
  }

  async waitForQuickInput(pred: (title: string | null) => boolean, what: string): Promise<string | null> {
    const end = Date.now() + DEADLINE_MS;
    for (;;) {
      const t = await this.quickInputTitle();
      if (pred(t)) {
        return t;
      }
      if (Date.now() > end) {
        throw new Error(`${this.name}: ${what}: the quick input's title is ${JSON.stringify(t)}`);
      }
      await this.page
        .waitForFunction(
          (was: string | null) => {
            const w = document.querySelector(".quick-input-widget") as HTMLElement | null;
            const now =
              !w || getComputedStyle(w).display === "none" || w.getBoundingClientRect().height === 0
                ? null
                : ((w.querySelector(".quick-input-title") as HTMLElement | null)?.innerText ?? "");
            return now !== was;
          },
          { timeout: Math.max(1, end - Date.now()), polling: 100 },
          t,
        )
        .catch(() => undefined);
    }
  }
}

/**
 * Whether a frame is the chat webview's document. Asked with a deadline of its own: a webview
 * being torn down (its view hidden) can keep a frame whose document never answers again, and
 * puppeteer's query would wait for it forever.
 */
async function hasChat(f: Frame): Promise<boolean> {
  if (f.detached) {
    return false;
  }
  const probe = f.evaluate(() => !!document.getElementById("prompt") && !!document.getElementById("log")).catch(() => false);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), 2_000);
  });
  try {
    return await Promise.race([probe, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `pred` holds in this process (a file on disk, say), checking every 100 ms up to the deadline. */
export async function eventually(what: string, pred: () => boolean, deadlineMs = DEADLINE_MS): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!pred()) {
    if (Date.now() > end) {
      throw new Error(`waited ${deadlineMs} ms for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until `fn` (run in the chat frame) returns something truthy; fails naming `what`. */
export async function until<T>(frame: Frame, what: string, fn: (...a: any[]) => T, ...args: unknown[]): Promise<T> {
  try {
    const h = await frame.waitForFunction(fn as any, { timeout: DEADLINE_MS, polling: "mutation" }, ...(args as any[]));
    return (await h.jsonValue()) as T;
  } catch (e) {
    const body = await frame.evaluate(() => document.body.innerText).catch(() => "(frame gone)");
    throw new Error(`waiting for ${what}: ${(e as Error).message}\nthe chat view shows:\n${body}`);
  }
}

/** The state the chat view's status line shows (`data-state`). */
export function chatState(frame: Frame): Promise<string | null> {
  return frame.$eval("#status", (e) => e.getAttribute("data-state"));
}

/** Types a prompt into a window's chat view and presses Send (or another button). */
export async function send(w: Window, frame: Frame, text: string, button = "#send"): Promise<void> {
  await w.front();
  await frame.click("#prompt");
  await frame.type("#prompt", text);
  await frame.click(button);
}
