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
  it("says what ComfyUI's details say when its message only repeats the type", () => {
    const n = normaliseNodeErrors({
      node_errors: {
        "4": {
          class_type: "CheckpointLoaderSimple",
          errors: [
            { type: "value_not_in_list", message: "Value not in list", details: "ckpt_name: 'x.safetensors' not in ['a.safetensors']", extra_info: { input_name: "ckpt_name" } },
            { type: "value_bigger_than_max", message: "Value 99999 bigger than max of 16384", details: "height", extra_info: { input_name: "height" } },
          ],
        },
      },
    });
    expect(describeItem(n[0].items[0])).toBe("value not in list: ckpt_name: 'x.safetensors' not in ['a.safetensors']");
    expect(describeItem(n[0].items[1])).toBe("value bigger than max: Value 99999 bigger than max of 16384");
  });
  it("ignores missing details", () => {
    expect(normaliseNodeErrors(null)).toEqual([]);
    expect(normaliseNodeErrors({})).toEqual([]);
  });
});
