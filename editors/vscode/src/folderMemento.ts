// Where a window remembers its session: a small JSON file in the extension's per-workspace storage
// folder (`ExtensionContext.storageUri`), written at once, with VS Code's workspaceState beside it.
//
// Why not workspaceState alone: in a browser workbench (code-server, VS Code for the Web) the
// workbench keeps it in IndexedDB and writes it out every few seconds, not on each update, and a
// reload in between loses the update: the e2e suite saw a window reloaded a few seconds after its
// first prompt come back with no session ("remembered session: none" in the Crush output). The
// storage folder is on the extension host's own disk (the server's, under code-server), so a
// synchronous write there is on disk before `update` returns. No `vscode` import: tested under Node.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Memento } from "./controller";

export class FolderMemento implements Memento {
  private readonly file: string | undefined;
  private values: Record<string, unknown> = {};

  /**
   * `dir`: the storage folder's path (undefined when VS Code gives none, with no folder open, or
   * when it is not a local path); `fallback`: workspaceState, also kept up to date.
   */
  constructor(
    dir: string | undefined,
    private readonly fallback?: Memento,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.file = dir ? path.join(dir, "state.json") : undefined;
    if (this.file && fs.existsSync(this.file)) {
      try {
        const v = JSON.parse(fs.readFileSync(this.file, "utf8"));
        if (v && typeof v === "object" && !Array.isArray(v)) {
          this.values = v as Record<string, unknown>;
        }
      } catch (e) {
        this.log(`could not read ${this.file}: ${(e as Error).message}; using workspaceState`);
      }
    }
  }

  get<T>(key: string): T | undefined {
    return key in this.values ? (this.values[key] as T) : this.fallback?.get<T>(key);
  }

  async update(key: string, value: unknown): Promise<void> {
    if (value === undefined) {
      delete this.values[key];
    } else {
      this.values[key] = value;
    }
    if (this.file) {
      try {
        fs.mkdirSync(path.dirname(this.file), { recursive: true });
        const tmp = `${this.file}.${process.pid}.tmp`;
        fs.writeFileSync(tmp, JSON.stringify(this.values));
        fs.renameSync(tmp, this.file);
      } catch (e) {
        this.log(`could not write ${this.file}: ${(e as Error).message}; using workspaceState`);
      }
    }
    await this.fallback?.update(key, value);
  }
}
