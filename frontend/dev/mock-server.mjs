// DEVELOPMENT ONLY: a tiny in-memory stand-in for the Comfy API v2 routes this app uses, so the
// UI can be worked on before the Rust backend runs jobs. It is not the product, is not used by
// the e2e suite's default target, and is not shipped (only dist/ is).
//
//   node dev/mock-server.mjs [--port 8790] [--auth KEY] [--slow-ms 150] [--no-sse]
import http from "node:http";
import { readFileSync, existsSync, statSync } from "node:fs";
import { join, extname, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID, createHash } from "node:crypto";
import { encodePng } from "../e2e/png.mjs";

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const PORT = Number(arg("--port", "8790"));
const AUTH = arg("--auth", "");
const STEP_MS = Number(arg("--slow-ms", "150"));
const NO_SSE = args.includes("--no-sse");
const DIST = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");

/** @type {Map<string, any>} */ const jobs = new Map();
/** @type {Map<string, {bytes: Buffer, content_type: string, file_path: string, created_at: string}>} */ const assets = new Map();
/** @type {Map<string, Set<(ev: string, data: unknown) => void>>} */ const listeners = new Map();
let workersWarm = false;
let busy = false;
const queue = [];
const KNOWN = new Set(["EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "LoadImage", "ImageBlur", "ImageScale", "KSampler", "CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode", "VAEDecode"]);

const now = () => new Date().toISOString();
const id = (p) => `${p}_${randomUUID().replace(/-/g, "").slice(0, 24)}`;

function send(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", "Access-Control-Allow-Origin": "*", ...headers });
  res.end(body === undefined ? "" : JSON.stringify(body));
}
const err = (res, status, code, message, details = null, headers = {}) => send(res, status, { error: { code, message, details } }, headers);

function emit(job, ev, data) {
  for (const l of listeners.get(job.id) ?? []) l(ev, data);
}

function publicJob(j) {
  const { workflow, ...rest } = j;
  void workflow;
  return rest;
}

function mintOutput(job, nodeId, name, bytes) {
  const aid = id("asset");
  assets.set(aid, { bytes, content_type: "image/png", file_path: name, created_at: now() });
  const o = {
    node_id: nodeId,
    name,
    type: "image",
    content_type: "image/png",
    size_bytes: bytes.length,
    id: aid,
    hash: null,
    url: `/mock-files/${aid}?sig=${createHash("sha256").update(aid).digest("hex").slice(0, 16)}`,
    url_expires_at: new Date(Date.now() + 3600e3).toISOString(),
  };
  job.outputs.push(o);
  emit(job, "output", o);
}

function sourceColor(wf, ref, depth = 0) {
  if (!Array.isArray(ref) || depth > 20) return [128, 128, 128];
  const n = wf[ref[0]];
  if (!n) return [128, 128, 128];
  if (n.class_type === "EmptyImage") {
    const c = Number(n.inputs.color) || 0;
    return [(c >> 16) & 255, (c >> 8) & 255, c & 255];
  }
  if (n.class_type === "ImageInvert") return sourceColor(wf, n.inputs.image, depth + 1).map((v) => 255 - v);
  if (n.class_type === "LoadImage") return [200, 140, 90];
  return sourceColor(wf, n.inputs.image ?? n.inputs.images ?? n.inputs.samples, depth + 1);
}
function sourceSize(wf, ref, depth = 0) {
  if (!Array.isArray(ref) || depth > 20) return [64, 64];
  const n = wf[ref[0]];
  if (!n) return [64, 64];
  if (typeof n.inputs.width === "number" && typeof n.inputs.height === "number") return [n.inputs.width, n.inputs.height];
  return sourceSize(wf, n.inputs.image ?? n.inputs.images ?? n.inputs.samples, depth + 1);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runNext() {
  if (busy) return;
  const job = queue.shift();
  if (!job) return;
  busy = true;
  queue.forEach((j, i) => {
    j.queue_position = i + 1;
    emit(j, "status", { status: "queued", queue_position: j.queue_position });
  });
  if (!workersWarm) {
    job.progress = { value: 0, nodes_done: 0, nodes_total: Object.keys(job.workflow).length, message: "starting a worker (mock cold start)" };
    emit(job, "progress", job.progress);
    await sleep(2500);
    workersWarm = true;
  }
  if (job.status !== "queued") {
    busy = false;
    return runNext();
  }
  job.status = "running";
  job.queue_position = null;
  job.started_at = now();
  emit(job, "status", { status: "running", queue_position: null });
  const ids = Object.keys(job.workflow).sort((a, b) => Number(a) - Number(b));
  let done = 0;
  for (const nid of ids) {
    const n = job.workflow[nid];
    const steps = n.class_type === "KSampler" ? Number(n.inputs.steps) || 20 : 0;
    for (let s = 0; s <= steps; s++) {
      if (job.status === "canceling") break;
      job.progress = {
        value: (done + (steps ? s / steps : 0)) / ids.length,
        nodes_done: done,
        nodes_total: ids.length,
        current_node: nid,
        current_node_class: n.class_type,
        step: steps ? s : null,
        steps: steps || null,
        message: steps ? `${n.class_type} ${s}/${steps}` : null,
      };
      emit(job, "progress", job.progress);
      await sleep(steps ? STEP_MS : 300);
    }
    if (job.status === "canceling") break;
    if (n.inputs.filename_prefix === "fail") {
      job.status = "failed";
      job.error = { code: "node_execution_error", message: "Mock failure requested by filename_prefix=fail", node_id: nid, class_type: n.class_type, traceback: '  File "nodes.py", line 1, in save\n    raise Exception("mock")\n' };
      break;
    }
    if (n.class_type === "SaveImage" || n.class_type === "PreviewImage") {
      const [r, g, b] = sourceColor(job.workflow, n.inputs.images);
      const [w, h] = sourceSize(job.workflow, n.inputs.images);
      const batch = job.workflow[n.inputs.images?.[0]]?.inputs?.batch_size ?? 1;
      for (let k = 0; k < Math.min(4, Number(batch) || 1); k++) {
        const png = encodePng(w, h, (x, y) => (job.workflow[n.inputs.images?.[0]]?.class_type === "ImageScale" ? [Math.min(255, r + x), g, Math.min(255, b + y)] : [r, g, b]));
        mintOutput(job, nid, `${n.inputs.filename_prefix ?? "preview"}_${String(k + 1).padStart(5, "0")}_.png`, png);
      }
    }
    done++;
    emit(job, "log", { level: "info", message: `executed node ${nid} (${n.class_type})` });
  }
  if (job.status === "canceling") job.status = "canceled";
  else if (job.status === "running") {
    job.status = "succeeded";
    job.progress = { ...job.progress, value: 1, nodes_done: ids.length };
  }
  job.completed_at = now();
  job.metrics = { queue_ms: Date.parse(job.started_at) - Date.parse(job.created_at), execution_ms: Date.parse(job.completed_at) - Date.parse(job.started_at) };
  emit(job, "progress", job.progress);
  emit(job, "status", { status: job.status, queue_position: null });
  busy = false;
  runNext();
}

function validate(wf) {
  if (Array.isArray(wf?.nodes)) return ["workflow_format_ui", "This is the UI format; export with Export (API).", null];
  if (!wf || typeof wf !== "object" || Array.isArray(wf) || !Object.keys(wf).length) return ["invalid_workflow", "The workflow must be a non-empty object of nodes.", null];
  const nodeErrors = {};
  for (const [nid, n] of Object.entries(wf)) {
    const errs = [];
    if (!KNOWN.has(n?.class_type)) errs.push({ field: "class_type", reason: "unknown_class", message: `unknown node class ${n?.class_type}` });
    for (const [k, v] of Object.entries(n?.inputs ?? {})) {
      if (Array.isArray(v) && v.length === 2 && !(String(v[0]) in wf)) errs.push({ field: k, reason: "bad_link", message: `links to missing node ${v[0]}` });
      if (v && typeof v === "object" && v.__type === "core/ASSET" && !assets.has(v.info?.id)) return ["missing_asset", `asset ${v.info?.id} not found`, { node_id: nid }];
    }
    if (n?.class_type === "LoadImage" && typeof n.inputs?.image === "string") errs.push({ field: "image", reason: "value_not_in_list", message: `${n.inputs.image} is not in the input folder` });
    if (errs.length) nodeErrors[nid] = errs;
  }
  if (Object.keys(nodeErrors).length) return ["invalid_workflow", `${Object.keys(nodeErrors).length} node(s) failed validation`, { node_errors: nodeErrors }];
  return null;
}

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
}

function multipartFile(buf, contentType) {
  const m = /boundary=(?:"([^"]+)"|([^;]+))/.exec(contentType ?? "");
  if (!m) return null;
  const boundary = Buffer.from(`--${m[1] ?? m[2]}`);
  const parts = {};
  let pos = buf.indexOf(boundary);
  while (pos >= 0) {
    const next = buf.indexOf(boundary, pos + boundary.length);
    if (next < 0) break;
    const part = buf.subarray(pos + boundary.length + 2, next - 2);
    const headEnd = part.indexOf("\r\n\r\n");
    const head = part.subarray(0, headEnd).toString();
    const name = /name="([^"]+)"/.exec(head)?.[1];
    if (name) parts[name] = part.subarray(headEnd + 4);
    pos = next;
  }
  return parts;
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", `http://${req.headers.host}`);
  const p = url.pathname;
  if (req.method === "OPTIONS") {
    res.writeHead(204, { "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key", "Access-Control-Allow-Methods": "GET, POST, HEAD, DELETE" });
    return res.end();
  }
  if (p === "/api/v2/health") {
    return send(res, 200, {
      status: "ok",
      version: "0.1.0-mock",
      store: { kind: "memory", ok: true },
      queue: { depth: queue.length },
      workers: { busy: busy ? 1 : 0, idle: workersWarm && !busy ? 1 : 0, starting: !workersWarm && queue.length ? 1 : 0, desired: busy || queue.length ? 1 : 0, max: 1 },
      capacity: { state: "ok", message: null },
      comfyui: { mode: "simulated", urls: [] },
      auth: { required: !!AUTH, loopback_default_tenant: !AUTH },
    });
  }
  if (p.startsWith("/mock-files/")) {
    const a = assets.get(p.split("/")[2]);
    if (!a) return err(res, 404, "not_found", "no such file");
    res.writeHead(200, { "Content-Type": a.content_type, "Content-Length": a.bytes.length, "Access-Control-Allow-Origin": "*" });
    return res.end(a.bytes);
  }
  if (p.startsWith("/api/")) {
    if (AUTH && req.headers.authorization !== `Bearer ${AUTH}`) return err(res, 401, "unauthorized", "missing or invalid API key");
    let m;
    if (p === "/api/v2/jobs" && req.method === "POST") {
      let b;
      try {
        b = JSON.parse((await body(req)).toString());
      } catch {
        return err(res, 400, "invalid_json", "body is not JSON");
      }
      const v = validate(b.workflow);
      if (v) return err(res, 422, v[0], v[1], v[2]);
      const j = {
        id: id("job"),
        status: "queued",
        created_at: now(),
        started_at: null,
        completed_at: null,
        expires_at: new Date(Date.now() + 7 * 86400e3).toISOString(),
        queue_position: queue.length + (busy ? 1 : 0),
        progress: null,
        outputs: [],
        error: null,
        metrics: { queue_ms: null, execution_ms: null },
        metadata: b.metadata ?? {},
        workflow: b.workflow,
      };
      j.urls = { self: `/api/v2/jobs/${j.id}`, events: `/api/v2/jobs/${j.id}/events`, cancel: `/api/v2/jobs/${j.id}/cancel` };
      jobs.set(j.id, j);
      queue.push(j);
      setTimeout(runNext, 50);
      return send(res, 201, publicJob(j));
    }
    if (p === "/api/v2/jobs" && req.method === "GET") {
      const filters = [...url.searchParams.entries()].filter(([k]) => k.startsWith("metadata[")).map(([k, v]) => [k.slice(9, -1), v]);
      const all = [...jobs.values()].reverse().filter((j) => filters.every(([k, v]) => j.metadata?.[k] === v));
      const limit = Math.min(100, Number(url.searchParams.get("limit")) || 20);
      const start = Number(Buffer.from(url.searchParams.get("cursor") ?? "MA==", "base64").toString()) || 0;
      const page = all.slice(start, start + limit);
      const next = start + limit < all.length ? Buffer.from(String(start + limit)).toString("base64") : null;
      return send(res, 200, { jobs: page.map(publicJob), next_cursor: next });
    }
    if ((m = /^\/api\/v2\/jobs\/([^/]+)(\/[a-z]+)?$/.exec(p))) {
      const j = jobs.get(decodeURIComponent(m[1]));
      if (!j) return err(res, 404, "not_found", "no such job");
      const sub = m[2];
      if (!sub && req.method === "GET") return send(res, 200, publicJob(j));
      if (sub === "/workflow") return send(res, 200, j.workflow);
      if (sub === "/cancel" && req.method === "POST") {
        if (j.status === "queued") {
          j.status = "canceled";
          j.completed_at = now();
          queue.splice(queue.indexOf(j), 1);
          emit(j, "status", { status: "canceled" });
        } else if (j.status === "running") {
          j.status = "canceling";
          emit(j, "status", { status: "canceling" });
        }
        return send(res, 200, publicJob(j));
      }
      if (sub === "/events") {
        if (NO_SSE) return err(res, 404, "not_found", "no events here");
        res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*" });
        const write = (ev, data) => res.write(`event: ${ev}\ndata: ${JSON.stringify(data)}\n\n`);
        write("status", { status: j.status, queue_position: j.queue_position });
        if (j.progress) write("progress", j.progress);
        if (["succeeded", "failed", "canceled", "expired"].includes(j.status)) return res.end();
        const l = (ev, data) => {
          write(ev, data);
          if (ev === "status" && ["succeeded", "failed", "canceled", "expired"].includes(data.status)) close();
        };
        const set = listeners.get(j.id) ?? new Set();
        set.add(l);
        listeners.set(j.id, set);
        const ka = setInterval(() => res.write(": keep-alive\n\n"), 5000);
        const t = setTimeout(() => close(), 8000); // bounded stream, like the AWS edge
        const close = () => {
          clearTimeout(t);
          clearInterval(ka);
          set.delete(l);
          res.end();
        };
        req.on("close", close);
        return;
      }
    }
    if ((m = /^\/api\/v2\/assets\/by-hash\/(.+)$/.exec(p))) return send(res, 404, undefined);
    if (p === "/api/v2/assets" && req.method === "POST") {
      const parts = multipartFile(await body(req), req.headers["content-type"]);
      if (!parts?.file) return err(res, 422, "invalid_request", "multipart field `file` is required");
      const aid = id("asset");
      const a = { bytes: parts.file, content_type: parts.content_type?.toString() ?? "application/octet-stream", file_path: parts.file_path?.toString() ?? "upload", created_at: now() };
      assets.set(aid, a);
      return send(res, 201, { id: aid, hash: null, size_bytes: a.bytes.length, content_type: a.content_type, file_path: a.file_path, created_at: a.created_at, url: `/mock-files/${aid}`, url_expires_at: new Date(Date.now() + 3600e3).toISOString() });
    }
    return err(res, 404, "not_found", `no route ${req.method} ${p}`);
  }
  // Static app, SPA fallback.
  let file = join(DIST, p === "/" ? "index.html" : p);
  if (!file.startsWith(DIST) || !existsSync(file) || statSync(file).isDirectory()) file = join(DIST, "index.html");
  if (!existsSync(file)) return send(res, 404, { error: { code: "not_found", message: "build the app first: npm run build" } });
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png" };
  res.writeHead(200, { "Content-Type": types[extname(file)] ?? "application/octet-stream" });
  res.end(readFileSync(file));
});

server.listen(PORT, "127.0.0.1", () => console.log(`mock API (development only) on http://127.0.0.1:${PORT}${AUTH ? " (auth on)" : ""}`));
