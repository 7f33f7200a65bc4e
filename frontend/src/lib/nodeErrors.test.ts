import { describe, expect, it } from "vitest";
import { describeItem, normaliseNodeErrors } from "./nodeErrors";

describe("per-node validation errors", () => {
  it("reads the v2 shape", () => {
    const n = normaliseNodeErrors({ node_errors: { "12": [{ field: "model", reason: "missing_input" }], "3": [{ field: "steps", reason: "value_out_of_range", message: "max 10000" }] } });
    expect(n.map((x) => x.nodeId)).toEqual(["3", "12"]);
    expect(n[1].items[0]).toEqual({ field: "model", reason: "missing_input", message: undefined });
    expect(describeItem(n[0].items[0])).toBe("value out of range: max 10000");
  });
  it("reads ComfyUI's own shape", () => {
    const n = normaliseNodeErrors({
      node_errors: { "2": { class_type: "ImageInvert", errors: [{ type: "required_input_missing", message: "Required input is missing", extra_info: { input_name: "image" } }] } },
    });
    expect(n[0]).toEqual({ nodeId: "2", classType: "ImageInvert", items: [{ field: "image", reason: "required_input_missing", message: "Required input is missing" }] });
  });
  it("ignores missing details", () => {
    expect(normaliseNodeErrors(null)).toEqual([]);
    expect(normaliseNodeErrors({})).toEqual([]);
  });
});
