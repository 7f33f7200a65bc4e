import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import {
  Badge,
  Box,
  Button,
  Callout,
  Card,
  Code,
  DropdownMenu,
  Flex,
  Grid,
  Heading,
  IconButton,
  Kbd,
  Link,
  Spinner,
  Switch,
  Text,
  TextArea,
  TextField,
} from "@radix-ui/themes";
import {
  CaretDownIcon,
  Cross2Icon,
  ExclamationTriangleIcon,
  FileIcon,
  InfoCircledIcon,
  PlayIcon,
  PlusIcon,
  TrashIcon,
} from "@radix-ui/react-icons";
import { ApiError, newIdempotencyKey } from "../api/client";
import { useClient } from "../lib/connection";
import { navigate } from "../lib/router";
import { rememberJob } from "../lib/jobCache";
import { normaliseNodeErrors, describeItem } from "../lib/nodeErrors";
import { uploadInput } from "../lib/upload";
import { detectText, readPngTextChunks, type ApiWorkflow } from "../workflow/detect";
import { assetRef, discoverInputs, imageInputsNeedingUpload, setInput, type Field } from "../workflow/discover";
import { type Catalogue } from "../workflow/catalogue";
import { InputsForm, type UploadState } from "../components/InputsForm";
import { ErrorCallout } from "../components/ErrorCallout";
import invertEx from "../examples/invert.json";
import loadBlurEx from "../examples/load-blur.json";
import batchEx from "../examples/batch-two-outputs.json";
import txt2imgEx from "../examples/txt2img-sd15.json";

const EXAMPLES: { name: string; what: string; wf: unknown }[] = [
  { name: "Invert a canvas", what: "no models · the smallest real run", wf: invertEx },
  { name: "Blur a photo", what: "no models · uses an uploaded image", wf: loadBlurEx },
  { name: "Batch, two outputs", what: "no models · 3 images + a preview", wf: batchEx },
  { name: "Text to image (SD 1.5)", what: "needs v1-5-pruned-emaonly", wf: txt2imgEx },
];

interface Label {
  key: string;
  value: string;
}

const DRAFT_KEY = "scui.draft.workflow";
const LABELS_KEY = "scui.draft.labels";

function loadLabels(): Label[] {
  try {
    const v = JSON.parse(sessionStorage.getItem(LABELS_KEY) ?? "null") as Label[] | null;
    if (Array.isArray(v) && v.length) return v;
  } catch {
    /* ignore */
  }
  return [{ key: "", value: "" }];
}

export function NewJobScreen() {
  const client = useClient();
  const [text, setText] = useState(() => sessionStorage.getItem(DRAFT_KEY) ?? "");
  const [labels, setLabels] = useState<Label[]>(loadLabels);
  const [uploads, setUploads] = useState<Record<string, UploadState>>({});
  const [showAll, setShowAll] = useState(false);
  const [submitting, setSubmitting] = useState(false);
  const [submitError, setSubmitError] = useState<unknown>(null);
  const [fileNote, setFileNote] = useState<string | null>(null);
  const [dragOver, setDragOver] = useState(false);
  const fileInput = useRef<HTMLInputElement>(null);
  const idemKey = useRef<string>(newIdempotencyKey());

  const detection = useMemo(() => detectText(text), [text]);
  const workflow: ApiWorkflow | null = detection.kind === "api" ? detection.workflow : null;
  // The node catalogue, for model names and other combo values (best effort: none, no hints).
  // Read again for each workflow pasted: a runner may have published one meanwhile (the
  // server answers 304 to the browser's revalidation when nothing changed).
  const [catalogue, setCatalogue] = useState<Catalogue | null>(null);
  const hasWorkflow = detection.kind === "api";
  useEffect(() => {
    if (!hasWorkflow) return;
    const abort = new AbortController();
    client
      .getCatalogue(abort.signal)
      .then((c) => setCatalogue(c as Catalogue | null))
      .catch(() => undefined);
    return () => abort.abort();
  }, [client, hasWorkflow]);
  const groups = useMemo(() => (workflow ? discoverInputs(workflow) : []), [workflow]);
  const missingImages = useMemo(() => (workflow ? imageInputsNeedingUpload(workflow) : []), [workflow]);
  const nodeErrors = useMemo(
    () => (submitError instanceof ApiError && submitError.code === "invalid_workflow" ? normaliseNodeErrors(submitError.details) : []),
    [submitError],
  );
  const uploading = Object.values(uploads).some((u) => u.phase === "hashing" || u.phase === "uploading");

  useEffect(() => {
    sessionStorage.setItem(DRAFT_KEY, text);
  }, [text]);
  useEffect(() => {
    sessionStorage.setItem(LABELS_KEY, JSON.stringify(labels));
  }, [labels]);

  // A changed request is a new request: it gets a new idempotency key. An unchanged retry keeps it.
  const changed = useCallback(() => {
    idemKey.current = newIdempotencyKey();
  }, []);

  const setWorkflowText = (t: string) => {
    setText(t);
    setSubmitError(null);
    changed();
  };

  const writeWorkflow = (wf: ApiWorkflow) => setWorkflowText(JSON.stringify(wf, null, 2));

  const onFieldChange = (f: Field, value: unknown) => {
    if (!workflow) return;
    writeWorkflow(setInput(workflow, f.nodeId, f.input, value));
  };

  const latest = useRef(workflow);
  latest.current = workflow;

  const onPickImage = async (f: Field, file: File) => {
    const previewUrl = URL.createObjectURL(file);
    setUploads((u) => ({ ...u, [f.key]: { phase: "hashing", loaded: 0, total: file.size, fileName: file.name, previewUrl } }));
    try {
      const { asset, reused } = await uploadInput(client, file, (p) =>
        setUploads((u) => ({ ...u, [f.key]: { ...u[f.key], phase: p.phase, loaded: p.loaded, total: p.total || file.size } })),
      );
      setUploads((u) => ({ ...u, [f.key]: { ...u[f.key], phase: "done", loaded: file.size, assetId: asset.id, reused } }));
      const wf = latest.current;
      if (wf) writeWorkflow(setInput(wf, f.nodeId, f.input, assetRef(asset.id)));
    } catch (e) {
      setUploads((u) => ({ ...u, [f.key]: { ...u[f.key], phase: "error", error: e instanceof Error ? e.message : String(e) } }));
    }
  };

  const loadFile = async (file: File) => {
    setFileNote(null);
    const isPng = file.type === "image/png" || /\.png$/i.test(file.name);
    if (isPng) {
      const chunks = readPngTextChunks(new Uint8Array(await file.arrayBuffer()));
      if (chunks.prompt) {
        try {
          setWorkflowText(JSON.stringify(JSON.parse(chunks.prompt), null, 2));
          setFileNote(`Read the API-format workflow embedded in ${file.name}.`);
          return;
        } catch {
          /* fall through */
        }
      }
      if (chunks.workflow) {
        setWorkflowText(chunks.workflow);
        setFileNote(`${file.name} carries only the editor's UI workflow.`);
        return;
      }
      setFileNote(`${file.name} has no ComfyUI workflow in it.`);
      return;
    }
    setWorkflowText(await file.text());
    setFileNote(`Loaded ${file.name}.`);
  };

  const metadata = () => {
    const m: Record<string, string> = {};
    for (const l of labels) if (l.key.trim()) m[l.key.trim()] = l.value;
    return m;
  };

  const submit = async () => {
    if (submitting || uploading) return;
    let body: Record<string, unknown> | null = workflow;
    if (!body && detection.kind === "ui") {
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        body = null;
      }
    }
    if (!body) return;
    setSubmitting(true);
    setSubmitError(null);
    try {
      const job = await client.submitJob(body, { metadata: metadata(), idempotencyKey: idemKey.current });
      rememberJob(job);
      changed();
      navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (e) {
      setSubmitError(e);
    } finally {
      setSubmitting(false);
    }
  };

  const onKeyDown = (e: React.KeyboardEvent) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      void submit();
    }
  };

  const nodeCount = workflow ? Object.keys(workflow).length : 0;
  const canSubmit = (detection.kind === "api" || detection.kind === "ui") && !submitting && !uploading;

  return (
    <Flex direction="column" gap="5" pt="5" onKeyDown={onKeyDown}>
      <Flex justify="between" align="end" gap="3" wrap="wrap">
        <Box>
          <Heading size={{ initial: "7", sm: "8" }} className="hero-title">
            Run a workflow
          </Heading>
          <Text as="p" color="gray" size="3" mt="1">
            Paste or drop an API-format workflow, tune its inputs, and run it on a GPU worker.
          </Text>
        </Box>
        <DropdownMenu.Root>
          <DropdownMenu.Trigger>
            <Button variant="soft" color="gray">
              Examples <CaretDownIcon />
            </Button>
          </DropdownMenu.Trigger>
          <DropdownMenu.Content align="end">
            {EXAMPLES.map((ex) => (
              <DropdownMenu.Item key={ex.name} onSelect={() => { setFileNote(null); writeWorkflow(ex.wf as ApiWorkflow); }}>
                <Flex direction="column">
                  <Text>{ex.name}</Text>
                  <Text size="1" color="gray">
                    {ex.what}
                  </Text>
                </Flex>
              </DropdownMenu.Item>
            ))}
          </DropdownMenu.Content>
        </DropdownMenu.Root>
      </Flex>

      <Card size="2" className={dragOver ? "drop-card over" : "drop-card"}>
        <div
          onDragOver={(e) => {
            if (e.dataTransfer.types.includes("Files")) {
              e.preventDefault();
              setDragOver(true);
            }
          }}
          onDragLeave={() => setDragOver(false)}
          onDrop={(e) => {
            e.preventDefault();
            setDragOver(false);
            const f = e.dataTransfer.files?.[0];
            if (f) void loadFile(f);
          }}
        >
          <Flex justify="between" align="center" gap="2" mb="2" wrap="wrap">
            <Text as="label" htmlFor="workflow-json" weight="medium" size="2">
              Workflow JSON <Text color="gray" weight="regular">(API format)</Text>
            </Text>
            <Flex gap="2" align="center">
              <DetectionBadge kind={detection.kind} nodes={nodeCount} />
              {text && (
                <IconButton size="1" variant="ghost" color="gray" onClick={() => { setWorkflowText(""); setUploads({}); setFileNote(null); }} aria-label="Clear the workflow">
                  <Cross2Icon />
                </IconButton>
              )}
            </Flex>
          </Flex>
          <TextArea
            id="workflow-json"
            className="code-area"
            size="2"
            rows={text ? 8 : 6}
            value={text}
            spellCheck={false}
            placeholder={'{\n  "3": { "class_type": "KSampler", "inputs": { … } },\n  …\n}'}
            onChange={(e) => setWorkflowText(e.target.value)}
            aria-describedby="workflow-help"
            aria-invalid={detection.kind === "invalid" || undefined}
          />
          <Flex id="workflow-help" justify="between" align="center" gap="2" mt="2" wrap="wrap">
            <Text size="1" color="gray">
              Drop a <Code variant="ghost">.json</Code> file or a PNG saved by ComfyUI here, or paste with <Kbd size="1">Ctrl</Kbd> <Kbd size="1">V</Kbd>.
            </Text>
            <input
              ref={fileInput}
              type="file"
              accept=".json,application/json,image/png"
              className="visually-hidden-input"
              aria-label="Choose a workflow file"
              onChange={(e) => {
                const f = e.target.files?.[0];
                if (f) void loadFile(f);
                e.target.value = "";
              }}
            />
            <Button size="1" variant="soft" onClick={() => fileInput.current?.click()}>
              <FileIcon /> Choose file
            </Button>
          </Flex>
          {fileNote && (
            <Text as="p" size="1" color="gray" mt="2">
              {fileNote}
            </Text>
          )}
          {detection.kind === "api" && detection.note && (
            <Text as="p" size="1" color="gray" mt="2">
              {detection.note}
            </Text>
          )}
        </div>
      </Card>

      {detection.kind === "invalid" && (
        <Callout.Root color="red" role="alert">
          <Callout.Icon>
            <ExclamationTriangleIcon />
          </Callout.Icon>
          <Callout.Text>{detection.reason}</Callout.Text>
        </Callout.Root>
      )}

      {detection.kind === "ui" && <UiFormatHelp reason={detection.reason} />}

      {detection.kind === "empty" && <EmptyState onPick={(wf) => writeWorkflow(wf as ApiWorkflow)} />}

      {(workflow || detection.kind === "ui") && (
        <Grid columns={{ initial: "1", md: "minmax(0, 2fr) minmax(280px, 1fr)" }} gap="5" align="start">
          <Flex direction="column" gap="3">
            {workflow && (
              <>
                <Flex justify="between" align="center" gap="2">
                  <Heading as="h2" size="5">
                    Inputs
                  </Heading>
                  <Text as="label" size="2" color="gray">
                    <Flex gap="2" align="center">
                      <Switch size="1" checked={showAll} onCheckedChange={setShowAll} /> All inputs
                    </Flex>
                  </Text>
                </Flex>
                <InputsForm groups={groups} showAll={showAll} nodeErrors={nodeErrors} uploads={uploads} catalogue={catalogue} onChange={onFieldChange} onPickImage={onPickImage} />
              </>
            )}
          </Flex>

          <Flex direction="column" gap="3" className="sticky-col">
            <Card size="2" asChild>
              <section aria-labelledby="labels-heading">
                <Heading as="h2" size="3" id="labels-heading" mb="1">
                  Labels
                </Heading>
                <Text as="p" size="1" color="gray" mb="3">
                  Saved as the job's metadata; filter your history by them.
                </Text>
                <Flex direction="column" gap="2">
                  {labels.map((l, i) => (
                    <Flex key={i} gap="2" align="center">
                      <TextField.Root
                        size="2"
                        placeholder="key"
                        aria-label={`Label ${i + 1} key`}
                        value={l.key}
                        className="label-key"
                        onChange={(e) => {
                          changed();
                          setLabels((ls) => ls.map((x, j) => (j === i ? { ...x, key: e.target.value } : x)));
                        }}
                      />
                      <TextField.Root
                        size="2"
                        placeholder="value"
                        aria-label={`Label ${i + 1} value`}
                        value={l.value}
                        className="label-value"
                        onChange={(e) => {
                          changed();
                          setLabels((ls) => ls.map((x, j) => (j === i ? { ...x, value: e.target.value } : x)));
                        }}
                      />
                      <IconButton
                        variant="ghost"
                        color="gray"
                        aria-label={`Remove label ${i + 1}`}
                        onClick={() => {
                          changed();
                          setLabels((ls) => (ls.length === 1 ? [{ key: "", value: "" }] : ls.filter((_, j) => j !== i)));
                        }}
                      >
                        <TrashIcon />
                      </IconButton>
                    </Flex>
                  ))}
                  <Box>
                    <Button size="1" variant="ghost" onClick={() => setLabels((ls) => [...ls, { key: "", value: "" }])}>
                      <PlusIcon /> Add label
                    </Button>
                  </Box>
                </Flex>
              </section>
            </Card>

            <Card size="2" className="submit-card">
              <Flex direction="column" gap="3">
                {missingImages.length > 0 && (
                  <Callout.Root color="amber" size="1">
                    <Callout.Icon>
                      <InfoCircledIcon />
                    </Callout.Icon>
                    <Callout.Text>
                      {missingImages.map((f) => `#${f.nodeId} ${f.nodeTitle}`).join(", ")} still {missingImages.length === 1 ? "names a file" : "name files"} the server may not have. Choose {missingImages.length === 1 ? "an image" : "images"} to upload.
                    </Callout.Text>
                  </Callout.Root>
                )}
                <Button size="3" onClick={() => void submit()} disabled={!canSubmit} color={detection.kind === "ui" ? "gray" : undefined} variant={detection.kind === "ui" ? "soft" : "solid"}>
                  {submitting ? <Spinner /> : <PlayIcon />}
                  {detection.kind === "ui" ? "Submit anyway" : "Run workflow"}
                </Button>
                <Text size="1" color="gray" align="center">
                  {uploading ? "Waiting for the upload to finish…" : (
                    <>
                      or press <Kbd size="1">Ctrl</Kbd> <Kbd size="1">Enter</Kbd>
                    </>
                  )}
                </Text>
              </Flex>
            </Card>
            <SubmitError error={submitError} nodeErrors={nodeErrors} workflow={workflow} />
          </Flex>
        </Grid>
      )}
    </Flex>
  );
}

function DetectionBadge({ kind, nodes }: { kind: string; nodes: number }) {
  if (kind === "api")
    return (
      <Badge color="green" variant="soft" data-testid="format-badge" data-format="api">
        API format · {nodes} node{nodes === 1 ? "" : "s"}
      </Badge>
    );
  if (kind === "ui")
    return (
      <Badge color="amber" variant="soft" data-testid="format-badge" data-format="ui">
        UI format
      </Badge>
    );
  if (kind === "invalid")
    return (
      <Badge color="red" variant="soft" data-testid="format-badge" data-format="invalid">
        Not a workflow
      </Badge>
    );
  return null;
}

function UiFormatHelp({ reason }: { reason: string }) {
  return (
    <Callout.Root color="amber" data-testid="ui-format-help">
      <Callout.Icon>
        <InfoCircledIcon />
      </Callout.Icon>
      <Flex direction="column" gap="2">
        <Callout.Text weight="bold">{reason}</Callout.Text>
        <Callout.Text>
          The API runs the <strong>API format</strong>: a map of node ids to <Code variant="ghost">{"{class_type, inputs}"}</Code>. To get it from ComfyUI:
        </Callout.Text>
        <ol className="steps">
          <li>
            <Text size="2">Open the workflow in ComfyUI.</Text>
          </li>
          <li>
            <Text size="2">
              In the menu choose <strong>Workflow → Export (API)</strong>. On older versions, first turn on <em>Settings → Dev mode</em>, then use <strong>Save (API Format)</strong>.
            </Text>
          </li>
          <li>
            <Text size="2">Drop or paste the exported <Code variant="ghost">.json</Code> here. A PNG that ComfyUI saved works too: it carries the API graph.</Text>
          </li>
        </ol>
        <Callout.Text size="1" color="gray">
          You can still submit it: the server will answer with <Code variant="ghost">workflow_format_ui</Code>.
        </Callout.Text>
      </Flex>
    </Callout.Root>
  );
}

function EmptyState({ onPick }: { onPick: (wf: unknown) => void }) {
  return (
    <Grid columns={{ initial: "1", sm: "2", md: "4" }} gap="3">
      {EXAMPLES.map((ex) => (
        <Card key={ex.name} asChild size="2" className="example-card">
          <button type="button" onClick={() => onPick(ex.wf)}>
            <Flex direction="column" gap="1" align="start">
              <Text weight="bold" size="2">
                {ex.name}
              </Text>
              <Text size="1" color="gray">
                {ex.what}
              </Text>
            </Flex>
          </button>
        </Card>
      ))}
    </Grid>
  );
}

function SubmitError({ error, nodeErrors, workflow }: { error: unknown; nodeErrors: ReturnType<typeof normaliseNodeErrors>; workflow: ApiWorkflow | null }) {
  if (!error) return null;
  const e = error instanceof ApiError ? error : null;
  const hints: Record<string, string> = {
    workflow_format_ui: "The server needs the API format. Use Workflow → Export (API) in ComfyUI.",
    missing_asset: "An input asset is missing or not yours. Choose the image again so it is uploaded.",
    queue_full: "The queue is full. Try again in a little while.",
    unauthorized: "Check the API key on the Connection page.",
    idempotency_key_reuse: "This request key was used for a different workflow. Edit anything and submit again.",
  };
  return (
    <Flex direction="column" gap="2" data-testid="submit-error" data-code={e?.code}>
      <ErrorCallout error={error} title={e?.status === 422 ? "The server rejected this workflow" : "Could not submit"} />
      {e && hints[e.code] && (
        <Text size="2" color="gray">
          {hints[e.code]}
        </Text>
      )}
      {nodeErrors.length > 0 && (
        <Card size="1" asChild>
          <section aria-label="Errors by node">
            <Flex direction="column" gap="2">
              {nodeErrors.map((n) => {
                const node = workflow?.[n.nodeId];
                const title = node?._meta?.title ?? node?.class_type ?? n.classType ?? "unknown node";
                return (
                  <Box key={n.nodeId} className="node-error" data-node-error={n.nodeId}>
                    <Text size="2" weight="bold">
                      #{n.nodeId} {title}
                    </Text>
                    {node && node._meta?.title && (
                      <Text size="1" color="gray">
                        {" "}
                        {node.class_type}
                      </Text>
                    )}
                    <ul className="plain-list">
                      {n.items.map((i, k) => (
                        <li key={k}>
                          <Text size="2">
                            {i.field && <Code size="1">{i.field}</Code>} {describeItem(i)}
                          </Text>
                        </li>
                      ))}
                    </ul>
                    {node && (
                      <Link size="1" href={`#`} onClick={(ev) => { ev.preventDefault(); document.querySelector(`[data-node="${CSS.escape(n.nodeId)}"]`)?.scrollIntoView({ behavior: "smooth", block: "center" }); }}>
                        Show in form
                      </Link>
                    )}
                  </Box>
                );
              })}
            </Flex>
          </section>
        </Card>
      )}
    </Flex>
  );
}
