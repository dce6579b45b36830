// A stand-in for the `vscode` module, enough for activate() and the commands: records what the
// extension registers and shows, and lets a test play the user (answers to input boxes, quick
// picks and notifications). Installed by hooking Node's module resolution of "vscode".
import Module = require("node:module");
import * as path from "node:path";
import { EventEmitter } from "node:events";

type Fn = (...a: any[]) => any;

export const recorded = {
  commands: new Map<string, Fn>(),
  views: new Map<string, any>(),
  info: [] as string[],
  warnings: [] as string[],
  errors: [] as string[],
  opened: [] as string[],
  /** Untitled documents opened with content (language and text). */
  documents: [] as Array<{ language?: string; content: string }>,
  /** Quick picks created with createQuickPick, live or disposed. */
  quickPicks: [] as StubQuickPick[],
  executed: [] as string[],
  /** The options of every showInputBox call. */
  inputBoxes: [] as any[],
};

/** A createQuickPick() result: records what it shows and whether it was taken down. */
export class StubQuickPick {
  title = "";
  placeholder = "";
  items: any[] = [];
  selectedItems: any[] = [];
  ignoreFocusOut = false;
  shown = false;
  disposed = false;
  private accept: Fn[] = [];
  private hide: Fn[] = [];
  onDidAccept(f: Fn) {
    this.accept.push(f);
    return disposable;
  }
  onDidHide(f: Fn) {
    this.hide.push(f);
    return disposable;
  }
  show() {
    this.shown = true;
    events.emit("quickPick", this);
  }
  /** The user picks the item whose label matches. */
  choose(label: RegExp) {
    this.selectedItems = this.items.filter((i) => label.test(i.label));
    this.accept.forEach((f) => f());
  }
  hideIt() {
    this.hide.forEach((f) => f());
  }
  dispose() {
    if (!this.disposed) {
      this.disposed = true;
      this.shown = false;
      events.emit("quickPickDisposed", this);
    }
  }
}
export const user = {
  /** What the user enters in an input box (undefined: Escape); a function gets its options. */
  inputBox: undefined as string | undefined | ((opts: any) => string | undefined),
  quickPick: (items: any[]) => items[0],
  warningChoice: undefined as string | undefined,
};
export const config: Record<string, unknown> = {};
export const events = new EventEmitter();

class Uri {
  constructor(readonly scheme: string, readonly fsPath: string) {}
  static file(p: string) {
    return new Uri("file", p);
  }
  static from(c: { scheme: string; path: string; query?: string }) {
    return new Uri(c.scheme, c.path + (c.query ? `?${c.query}` : ""));
  }
  static parse(s: string) {
    const i = s.indexOf(":");
    return new Uri(s.slice(0, i), s.slice(i + 1));
  }
  static joinPath(u: Uri, ...parts: string[]) {
    return new Uri(u.scheme, path.join(u.fsPath, ...parts));
  }
  toString() {
    return `${this.scheme}://${this.fsPath}`;
  }
}

const disposable = { dispose() {} };

/** vscode.EventEmitter: `event` subscribes, `fire` calls the listeners. */
class VsEventEmitter<T> {
  private listeners: Array<(e: T) => unknown> = [];
  event = (f: (e: T) => unknown) => {
    this.listeners.push(f);
    return disposable;
  };
  fire(e: T) {
    this.listeners.forEach((f) => f(e));
  }
  dispose() {
    this.listeners = [];
  }
}

class TreeItem {
  description?: string;
  tooltip?: string;
  iconPath?: unknown;
  contextValue?: string;
  constructor(
    readonly label: string,
    readonly collapsibleState: number,
  ) {}
}

class ThemeIcon {
  constructor(readonly id: string) {}
}
export const memento = new Map<string, unknown>();

export const stub = {
  Uri,
  EventEmitter: VsEventEmitter,
  TreeItem,
  ThemeIcon,
  TreeItemCollapsibleState: { None: 0, Collapsed: 1, Expanded: 2 },
  StatusBarAlignment: { Left: 1, Right: 2 },
  ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
  Disposable: class {
    constructor(private f: () => void) {}
    dispose() {
      this.f();
    }
  },
  workspace: {
    workspaceFolders: [] as Array<{ uri: Uri; name: string; index: number }>,
    getConfiguration: (section: string) => ({
      get: <T>(key: string, dflt: T): T => (`${section}.${key}` in config ? (config[`${section}.${key}`] as T) : dflt),
    }),
    onDidChangeConfiguration: (f: Fn) => {
      events.on("config", f);
      return disposable;
    },
    asRelativePath: (u: Uri) => path.relative(stub.workspace.workspaceFolders[0]?.uri.fsPath ?? "/", u.fsPath),
    openTextDocument: async (u: any) => {
      if (u && typeof u === "object" && "content" in u) {
        recorded.documents.push({ language: u.language, content: u.content });
        return { uri: Uri.file(`/untitled/${recorded.documents.length}`) };
      }
      return { uri: u };
    },
    registerTextDocumentContentProvider: () => disposable,
  },
  env: {
    clipboard: { writeText: async (t: string) => void events.emit("clipboard", t) },
    openExternal: async () => true,
  },
  window: {
    activeTextEditor: undefined as any,
    visibleTextEditors: [] as any[],
    createQuickPick: () => {
      const q = new StubQuickPick();
      recorded.quickPicks.push(q);
      return q;
    },
    setStatusBarMessage: () => disposable,
    createOutputChannel: (_name: string) => ({ appendLine() {}, show() {}, dispose() {} }),
    createStatusBarItem: () => ({ text: "", tooltip: "", command: "", show() {}, dispose() {} }),
    createTreeView: (id: string, options: { treeDataProvider: any }) => {
      recorded.views.set(id, options.treeDataProvider);
      return { onDidChangeVisibility: () => disposable, dispose() {} };
    },
    registerWebviewViewProvider: (id: string, provider: any) => {
      recorded.views.set(id, provider);
      return disposable;
    },
    showInformationMessage: async (m: string) => {
      recorded.info.push(m);
      return undefined;
    },
    showWarningMessage: async (m: string, ..._rest: any[]) => {
      recorded.warnings.push(m);
      events.emit("warning", m);
      return user.warningChoice;
    },
    showErrorMessage: async (m: string, ..._items: string[]) => {
      recorded.errors.push(m);
      return undefined;
    },
    showInputBox: async (opts: any = {}) => {
      recorded.inputBoxes.push(opts);
      events.emit("inputBox", opts);
      return typeof user.inputBox === "function" ? user.inputBox(opts) : user.inputBox;
    },
    withProgress: async (_opts: unknown, task: (p: { report(v: unknown): void }) => Promise<unknown>) =>
      task({ report() {} }),
    showQuickPick: async (items: any[]) => user.quickPick(items),
    showTextDocument: async (doc: { uri: Uri }) => {
      recorded.opened.push(doc.uri.fsPath);
    },
  },
  commands: {
    registerCommand: (id: string, f: Fn) => {
      recorded.commands.set(id, f);
      return disposable;
    },
    executeCommand: async (id: string, ...a: any[]) => {
      recorded.executed.push(id);
      return recorded.commands.get(id)?.(...a);
    },
  },
};

/** Makes `require("vscode")` return the stub. */
export function install(): void {
  const M = Module as unknown as { _resolveFilename: Fn };
  const orig = M._resolveFilename;
  const stubPath = __filename;
  M._resolveFilename = function (request: string, ...rest: any[]) {
    if (request === "vscode") {
      return stubPath;
    }
    return orig.call(this, request, ...rest);
  };
  // The stub module's exports are the vscode API.
  Object.assign(module.exports, stub);
}

/** A fake webview view: collects posted messages, lets a test send messages as the webview. */
export function fakeView() {
  const posted: any[] = [];
  const emitter = new EventEmitter();
  const view = {
    visible: true,
    webview: {
      options: {},
      html: "",
      cspSource: "vscode-resource:",
      asWebviewUri: (u: Uri) => u,
      postMessage: async (m: any) => {
        posted.push(m);
        emitter.emit("posted", m);
        return true;
      },
      onDidReceiveMessage: (f: Fn) => {
        emitter.on("fromWebview", f);
        return disposable;
      },
    },
    onDidDispose: () => disposable,
  };
  return { view, posted, emitter, send: (m: unknown) => emitter.listeners("fromWebview").map((f) => (f as Fn)(m)) };
}
