// Shapes of Comfy API v2 (spec/openapi.yaml in Comfy-Org/comfy-api-proxy).
// Everything the server may omit is optional: we read defensively.

export type JobStatus =
  | "queued"
  | "running"
  | "succeeded"
  | "canceling"
  | "canceled"
  | "failed"
  | "expired";

export const TERMINAL_STATUSES: readonly JobStatus[] = ["succeeded", "canceled", "failed", "expired"];

export function isTerminal(status: string | undefined | null): boolean {
  return !!status && (TERMINAL_STATUSES as readonly string[]).includes(status);
}

export interface Progress {
  value: number;
  nodes_done: number;
  nodes_total: number;
  current_node?: string | null;
  current_node_class?: string | null;
  step?: number | null;
  steps?: number | null;
  message?: string | null;
}

export type OutputType = "image" | "video" | "audio" | "text" | "file" | "latent";

export interface Output {
  node_id: string;
  name: string;
  type: OutputType | string;
  content_type: string;
  size_bytes: number;
  id: string;
  hash?: string | null;
  url: string;
  url_expires_at?: string;
}

export interface JobError {
  code: string;
  message: string;
  node_id?: string | null;
  class_type?: string | null;
  traceback?: string | string[] | null;
}

export interface Job {
  id: string;
  status: JobStatus;
  created_at: string;
  started_at?: string | null;
  completed_at?: string | null;
  expires_at?: string | null;
  queue_position?: number | null;
  progress?: Progress | null;
  outputs?: Output[];
  error?: JobError | null;
  metrics?: Record<string, number | null>;
  urls?: { self?: string; events?: string; cancel?: string };
  metadata?: Record<string, string>;
}

export interface JobList {
  jobs: Job[];
  next_cursor?: string | null;
}

export interface Asset {
  id: string;
  hash?: string | null;
  size_bytes: number;
  content_type: string;
  file_path?: string | null;
  created_at?: string;
  created_new?: boolean;
  url: string;
  url_expires_at?: string;
}

export interface Health {
  status?: string;
  version?: string;
  store?: { kind?: string; ok?: boolean };
  queue?: { depth?: number };
  workers?: { busy?: number; idle?: number; starting?: number; desired?: number; max?: number };
  capacity?: { state?: string; message?: string | null };
  comfyui?: { mode?: string; urls?: string[]; message?: string | null };
  auth?: { required?: boolean; loopback_default_tenant?: boolean };
  [extra: string]: unknown;
}

export interface NodeFieldError {
  field?: string;
  reason?: string;
  message?: string;
  [extra: string]: unknown;
}

/** SSE payloads. */
export interface StatusEvent {
  status: JobStatus;
  queue_position?: number | null;
}
export interface PreviewEvent {
  node_id: string;
  content_type: string;
  data_base64: string;
}
export interface LogEvent {
  level: string;
  message: string;
}
