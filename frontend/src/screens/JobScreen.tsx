import { useEffect, useState } from "react";
import {
  Badge,
  Box,
  Button,
  Callout,
  Card,
  Code,
  DataList,
  Flex,
  Grid,
  Heading,
  IconButton,
  Progress,
  Skeleton,
  Spinner,
  Text,
  Tooltip,
} from "@radix-ui/themes";
import {
  ArrowLeftIcon,
  CheckIcon,
  ClockIcon,
  CopyIcon,
  CrossCircledIcon,
  ExclamationTriangleIcon,
  LightningBoltIcon,
  MixerHorizontalIcon,
  StopIcon,
} from "@radix-ui/react-icons";
import { isTerminal, type Health, type Job } from "../api/types";
import { useClient, useConnection } from "../lib/connection";
import { cachedJob } from "../lib/jobCache";
import { useJobLive, type LiveMode } from "../lib/useJobLive";
import { useNow } from "../lib/useNow";
import { formatDuration, parseTime, relativeTime } from "../lib/format";
import { navigate } from "../lib/router";
import { StatusBadge } from "../components/StatusBadge";
import { ErrorCallout } from "../components/ErrorCallout";
import { OutputsGallery } from "../components/Outputs";

export function progressLabel(job: Job): string {
  const p = job.progress;
  if (job.status === "queued") return p?.message || "Waiting in the queue";
  if (job.status === "succeeded") return "Done";
  if (!p) return job.status === "running" ? "Starting…" : "";
  const cls = p.current_node_class;
  if (cls && p.step != null && p.steps) return `${cls} ${p.step}/${p.steps}`;
  if (p.message) return p.message;
  if (cls) return `${cls}${p.current_node ? ` (#${p.current_node})` : ""}`;
  return `Node ${p.nodes_done}/${p.nodes_total}`;
}

export function JobScreen({ id }: { id: string }) {
  const client = useClient();
  const { health: ctxHealth } = useConnection();
  const live = useJobLive(client, id, cachedJob(id));
  const { job, mode, error } = live;
  const active = !!job && !isTerminal(job.status);
  const now = useNow(500, active);
  const [canceling, setCanceling] = useState(false);
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [health, setHealth] = useState<Health | null>(ctxHealth);

  // While queued, keep an eye on the fleet so the wait can be explained honestly.
  const queued = job?.status === "queued";
  useEffect(() => {
    if (!queued) return;
    let stop = false;
    const tick = () =>
      client
        .health()
        .then((h) => !stop && setHealth(h))
        .catch(() => {});
    void tick();
    const t = setInterval(tick, 5000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [queued, client]);

  const cancel = async () => {
    if (!job) return;
    setCanceling(true);
    setCancelError(null);
    try {
      live.setJob(await client.cancelJob(job.id, job.urls?.cancel));
    } catch (e) {
      setCancelError(e);
    } finally {
      setCanceling(false);
    }
  };

  const openInEditor = async () => {
    try {
      const wf = await client.getJobWorkflow(id);
      sessionStorage.setItem("scui.draft.workflow", JSON.stringify(wf, null, 2));
      if (job?.metadata && Object.keys(job.metadata).length) {
        sessionStorage.setItem("scui.draft.labels", JSON.stringify(Object.entries(job.metadata).map(([key, value]) => ({ key, value }))));
      }
      navigate("#/new");
    } catch (e) {
      setCancelError(e);
    }
  };

  if (!job) {
    return (
      <Flex direction="column" gap="4" pt="5">
        <BackLink />
        {error ? (
          <ErrorCallout error={error} title="Could not load this job" />
        ) : (
          <Flex direction="column" gap="3">
            <Skeleton height="40px" width="60%" />
            <Skeleton height="120px" />
          </Flex>
        )}
      </Flex>
    );
  }

  const created = parseTime(job.created_at) ?? now;
  const started = parseTime(job.started_at);
  const completed = parseTime(job.completed_at);
  const end = completed ?? now;
  const waitMs = (started ?? end) - created;
  const runMs = started ? end - started : null;
  const value = job.status === "succeeded" ? 100 : Math.round(Math.max(0, Math.min(1, job.progress?.value ?? 0)) * 100);
  const labels = Object.entries(job.metadata ?? {});
  const outputs = job.outputs ?? [];
  const canCancel = job.status === "queued" || job.status === "running";

  return (
    <Flex direction="column" gap="4" pt="5" data-testid="job-view" data-job-id={job.id} data-status={job.status}>
      <BackLink />
      <Flex justify="between" align="start" gap="3" wrap="wrap">
        <Flex direction="column" gap="2" minWidth="0">
          <Flex align="center" gap="3" wrap="wrap">
            <Heading size={{ initial: "6", sm: "7" }}>Job</Heading>
            <StatusBadge status={job.status} size="3" />
            <LiveIndicator mode={mode} terminal={!active} />
          </Flex>
          <Flex align="center" gap="2" wrap="wrap">
            <Code variant="ghost" size="2" className="job-id">
              {job.id}
            </Code>
            <CopyButton text={job.id} />
            <Text size="2" color="gray">
              submitted {relativeTime(job.created_at, now)}
            </Text>
          </Flex>
          {labels.length > 0 && (
            <Flex gap="2" wrap="wrap" aria-label="Labels">
              {labels.map(([k, v]) => (
                <Badge key={k} variant="outline" color="gray" radius="full">
                  {k}: {v}
                </Badge>
              ))}
            </Flex>
          )}
        </Flex>
        <Flex gap="2" wrap="wrap">
          <Button variant="soft" color="gray" onClick={() => void openInEditor()}>
            <MixerHorizontalIcon /> Edit &amp; run again
          </Button>
          {canCancel || job.status === "canceling" ? (
            <Button color="red" variant="soft" onClick={() => void cancel()} disabled={canceling || job.status === "canceling"}>
              {canceling || job.status === "canceling" ? <Spinner /> : <StopIcon />}
              {job.status === "canceling" ? "Canceling…" : "Cancel job"}
            </Button>
          ) : null}
        </Flex>
      </Flex>

      {error != null && <ErrorCallout error={error} title="Lost touch with the job; retrying" />}
      <ErrorCallout error={cancelError} title="That did not work" />

      <Card size="3" className="progress-card">
        <Flex direction="column" gap="3">
          <Flex justify="between" align="baseline" gap="3" wrap="wrap">
            <Text size="4" weight="bold" data-testid="progress-label">
              {progressLabel(job)}
            </Text>
            <Text size="2" color="gray" className="tabular">
              {job.progress && job.status !== "queued" && job.progress.nodes_total > 0 && `nodes ${job.progress.nodes_done}/${job.progress.nodes_total} · `}
              {value}%
            </Text>
          </Flex>
          <Progress
            value={value}
            size="3"
            color={job.status === "failed" ? "red" : job.status === "succeeded" ? "green" : job.status === "canceled" || job.status === "expired" ? "gray" : undefined}
            aria-label="Job progress"
            data-testid="job-progress"
            data-value={value}
          />
          <Grid columns={{ initial: "2", sm: "4" }} gap="3" mt="1">
            <Stat label={job.status === "queued" ? "Queue position" : "Queued for"} value={job.status === "queued" ? (job.queue_position == null ? "–" : job.queue_position === 0 ? "Next" : `#${job.queue_position}`) : formatDuration(waitMs)} icon={<ClockIcon />} testid="queue-stat" />
            <Stat label={job.status === "queued" ? "Waiting" : "Running for"} value={job.status === "queued" ? formatDuration(waitMs) : runMs != null ? formatDuration(runMs) : "–"} icon={<LightningBoltIcon />} testid="elapsed" />
            <Stat label="Outputs" value={String(outputs.length)} />
            <Stat label="Step" value={job.progress?.step != null && job.progress.steps ? `${job.progress.step}/${job.progress.steps}` : "–"} />
          </Grid>
        </Flex>
      </Card>

      {job.status === "queued" && <ColdWorkerNotice job={job} health={health} waitMs={waitMs} />}

      {live.preview && active && (
        <Card size="2">
          <Flex gap="3" align="center">
            <img src={live.preview} alt="Live preview of the current step" className="preview-image" />
            <Text size="2" color="gray">
              Live preview
            </Text>
          </Flex>
        </Card>
      )}

      {job.error && <FailureDetails job={job} />}

      {job.status === "canceled" && (
        <Callout.Root color="gray">
          <Callout.Icon>
            <CrossCircledIcon />
          </Callout.Icon>
          <Callout.Text>This job was canceled{outputs.length ? "; the outputs made before that are kept below." : "."}</Callout.Text>
        </Callout.Root>
      )}
      {job.status === "expired" && (
        <Callout.Root color="gray">
          <Callout.Icon>
            <ClockIcon />
          </Callout.Icon>
          <Callout.Text>This job waited longer than the queue timeout without a worker, so it expired. Nothing ran.</Callout.Text>
        </Callout.Root>
      )}

      <Box asChild>
        <section aria-labelledby="outputs-heading">
          <Flex justify="between" align="center" mb="3">
            <Heading as="h2" size="5" id="outputs-heading">
              Outputs
            </Heading>
            {outputs.length > 0 && (
              <Text size="2" color="gray">
                {outputs.length} file{outputs.length === 1 ? "" : "s"}
              </Text>
            )}
          </Flex>
          {outputs.length > 0 ? (
            <OutputsGallery client={client} outputs={outputs} onExpired={() => void live.refresh()} />
          ) : (
            <Card size="2" className="empty-outputs">
              <Text color="gray" size="2">
                {active ? "Outputs appear here as each one is saved." : "This job produced no outputs."}
              </Text>
            </Card>
          )}
        </section>
      </Box>

      {live.logs.length > 0 && (
        <details className="logs">
          <summary>
            <Text size="2" weight="medium">
              Log ({live.logs.length})
            </Text>
          </summary>
          <pre className="output-text">{live.logs.map((l) => `[${l.level}] ${l.message}`).join("\n")}</pre>
        </details>
      )}

      <Card size="2">
        <DataList.Root size="2" orientation={{ initial: "vertical", sm: "horizontal" }}>
          <DataList.Item>
            <DataList.Label minWidth="140px">Submitted</DataList.Label>
            <DataList.Value>{new Date(created).toLocaleString()}</DataList.Value>
          </DataList.Item>
          {started && (
            <DataList.Item>
              <DataList.Label minWidth="140px">Started</DataList.Label>
              <DataList.Value>{new Date(started).toLocaleString()}</DataList.Value>
            </DataList.Item>
          )}
          {completed && (
            <DataList.Item>
              <DataList.Label minWidth="140px">Finished</DataList.Label>
              <DataList.Value>{new Date(completed).toLocaleString()}</DataList.Value>
            </DataList.Item>
          )}
          {job.metrics &&
            Object.entries(job.metrics)
              .filter(([, v]) => v != null)
              .map(([k, v]) => (
                <DataList.Item key={k}>
                  <DataList.Label minWidth="140px">{metricLabel(k)}</DataList.Label>
                  <DataList.Value data-metric={k}>{metricValue(k, Number(v))}</DataList.Value>
                </DataList.Item>
              ))}
          {job.expires_at && (
            <DataList.Item>
              <DataList.Label minWidth="140px">Kept until</DataList.Label>
              <DataList.Value>{new Date(job.expires_at).toLocaleString()}</DataList.Value>
            </DataList.Item>
          )}
        </DataList.Root>
      </Card>
    </Flex>
  );
}

export function metricLabel(k: string): string {
  const known: Record<string, string> = { queue_ms: "Time in queue", execution_ms: "Execution time", gpu_ms: "GPU time", cost_micro_usd: "Estimated cost" };
  if (known[k]) return known[k];
  const s = k.replace(/_ms$/, "").replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** A metric as people read it: durations (GPU time too), and dollars (to the millionth under a cent). */
export function metricValue(k: string, v: number): string {
  if (k.endsWith("_ms")) return formatDuration(v);
  if (k === "cost_micro_usd") {
    const usd = v / 1e6;
    return usd >= 0.01 || usd === 0 ? `$${usd.toFixed(2)}` : `$${usd.toFixed(6)}`;
  }
  return String(v);
}

function BackLink() {
  return (
    <Box>
      <Button variant="ghost" color="gray" asChild>
        <a href="#/history">
          <ArrowLeftIcon /> History
        </a>
      </Button>
    </Box>
  );
}

function Stat({ label, value, icon, testid }: { label: string; value: string; icon?: React.ReactNode; testid?: string }) {
  return (
    <Box className="stat">
      <Text as="div" size="1" color="gray">
        <Flex gap="1" align="center">
          {icon}
          {label}
        </Flex>
      </Text>
      <Text as="div" size="4" weight="bold" className="tabular" data-testid={testid}>
        {value}
      </Text>
    </Box>
  );
}

function LiveIndicator({ mode, terminal }: { mode: LiveMode; terminal: boolean }) {
  if (terminal) return null;
  const text = mode === "live" ? "Live" : mode === "polling" ? "Polling" : "Connecting";
  const tip = mode === "live" ? "Updates stream from the server as they happen." : mode === "polling" ? "The live stream is unavailable; checking every few seconds." : "Opening the live stream…";
  return (
    <Tooltip content={tip}>
      <Badge color={mode === "live" ? "green" : "gray"} variant="outline" radius="full" data-testid="live-mode" data-mode={mode}>
        <span className={mode === "live" ? "status-dot pulse" : "status-dot"} aria-hidden /> {text}
      </Badge>
    </Tooltip>
  );
}

function CopyButton({ text }: { text: string }) {
  const [done, setDone] = useState(false);
  return (
    <Tooltip content={done ? "Copied" : "Copy job id"}>
      <IconButton
        size="1"
        variant="ghost"
        color="gray"
        aria-label="Copy job id"
        onClick={() => {
          void navigator.clipboard?.writeText(text).then(() => {
            setDone(true);
            setTimeout(() => setDone(false), 1500);
          });
        }}
      >
        {done ? <CheckIcon /> : <CopyIcon />}
      </IconButton>
    </Tooltip>
  );
}

/** Tells the truth about a wait: capacity errors first, then a cold start, then a busy fleet. */
export function coldWorkerMessage(job: Job, health: Health | null): { tone: "amber" | "blue" | "gray"; title: string; body: string } {
  // progress.message while queued may be a capacity problem ("waiting for GPU capacity:
  // VcpuLimitExceeded") or plain queue news ("queued behind 1 job"); only the first is a warning.
  const msg = job.progress?.message ?? "";
  const capacity =
    (/capacity|limit|quota|insufficient|unavailable/i.test(msg) ? msg : null) ||
    (health?.capacity?.state && health.capacity.state !== "ok" ? health.capacity.message || `capacity: ${health.capacity.state}` : null);
  const w = health?.workers;
  const simulated = health?.comfyui?.mode === "simulated";
  if (capacity) {
    return {
      tone: "amber",
      title: "Waiting for GPU capacity",
      body: `${capacity}. The job stays queued and starts by itself when a GPU can be had; it expires if the wait passes the queue timeout.`,
    };
  }
  if (health?.comfyui?.mode === "none") {
    return { tone: "amber", title: "This server has no ComfyUI runner", body: `${health.comfyui.message ?? "Nothing can run jobs here yet"}. The job stays queued until one is attached.` };
  }
  if (w && (w.busy ?? 0) + (w.idle ?? 0) === 0) {
    if ((w.max ?? 1) === 0) return { tone: "amber", title: "No workers allowed", body: "MaxWorkers is 0, so nothing will run this job until it is raised." };
    return {
      tone: "blue",
      title: (w.starting ?? 0) > 0 ? "A GPU worker is starting" : "Starting a GPU worker",
      body: simulated
        ? "No worker was warm. Locally this takes a few seconds."
        : "No worker was warm, so one is being started from zero. On AWS that usually takes 5–12 minutes: the instance boots, pulls the image and loads the models. The job will start by itself; you can leave this page and come back.",
    };
  }
  if (w && (w.idle ?? 0) === 0 && (w.busy ?? 0) > 0) {
    return {
      tone: "gray",
      title: "All workers are busy",
      body: `Your job runs when a worker frees up${(w.max ?? 0) > (w.busy ?? 0) + (w.starting ?? 0) ? " or another one starts" : ""}.`,
    };
  }
  return { tone: "gray", title: "Queued", body: "A worker will pick this job up shortly." };
}

function ColdWorkerNotice({ job, health, waitMs }: { job: Job; health: Health | null; waitMs: number }) {
  const m = coldWorkerMessage(job, health);
  return (
    <Callout.Root color={m.tone} data-testid="queue-notice">
      <Callout.Icon>{m.tone === "amber" ? <ExclamationTriangleIcon /> : <ClockIcon />}</Callout.Icon>
      <Flex direction="column" gap="1">
        <Callout.Text weight="bold">
          {m.title} <Text weight="regular" color="gray">· waiting {formatDuration(waitMs)}</Text>
        </Callout.Text>
        <Callout.Text size="2">{m.body}</Callout.Text>
      </Flex>
    </Callout.Root>
  );
}

function FailureDetails({ job }: { job: Job }) {
  const e = job.error!;
  const tb = Array.isArray(e.traceback) ? e.traceback.join("") : e.traceback;
  return (
    <Callout.Root color="red" role="alert" data-testid="failure" data-code={e.code}>
      <Callout.Icon>
        <ExclamationTriangleIcon />
      </Callout.Icon>
      <Flex direction="column" gap="2" minWidth="0">
        <Callout.Text weight="bold">
          {job.status === "failed" ? "The job failed" : "Error"} <Code color="red" variant="soft">{e.code}</Code>
        </Callout.Text>
        <Callout.Text className="break-words">{e.message}</Callout.Text>
        {(e.node_id || e.class_type) && (
          <Callout.Text size="2">
            In node <Code variant="soft">#{e.node_id ?? "?"}</Code>
            {e.class_type && (
              <>
                {" "}
                <Code variant="soft">{e.class_type}</Code>
              </>
            )}
          </Callout.Text>
        )}
        {tb && (
          <details className="traceback">
            <summary>
              <Text size="2">Traceback</Text>
            </summary>
            <pre className="output-text">{tb}</pre>
          </details>
        )}
      </Flex>
    </Callout.Root>
  );
}
