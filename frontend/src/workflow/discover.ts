// Finds the inputs of an API-format workflow that are worth editing, and writes edits back.
import type { ApiWorkflow } from "./detect";

export type FieldKind = "text" | "seed" | "int" | "float" | "color" | "image" | "choice" | "string" | "boolean";

export interface AssetRef {
  __type: "core/ASSET";
  info: { id: string; hash?: string; file_path?: string };
}

export interface Field {
  /** `${nodeId}.${input}` */
  key: string;
  nodeId: string;
  input: string;
  classType: string;
  /** The node's `_meta.title` when it has one, else its class. */
  nodeTitle: string;
  kind: FieldKind;
  label: string;
  value: unknown;
  /** Shown by default; the rest are behind "all inputs". */
  primary: boolean;
  min?: number;
  max?: number;
  step?: number;
  options?: string[];
  multiline?: boolean;
}

export interface NodeGroup {
  nodeId: string;
  classType: string;
  title: string;
  fields: Field[];
}

export const SAMPLERS = [
  "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
  "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
  "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
  "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
  "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc", "uni_pc_bh2",
];
export const SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"];

export const MAX_SEED = Number.MAX_SAFE_INTEGER;

const TEXT_INPUTS = new Set(["text", "text_g", "text_l", "prompt", "positive", "negative", "clip_l", "t5xxl", "system_prompt"]);
const SEED_INPUTS = new Set(["seed", "noise_seed"]);

export function isLink(v: unknown): boolean {
  return Array.isArray(v) && v.length === 2 && (typeof v[0] === "string" || typeof v[0] === "number") && typeof v[1] === "number";
}

export function isAssetRef(v: unknown): v is AssetRef {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return o.__type === "core/ASSET" && typeof o.info === "object" && o.info !== null && typeof (o.info as Record<string, unknown>).id === "string";
}

export function assetRef(id: string, filePath?: string): AssetRef {
  return { __type: "core/ASSET", info: filePath ? { id, file_path: filePath } : { id } };
}

function isImageLoader(classType: string): boolean {
  return /^LoadImage/i.test(classType) || /LoadImage$/i.test(classType);
}

function humanise(name: string): string {
  const s = name.replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function compareIds(a: string, b: string): number {
  const na = Number(a);
  const nb = Number(b);
  if (Number.isFinite(na) && Number.isFinite(nb)) return na - nb;
  return a.localeCompare(b, undefined, { numeric: true });
}

function classify(classType: string, input: string, value: unknown, title: string | undefined): Omit<Field, "key" | "nodeId" | "input" | "classType" | "nodeTitle" | "value"> | null {
  if (isLink(value)) return null;
  const name = input.toLowerCase();

  if (name === "image" && isImageLoader(classType) && (typeof value === "string" || isAssetRef(value))) {
    return { kind: "image", label: title ?? "Image", primary: true };
  }
  if (TEXT_INPUTS.has(name) && typeof value === "string") {
    const label = title ?? (name === "negative" ? "Negative prompt" : name === "text" ? "Prompt" : humanise(input));
    return { kind: "text", label, primary: true, multiline: true };
  }
  if (typeof value === "number") {
    if (SEED_INPUTS.has(name)) return { kind: "seed", label: humanise(input), primary: true, min: 0, max: MAX_SEED, step: 1 };
    if (name === "steps") return { kind: "int", label: "Steps", primary: true, min: 1, max: 10000, step: 1 };
    if (name === "cfg") return { kind: "float", label: "CFG", primary: true, min: 0, max: 100, step: 0.1 };
    if (name === "denoise") return { kind: "float", label: "Denoise", primary: true, min: 0, max: 1, step: 0.01 };
    if (name === "width" || name === "height") {
      const latent = /latent/i.test(classType);
      return { kind: "int", label: humanise(input), primary: true, min: latent ? 16 : 1, max: 16384, step: latent ? 8 : 1 };
    }
    if (name === "batch_size") return { kind: "int", label: "Batch size", primary: true, min: 1, max: 4096, step: 1 };
    if (name === "color" && Number.isInteger(value) && value >= 0 && value <= 0xffffff) {
      return { kind: "color", label: "Colour", primary: true, min: 0, max: 0xffffff };
    }
    return Number.isInteger(value)
      ? { kind: "int", label: humanise(input), primary: false, step: 1 }
      : { kind: "float", label: humanise(input), primary: false, step: 0.01 };
  }
  if (typeof value === "string") {
    if (name === "sampler_name") return { kind: "choice", label: "Sampler", primary: true, options: withValue(SAMPLERS, value) };
    if (name === "scheduler") return { kind: "choice", label: "Scheduler", primary: true, options: withValue(SCHEDULERS, value) };
    return { kind: "string", label: humanise(input), primary: false, multiline: value.length > 80 || value.includes("\n") };
  }
  if (typeof value === "boolean") return { kind: "boolean", label: humanise(input), primary: false };
  return null;
}

function withValue(list: string[], value: string): string[] {
  return list.includes(value) ? list : [value, ...list];
}

/** Every editable literal input, grouped by node, in node-id order. */
export function discoverInputs(workflow: ApiWorkflow): NodeGroup[] {
  const groups: NodeGroup[] = [];
  for (const nodeId of Object.keys(workflow).sort(compareIds)) {
    const node = workflow[nodeId];
    const title = typeof node._meta?.title === "string" && node._meta.title.trim() ? node._meta.title.trim() : undefined;
    const fields: Field[] = [];
    for (const [input, value] of Object.entries(node.inputs ?? {})) {
      const c = classify(node.class_type, input, value, title);
      if (!c) continue;
      fields.push({ key: `${nodeId}.${input}`, nodeId, input, classType: node.class_type, nodeTitle: title ?? node.class_type, value, ...c });
    }
    if (fields.length > 0) groups.push({ nodeId, classType: node.class_type, title: title ?? node.class_type, fields });
  }
  return groups;
}

/** Returns a copy of the workflow with one input set (the original is not changed). */
export function setInput(workflow: ApiWorkflow, nodeId: string, input: string, value: unknown): ApiWorkflow {
  const node = workflow[nodeId];
  if (!node) throw new Error(`No node ${nodeId} in the workflow`);
  return { ...workflow, [nodeId]: { ...node, inputs: { ...node.inputs, [input]: value } } };
}

/** Image loaders whose `image` is still a plain filename rather than an uploaded asset. */
export function imageInputsNeedingUpload(workflow: ApiWorkflow): Field[] {
  return discoverInputs(workflow)
    .flatMap((g) => g.fields)
    .filter((f) => f.kind === "image" && !isAssetRef(f.value));
}

export function intToHex(n: number): string {
  return "#" + (Math.max(0, Math.min(0xffffff, Math.trunc(n))) >>> 0).toString(16).padStart(6, "0");
}

export function hexToInt(hex: string): number | null {
  const m = /^#?([0-9a-f]{6}|[0-9a-f]{3})$/i.exec(hex.trim());
  if (!m) return null;
  let h = m[1];
  if (h.length === 3) h = h.split("").map((c) => c + c).join("");
  return parseInt(h, 16);
}

/** A random seed in [0, MAX_SEED]. */
export function randomSeed(rand: () => number = secureRandom): number {
  return Math.floor(rand() * (MAX_SEED + 1));
}

function secureRandom(): number {
  const a = new Uint32Array(2);
  crypto.getRandomValues(a);
  // 53 random bits → [0, 1)
  return (a[0] * 2 ** 21 + (a[1] >>> 11)) / 2 ** 53;
}
