import { useEffect, useId, useRef, useState } from "react";
import { Badge, Box, Button, Card, Code, Flex, Heading, IconButton, Progress, Select, Switch, Text, TextArea, TextField, Tooltip } from "@radix-ui/themes";
import { CheckCircledIcon, ExclamationTriangleIcon, ImageIcon, ShuffleIcon, UploadIcon } from "@radix-ui/react-icons";
import { hexToInt, intToHex, isAssetRef, randomSeed, type Field, type NodeGroup } from "../workflow/discover";
import { describeItem, type NodeErrors } from "../lib/nodeErrors";
import { formatBytes } from "../lib/format";
import { comboOptions, type Catalogue } from "../workflow/catalogue";

export interface UploadState {
  phase: "hashing" | "uploading" | "done" | "error";
  loaded: number;
  total: number;
  fileName: string;
  previewUrl?: string;
  assetId?: string;
  reused?: boolean;
  error?: string;
}

interface Props {
  groups: NodeGroup[];
  showAll: boolean;
  nodeErrors: NodeErrors[];
  uploads: Record<string, UploadState>;
  /** The node catalogue: a text field whose input is a combo there offers its values. */
  catalogue?: Catalogue | null;
  onChange: (f: Field, value: unknown) => void;
  onPickImage: (f: Field, file: File) => void;
}

export function InputsForm({ groups, showAll, nodeErrors, uploads, catalogue, onChange, onPickImage }: Props) {
  const errorsByNode = new Map(nodeErrors.map((n) => [n.nodeId, n]));
  const visible = groups
    .map((g) => ({ ...g, fields: showAll ? g.fields : g.fields.filter((f) => f.primary) }))
    .filter((g) => g.fields.length > 0 || errorsByNode.has(g.nodeId));
  if (visible.length === 0) {
    return (
      <Text as="p" color="gray" size="2">
        No everyday inputs found in this workflow. Turn on “All inputs” to edit every literal value.
      </Text>
    );
  }
  return (
    <Flex direction="column" gap="3">
      {visible.map((g) => (
        <NodeCard key={g.nodeId} group={g} errors={errorsByNode.get(g.nodeId)} uploads={uploads} catalogue={catalogue} onChange={onChange} onPickImage={onPickImage} />
      ))}
    </Flex>
  );
}

function NodeCard({ group, errors, uploads, catalogue, onChange, onPickImage }: { group: NodeGroup; errors?: NodeErrors } & Pick<Props, "uploads" | "catalogue" | "onChange" | "onPickImage">) {
  const headingId = useId();
  const fieldErrors = new Map<string, string[]>();
  const nodeLevel: string[] = [];
  for (const i of errors?.items ?? []) {
    if (i.field && group.fields.some((f) => f.input === i.field)) fieldErrors.set(i.field, [...(fieldErrors.get(i.field) ?? []), describeItem(i)]);
    else nodeLevel.push(i.field ? `${i.field}: ${describeItem(i)}` : describeItem(i));
  }
  return (
    <Card size="2" className={errors ? "node-card has-error" : "node-card"} data-node={group.nodeId} aria-labelledby={headingId} asChild>
      <section>
        <Flex justify="between" align="center" gap="2" mb="3" wrap="wrap">
          <Heading as="h3" size="3" id={headingId}>
            {group.title}
          </Heading>
          <Flex gap="2" align="center">
            {group.title !== group.classType && (
              <Text size="1" color="gray">
                {group.classType}
              </Text>
            )}
            <Badge variant="surface" color="gray" radius="full" size="1">
              #{group.nodeId}
            </Badge>
          </Flex>
        </Flex>
        {nodeLevel.length > 0 && (
          <Flex gap="2" mb="3" className="field-error" role="alert">
            <ExclamationTriangleIcon />
            <Text size="2">{nodeLevel.join("; ")}</Text>
          </Flex>
        )}
        <div className="field-grid">
          {group.fields.map((f) => (
            <FieldControl key={f.key} field={f} errors={fieldErrors.get(f.input)} upload={uploads[f.key]} suggestions={comboOptions(catalogue, f.classType, f.input)} onChange={onChange} onPickImage={onPickImage} />
          ))}
        </div>
      </section>
    </Card>
  );
}

function FieldControl({ field, errors, upload, suggestions, onChange, onPickImage }: { field: Field; errors?: string[]; upload?: UploadState; suggestions?: string[] } & Pick<Props, "onChange" | "onPickImage">) {
  const id = `f-${field.nodeId}-${field.input}`.replace(/[^\w-]/g, "_");
  const errId = `${id}-err`;
  const wide = field.kind === "text" || field.kind === "image" || (field.kind === "string" && field.multiline);
  const label = (
    <Text as="label" htmlFor={id} size="2" weight="medium">
      {field.label}
      {field.label.toLowerCase() !== field.input.replace(/_/g, " ") && (
        <Text size="1" color="gray" weight="regular">
          {" "}
          · {field.input}
        </Text>
      )}
    </Text>
  );
  const describedBy = errors ? errId : undefined;
  let control: React.ReactNode;
  switch (field.kind) {
    case "text":
      control = (
        <TextArea id={id} size="2" rows={field.input === "negative" || /negative/i.test(field.label) ? 2 : 4} value={String(field.value ?? "")} onChange={(e) => onChange(field, e.target.value)} aria-describedby={describedBy} aria-invalid={!!errors} resize="vertical" />
      );
      break;
    case "string":
      control = field.multiline ? (
        <TextArea id={id} value={String(field.value ?? "")} onChange={(e) => onChange(field, e.target.value)} aria-describedby={describedBy} aria-invalid={!!errors} />
      ) : (
        <>
          <TextField.Root id={id} value={String(field.value ?? "")} onChange={(e) => onChange(field, e.target.value)} aria-describedby={describedBy} aria-invalid={!!errors} spellCheck={false} list={suggestions ? `${id}-options` : undefined} />
          {suggestions && (
            // What the server's node catalogue lists for this input (the installed models, say).
            <datalist id={`${id}-options`} data-testid="catalogue-options">
              {suggestions.map((o) => (
                <option key={o} value={o} />
              ))}
            </datalist>
          )}
        </>
      );
      break;
    case "seed":
      control = (
        <Flex gap="2">
          <Box flexGrow="1">
            <NumberInput id={id} field={field} onChange={onChange} describedBy={describedBy} />
          </Box>
          <Tooltip content="Random seed">
            <IconButton type="button" variant="soft" onClick={() => onChange(field, randomSeed())} aria-label={`Randomise ${field.label.toLowerCase()}`}>
              <ShuffleIcon />
            </IconButton>
          </Tooltip>
        </Flex>
      );
      break;
    case "int":
    case "float":
      control = <NumberInput id={id} field={field} onChange={onChange} describedBy={describedBy} />;
      break;
    case "color":
      control = <ColorInput id={id} field={field} onChange={onChange} />;
      break;
    case "choice":
      control = (
        <Select.Root value={String(field.value)} onValueChange={(v) => onChange(field, v)}>
          <Select.Trigger id={id} aria-describedby={describedBy} />
          <Select.Content position="popper">
            {(field.options ?? []).map((o) => (
              <Select.Item key={o} value={o}>
                {o}
              </Select.Item>
            ))}
          </Select.Content>
        </Select.Root>
      );
      break;
    case "boolean":
      control = <Switch id={id} checked={!!field.value} onCheckedChange={(v) => onChange(field, v)} />;
      break;
    case "image":
      control = <ImagePicker id={id} field={field} upload={upload} onPick={(file) => onPickImage(field, file)} />;
      break;
  }
  return (
    <Flex direction="column" gap="1" className={wide ? "field wide" : "field"} data-field={field.key}>
      {label}
      {control}
      {errors && (
        <Text id={errId} size="1" color="red" className="field-error" role="alert">
          {errors.join("; ")}
        </Text>
      )}
    </Flex>
  );
}

function NumberInput({ id, field, onChange, describedBy }: { id: string; field: Field; onChange: Props["onChange"]; describedBy?: string }) {
  const [draft, setDraft] = useState(String(field.value ?? ""));
  const last = useRef(field.value);
  useEffect(() => {
    if (field.value !== last.current) {
      last.current = field.value;
      setDraft(String(field.value ?? ""));
    }
  }, [field.value]);
  const n = Number(draft);
  const invalid =
    draft.trim() === "" ||
    !Number.isFinite(n) ||
    (field.kind !== "float" && !Number.isInteger(n)) ||
    (field.min !== undefined && n < field.min) ||
    (field.max !== undefined && n > field.max);
  return (
    <TextField.Root
      id={id}
      type="number"
      inputMode={field.kind === "float" ? "decimal" : "numeric"}
      value={draft}
      min={field.min}
      max={field.max}
      step={field.kind === "float" ? "any" : field.step}
      aria-describedby={describedBy}
      aria-invalid={invalid || undefined}
      color={invalid ? "red" : undefined}
      onChange={(e) => {
        const v = e.target.value;
        setDraft(v);
        const num = Number(v);
        if (v.trim() !== "" && Number.isFinite(num)) {
          last.current = num;
          onChange(field, num);
        }
      }}
    />
  );
}

function ColorInput({ id, field, onChange }: { id: string; field: Field; onChange: Props["onChange"] }) {
  const hex = intToHex(Number(field.value ?? 0));
  const [draft, setDraft] = useState(hex);
  useEffect(() => setDraft(hex), [hex]);
  return (
    <Flex gap="2" align="center">
      <input
        type="color"
        className="color-swatch"
        value={hex}
        aria-label={`${field.label} picker`}
        onChange={(e) => {
          const v = hexToInt(e.target.value);
          if (v !== null) onChange(field, v);
        }}
      />
      <Box flexGrow="1">
        <TextField.Root
          id={id}
          value={draft}
          spellCheck={false}
          aria-label={`${field.label} (hex)`}
          onChange={(e) => {
            setDraft(e.target.value);
            const v = hexToInt(e.target.value);
            if (v !== null) onChange(field, v);
          }}
        >
          <TextField.Slot side="right">
            <Text size="1" color="gray">
              {Number(field.value ?? 0)}
            </Text>
          </TextField.Slot>
        </TextField.Root>
      </Box>
    </Flex>
  );
}

function ImagePicker({ id, field, upload, onPick }: { id: string; field: Field; upload?: UploadState; onPick: (f: File) => void }) {
  const input = useRef<HTMLInputElement>(null);
  const [over, setOver] = useState(false);
  const current = field.value;
  const asset = isAssetRef(current) ? current.info.id : null;
  const pct = upload && upload.total > 0 ? Math.round((upload.loaded / upload.total) * 100) : 0;
  return (
    <div
      className={over ? "image-picker over" : "image-picker"}
      onDragOver={(e) => {
        if (e.dataTransfer.types.includes("Files")) {
          e.preventDefault();
          setOver(true);
        }
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        e.stopPropagation();
        setOver(false);
        const f = e.dataTransfer.files?.[0];
        if (f) onPick(f);
      }}
    >
      <Flex gap="3" align="center">
        <div className="thumb" aria-hidden>
          {upload?.previewUrl ? <img src={upload.previewUrl} alt="" /> : <ImageIcon width="24" height="24" />}
        </div>
        <Flex direction="column" gap="1" flexGrow="1" minWidth="0">
          <Text size="2" truncate>
            {upload?.fileName ?? (asset ? "Uploaded image" : typeof current === "string" ? current : "No image")}
          </Text>
          {asset ? (
            <Text size="1" color="green" className="asset-ok">
              <CheckCircledIcon /> {upload?.reused ? "Already on the server, reused" : "Uploaded"} · <Code variant="ghost">{asset}</Code>
            </Text>
          ) : upload?.phase === "error" ? (
            <Text size="1" color="red" role="alert">
              {upload.error}
            </Text>
          ) : upload && upload.phase !== "done" ? null : (
            <Text size="1" color="amber">
              Not uploaded yet: choose an image so the job can use it.
            </Text>
          )}
          {upload && (upload.phase === "uploading" || upload.phase === "hashing") && (
            <Flex direction="column" gap="1">
              <Progress value={upload.phase === "hashing" ? undefined : pct} aria-label={`Uploading ${upload.fileName}`} size="1" />
              <Text size="1" color="gray">
                {upload.phase === "hashing" ? "Checking…" : `${pct}% of ${formatBytes(upload.total)}`}
              </Text>
            </Flex>
          )}
        </Flex>
        <input
          ref={input}
          id={id}
          type="file"
          accept="image/*"
          className="visually-hidden-input"
          aria-label={`Choose image for ${field.label}`}
          onChange={(e) => {
            const f = e.target.files?.[0];
            if (f) onPick(f);
            e.target.value = "";
          }}
        />
        <Button type="button" variant="soft" onClick={() => input.current?.click()}>
          <UploadIcon /> {asset ? "Replace" : "Choose"}
        </Button>
      </Flex>
    </div>
  );
}

