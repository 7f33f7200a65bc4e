import { useCallback, useEffect, useMemo, useState } from "react";
import { Badge, Box, Button, Card, Code, Flex, Heading, IconButton, Progress, Select, Skeleton, Text, TextField, Tooltip } from "@radix-ui/themes";
import { ChevronLeftIcon, ChevronRightIcon, Cross2Icon, ImageIcon, MagnifyingGlassIcon, ReloadIcon } from "@radix-ui/react-icons";
import { isTerminal, type Job } from "../api/types";
import { useClient } from "../lib/connection";
import { formatDuration, parseTime, relativeTime, shortId } from "../lib/format";
import { navigate } from "../lib/router";
import { StatusBadge } from "../components/StatusBadge";
import { ErrorCallout } from "../components/ErrorCallout";

/** Parses `key=value, key2=value2` into a metadata filter. */
export function parseLabelFilter(s: string): Record<string, string> | null {
  const out: Record<string, string> = {};
  for (const part of s.split(/[,\n]/)) {
    const p = part.trim();
    if (!p) continue;
    const eq = p.indexOf("=");
    if (eq <= 0) return null;
    out[p.slice(0, eq).trim()] = p.slice(eq + 1).trim();
  }
  return out;
}

const PAGE_SIZES = ["10", "20", "50"];

export function HistoryScreen({ params }: { params: URLSearchParams }) {
  const client = useClient();
  const label = params.get("label") ?? "";
  const limitParam = Number(params.get("limit"));
  const limit = Number.isInteger(limitParam) && limitParam > 0 && limitParam <= 100 ? limitParam : 20;
  const filter = useMemo(() => parseLabelFilter(label) ?? {}, [label]);
  const [draft, setDraft] = useState(label);
  const [cursors, setCursors] = useState<(string | null)[]>([null]); // cursors[i] opens page i
  const page = cursors.length - 1;
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [loadedPage, setLoadedPage] = useState(-1);

  useEffect(() => {
    setDraft(label);
    setCursors([null]);
  }, [label, limit]);

  const cursor = cursors[cursors.length - 1];
  const load = useCallback(
    async (quiet = false) => {
      if (!quiet) setLoading(true);
      try {
        const r = await client.listJobs({ metadata: filter, limit, cursor });
        setJobs(r.jobs ?? []);
        setNext(r.next_cursor ?? null);
        setLoadedPage(page);
        setError(null);
      } catch (e) {
        setError(e);
      } finally {
        setLoading(false);
      }
    },
    [client, filter, limit, cursor, page],
  );

  useEffect(() => {
    void load();
  }, [load]);

  // Keep the first page fresh while anything on it is still moving.
  const moving = page === 0 && !!jobs?.some((j) => !isTerminal(j.status));
  useEffect(() => {
    if (!moving) return;
    const t = setInterval(() => void load(true), 4000);
    return () => clearInterval(t);
  }, [moving, load]);

  const setRoute = (nextLabel: string, nextLimit = limit) => {
    const q = new URLSearchParams();
    if (nextLabel.trim()) q.set("label", nextLabel.trim());
    if (nextLimit !== 20) q.set("limit", String(nextLimit));
    const qs = q.toString();
    navigate(`#/history${qs ? `?${qs}` : ""}`);
  };

  const filterInvalid = draft.trim() !== "" && parseLabelFilter(draft) === null;

  return (
    <Flex direction="column" gap="4" pt="5">
      <Flex justify="between" align="end" gap="3" wrap="wrap">
        <Box>
          <Heading size={{ initial: "7", sm: "8" }} className="hero-title">
            History
          </Heading>
          <Text as="p" color="gray" size="3" mt="1">
            Your jobs, newest first.
          </Text>
        </Box>
        <Button asChild>
          <a href="#/new">New job</a>
        </Button>
      </Flex>

      <Card size="2">
        <form
          role="search"
          aria-label="Filter jobs by label"
          onSubmit={(e) => {
            e.preventDefault();
            if (!filterInvalid) setRoute(draft);
          }}
        >
          <Flex gap="3" align="end" wrap="wrap">
            <Flex direction="column" gap="1" flexGrow="1" minWidth="220px">
              <Text as="label" htmlFor="label-filter" size="2" weight="medium">
                Label filter
              </Text>
              <TextField.Root id="label-filter" placeholder="project=cats, run=42" value={draft} onChange={(e) => setDraft(e.target.value)} aria-invalid={filterInvalid || undefined} aria-describedby="label-filter-help" spellCheck={false}>
                <TextField.Slot>
                  <MagnifyingGlassIcon />
                </TextField.Slot>
                {draft && (
                  <TextField.Slot>
                    <IconButton
                      type="button"
                      size="1"
                      variant="ghost"
                      color="gray"
                      aria-label="Clear the filter"
                      onClick={() => {
                        setDraft("");
                        setRoute("");
                      }}
                    >
                      <Cross2Icon />
                    </IconButton>
                  </TextField.Slot>
                )}
              </TextField.Root>
              <Text id="label-filter-help" size="1" color={filterInvalid ? "red" : "gray"}>
                {filterInvalid ? "Write each label as key=value." : "Matches jobs whose metadata has every key=value given."}
              </Text>
            </Flex>
            <Flex direction="column" gap="1">
              <Text as="label" htmlFor="page-size" size="2" weight="medium">
                Per page
              </Text>
              <Select.Root value={PAGE_SIZES.includes(String(limit)) ? String(limit) : undefined} onValueChange={(v) => setRoute(label, Number(v))}>
                <Select.Trigger id="page-size" placeholder={String(limit)} />
                <Select.Content>
                  {PAGE_SIZES.map((s) => (
                    <Select.Item key={s} value={s}>
                      {s}
                    </Select.Item>
                  ))}
                </Select.Content>
              </Select.Root>
            </Flex>
            <Button type="submit" variant="soft" disabled={filterInvalid}>
              Apply
            </Button>
            <Tooltip content="Refresh">
              <IconButton type="button" variant="ghost" color="gray" onClick={() => void load()} aria-label="Refresh the list" loading={loading}>
                <ReloadIcon />
              </IconButton>
            </Tooltip>
          </Flex>
        </form>
      </Card>

      {error != null && <ErrorCallout error={error} title="Could not load the history" />}

      {jobs === null && !error ? (
        <Flex direction="column" gap="2">
          {[0, 1, 2].map((i) => (
            <Skeleton key={i} height="76px" />
          ))}
        </Flex>
      ) : jobs && jobs.length === 0 ? (
        <Card size="3">
          <Flex direction="column" align="center" gap="2" py="4">
            <Text weight="bold">{Object.keys(filter).length ? "No jobs with these labels" : page > 0 ? "No more jobs" : "No jobs yet"}</Text>
            <Text color="gray" size="2">
              {Object.keys(filter).length ? "Try another filter, or clear it." : "Run a workflow and it shows up here."}
            </Text>
          </Flex>
        </Card>
      ) : (
        <Flex direction="column" gap="2" role="list" aria-label="Jobs" data-testid="history-list" data-page={loadedPage} aria-busy={loading || undefined} className={loading ? "list-loading" : undefined}>
          {jobs?.map((j) => (
            <JobRow key={j.id} job={j} />
          ))}
        </Flex>
      )}

      <Flex justify="between" align="center" gap="3">
        <Button variant="soft" color="gray" disabled={page === 0 || loading} onClick={() => setCursors((c) => c.slice(0, -1))}>
          <ChevronLeftIcon /> Newer
        </Button>
        <Text size="2" color="gray" data-testid="page-number">
          Page {page + 1}
        </Text>
        <Button variant="soft" color="gray" disabled={!next || loading} onClick={() => next && setCursors((c) => [...c, next])}>
          Older <ChevronRightIcon />
        </Button>
      </Flex>
    </Flex>
  );
}

function JobRow({ job }: { job: Job }) {
  const thumb = (job.outputs ?? []).find((o) => o.type === "image" || o.content_type?.startsWith("image/"));
  const client = useClient();
  const [broken, setBroken] = useState(false);
  const created = parseTime(job.created_at);
  const started = parseTime(job.started_at);
  const completed = parseTime(job.completed_at);
  const duration = started && completed ? formatDuration(completed - started) : null;
  const labels = Object.entries(job.metadata ?? {});
  const running = job.status === "running" || job.status === "canceling";
  return (
    <Card asChild size="1" className="job-row" role="listitem">
      <a href={`#/jobs/${encodeURIComponent(job.id)}`} data-job-id={job.id} aria-label={`Job ${job.id}, ${job.status}`}>
        <Flex gap="3" align="center">
          <div className="row-thumb">{thumb && !broken ? <img src={client.resolve(thumb.url)} alt="" loading="lazy" onError={() => setBroken(true)} /> : <ImageIcon width="20" height="20" className="muted-icon" />}</div>
          <Flex direction="column" gap="1" flexGrow="1" minWidth="0">
            <Flex align="center" gap="2" wrap="wrap">
              <StatusBadge status={job.status} size="1" />
              <Code variant="ghost" size="2" className="job-id">
                {shortId(job.id)}
              </Code>
              {labels.slice(0, 3).map(([k, v]) => (
                <Badge key={k} variant="outline" color="gray" radius="full" size="1" className="hide-xs">
                  {k}: {v}
                </Badge>
              ))}
            </Flex>
            {running && job.progress ? (
              <Progress size="1" value={Math.round((job.progress.value ?? 0) * 100)} aria-label="Progress" />
            ) : (
              <Text size="1" color="gray" truncate>
                {job.error ? `${job.error.code}: ${job.error.message}` : `${(job.outputs ?? []).length} output${(job.outputs ?? []).length === 1 ? "" : "s"}${duration ? ` · ran ${duration}` : ""}`}
              </Text>
            )}
          </Flex>
          <Text size="1" color="gray" className="row-time" title={created ? new Date(created).toLocaleString() : undefined}>
            {relativeTime(job.created_at)}
          </Text>
          <ChevronRightIcon className="muted-icon" />
        </Flex>
      </a>
    </Card>
  );
}
