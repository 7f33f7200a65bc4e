// The node catalogue (our `GET /api/v2/x-serverless-comfyui/catalogue`: a ComfyUI's
// `/object_info`) read for the form: the values a combo input accepts, such as the model
// files the runners have installed, so a text field can offer them.

export type Catalogue = Record<string, { input?: Record<string, Record<string, unknown>> } | undefined>;

/** At most this many suggestions per field: a browser's datalist slows beyond it. */
export const MAX_SUGGESTIONS = 5000;

/**
 * The values the catalogue lists for `classType`'s `input`, or undefined when it is not a
 * combo (or the catalogue does not know it). Both spellings: `[[...values], {...}]` and the
 * newer `["COMBO", {options: [...]}]`. Inputs that take an upload (`image_upload`) list the
 * server's files, which a job never uses: none for them.
 */
export function comboOptions(catalogue: Catalogue | null | undefined, classType: string, input: string): string[] | undefined {
  const spec = catalogue?.[classType]?.input;
  if (!spec || typeof spec !== "object") return undefined;
  for (const group of ["required", "optional"]) {
    const def = spec[group]?.[input];
    if (!Array.isArray(def)) continue;
    const [type, opts] = def as [unknown, Record<string, unknown> | undefined];
    if (opts && Object.keys(opts).some((k) => k.endsWith("_upload") || k === "upload")) return undefined;
    const list = Array.isArray(type) ? type : type === "COMBO" && Array.isArray(opts?.options) ? (opts!.options as unknown[]) : undefined;
    if (!list) return undefined;
    return list.filter((v): v is string => typeof v === "string").slice(0, MAX_SUGGESTIONS);
  }
  return undefined;
}
