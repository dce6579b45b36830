// Both sides of an edit for VS Code's diff editor, from the unified diff the daemon sends with a
// `write`/`edit` permission prompt (what would change) or a finished tool call (what changed).
// The patch is applied with jsdiff to the file as it is on disk now. No `vscode` here.
import * as fs from "node:fs";
import * as path from "node:path";
import { applyPatch, parsePatch, reversePatch } from "diff";

export interface Change {
  /** The file, relative to the workspace root. */
  relPath: string;
  before: string;
  after: string;
}

function fileOf(root: string, diff: string): { relPath: string; created: boolean } {
  const [patch] = parsePatch(diff);
  const name = (patch?.newFileName ?? "").replace(/^b\//, "");
  if (!patch || !name || name === "/dev/null") {
    throw new Error("the change names no file");
  }
  const abs = path.resolve(root, name);
  if (abs !== root && !abs.startsWith(root + path.sep)) {
    throw new Error(`the change is outside the workspace: ${name}`);
  }
  return { relPath: name, created: patch.oldFileName === "/dev/null" };
}

function read(root: string, relPath: string): string {
  try {
    return fs.readFileSync(path.join(root, relPath), "utf8");
  } catch {
    return "";
  }
}

/** A pending edit: the file now, and the file as it would be. */
export function proposedChange(root: string, diff: string): Change {
  const { relPath, created } = fileOf(root, diff);
  const before = created ? "" : read(root, relPath);
  const after = applyPatch(before, diff);
  if (after === false) {
    throw new Error(`${relPath} changed since the agent looked at it: the proposed change no longer applies`);
  }
  return { relPath, before, after };
}

/** A finished edit: the file as it was (the patch undone), and the file now. */
export function finishedChange(root: string, diff: string): Change {
  const { relPath } = fileOf(root, diff);
  const after = read(root, relPath);
  const [patch] = parsePatch(diff);
  const before = applyPatch(after, reversePatch(patch));
  if (before === false) {
    throw new Error(`${relPath} changed again since this edit: it cannot be shown against the file now`);
  }
  return { relPath, before, after };
}
