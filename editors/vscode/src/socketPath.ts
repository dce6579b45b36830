// Where the daemon's socket is (docs/protocol.md §2.1): an explicit setting, else
// CRUSHD_SOCKET, else the per-user default. Shared by the extension and the tests; no `vscode`.
import * as os from "node:os";
import * as path from "node:path";

export function resolveSocketPath(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit && explicit.trim() !== "") {
    return explicit.trim();
  }
  const fromEnv = env.CRUSHD_SOCKET;
  if (fromEnv && fromEnv !== "") {
    return fromEnv;
  }
  if (process.platform === "win32") {
    return `\\\\.\\pipe\\crushd-${env.USERNAME || "user"}`;
  }
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && path.isAbsolute(runtime)) {
    return path.join(runtime, "crushd", "crushd.sock");
  }
  const uid = typeof process.getuid === "function" ? process.getuid() : 0;
  return path.join(env.TMPDIR || os.tmpdir(), `crushd-${uid}`, "crushd.sock");
}
