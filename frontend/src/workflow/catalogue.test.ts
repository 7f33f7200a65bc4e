import { describe, expect, it } from "vitest";
import { comboOptions, type Catalogue } from "./catalogue";

const catalogue: Catalogue = {
  CheckpointLoaderSimple: { input: { required: { ckpt_name: [["a.safetensors", "b.safetensors"], { tooltip: "x" }] } } },
  LoraLoader: { input: { required: { lora_name: ["COMBO", { options: ["l1.safetensors"] }], strength_model: ["FLOAT", { min: -100 }] } } },
  LoadImage: { input: { required: { image: [["server.png"], { image_upload: true }] } } },
  KSampler: { input: { optional: { sampler_name: [["euler", "ddim"], {}] } } },
};

describe("combo options from the node catalogue", () => {
  it("lists a combo's values, in both spellings", () => {
    expect(comboOptions(catalogue, "CheckpointLoaderSimple", "ckpt_name")).toEqual(["a.safetensors", "b.safetensors"]);
    expect(comboOptions(catalogue, "LoraLoader", "lora_name")).toEqual(["l1.safetensors"]);
    expect(comboOptions(catalogue, "KSampler", "sampler_name")).toEqual(["euler", "ddim"]);
  });
  it("offers nothing for numbers, uploads, unknown classes or no catalogue", () => {
    expect(comboOptions(catalogue, "LoraLoader", "strength_model")).toBeUndefined();
    expect(comboOptions(catalogue, "LoadImage", "image")).toBeUndefined();
    expect(comboOptions(catalogue, "Nope", "ckpt_name")).toBeUndefined();
    expect(comboOptions(null, "CheckpointLoaderSimple", "ckpt_name")).toBeUndefined();
  });
});
