// The remembered session survives a reload because it is on disk when `update` returns (bug 3
// in a browser workbench, where workspaceState is written out only every few seconds).
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { FolderMemento } from "../src/folderMemento";

function mapMemento() {
  const m = new Map<string, unknown>();
  return { m, get: <T>(k: string) => m.get(k) as T | undefined, update: async (k: string, v: unknown) => void m.set(k, v) };
}

test("a value written is read back by the next window at once, without workspaceState", async () => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "crush-memento-")), "not-yet-created");
  const first = new FolderMemento(dir, mapMemento());
  const pending = first.update("crush.sessionId", "s1");
  // Already on disk before the promise settles (what a reload right after needs).
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, "state.json"), "utf8"))["crush.sessionId"], "s1");
  await pending;
  // The reloaded window: a new memento, and a workspaceState that lost the update.
  const reloaded = new FolderMemento(dir, mapMemento());
  assert.equal(reloaded.get("crush.sessionId"), "s1");
  await reloaded.update("crush.sessionId", "s2");
  assert.equal(new FolderMemento(dir).get("crush.sessionId"), "s2");
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});

test("workspaceState is kept up to date and used when there is no storage folder or it is unusable", async () => {
  const ws = mapMemento();
  const none = new FolderMemento(undefined, ws);
  await none.update("crush.sessionId", "s1");
  assert.equal(ws.m.get("crush.sessionId"), "s1");
  assert.equal(none.get("crush.sessionId"), "s1");

  const base = fs.mkdtempSync(path.join(os.tmpdir(), "crush-memento-"));
  const blocked = path.join(base, "file");
  fs.writeFileSync(blocked, "a file where the folder should be");
  const lines: string[] = [];
  const bad = new FolderMemento(blocked, ws, (l) => lines.push(l));
  await bad.update("crush.sessionId", "s3");
  assert.equal(ws.m.get("crush.sessionId"), "s3");
  assert.equal(bad.get("crush.sessionId"), "s3");
  assert.match(lines.join("\n"), /could not write/);

  const garbled = path.join(base, "garbled");
  fs.mkdirSync(garbled);
  fs.writeFileSync(path.join(garbled, "state.json"), "{not json");
  assert.equal(new FolderMemento(garbled, ws, (l) => lines.push(l)).get("crush.sessionId"), "s3", "falls back to workspaceState");
  fs.rmSync(base, { recursive: true, force: true });
});
