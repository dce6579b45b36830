// A tiny loopback mock of OpenAI's streaming Chat Completions, enough for the extension's tests
// (the Rust suite's MockLlm is scripted from Rust; these tests script by prompt instead):
// - a prompt containing `#write` gets a `write` tool call for hello.txt, and the request that
//   carries the tool's result gets "Done.";
// - `#edit` gets an `edit` tool call that replaces "hello crush" with "hello edited" in hello.txt;
// - `#hold` streams one chunk, then holds the stream until `release()` (or the client leaves);
// - `#markdown` answers with Markdown (a list, a link, a Rust code block) and raw HTML that must
//   never become markup;
// - anything else streams "Hello from the mock." word by word.
import * as http from "node:http";
import type { AddressInfo } from "node:net";

interface ChatMessage {
  role: string;
  content?: unknown;
}

function text(content: unknown): string {
  if (typeof content === "string") {
    return content;
  }
  if (Array.isArray(content)) {
    return content.map((p) => (typeof p === "object" && p && "text" in p ? String((p as { text: unknown }).text) : "")).join("");
  }
  return "";
}

export class MockLlm {
  private server: http.Server;
  private held: Array<() => void> = [];
  private holdWaiters: Array<() => void> = [];
  requests = 0;

  private constructor(server: http.Server) {
    this.server = server;
  }

  static async start(): Promise<MockLlm> {
    const server = http.createServer();
    const mock = new MockLlm(server);
    server.on("request", (req, res) => mock.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return mock;
  }

  get baseUrl(): string {
    const a = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${a.port}/v1`;
  }

  /**
   * Resolves once a `#hold` stream starts holding after this call: call it before sending the
   * prompt. (Not "one is holding now": a stream cancelled a moment ago may not have closed yet,
   * and waiting on it let a test release the mock before the new request even arrived.)
   */
  whenHolding(): Promise<void> {
    return new Promise((resolve) => this.holdWaiters.push(resolve));
  }

  /** Lets every held stream finish. */
  release(): void {
    const held = this.held;
    this.held = [];
    held.forEach((f) => f());
  }

  async close(): Promise<void> {
    this.release();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      this.requests += 1;
      let body: { messages?: ChatMessage[] } = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        // Answer anyway; the test will notice.
      }
      void this.stream(body.messages ?? [], req, res);
    });
  }

  private async stream(messages: ChatMessage[], req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const send = (delta: object, finish: string | null = null) =>
      res.write(
        `data: ${JSON.stringify({
          id: "chatcmpl-mock",
          object: "chat.completion.chunk",
          model: "mock-1",
          choices: [{ index: 0, delta, finish_reason: finish }],
        })}\n\n`,
      );
    const finish = (reason: string) => {
      send({}, reason);
      res.write(`data: ${JSON.stringify({ id: "chatcmpl-mock", object: "chat.completion.chunk", choices: [], usage: { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 } })}\n\n`);
      res.write("data: [DONE]\n\n");
      res.end();
    };
    const last = messages[messages.length - 1];
    const lastUser = [...messages].reverse().find((m) => m.role === "user");
    const prompt = text(lastUser?.content);
    if (last?.role === "tool") {
      send({ role: "assistant", content: "Done." });
      finish("stop");
      return;
    }
    if (prompt.includes("#write")) {
      send({ role: "assistant", content: "Writing it." });
      send({
        tool_calls: [
          {
            index: 0,
            id: "call_write_1",
            type: "function",
            function: { name: "write", arguments: JSON.stringify({ path: "hello.txt", content: "hello crush\n" }) },
          },
        ],
      });
      finish("tool_calls");
      return;
    }
    if (prompt.includes("#edit")) {
      send({ role: "assistant", content: "Editing it." });
      send({
        tool_calls: [
          {
            index: 0,
            id: "call_edit_1",
            type: "function",
            function: { name: "edit", arguments: JSON.stringify({ path: "hello.txt", old_string: "hello crush", new_string: "hello edited" }) },
          },
        ],
      });
      finish("tool_calls");
      return;
    }
    if (prompt.includes("#markdown")) {
      const answer = [
        "Here is the plan:\n\n",
        "1. **Build** it\n",
        "2. Read [the docs](https://example.com/docs)\n\n",
        "<img src=x onerror=alert(1)>\n\n",
        "```rust\n",
        "fn answer() -> u32 { 42 }\n",
        "```\n",
      ];
      send({ role: "assistant", content: answer[0] });
      for (const a of answer.slice(1)) {
        send({ content: a });
      }
      finish("stop");
      return;
    }
    if (prompt.includes("#hold")) {
      send({ role: "assistant", content: "w0" });
      await new Promise<void>((resolve) => {
        this.held.push(resolve);
        // A client that leaves (a cancelled run) ends the hold: no longer one to release.
        req.socket.once("close", () => {
          this.held = this.held.filter((f) => f !== resolve);
          resolve();
        });
        const waiters = this.holdWaiters;
        this.holdWaiters = [];
        waiters.forEach((w) => w());
      });
      if (res.destroyed || res.writableEnded) {
        return;
      }
      send({ content: " w1" });
      finish("stop");
      return;
    }
    const words = ["Hello", " from", " the", " mock."];
    send({ role: "assistant", content: words[0] });
    for (const w of words.slice(1)) {
      send({ content: w });
    }
    finish("stop");
  }
}
