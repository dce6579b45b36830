// Builds the extension: `node esbuild.mjs` (or --production) bundles src/extension.ts into
// dist/extension.js for the .vsix (vscode-jsonrpc included, `vscode` external); `--tests`
// transpiles src/ and test/ file by file into out/ for `node --test`.
import * as esbuild from "esbuild";
import { cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";

const production = process.argv.includes("--production");

function tsFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

if (process.argv.includes("--tests")) {
  rmSync("out", { recursive: true, force: true });
  await esbuild.build({
    entryPoints: [...tsFiles("src"), ...tsFiles("test"), ...tsFiles("e2e")],
    outdir: "out",
    outbase: ".",
    format: "cjs",
    platform: "node",
    target: "node20",
    sourcemap: "inline",
    logLevel: "warning",
  });
} else {
  await esbuild.build({
    entryPoints: ["src/extension.ts"],
    bundle: true,
    outfile: "dist/extension.js",
    external: ["vscode"],
    format: "cjs",
    platform: "node",
    target: "node18",
    minify: production,
    sourcemap: !production,
    logLevel: "warning",
  });
  // The webview's script: media/chat.js with markdown-it, highlight.js and DOMPurify, for the
  // browser, as one file the page's CSP allows by nonce.
  await esbuild.build({
    entryPoints: ["media/chat.js"],
    bundle: true,
    outfile: "dist/chat.js",
    format: "iife",
    platform: "browser",
    target: "es2020",
    minify: production,
    logLevel: "warning",
  });
  // Codicons (VS Code's icon font), loaded by the webview from the extension's files.
  mkdirSync("dist/codicons", { recursive: true });
  for (const f of ["codicon.css", "codicon.ttf"]) {
    cpSync(join("node_modules", "@vscode", "codicons", "dist", f), join("dist", "codicons", f));
  }
}
