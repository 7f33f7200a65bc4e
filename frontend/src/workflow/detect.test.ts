import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { detectPng, detectText, detectValue, isApiFormat, isUiFormat } from "./detect";

const wf = (name: string) => readFileSync(new URL(`../../../examples/workflows/${name}`, import.meta.url), "utf8");

const invert = {
  "1": { class_type: "EmptyImage", inputs: { width: 64, height: 64, batch_size: 1, color: 16711680 } },
  "2": { class_type: "ImageInvert", inputs: { image: ["1", 0] } },
  "3": { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: "invert" } },
};

describe("workflow detection", () => {
  it("recognises API format", () => {
    const d = detectText(JSON.stringify(invert));
    expect(d.kind).toBe("api");
    expect(isApiFormat(invert)).toBe(true);
  });

  it("recognises the UI format and does not treat it as API", () => {
    const ui = { last_node_id: 3, last_link_id: 2, nodes: [{ id: 1, type: "EmptyImage" }], links: [], version: 0.4 };
    const d = detectValue(ui);
    expect(d.kind).toBe("ui");
    if (d.kind === "ui") expect(d.nodeCount).toBe(1);
    expect(isUiFormat(ui)).toBe(true);
    expect(isApiFormat(ui)).toBe(false);
  });

  it("recognises the newer UI schema (version 1 with state)", () => {
    expect(detectValue({ version: 1, state: { lastNodeId: 2 }, nodes: [], links: [] }).kind).toBe("ui");
  });

  it("unwraps a /prompt body or a v2 jobs body", () => {
    const a = detectValue({ prompt: invert, client_id: "x" });
    expect(a.kind).toBe("api");
    if (a.kind === "api") expect(a.note).toMatch(/prompt/);
    expect(detectValue({ workflow: invert, metadata: {} }).kind).toBe("api");
  });

  it("explains invalid JSON with a line and column", () => {
    const d = detectText('{\n  "1": {\n    "class_type": "X",,\n  }\n}');
    expect(d.kind).toBe("invalid");
    if (d.kind === "invalid") expect(d.reason).toMatch(/not valid JSON/);
  });

  it("says which entry is not a node", () => {
    const d = detectValue({ "1": { class_type: "A", inputs: {} }, "2": { inputs: {} } });
    expect(d.kind).toBe("invalid");
    if (d.kind === "invalid") expect(d.reason).toContain('"2"');
  });

  it("treats blank input as empty, and arrays and scalars as invalid", () => {
    expect(detectText("   ").kind).toBe("empty");
    expect(detectText("[]").kind).toBe("invalid");
    expect(detectText("42").kind).toBe("invalid");
    expect(detectText("{}").kind).toBe("invalid");
  });

  it("classifies the repository's example workflows", () => {
    for (const name of ["invert.json", "load-blur.json", "batch-two-outputs.json", "txt2img-sd15.json"]) {
      expect(detectText(wf(name)).kind, name).toBe("api");
    }
    expect(detectText(wf("ui-format.json")).kind).toBe("ui");
  });

  it("reads the API workflow embedded in a ComfyUI PNG", () => {
    const png = makePng({ prompt: JSON.stringify(invert), workflow: '{"nodes":[],"links":[]}' });
    const d = detectPng(png);
    expect(d.kind).toBe("api");
    if (d.kind === "api") expect(Object.keys(d.workflow)).toEqual(["1", "2", "3"]);
    expect(detectPng(makePng({ workflow: '{"nodes":[],"links":[]}' })).kind).toBe("ui");
    expect(detectPng(makePng({})).kind).toBe("invalid");
    expect(detectPng(new Uint8Array([1, 2, 3])).kind).toBe("invalid");
  });
});

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  v.setUint32(8 + data.length, 0); // CRC is not checked by the reader
  return out;
}

function makePng(text: Record<string, string>): Uint8Array {
  const parts: Uint8Array[] = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10])];
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, 1);
  new DataView(ihdr.buffer).setUint32(4, 1);
  ihdr[8] = 8;
  ihdr[9] = 2;
  parts.push(chunk("IHDR", ihdr));
  for (const [k, v] of Object.entries(text)) {
    parts.push(chunk("tEXt", new Uint8Array([...new TextEncoder().encode(k), 0, ...new TextEncoder().encode(v)])));
  }
  parts.push(chunk("IDAT", new Uint8Array(deflateSync(Buffer.from([0, 255, 0, 0])))));
  parts.push(chunk("IEND", new Uint8Array()));
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(len);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
