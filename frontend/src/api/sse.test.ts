import { describe, expect, it } from "vitest";
import { readSseStream, SseParser, type SseMessage } from "./sse";

describe("SSE parser", () => {
  it("parses named events with JSON data", () => {
    const p = new SseParser();
    const out = p.feed('event: status\ndata: {"status":"queued","queue_position":2}\n\nevent: progress\ndata: {"value":0.5}\n\n');
    expect(out).toEqual([
      { event: "status", data: '{"status":"queued","queue_position":2}' },
      { event: "progress", data: '{"value":0.5}' },
    ]);
  });

  it("handles messages split across chunks at any byte", () => {
    const text = 'event: output\ndata: {"id":"asset_1"}\n\n: keep-alive\n\nevent: log\ndata: {"level":"info","message":"hi"}\n\n';
    for (let cut = 1; cut < text.length; cut++) {
      const p = new SseParser();
      const out = [...p.feed(text.slice(0, cut)), ...p.feed(text.slice(cut))];
      expect(out.map((m) => m.event), `cut at ${cut}`).toEqual(["output", "log"]);
    }
  });

  it("accepts CRLF and lone CR line endings, including CRLF split over chunks", () => {
    const p = new SseParser();
    expect(p.feed("event: a\r\ndata: 1\r")).toEqual([]);
    expect(p.feed("\n\r\n")).toEqual([{ event: "a", data: "1" }]);
    const q = new SseParser();
    expect(q.feed("data: x\r\rdata: y\n\n")).toEqual([
      { event: "message", data: "x" },
      { event: "message", data: "y" },
    ]);
  });

  it("joins multi-line data, ignores comments and unknown fields, strips one leading space", () => {
    const p = new SseParser();
    const out = p.feed(": comment\nfoo: bar\ndata:  two spaces\ndata:no space\ndata\n\n");
    expect(out).toEqual([{ event: "message", data: " two spaces\nno space\n" }]);
  });

  it("does not dispatch an event with no data, and resets the event name", () => {
    const p = new SseParser();
    expect(p.feed("event: status\n\ndata: x\n\n")).toEqual([{ event: "message", data: "x" }]);
  });

  it("keeps id and retry, strips a leading BOM, drops an unterminated message", () => {
    const p = new SseParser();
    const out = p.feed("\ufeffid: 7\nretry: 3000\nevent: status\ndata: {}\n\ndata: partial");
    expect(out).toEqual([{ event: "status", data: "{}", id: "7", retry: 3000 }]);
    expect(p.end()).toEqual([]);
  });

  it("reads a fetch body stream, decoding UTF-8 split across chunks", async () => {
    const bytes = new TextEncoder().encode('event: log\ndata: {"message":"héllo ✓"}\n\n');
    const chunks = [bytes.slice(0, 27), bytes.slice(27, 29), bytes.slice(29)];
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (const ch of chunks) c.enqueue(ch);
        c.close();
      },
    });
    const got: SseMessage[] = [];
    await readSseStream(body, (m) => got.push(m));
    expect(got).toHaveLength(1);
    expect(JSON.parse(got[0].data).message).toBe("héllo ✓");
  });
});
