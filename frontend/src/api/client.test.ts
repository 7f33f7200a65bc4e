import { describe, expect, it } from "vitest";
import { ApiClient, ApiError, listQuery, normaliseBaseUrl, parseRetryAfter } from "./client";

type Call = { url: string; init: RequestInit };

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function client(responses: Array<Response | Error>, opts: Partial<ConstructorParameters<typeof ApiClient>[0]> = {}) {
  const calls: Call[] = [];
  const sleeps: number[] = [];
  const fetchImpl = async (input: RequestInfo | URL, init?: RequestInit) => {
    calls.push({ url: String(input), init: init ?? {} });
    const r = responses.shift();
    if (!r) throw new Error("no more responses");
    if (r instanceof Error) throw r;
    return r;
  };
  const c = new ApiClient({
    baseUrl: "http://127.0.0.1:8787",
    fetch: fetchImpl as typeof fetch,
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    ...opts,
  });
  return { c, calls, sleeps };
}

const job = { id: "job_1", status: "queued", created_at: "2025-01-01T00:00:00Z", outputs: [] };

describe("API client: error envelopes", () => {
  it("turns a v2 envelope into an ApiError with code, message and details", async () => {
    const { c } = client([
      json(422, {
        error: { code: "invalid_workflow", message: "Node 2 is broken", details: { node_errors: { "2": [{ field: "image", reason: "missing_input" }] } } },
      }),
    ]);
    const err = await c.submitJob({}).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(422);
    expect(err.code).toBe("invalid_workflow");
    expect(err.message).toBe("Node 2 is broken");
    expect(err.details.node_errors["2"][0].field).toBe("image");
  });

  it("normalises a non-JSON error body", async () => {
    const { c } = client([new Response("<html>Bad gateway</html>", { status: 502 })]);
    const err = await c.getJob("job_1").catch((e) => e);
    expect(err.code).toBe("http_502");
    expect(err.message).toContain("Bad gateway");
  });

  it("reports an unreachable server as network_error without the key in the message", async () => {
    const { c } = client([new TypeError("Failed to fetch")], { apiKey: "sk-secret", maxRetries: 0 });
    const err = await c.health().catch((e) => e);
    expect(err.code).toBe("network_error");
    expect(err.message).not.toContain("sk-secret");
  });
});

describe("API client: retries", () => {
  it("retries 429 and 503, honouring Retry-After in seconds", async () => {
    const { c, calls, sleeps } = client([
      json(429, { error: { code: "queue_full", message: "full" } }, { "Retry-After": "2" }),
      json(503, { error: { code: "unavailable", message: "later" } }, { "Retry-After": "1" }),
      json(201, job),
    ]);
    const j = await c.submitJob({ "1": { class_type: "X", inputs: {} } });
    expect(j.id).toBe("job_1");
    expect(calls).toHaveLength(3);
    expect(sleeps).toEqual([2000, 1000]);
  });

  it("sends the same Idempotency-Key on every retry of a submit", async () => {
    const { c, calls } = client([json(503, { error: { code: "x", message: "y" } }, { "Retry-After": "0" }), json(201, job)]);
    await c.submitJob({ a: { class_type: "X", inputs: {} } }, { metadata: { label: "cat" } });
    const keys = calls.map((k) => (k.init.headers as Record<string, string>)["Idempotency-Key"]);
    expect(keys[0]).toBeTruthy();
    expect(keys[1]).toBe(keys[0]);
    expect(JSON.parse(String(calls[0].init.body))).toEqual({ workflow: { a: { class_type: "X", inputs: {} } }, metadata: { label: "cat" } });
  });

  it("honours Retry-After as an HTTP date", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    expect(parseRetryAfter("Wed, 01 Jan 2025 00:00:05 GMT", now)).toBe(5000);
    expect(parseRetryAfter("3", now)).toBe(3000);
    expect(parseRetryAfter("nonsense", now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });

  it("backs off without Retry-After, and gives up after maxRetries", async () => {
    const busy = () => json(503, { error: { code: "unavailable", message: "busy" } });
    const { c, calls, sleeps } = client([busy(), busy(), busy()], { maxRetries: 2 });
    const err = await c.getJob("j").catch((e) => e);
    expect(err.code).toBe("unavailable");
    expect(calls).toHaveLength(3);
    expect(sleeps).toHaveLength(2);
    expect(sleeps[1]).toBeGreaterThan(sleeps[0] - 250);
  });

  it("does not wait for a Retry-After beyond the cap", async () => {
    const { c, calls } = client([json(429, { error: { code: "queue_full", message: "full" } }, { "Retry-After": "3600" })]);
    const err = await c.submitJob({}).catch((e) => e);
    expect(err.code).toBe("queue_full");
    expect(err.retryAfterMs).toBe(3_600_000);
    expect(calls).toHaveLength(1);
  });

  it("does not retry other errors", async () => {
    const { c, calls } = client([json(404, { error: { code: "not_found", message: "no" } })]);
    await expect(c.getJob("x")).rejects.toMatchObject({ code: "not_found" });
    expect(calls).toHaveLength(1);
  });

  it("retries a network failure on a GET", async () => {
    const { c, calls } = client([new TypeError("Failed to fetch"), json(200, job)]);
    expect((await c.getJob("job_1")).status).toBe("queued");
    expect(calls).toHaveLength(2);
  });
});

describe("API client: requests", () => {
  it("sends the key only to the API's own origin", async () => {
    const { c } = client([], { apiKey: "sk-1" });
    expect(c.authHeaders("http://127.0.0.1:8787/api/v2/jobs")).toEqual({ Authorization: "Bearer sk-1" });
    expect(c.authHeaders("https://bucket.s3.amazonaws.com/x?sig=1")).toEqual({});
  });

  it("sends Authorization and no credentials", async () => {
    const { c, calls } = client([json(200, job)], { apiKey: "sk-1" });
    await c.getJob("job_1");
    expect((calls[0].init.headers as Record<string, string>).Authorization).toBe("Bearer sk-1");
    expect(calls[0].init.credentials).toBe("omit");
    expect(calls[0].url).toBe("http://127.0.0.1:8787/api/v2/jobs/job_1");
  });

  it("builds list queries with metadata filters and a cursor", async () => {
    expect(listQuery({ metadata: { project: "cats & dogs" }, limit: 10, cursor: "abc=" })).toBe(
      "metadata[project]=cats%20%26%20dogs&limit=10&cursor=abc%3D",
    );
    const { c, calls } = client([json(200, { jobs: [], next_cursor: null })]);
    await c.listJobs({ limit: 5 });
    expect(calls[0].url).toBe("http://127.0.0.1:8787/api/v2/jobs?limit=5");
  });

  it("resolves server-given URL references against the base", () => {
    const { c } = client([]);
    expect(c.resolve("/api/v2/jobs/j/events")).toBe("http://127.0.0.1:8787/api/v2/jobs/j/events");
    expect(c.resolve("https://cdn.example/x.png")).toBe("https://cdn.example/x.png");
    const prefixed = new ApiClient({ baseUrl: "https://api.example.com/prod/" });
    expect(prefixed.resolve("/api/v2/health")).toBe("https://api.example.com/prod/api/v2/health");
    expect(prefixed.resolve("/prod/api/v2/health")).toBe("https://api.example.com/prod/api/v2/health");
  });

  it("normalises typed base URLs", () => {
    expect(normaliseBaseUrl(" 127.0.0.1:8787/ ")).toBe("http://127.0.0.1:8787");
    expect(normaliseBaseUrl("api.example.com")).toBe("https://api.example.com");
    expect(normaliseBaseUrl("https://x.y//")).toBe("https://x.y");
  });

  it("HEAD by-hash answers true on 200 and false on 404", async () => {
    const { c, calls } = client([new Response(null, { status: 200 }), new Response(null, { status: 404 })]);
    expect(await c.assetExistsByHash("blake3:ab")).toBe(true);
    expect(await c.assetExistsByHash("blake3:cd")).toBe(false);
    expect(calls[0].init.method).toBe("HEAD");
    expect(calls[0].url).toBe("http://127.0.0.1:8787/api/v2/assets/by-hash/blake3%3Aab");
  });

  it("uploads an asset as multipart without XHR", async () => {
    const asset = { id: "asset_1", hash: null, size_bytes: 3, content_type: "image/png", url: "/x" };
    const { c, calls } = client([json(201, asset)]);
    const got = await c.uploadAsset(new Blob([new Uint8Array([1, 2, 3])], { type: "image/png" }), { filePath: "photo.png", tags: ["input"] });
    expect(got.id).toBe("asset_1");
    const fd = calls[0].init.body as FormData;
    expect(fd.get("file_path")).toBe("photo.png");
    expect(fd.get("content_type")).toBe("image/png");
    expect(fd.getAll("tags")).toEqual(["input"]);
    expect(fd.get("file")).toBeInstanceOf(Blob);
  });

  it("streams SSE events and rejects a non-stream answer", async () => {
    const sse = new Response('event: status\ndata: {"status":"running"}\n\n', { headers: { "Content-Type": "text/event-stream" } });
    const { c } = client([sse, json(200, job), json(429, { error: { code: "too_many_streams", message: "cap" } })], { maxRetries: 0 });
    const got: string[] = [];
    await c.streamEvents("/api/v2/jobs/j/events", (m) => got.push(m.event));
    expect(got).toEqual(["status"]);
    await expect(c.streamEvents("/api/v2/jobs/j/events", () => {})).rejects.toMatchObject({ code: "sse_unsupported" });
    await expect(c.streamEvents("/api/v2/jobs/j/events", () => {})).rejects.toMatchObject({ code: "too_many_streams", status: 429 });
  });
});
