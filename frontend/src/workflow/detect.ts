// Works out what a pasted or dropped document is: an API-format workflow (what the API
// runs), the editor's UI format (which the API rejects), or something else.

export type ApiWorkflow = Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: { title?: string } }>;

export type Detection =
  | { kind: "api"; workflow: ApiWorkflow; note?: string }
  | { kind: "ui"; nodeCount: number; embeddedApi?: ApiWorkflow; reason: string }
  | { kind: "empty" }
  | { kind: "invalid"; reason: string };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** True when the value is a graph of `{id: {class_type, inputs}}`. */
export function isApiFormat(v: unknown): v is ApiWorkflow {
  if (!isObject(v)) return false;
  const entries = Object.entries(v);
  if (entries.length === 0) return false;
  return entries.every(
    ([, n]) => isObject(n) && typeof n.class_type === "string" && (n.inputs === undefined || isObject(n.inputs)),
  );
}

/** True for the editor's save format: `nodes` and `links` arrays (LiteGraph), any version. */
export function isUiFormat(v: unknown): boolean {
  if (!isObject(v)) return false;
  if (Array.isArray(v.nodes) && (Array.isArray(v.links) || "last_node_id" in v || "version" in v)) return true;
  // Newer schema: `{version: 1, state: {...}, nodes: [...], links: [...]}` is covered above;
  // a bare subgraph definitions block is UI as well.
  return isObject(v.definitions) && Array.isArray((v.definitions as Record<string, unknown>).subgraphs);
}

/** Describes where JSON.parse failed, with a line and column when the engine tells us the offset. */
export function describeJsonError(text: string, e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const m = /position (\d+)/.exec(msg);
  if (m) {
    const pos = Number(m[1]);
    const before = text.slice(0, pos);
    const line = before.split("\n").length;
    const col = pos - before.lastIndexOf("\n");
    return `This is not valid JSON (line ${line}, column ${col}): ${msg.replace(/ in JSON at position \d+.*$/, "")}`;
  }
  return `This is not valid JSON: ${msg}`;
}

export function detectValue(value: unknown): Detection {
  if (isApiFormat(value)) return { kind: "api", workflow: value };
  if (isObject(value)) {
    // Wrappers people paste: the body of POST /prompt (`{prompt: ...}`), of POST /api/v2/jobs
    // (`{workflow: ...}`), or a job's workflow download.
    for (const key of ["prompt", "workflow", "output"]) {
      const inner = value[key];
      if (isApiFormat(inner)) return { kind: "api", workflow: inner, note: `Took the API-format graph from the "${key}" field.` };
    }
    if (isUiFormat(value)) {
      return {
        kind: "ui",
        nodeCount: Array.isArray(value.nodes) ? value.nodes.length : 0,
        reason: "This is the ComfyUI editor's UI format (it has nodes and links with positions), not the API format.",
      };
    }
    if (isUiFormat(value.workflow)) {
      const wf = value.workflow as Record<string, unknown>;
      return {
        kind: "ui",
        nodeCount: Array.isArray(wf.nodes) ? wf.nodes.length : 0,
        reason: "This is the ComfyUI editor's UI format (it has nodes and links with positions), not the API format.",
      };
    }
    if (Object.keys(value).length === 0) return { kind: "invalid", reason: "The workflow is an empty object." };
    const bad = Object.entries(value).find(([, n]) => !(isObject(n) && typeof n.class_type === "string"));
    if (bad) {
      return {
        kind: "invalid",
        reason: `This does not look like a ComfyUI workflow: entry "${bad[0]}" has no "class_type".`,
      };
    }
  }
  return { kind: "invalid", reason: "This does not look like a ComfyUI workflow: expected a JSON object of nodes." };
}

export function detectText(text: string): Detection {
  if (text.trim() === "") return { kind: "empty" };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { kind: "invalid", reason: describeJsonError(text, e) };
  }
  return detectValue(value);
}

/**
 * Reads the text chunks of a PNG. ComfyUI writes the API-format graph into a `prompt`
 * chunk and the UI graph into `workflow`, so a dropped ComfyUI image carries its workflow.
 */
export function readPngTextChunks(bytes: Uint8Array): Record<string, string> {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || !sig.every((b, i) => bytes[i] === b)) return {};
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Record<string, string> = {};
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  let off = 8;
  while (off + 12 <= bytes.length) {
    const len = view.getUint32(off);
    const type = latin1.decode(bytes.subarray(off + 4, off + 8));
    const data = bytes.subarray(off + 8, off + 8 + len);
    if (type === "tEXt") {
      const nul = data.indexOf(0);
      if (nul > 0) out[latin1.decode(data.subarray(0, nul))] = utf8.decode(data.subarray(nul + 1));
    } else if (type === "iTXt") {
      // keyword \0 compressionFlag compressionMethod languageTag \0 translatedKeyword \0 text
      const nul = data.indexOf(0);
      if (nul > 0 && data[nul + 1] === 0) {
        let p = nul + 3;
        const lt = data.indexOf(0, p);
        const tk = data.indexOf(0, lt + 1);
        if (lt >= 0 && tk >= 0) {
          p = tk + 1;
          out[latin1.decode(data.subarray(0, nul))] = utf8.decode(data.subarray(p));
        }
      }
    } else if (type === "IEND") {
      break;
    }
    off += 12 + len;
  }
  return out;
}

/** Detects a workflow inside a ComfyUI PNG: its `prompt` chunk is API format. */
export function detectPng(bytes: Uint8Array): Detection {
  const chunks = readPngTextChunks(bytes);
  if (chunks.prompt) {
    const d = detectText(chunks.prompt);
    if (d.kind === "api") return { ...d, note: "Read the API-format workflow embedded in this ComfyUI image." };
  }
  if (chunks.workflow) {
    return {
      kind: "ui",
      nodeCount: 0,
      reason: "This image carries only the editor's UI-format workflow, not the API format.",
    };
  }
  return { kind: "invalid", reason: "This image carries no ComfyUI workflow." };
}
