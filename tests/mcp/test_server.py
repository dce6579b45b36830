"""An MCP server for crushd's black-box tests, written with the official Python SDK (PyPI `mcp`,
installed by .ci/run). It speaks real MCP over stdio; its tools misbehave on purpose so the tests
can check what crushd does when a server is slow, dies mid-call or is cancelled.

Usage: test_server.py [serve|hang-init|http] STATE_DIR [PORT]
  serve      a normal server over stdio (default)
  hang-init  never answers `initialize` (it does not read stdin)
  http       a normal server over streamable HTTP at http://127.0.0.1:PORT/mcp
  garbage    writes a line that is not JSON-RPC to stdout, then serves normally
  malformed  a normal server behind a filter that replaces every result of the `broken` tool
             with one that is not a CallToolResult (`content` is not a list of blocks)

Every tool call that starts writes STATE_DIR/<tool>.started; a cancelled `slow` call writes
STATE_DIR/slow.cancelled. Tests wait for those files with a deadline.
"""

import os
import sys
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer

mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
state = sys.argv[2] if len(sys.argv) > 2 else "."
print(f"crush-test-server {mode} pid {os.getpid()}", file=sys.stderr, flush=True)

if mode == "hang-init":
    time.sleep(3600)
    sys.exit(0)

if mode == "malformed":
    # The SDK never writes a malformed result, so the server runs as a child and this process
    # corrupts the answers to `broken` on their way out.
    import json
    import subprocess
    import threading

    child = subprocess.Popen(
        [sys.executable, __file__, "serve", state], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    broken_ids = set()

    def upstream() -> None:
        for line in sys.stdin.buffer:
            try:
                msg = json.loads(line)
                if msg.get("method") == "tools/call" and msg["params"]["name"] == "broken":
                    broken_ids.add(msg["id"])
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
            child.stdin.write(line)
            child.stdin.flush()
        child.stdin.close()

    threading.Thread(target=upstream, daemon=True).start()
    for line in child.stdout:
        try:
            msg = json.loads(line)
            if msg.get("id") in broken_ids and "result" in msg:
                msg["result"] = {"content": "not a list of blocks", "isError": "maybe"}
                line = (json.dumps(msg) + "\n").encode()
        except (ValueError, AttributeError, TypeError):
            pass
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    sys.exit(child.wait())

if mode == "garbage":
    sys.stdout.write("this is not JSON-RPC\n")
    sys.stdout.flush()

server = MCPServer("crush-test-server")


def mark(name: str, text: str = "") -> None:
    path = os.path.join(state, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@server.tool()
def echo(text: str) -> str:
    """Returns the text it is given."""
    mark("echo.started")
    return f"echo: {text}"


@server.tool()
def big(size: int) -> str:
    """Returns a text of `size` bytes (lines of digits)."""
    line = "0123456789" * 7 + "\n"
    return (line * (size // len(line) + 1))[:size]


@server.tool()
def pid() -> str:
    """Returns this server's process id."""
    return str(os.getpid())


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps for the given seconds, then answers."""
    mark("slow.started", str(os.getpid()))
    try:
        await anyio.sleep(seconds)
    except BaseException:
        mark("slow.cancelled")
        raise
    return f"slept {seconds}"


@server.tool()
def header(name: str, ctx: Context) -> str:
    """Returns the value of an HTTP request header (streamable HTTP only)."""
    request = ctx.request_context.request
    value = request.headers.get(name) if request is not None else None
    return value if value is not None else "(none)"


def extra() -> str:
    """A tool added at run time by `grow`."""
    return "extra"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool `extra` and tells the client its tool list changed."""
    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
def broken() -> str:
    """Answers normally; in `malformed` mode the answer is corrupted on its way out."""
    return "fine"


@server.tool()
def die() -> str:
    """Exits the server process in the middle of the call."""
    mark("die.started", str(os.getpid()))
    os._exit(3)


if mode == "http":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[3]))
else:
    server.run()
