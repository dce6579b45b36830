// Builds the extension: `node esbuild.mjs` (or --production) bundles src/extension.ts into
// dist/extension.js for the .vsix (vscode-jsonrpc included, `vscode` external); `--tests`
// transpiles src/ and test/ file by file into out/ for `node --test`.
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";
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
    entryPoints: [...tsFiles("src"), ...tsFiles("test")],
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
}
