// Normalises per-node validation errors from a 422 `invalid_workflow` envelope. The v2 shape is
// `details.node_errors: {node_id: [{field, reason, ...}]}`; ComfyUI's own shape
// (`{node_id: {errors: [{type, message, details, extra_info: {input_name}}], class_type}}`) is
// accepted too, so a proxy passing it through still reads well.

export interface NodeErrorItem {
  field?: string;
  reason?: string;
  message?: string;
}
export interface NodeErrors {
  nodeId: string;
  classType?: string;
  items: NodeErrorItem[];
}

function str(v: unknown): string | undefined {
  return typeof v === "string" && v ? v : undefined;
}

function item(v: unknown): NodeErrorItem {
  if (typeof v === "string") return { message: v };
  if (typeof v !== "object" || v === null) return {};
  const o = v as Record<string, unknown>;
  const extra = (o.extra_info ?? {}) as Record<string, unknown>;
  const field = str(o.field) ?? str(o.input) ?? str(o.input_name) ?? str(extra.input_name);
  const type = str(o.type);
  let message = str(o.message) ?? str(o.details);
  // ComfyUI's message can only repeat its type ("Value not in list"); its details then say
  // what was wrong ("ckpt_name: 'x.safetensors' not in [...]"), unless they only name the input.
  const details = str(o.details);
  if (type && details && details !== field && message?.toLowerCase() === type.replace(/_/g, " ").toLowerCase()) message = details;
  return { field, reason: str(o.reason) ?? type ?? str(o.code), message };
}

export function normaliseNodeErrors(details: Record<string, unknown> | null | undefined): NodeErrors[] {
  const raw = details?.node_errors;
  if (!raw || typeof raw !== "object") return [];
  const out: NodeErrors[] = [];
  for (const [nodeId, v] of Object.entries(raw as Record<string, unknown>)) {
    if (Array.isArray(v)) out.push({ nodeId, items: v.map(item) });
    else if (v && typeof v === "object") {
      const o = v as Record<string, unknown>;
      const errs = Array.isArray(o.errors) ? o.errors.map(item) : [item(o)];
      out.push({ nodeId, classType: str(o.class_type), items: errs });
    } else if (typeof v === "string") out.push({ nodeId, items: [{ message: v }] });
  }
  return out.sort((a, b) => a.nodeId.localeCompare(b.nodeId, undefined, { numeric: true }));
}

export function describeItem(i: NodeErrorItem): string {
  const parts: string[] = [];
  if (i.reason) parts.push(i.reason.replace(/_/g, " "));
  if (i.message && i.message !== i.reason) parts.push(i.message);
  return parts.join(": ") || "invalid";
}
