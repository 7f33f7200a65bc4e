import { describe, expect, it } from "vitest";
import {
  assetRef,
  discoverInputs,
  hexToInt,
  imageInputsNeedingUpload,
  intToHex,
  MAX_SEED,
  randomSeed,
  setInput,
  type Field,
} from "./discover";
import type { ApiWorkflow } from "./detect";

const txt2img: ApiWorkflow = {
  "3": { class_type: "KSampler", inputs: { seed: 156680208700286, steps: 20, cfg: 8, sampler_name: "euler", scheduler: "normal", denoise: 1, model: ["4", 0], positive: ["6", 0], negative: ["7", 0], latent_image: ["5", 0] } },
  "4": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "v1-5-pruned-emaonly.safetensors" } },
  "5": { class_type: "EmptyLatentImage", inputs: { width: 512, height: 512, batch_size: 1 } },
  "6": { class_type: "CLIPTextEncode", inputs: { text: "a watercolor lighthouse", clip: ["4", 1] }, _meta: { title: "Positive prompt" } },
  "7": { class_type: "CLIPTextEncode", inputs: { text: "blurry", clip: ["4", 1] }, _meta: { title: "Negative prompt" } },
  "8": { class_type: "VAEDecode", inputs: { samples: ["3", 0], vae: ["4", 2] } },
  "9": { class_type: "SaveImage", inputs: { filename_prefix: "ComfyUI", images: ["8", 0] } },
  "10": { class_type: "ImageBlur", inputs: { image: ["8", 0], blur_radius: 3, sigma: 1.5 } },
};

const byKey = (groups: ReturnType<typeof discoverInputs>) =>
  Object.fromEntries(groups.flatMap((g) => g.fields).map((f) => [f.key, f])) as Record<string, Field>;

describe("input discovery", () => {
  it("finds prompts, seed, steps, cfg, sampler, size and batch", () => {
    const f = byKey(discoverInputs(txt2img));
    expect(f["6.text"]).toMatchObject({ kind: "text", label: "Positive prompt", primary: true, value: "a watercolor lighthouse" });
    expect(f["7.text"]).toMatchObject({ kind: "text", label: "Negative prompt" });
    expect(f["3.seed"]).toMatchObject({ kind: "seed", primary: true });
    expect(f["3.steps"]).toMatchObject({ kind: "int", label: "Steps", value: 20 });
    expect(f["3.cfg"]).toMatchObject({ kind: "float", label: "CFG", value: 8 });
    expect(f["3.denoise"]).toMatchObject({ kind: "float", max: 1 });
    expect(f["3.sampler_name"]).toMatchObject({ kind: "choice" });
    expect(f["3.sampler_name"].options).toContain("euler");
    expect(f["3.scheduler"].options).toContain("normal");
    expect(f["5.width"]).toMatchObject({ kind: "int", step: 8, primary: true });
    expect(f["5.height"]).toMatchObject({ kind: "int", step: 8 });
    expect(f["5.batch_size"]).toMatchObject({ kind: "int", primary: true });
  });

  it("skips links and marks other literals as secondary", () => {
    const f = byKey(discoverInputs(txt2img));
    expect(f["3.model"]).toBeUndefined();
    expect(f["6.clip"]).toBeUndefined();
    expect(f["8.samples"]).toBeUndefined();
    expect(f["4.ckpt_name"]).toMatchObject({ kind: "string", primary: false });
    expect(f["10.blur_radius"]).toMatchObject({ kind: "int", primary: false });
    expect(f["10.sigma"]).toMatchObject({ kind: "float", primary: false });
  });

  it("orders nodes numerically and titles groups", () => {
    const groups = discoverInputs(txt2img);
    expect(groups.map((g) => g.nodeId)).toEqual(["3", "4", "5", "6", "7", "9", "10"]);
    expect(groups.find((g) => g.nodeId === "6")?.title).toBe("Positive prompt");
    expect(groups.find((g) => g.nodeId === "3")?.title).toBe("KSampler");
  });

  it("finds EmptyImage's colour and non-latent sizes", () => {
    const f = byKey(discoverInputs({ "1": { class_type: "EmptyImage", inputs: { width: 64, height: 64, batch_size: 1, color: 16711680 } } }));
    expect(f["1.color"]).toMatchObject({ kind: "color", value: 16711680 });
    expect(f["1.width"]).toMatchObject({ step: 1 });
  });

  it("finds LoadImage inputs, as filenames or asset references", () => {
    const wf: ApiWorkflow = {
      "10": { class_type: "LoadImage", inputs: { image: "photo.png" }, _meta: { title: "Input photo" } },
      "11": { class_type: "LoadImageMask", inputs: { image: assetRef("asset_1"), channel: "alpha" } },
    };
    const f = byKey(discoverInputs(wf));
    expect(f["10.image"]).toMatchObject({ kind: "image", label: "Input photo", primary: true });
    expect(f["11.image"]).toMatchObject({ kind: "image" });
    expect(imageInputsNeedingUpload(wf).map((x) => x.key)).toEqual(["10.image"]);
  });

  it("writes an edit into a copy of the workflow", () => {
    const next = setInput(txt2img, "3", "steps", 30);
    expect(next["3"].inputs.steps).toBe(30);
    expect(txt2img["3"].inputs.steps).toBe(20);
    expect(next["4"]).toBe(txt2img["4"]);
    const withAsset = setInput(txt2img, "4", "ckpt_name", assetRef("asset_9", "x.safetensors"));
    expect(withAsset["4"].inputs.ckpt_name).toEqual({ __type: "core/ASSET", info: { id: "asset_9", file_path: "x.safetensors" } });
    expect(() => setInput(txt2img, "99", "x", 1)).toThrow();
  });

  it("converts colours", () => {
    expect(intToHex(16711680)).toBe("#ff0000");
    expect(intToHex(0x00ffff)).toBe("#00ffff");
    expect(hexToInt("#ff0808")).toBe(0xff0808);
    expect(hexToInt("0f0")).toBe(0x00ff00);
    expect(hexToInt("red")).toBeNull();
  });

  it("randomises seeds within range", () => {
    expect(randomSeed(() => 0)).toBe(0);
    expect(randomSeed(() => 0.999999999999)).toBeLessThanOrEqual(MAX_SEED);
    const s = randomSeed();
    expect(Number.isSafeInteger(s)).toBe(true);
  });
});
