import type { Asset, Health, Job, JobList } from "./types";
import { readSseStream, type SseMessage } from "./sse";

/** An error from the API, always normalised to the v2 envelope `{error:{code,message,details}}`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown> | null;
  /** Milliseconds the server asked us to wait (Retry-After), when it did. */
  readonly retryAfterMs?: number;

  constructor(
    status: number,
    code: string,
    message: string,
    details: Record<string, unknown> | null = null,
    retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Parses a Retry-After header (delta-seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null) return undefined;
  const v = value.trim();
  if (v === "") return undefined;
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  const date = Date.parse(v);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/** Turns a non-2xx response body into an ApiError, whatever the body is. */
export async function errorFromResponse(res: Response): Promise<ApiError> {
  const retryAfterMs = parseRetryAfter(res.headers.get("Retry-After"));
  let text = "";
  try {
    text = await res.text();
  } catch {
    /* body unreadable */
  }
  if (text) {
    try {
      const json = JSON.parse(text) as unknown;
      const env = (json as { error?: unknown })?.error;
      if (env && typeof env === "object" && typeof (env as { code?: unknown }).code === "string") {
        const e = env as { code: string; message?: unknown; details?: unknown };
        const details =
          e.details && typeof e.details === "object" ? (e.details as Record<string, unknown>) : null;
        return new ApiError(
          res.status,
          e.code,
          typeof e.message === "string" && e.message ? e.message : defaultMessage(res.status),
          details,
          retryAfterMs,
        );
      }
    } catch {
      /* not JSON */
    }
  }
  const snippet = text.trim().slice(0, 200);
  return new ApiError(
    res.status,
    `http_${res.status}`,
    snippet ? `${defaultMessage(res.status)}: ${snippet}` : defaultMessage(res.status),
    null,
    retryAfterMs,
  );
}

function defaultMessage(status: number): string {
  switch (status) {
    case 401:
      return "The API key is missing or not valid";
    case 403:
      return "This key is not allowed to do that";
    case 404:
      return "Not found";
    case 413:
      return "The request is too large for this server";
    case 429:
      return "Too many requests; try again shortly";
    case 502:
    case 503:
    case 504:
      return "The server is temporarily unavailable";
    default:
      return `The server answered HTTP ${status}`;
  }
}

/** Normalises what a person types as the API address. */
export function normaliseBaseUrl(input: string): string {
  let s = input.trim();
  if (!s) return s;
  if (!/^https?:\/\//i.test(s)) {
    const loopback = /^(localhost|127\.|\[::1\])/i.test(s);
    s = (loopback ? "http://" : "https://") + s;
  }
  return s.replace(/\/+$/, "");
}

export function isLoopbackHost(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || hostname === "::1" || /^127\./.test(hostname);
}

export interface ClientOptions {
  baseUrl: string;
  apiKey?: string;
  fetch?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
  /** Retries after the first try, for 429/503 (and network errors on safe requests). */
  maxRetries?: number;
  /** A Retry-After longer than this is not waited for: the error is returned. */
  maxRetryDelayMs?: number;
}

interface RequestOptions {
  query?: string;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Whether repeating the request is harmless (GET, or a POST with an Idempotency-Key). */
  idempotent?: boolean;
  /** Parse no body (HEAD). */
  noBody?: boolean;
}

const RETRYABLE_STATUS = new Set([429, 503]);

export interface ListJobsParams {
  metadata?: Record<string, string>;
  limit?: number;
  cursor?: string | null;
}

export interface UploadProgress {
  loaded: number;
  total: number;
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly fetchImpl: typeof fetch;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly maxRetries: number;
  private readonly maxRetryDelayMs: number;

  constructor(opts: ClientOptions) {
    this.baseUrl = normaliseBaseUrl(opts.baseUrl);
    this.apiKey = (opts.apiKey ?? "").trim();
    this.fetchImpl = opts.fetch ?? ((...args: Parameters<typeof fetch>) => globalThis.fetch(...args));
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.maxRetries = opts.maxRetries ?? 3;
    this.maxRetryDelayMs = opts.maxRetryDelayMs ?? 30_000;
  }

  get hasKey(): boolean {
    return this.apiKey !== "";
  }

  /** Resolves an API path or a server-given URL reference against the base. */
  resolve(ref: string): string {
    if (/^[a-z][a-z0-9+.-]*:/i.test(ref)) return ref;
    if (ref.startsWith("/")) {
      // A server-given absolute path: relative to the base's origin, keeping a base path prefix
      // only when the reference does not already contain it.
      const base = new URL(this.baseUrl + "/");
      const prefix = base.pathname.replace(/\/$/, "");
      if (prefix && !ref.startsWith(prefix + "/")) return base.origin + prefix + ref;
      return base.origin + ref;
    }
    return new URL(ref, this.baseUrl + "/").toString();
  }

  /** True when a URL points at the API itself (the only place the key may be sent). */
  isApiUrl(url: string): boolean {
    try {
      return new URL(url).origin === new URL(this.baseUrl + "/").origin;
    } catch {
      return false;
    }
  }

  authHeaders(url?: string): Record<string, string> {
    if (!this.apiKey) return {};
    if (url && !this.isApiUrl(url)) return {};
    return { Authorization: `Bearer ${this.apiKey}` };
  }

  private async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const url = this.resolve(path) + (opts.query ? `?${opts.query}` : "");
    const headers: Record<string, string> = { Accept: "application/json", ...this.authHeaders(url), ...opts.headers };
    let body: BodyInit | undefined;
    if (opts.body instanceof FormData) {
      body = opts.body;
    } else if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const idempotent = opts.idempotent ?? (method === "GET" || method === "HEAD");
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        res = await this.fetchImpl(url, { method, headers, body, signal: opts.signal, credentials: "omit" });
      } catch (e) {
        if ((e as { name?: string })?.name === "AbortError") throw e;
        if (idempotent && attempt < this.maxRetries) {
          await this.sleep(backoff(attempt));
          continue;
        }
        throw new ApiError(
          0,
          "network_error",
          `Could not reach ${safeOrigin(this.baseUrl)}. Is the server running, and does its CORS setting allow this site?`,
        );
      }
      if (res.ok) {
        if (opts.noBody || res.status === 204) return undefined as T;
        const text = await res.text();
        if (!text) return undefined as T;
        try {
          return JSON.parse(text) as T;
        } catch {
          throw new ApiError(res.status, "invalid_response", "The server sent a response that is not JSON");
        }
      }
      const err = opts.noBody
        ? new ApiError(res.status, `http_${res.status}`, defaultMessage(res.status), null, parseRetryAfter(res.headers.get("Retry-After")))
        : await errorFromResponse(res);
      const retryable =
        RETRYABLE_STATUS.has(res.status) || (res.status === 409 && err.code === "idempotency_conflict" && idempotent);
      if (retryable && attempt < this.maxRetries) {
        const wait = err.retryAfterMs ?? backoff(attempt);
        if (wait <= this.maxRetryDelayMs) {
          await this.sleep(wait);
          continue;
        }
      }
      throw err;
    }
  }

  health(signal?: AbortSignal): Promise<Health> {
    return this.request<Health>("GET", "/api/v2/health", { signal });
  }

  submitJob(
    workflow: Record<string, unknown>,
    opts: { metadata?: Record<string, string>; idempotencyKey?: string; signal?: AbortSignal } = {},
  ): Promise<Job> {
    const body: Record<string, unknown> = { workflow };
    if (opts.metadata && Object.keys(opts.metadata).length > 0) body.metadata = opts.metadata;
    const key = opts.idempotencyKey ?? newIdempotencyKey();
    return this.request<Job>("POST", "/api/v2/jobs", {
      body,
      headers: { "Idempotency-Key": key },
      idempotent: true,
      signal: opts.signal,
    });
  }

  getJob(id: string, signal?: AbortSignal): Promise<Job> {
    return this.request<Job>("GET", `/api/v2/jobs/${encodeURIComponent(id)}`, { signal });
  }

  /** GET /api/v2/jobs/{id}/workflow: the workflow as submitted. */
  getJobWorkflow(id: string): Promise<Record<string, unknown>> {
    return this.request<Record<string, unknown>>("GET", `/api/v2/jobs/${encodeURIComponent(id)}/workflow`);
  }

  listJobs(params: ListJobsParams = {}, signal?: AbortSignal): Promise<JobList> {
    return this.request<JobList>("GET", "/api/v2/jobs", { query: listQuery(params), signal });
  }

  cancelJob(id: string, cancelUrl?: string): Promise<Job> {
    return this.request<Job>("POST", cancelUrl ?? `/api/v2/jobs/${encodeURIComponent(id)}/cancel`, {
      idempotent: true, // cancel is idempotent by contract
    });
  }

  /**
   * GET /api/v2/x-serverless-comfyui/catalogue (our extension): the node catalogue the server
   * checks graphs against, or null when it has none (404) or is not ours.
   */
  async getCatalogue(signal?: AbortSignal): Promise<Record<string, unknown> | null> {
    try {
      return await this.request<Record<string, unknown>>("GET", "/api/v2/x-serverless-comfyui/catalogue", { signal });
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
      throw e;
    }
  }

  getAsset(id: string): Promise<Asset> {
    return this.request<Asset>("GET", `/api/v2/assets/${encodeURIComponent(id)}`);
  }

  /** HEAD /api/v2/assets/by-hash/{hash}: true when the caller can mint from this blob. */
  async assetExistsByHash(hash: string): Promise<boolean> {
    try {
      await this.request<void>("HEAD", `/api/v2/assets/by-hash/${encodeURIComponent(hash)}`, { noBody: true });
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return false;
      throw e;
    }
  }

  assetFromHash(hash: string, filePath: string, tags?: string[]): Promise<Asset> {
    return this.request<Asset>("POST", "/api/v2/assets/from-hash", {
      body: { hash, file_path: filePath, ...(tags ? { tags } : {}) },
      idempotent: true,
    });
  }

  /**
   * POST /api/v2/assets (multipart). Uses XMLHttpRequest where there is one, for upload
   * progress; otherwise fetch.
   */
  async uploadAsset(
    file: Blob,
    opts: { filePath: string; contentType?: string; tags?: string[]; onProgress?: (p: UploadProgress) => void; signal?: AbortSignal },
  ): Promise<Asset> {
    const form = () => {
      const fd = new FormData();
      fd.append("content_type", opts.contentType || file.type || "application/octet-stream");
      fd.append("file_path", opts.filePath);
      for (const t of opts.tags ?? []) fd.append("tags", t);
      fd.append("file", file, opts.filePath);
      return fd;
    };
    if (typeof XMLHttpRequest === "undefined" || !opts.onProgress) {
      return this.request<Asset>("POST", "/api/v2/assets", { body: form(), idempotent: true, signal: opts.signal });
    }
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.xhrUpload(form(), opts.onProgress, opts.signal);
      } catch (e) {
        if (e instanceof ApiError && RETRYABLE_STATUS.has(e.status) && attempt < this.maxRetries) {
          const wait = e.retryAfterMs ?? backoff(attempt);
          if (wait <= this.maxRetryDelayMs) {
            await this.sleep(wait);
            continue;
          }
        }
        throw e;
      }
    }
  }

  private xhrUpload(fd: FormData, onProgress: (p: UploadProgress) => void, signal?: AbortSignal): Promise<Asset> {
    const url = this.resolve("/api/v2/assets");
    return new Promise<Asset>((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.withCredentials = false;
      xhr.setRequestHeader("Accept", "application/json");
      for (const [k, v] of Object.entries(this.authHeaders(url))) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (ev) => {
        if (ev.lengthComputable) onProgress({ loaded: ev.loaded, total: ev.total });
      };
      xhr.onerror = () =>
        reject(new ApiError(0, "network_error", `The upload to ${safeOrigin(this.baseUrl)} failed (network or CORS)`));
      xhr.onabort = () => reject(new DOMException("Upload aborted", "AbortError"));
      xhr.onload = async () => {
        const headers = new Headers();
        const ra = xhr.getResponseHeader("Retry-After");
        if (ra) headers.set("Retry-After", ra);
        const res = new Response(xhr.responseText, { status: xhr.status, headers });
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve(JSON.parse(xhr.responseText) as Asset);
          } catch {
            reject(new ApiError(xhr.status, "invalid_response", "The server sent a response that is not JSON"));
          }
        } else {
          reject(await errorFromResponse(res));
        }
      };
      signal?.addEventListener("abort", () => xhr.abort());
      xhr.send(fd);
    });
  }

  /**
   * Opens the job's SSE stream and delivers messages until the server closes it (after ~20 s
   * on AWS) or the signal aborts. Throws an ApiError when the stream cannot be opened.
   */
  async streamEvents(eventsUrl: string, onMessage: (m: SseMessage) => void, signal?: AbortSignal): Promise<void> {
    const url = this.resolve(eventsUrl);
    let res: Response;
    try {
      res = await this.fetchImpl(url, {
        method: "GET",
        headers: { Accept: "text/event-stream", "Cache-Control": "no-cache", ...this.authHeaders(url) },
        signal,
        credentials: "omit",
        cache: "no-store",
      });
    } catch (e) {
      if ((e as { name?: string })?.name === "AbortError") throw e;
      throw new ApiError(0, "network_error", "The live event stream could not be opened");
    }
    if (!res.ok) throw await errorFromResponse(res);
    const ct = res.headers.get("Content-Type") ?? "";
    if (!ct.includes("text/event-stream") || !res.body) {
      throw new ApiError(res.status, "sse_unsupported", "The server did not answer with an event stream");
    }
    await readSseStream(res.body, onMessage, signal);
  }
}

export function listQuery(params: ListJobsParams): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(params.metadata ?? {})) {
    if (!k) continue;
    parts.push(`metadata[${encodeURIComponent(k)}]=${encodeURIComponent(v)}`);
  }
  if (params.limit) parts.push(`limit=${params.limit}`);
  if (params.cursor) parts.push(`cursor=${encodeURIComponent(params.cursor)}`);
  return parts.join("&");
}

function backoff(attempt: number): number {
  const base = 500 * 2 ** attempt;
  return Math.min(8000, base + Math.floor(Math.random() * 250));
}

function safeOrigin(url: string): string {
  try {
    return new URL(url + "/").origin;
  } catch {
    return "the server";
  }
}

export function newIdempotencyKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
