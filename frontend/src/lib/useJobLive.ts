import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, type ApiClient } from "../api/client";
import type { SseMessage } from "../api/sse";
import { isTerminal, type Job, type LogEvent, type Output, type PreviewEvent, type Progress, type StatusEvent } from "../api/types";

export type LiveMode = "connecting" | "live" | "polling" | "done";

export interface LiveJob {
  job: Job | null;
  mode: LiveMode;
  error: unknown;
  logs: LogEvent[];
  preview: string | null;
  refresh: () => Promise<void>;
  setJob: (j: Job) => void;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });

/** Applies one SSE message to a job snapshot. Exported for tests. */
export function applyEvent(job: Job, msg: SseMessage): { job: Job; log?: LogEvent; preview?: string } {
  let data: unknown;
  try {
    data = JSON.parse(msg.data);
  } catch {
    return { job };
  }
  switch (msg.event) {
    case "status": {
      const s = data as StatusEvent;
      if (!s?.status) return { job };
      return { job: { ...job, status: s.status, queue_position: s.queue_position ?? (s.status === "queued" ? job.queue_position : null) } };
    }
    case "progress":
      return { job: { ...job, progress: data as Progress } };
    case "output": {
      const o = data as Output;
      if (!o?.id) return { job };
      const outputs = job.outputs ?? [];
      if (outputs.some((x) => x.id === o.id)) return { job };
      return { job: { ...job, outputs: [...outputs, o] } };
    }
    case "log":
      return { job, log: data as LogEvent };
    case "preview": {
      const p = data as PreviewEvent;
      if (!p?.data_base64) return { job };
      return { job, preview: `data:${p.content_type || "image/jpeg"};base64,${p.data_base64}` };
    }
    default:
      return { job };
  }
}

/**
 * Follows a job: the SSE stream (fetch-based, reconnecting after the server's ~20 s close),
 * falling back to polling GET /jobs/{id} when the stream cannot be had. The job resource is
 * the source of truth: it is re-read after every stream and at the end.
 */
export function useJobLive(client: ApiClient, id: string, initial?: Job): LiveJob {
  const [job, setJobState] = useState<Job | null>(initial ?? null);
  const [mode, setMode] = useState<LiveMode>("connecting");
  const [error, setError] = useState<unknown>(null);
  const [logs, setLogs] = useState<LogEvent[]>([]);
  const [preview, setPreview] = useState<string | null>(null);
  const jobRef = useRef<Job | null>(initial ?? null);
  const [generation, setGeneration] = useState(0);

  const setJob = useCallback((j: Job) => {
    jobRef.current = j;
    setJobState(j);
  }, []);

  const refresh = useCallback(async () => {
    try {
      setJob(await client.getJob(id));
    } catch (e) {
      setError(e);
    }
  }, [client, id, setJob]);

  useEffect(() => {
    const ac = new AbortController();
    const signal = ac.signal;
    let sseFailures = 0;
    let pollsSinceSse = 0;

    const fetchJob = async (): Promise<Job | null> => {
      for (let attempt = 0; !signal.aborted; attempt++) {
        try {
          const j = await client.getJob(id, signal);
          setJob(j);
          setError(null);
          return j;
        } catch (e) {
          if (signal.aborted) return null;
          if (e instanceof ApiError && (e.status === 404 || e.status === 401 || e.status === 403)) {
            setError(e);
            return null;
          }
          setError(e);
          await sleep(Math.min(10_000, 1000 * 2 ** attempt), signal);
        }
      }
      return null;
    };

    (async () => {
      let j = jobRef.current?.id === id ? jobRef.current : null;
      const fresh = await fetchJob();
      if (!fresh && !j) {
        setMode("done");
        return;
      }
      j = fresh ?? j;
      while (!signal.aborted && j && !isTerminal(j.status)) {
        if (sseFailures < 3) {
          const started = Date.now();
          const streamAc = new AbortController();
          const onAbort = () => streamAc.abort();
          signal.addEventListener("abort", onAbort);
          try {
            setMode("connecting");
            await client.streamEvents(
              j.urls?.events ?? `/api/v2/jobs/${encodeURIComponent(id)}/events`,
              (msg) => {
                setMode("live");
                const cur = jobRef.current;
                if (!cur) return;
                const r = applyEvent(cur, msg);
                if (r.job !== cur) setJob(r.job);
                if (r.log) setLogs((ls) => [...ls.slice(-199), r.log!]);
                if (r.preview) setPreview(r.preview);
                // After the terminal status the server closes; don't wait for it.
                if (msg.event === "status" && isTerminal(r.job.status)) setTimeout(() => streamAc.abort(), 250);
              },
              streamAc.signal,
            );
            sseFailures = 0;
          } catch (e) {
            if (signal.aborted) return;
            if ((e as { name?: string })?.name !== "AbortError") {
              sseFailures++;
              if (e instanceof ApiError && (e.code === "sse_unsupported" || e.status === 404 || e.status === 405 || e.status === 501)) sseFailures = 3;
              setMode("polling");
            }
          } finally {
            signal.removeEventListener("abort", onAbort);
          }
          if (signal.aborted) return;
          // A stream that closed at once must not become a hot loop.
          const lived = Date.now() - started;
          if (lived < 1000) await sleep(1000 - lived, signal);
          j = (await fetchJob()) ?? j;
          pollsSinceSse = 0;
        } else {
          setMode("polling");
          const queued = j.status === "queued";
          await sleep(queued ? 3000 : 1500, signal);
          j = (await fetchJob()) ?? j;
          // Try the stream again now and then.
          if (++pollsSinceSse >= 20) sseFailures = 0;
        }
      }
      if (!signal.aborted) setMode("done");
    })();

    return () => ac.abort();
  }, [client, id, setJob, generation]);

  // Let a caller restart following (after a cancel request, for instance).
  const refreshAndFollow = useCallback(async () => {
    await refresh();
    setGeneration((g) => g + 1);
  }, [refresh]);

  return { job, mode, error, logs, preview, refresh: refreshAndFollow, setJob };
}
