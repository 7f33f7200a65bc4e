// The web app bundles its own copies of the example workflows (the app must build from
// `frontend/` alone, as Vercel does). The repository's one home for them is
// `examples/workflows/`; this keeps the copies from drifting.
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync } from "node:fs";

const bundled = new URL("./", import.meta.url);
const canonical = new URL("../../../examples/workflows/", import.meta.url);

describe("bundled example workflows", () => {
  const names = readdirSync(bundled).filter((n) => n.endsWith(".json"));

  it("bundles at least the invert example", () => {
    expect(names).toContain("invert.json");
  });

  it.each(names)("%s is byte-identical to examples/workflows/", (name) => {
    expect(readFileSync(new URL(name, bundled), "utf8")).toBe(readFileSync(new URL(name, canonical), "utf8"));
  });
});
