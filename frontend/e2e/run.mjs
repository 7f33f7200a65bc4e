// End-to-end suite in a real browser: Debian's chromium driven by playwright-core, against a
// running `serverless-comfyui dev` that serves this app (frontend/dist) and the API.
//
//   E2E_BASE_URL   the server (default http://127.0.0.1:8787)
//   E2E_API_KEY    a key, only when the server requires one (never needed for dev on loopback)
//   E2E_ONLY       comma-separated step ids to run (connect is always run)
//   E2E_JOB_TIMEOUT_S   how long a job may take to finish (default 240)
//   E2E_SLOW_STEPS      KSampler steps for the job that is canceled (default 400)
//   E2E_ARTIFACTS  where screenshots go (default frontend/artifacts)
//   E2E_WORKFLOWS  the example workflows (default examples/workflows in the repository)
//   CHROMIUM       the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync, rmSync, writeFileSync, mkdtempSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { samplePhoto } from "./png.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.E2E_BASE_URL || "http://127.0.0.1:8787").replace(/\/+$/, "");
const KEY = process.env.E2E_API_KEY || "";
const ONLY = (process.env.E2E_ONLY || "").split(",").map((s) => s.trim()).filter(Boolean);
const JOB_TIMEOUT = Number(process.env.E2E_JOB_TIMEOUT_S || 240) * 1000;
const SLOW_STEPS = Number(process.env.E2E_SLOW_STEPS || 400);
const ART = resolve(process.env.E2E_ARTIFACTS || join(here, "..", "artifacts"));
const WORKFLOWS = resolve(process.env.E2E_WORKFLOWS || join(here, "..", "..", "examples", "workflows"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const RUN = `r${Date.now().toString(36)}`;
const DESKTOP = { width: 1440, height: 900 };
const PHONE = { width: 390, height: 844 };

mkdirSync(ART, { recursive: true });
const wf = (name) => readFileSync(join(WORKFLOWS, name), "utf8");
const log = (...a) => console.log(...a);

/** @type {{id: string, title: string, status: "passed"|"failed"|"skipped", ms: number, note?: string}[]} */
const results = [];
const state = { jobs: /** @type {string[]} */ ([]) };

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Each browser gets a fresh profile (--user-data-dir, which playwright passes for a persistent context).
const profiles = [mkdtempSync(join(tmpdir(), "scui-e2e-desktop-")), mkdtempSync(join(tmpdir(), "scui-e2e-phone-"))];
const launch = (dir, opts) => chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: ARGS, ...opts });
const desktopCtx = await launch(profiles[0], { viewport: DESKTOP, colorScheme: "light" });
const phoneCtx = await launch(profiles[1], { viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true, colorScheme: "light" });
const page = desktopCtx.pages()[0] ?? (await desktopCtx.newPage());
const phone = phoneCtx.pages()[0] ?? (await phoneCtx.newPage());
const consoleErrors = [];
for (const p of [page, phone]) {
  p.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
    if (KEY && m.text().includes(KEY)) consoleErrors.push("THE API KEY APPEARED IN THE CONSOLE");
  });
  p.on("request", (r) => {
    if (KEY && r.url().includes(KEY)) consoleErrors.push(`THE API KEY APPEARED IN A URL: ${r.url().slice(0, 80)}`);
  });
}

// ---------------------------------------------------------------- helpers
async function shot(p, name) {
  await p.evaluate(() => window.scrollTo(0, 0));
  await p.waitForTimeout(250);
  await p.screenshot({ path: join(ART, `${name}.png`), fullPage: true });
}

/** Screenshots the current desktop screen, then the same route on the phone (after `prep`). */
async function shots(name, prep) {
  await shot(page, `desktop-${name}`);
  const hash = new URL(page.url()).hash;
  await ensureConnected(phone);
  await phone.goto(`${BASE}/${hash}`);
  if (prep) await prep(phone);
  await shot(phone, `phone-${name}`);
}

async function darkShot(name) {
  await page.emulateMedia({ colorScheme: "dark" });
  await shot(page, `desktop-dark-${name}`);
  await page.emulateMedia({ colorScheme: "light" });
}

async function ensureConnected(p) {
  await p.goto(`${BASE}/#/new`);
  const which = await Promise.race([
    p.waitForSelector("#workflow-json", { timeout: 20000 }).then(() => "new"),
    p.waitForSelector("#base-url", { timeout: 20000 }).then(() => "connect"),
  ]);
  if (which === "connect") {
    await p.fill("#base-url", BASE);
    await p.fill("#api-key", KEY);
    await p.getByRole("button", { name: "Connect", exact: true }).click();
    await p.waitForSelector("#workflow-json", { timeout: 20000 });
    return "manual";
  }
  return "auto";
}

async function pasteWorkflow(p, text) {
  await p.goto(`${BASE}/#/new`);
  const area = p.locator("#workflow-json");
  await area.waitFor();
  await area.fill("");
  await area.focus();
  await p.keyboard.insertText(text); // what a paste does: one insertion
}

async function setRunLabel(p) {
  await p.getByLabel("Label 1 key").fill("e2e");
  await p.getByLabel("Label 1 value").fill(RUN);
}

async function submit(p) {
  await p.getByRole("button", { name: "Run workflow" }).click();
  await p.waitForURL(/#\/jobs\//, { timeout: 30000 });
  const view = p.locator('[data-testid="job-view"]');
  await view.waitFor({ timeout: 30000 });
  const id = await view.getAttribute("data-job-id");
  state.jobs.push(id);
  return id;
}

const TERMINAL = ["succeeded", "failed", "canceled", "expired"];

/** Follows the job page until a terminal status; returns what it saw on the way. */
async function watch(p, until = TERMINAL, timeout = JOB_TIMEOUT) {
  const seen = { statuses: new Set(), values: new Set(), labels: new Set(), modes: new Set() };
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await p.evaluate(() => ({
      status: document.querySelector('[data-testid="job-view"]')?.getAttribute("data-status"),
      value: document.querySelector('[data-testid="job-progress"]')?.getAttribute("data-value"),
      label: document.querySelector('[data-testid="progress-label"]')?.textContent,
      mode: document.querySelector('[data-testid="live-mode"]')?.getAttribute("data-mode"),
    }));
    if (s.status) seen.statuses.add(s.status);
    if (s.value) seen.values.add(Number(s.value));
    if (s.label) seen.labels.add(s.label);
    if (s.mode) seen.modes.add(s.mode);
    if (s.status && until.includes(s.status)) return { ...seen, final: s.status };
    if (Date.now() > deadline) throw new Error(`job still ${s.status} after ${timeout / 1000}s (saw ${[...seen.statuses].join(" → ")})`);
    await p.waitForTimeout(200);
  }
}

async function failureText(p) {
  return p.evaluate(() => document.querySelector('[data-testid="failure"]')?.textContent ?? "");
}

/** Centre pixel of the first gallery image, read through a canvas. */
async function centrePixel(p) {
  const img = p.locator("img.output-image").first();
  await img.waitFor({ timeout: 30000 });
  await p.waitForFunction(() => {
    const i = document.querySelector("img.output-image");
    return i && i.complete && i.naturalWidth > 0;
  }, null, { timeout: 30000 });
  return p.evaluate(async () => {
    const i = /** @type {HTMLImageElement} */ (document.querySelector("img.output-image"));
    const c = document.createElement("canvas");
    c.width = i.naturalWidth;
    c.height = i.naturalHeight;
    const ctx = c.getContext("2d");
    try {
      ctx.drawImage(i, 0, 0);
      const d = ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
      return { rgb: [d[0], d[1], d[2]], w: c.width, h: c.height, via: "img" };
    } catch {
      // A cross-origin image taints the canvas: read the same bytes through fetch instead.
      const b = await (await fetch(i.src)).blob();
      const bmp = await createImageBitmap(b);
      c.width = bmp.width;
      c.height = bmp.height;
      ctx.drawImage(bmp, 0, 0);
      const d = ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
      return { rgb: [d[0], d[1], d[2]], w: c.width, h: c.height, via: "fetch" };
    }
  });
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---------------------------------------------------------------- steps
const steps = [
  {
    id: "connect",
    title: "1. connects (automatically on loopback dev) and shows health",
    run: async () => {
      const how = await ensureConnected(page);
      await page.goto(`${BASE}/#/connect`);
      const panel = page.locator('[data-testid="health-panel"]');
      await panel.getByText("Workers").waitFor({ timeout: 20000 });
      const text = await panel.textContent();
      assert(/reachable/.test(text), `health panel does not say reachable: ${text}`);
      await shots("connect");
      await darkShot("connect");
      return `connected ${how}; health: ${text.replace(/\s+/g, " ").slice(0, 160)}`;
    },
  },
  {
    id: "invert",
    title: "2–6. pastes invert.json, edits the colour, submits, watches progress finish, sees a cyan image",
    run: async () => {
      await pasteWorkflow(page, wf("invert.json"));
      await page.locator('[data-testid="format-badge"][data-format="api"]').waitFor();
      const colour = page.locator("#f-1-color");
      await colour.waitFor();
      assert((await colour.inputValue()) === "#ff0000", "the colour field does not show the canvas red");
      await colour.fill("#ff0808");
      const json = await page.locator("#workflow-json").inputValue();
      assert(JSON.parse(json)["1"].inputs.color === 0xff0808, "the colour edit did not reach the workflow");
      await setRunLabel(page);
      await shots("new-job", async (p) => {
        await pasteWorkflow(p, wf("invert.json"));
        await p.locator("#f-1-color").fill("#ff0808");
      });
      await darkShot("new-job");
      const id = await submit(page);
      await shot(page, "desktop-job-just-submitted");
      const seen = await watch(page);
      if (seen.final !== "succeeded") throw new Error(`job ${id} ended ${seen.final}: ${await failureText(page)}`);
      const value = await page.locator('[data-testid="job-progress"]').getAttribute("data-value");
      assert(value === "100", `progress ends at ${value}%`);
      const px = await centrePixel(page);
      const [r, g, b] = px.rgb;
      assert(r <= 6 && Math.abs(g - 247) <= 6 && Math.abs(b - 247) <= 6, `centre pixel is rgb(${r},${g},${b}), not cyan (0,247,247)`);
      await shots("job-succeeded", async (p) => {
        await p.locator("img.output-image").first().waitFor({ timeout: 30000 });
      });
      await darkShot("job-succeeded");
      return `job ${id}: ${[...seen.statuses].join(" → ")}; progress seen ${[...seen.values].sort((a, b) => a - b).join(",")}%; stream ${[...seen.modes].join("/") || "n/a"}; pixel rgb(${r},${g},${b}) ${px.w}×${px.h} via ${px.via}`;
    },
  },
  {
    id: "media",
    title: "7. a VideoHelperSuite MP4 plays in the gallery's <video>, and a SaveAudio file in an <audio>, both seekable",
    run: async () => {
      const notes = [];
      for (const [name, selector] of [["video-vhs.json", "video.output-video"], ["audio.json", "audio.output-audio"]]) {
        await pasteWorkflow(page, wf(name));
        const id = await submit(page);
        const seen = await watch(page);
        if (seen.final !== "succeeded") throw new Error(`job ${id} (${name}) ended ${seen.final}: ${await failureText(page)}`);
        const el = page.locator(selector).first();
        await el.waitFor({ timeout: 30000 });
        // Decoded metadata, then a seek: the browser's Range requests reached the bytes.
        const media = await el.evaluate(
          (m) =>
            new Promise((done) => {
              const report = (error) => done({ error, duration: m.duration, width: m.videoWidth ?? 0, height: m.videoHeight ?? 0, time: m.currentTime });
              const seek = () => {
                m.addEventListener("seeked", () => report(null), { once: true });
                m.currentTime = m.duration / 2;
              };
              m.addEventListener("error", () => report(`media error ${m.error?.code}`), { once: true });
              if (m.readyState >= 1) seek();
              else m.addEventListener("loadedmetadata", seek, { once: true });
              setTimeout(() => report(`timed out at readyState ${m.readyState}`), 20000);
            }),
        );
        assert(!media.error, `${name}: ${media.error}`);
        assert(media.duration > 0 && media.time > 0, `${name}: duration ${media.duration}, position after seek ${media.time}`);
        if (name.startsWith("video")) assert(media.width === 64 && media.height === 48, `video is ${media.width}×${media.height}, not 64×48`);
        notes.push(`${name}: ${media.duration.toFixed(2)} s${media.width ? ` ${media.width}×${media.height}` : ""}, seeked to ${media.time.toFixed(2)} s`);
      }
      await shot(page, "desktop-job-audio");
      return notes.join("; ");
    },
  },
  {
    id: "upload",
    title: "7. runs load-blur.json with an uploaded photo",
    run: async () => {
      await pasteWorkflow(page, wf("load-blur.json"));
      await page.locator('[data-field="10.image"]').waitFor();
      await setRunLabel(page);
      await page.locator("#f-10-image").setInputFiles({ name: "photo.png", mimeType: "image/png", buffer: samplePhoto(320, 240) });
      await page.locator('[data-field="10.image"] .asset-ok, [data-field="10.image"] [role="alert"]').first().waitFor({ timeout: 60000 });
      const alert = page.locator('[data-field="10.image"] [role="alert"]');
      const uploadError = (await alert.count()) > 0 ? await alert.first().textContent() : null;
      if (uploadError) throw new Error(`the upload failed: ${uploadError}`);
      const wfNow = JSON.parse(await page.locator("#workflow-json").inputValue());
      const ref = wfNow["10"].inputs.image;
      assert(ref && ref.__type === "core/ASSET" && /\S/.test(ref.info?.id ?? ""), `node 10 image is not an asset reference: ${JSON.stringify(ref)}`);
      await shots("new-job-upload", async (p) => {
        await pasteWorkflow(p, wf("load-blur.json"));
        await p.locator("#f-10-image").setInputFiles({ name: "photo.png", mimeType: "image/png", buffer: samplePhoto(320, 240) });
        await p.locator('[data-field="10.image"] .asset-ok').waitFor({ timeout: 60000 });
      });
      const id = await submit(page);
      const seen = await watch(page);
      if (seen.final !== "succeeded") throw new Error(`job ${id} ended ${seen.final}: ${await failureText(page)}`);
      const px = await centrePixel(page);
      assert(px.w === 128 && px.h === 96, `output is ${px.w}×${px.h}, expected 128×96`);
      return `asset ${ref.info.id}; job ${id} succeeded, output ${px.w}×${px.h}`;
    },
  },
  {
    id: "cancel",
    title: "8. cancels a slow job",
    run: async () => {
      await pasteWorkflow(page, wf("txt2img-sd15.json"));
      await page.locator("#f-3-steps").fill(String(SLOW_STEPS));
      await setRunLabel(page);
      const id = await submit(page);
      // Cancel once it runs (or, if no worker takes it in time, while it is queued).
      const before = await watch(page, ["running", ...TERMINAL], Math.min(JOB_TIMEOUT, 120000)).catch(() => ({ final: "queued" }));
      assert(!TERMINAL.includes(before.final), `the slow job ended ${before.final} before it could be canceled: ${await failureText(page)}`);
      if (before.final === "running") {
        await page.waitForFunction(() => /\d+\/\d+/.test(document.querySelector('[data-testid="progress-label"]')?.textContent ?? ""), null, { timeout: 30000 }).catch(() => {});
        await shots("job-running");
      } else {
        await shots("job-queued");
      }
      await page.getByRole("button", { name: "Cancel job" }).click();
      const seen = await watch(page, TERMINAL, 120000);
      assert(seen.final === "canceled", `job ${id} ended ${seen.final}, not canceled`);
      await shots("job-canceled");
      return `job ${id}: canceled while ${before.final}; saw ${[...seen.statuses].join(" → ")}`;
    },
  },
  {
    id: "validation",
    title: "9. sees the validation error for ui-format.json (and per-node errors)",
    run: async () => {
      await pasteWorkflow(page, wf("ui-format.json"));
      await page.locator('[data-testid="ui-format-help"]').waitFor();
      await page.getByRole("button", { name: "Submit anyway" }).click();
      const err = page.locator('[data-testid="submit-error"]');
      await err.waitFor({ timeout: 20000 });
      const code = await err.getAttribute("data-code");
      assert(code === "workflow_format_ui", `the server answered ${code}, not workflow_format_ui`);
      await shots("validation-ui-format", async (p) => {
        await pasteWorkflow(p, wf("ui-format.json"));
        await p.getByRole("button", { name: "Submit anyway" }).click();
        await p.locator('[data-testid="submit-error"]').waitFor({ timeout: 20000 });
      });
      // A broken link: the server's invalid_workflow names the node, and the form shows it there.
      const broken = JSON.parse(wf("invert.json"));
      broken["2"].inputs.image = ["99", 0];
      await pasteWorkflow(page, JSON.stringify(broken, null, 2));
      await page.getByRole("button", { name: "Run workflow" }).click();
      await err.waitFor({ timeout: 20000 });
      const code2 = await err.getAttribute("data-code");
      assert(code2 === "invalid_workflow", `a broken link got ${code2}, not invalid_workflow`);
      const nodes = await page.locator("[data-node-error]").evaluateAll((els) => els.map((e) => e.getAttribute("data-node-error")));
      assert(nodes.includes("2"), `no per-node error for node 2 (got ${JSON.stringify(nodes)})`);
      await shot(page, "desktop-validation-node-errors");
      return `ui-format → ${code}; broken link → ${code2} on nodes ${nodes.join(",")}`;
    },
  },
  {
    id: "catalogue",
    title: "9b. offers the installed checkpoints from the node catalogue, and a model not installed is refused before any GPU",
    run: async () => {
      // The runner that ran the earlier jobs published its ComfyUI's /object_info.
      await pasteWorkflow(page, wf("txt2img-sd15.json"));
      await page.getByText("All inputs").click();
      const field = page.locator("#f-4-ckpt_name");
      await field.waitFor();
      await page.waitForFunction(() => document.querySelectorAll("#f-4-ckpt_name-options option").length > 0, null, { timeout: 20000 });
      const offered = await page.locator("#f-4-ckpt_name-options option").evaluateAll((os) => os.map((o) => o.getAttribute("value")));
      assert(offered.includes("v1-5-pruned-emaonly.safetensors"), `the checkpoints offered: ${JSON.stringify(offered)}`);
      await field.fill("not-installed.safetensors");
      await page.getByRole("button", { name: "Run workflow" }).click();
      const err = page.locator('[data-testid="submit-error"]');
      await err.waitFor({ timeout: 20000 });
      const code = await err.getAttribute("data-code");
      assert(code === "invalid_workflow", `a model not installed got ${code}, not invalid_workflow`);
      const nodes = await page.locator("[data-node-error]").evaluateAll((els) => els.map((e) => e.getAttribute("data-node-error")));
      assert(nodes.includes("4"), `no per-node error for node 4 (got ${JSON.stringify(nodes)})`);
      await shot(page, "desktop-catalogue-refusal");
      return `offered ${offered.join(", ")}; not installed → ${code} on nodes ${nodes.join(",")}`;
    },
  },
  {
    id: "history",
    title: "10. pages through the history (label filter, cursor paging, newest first)",
    run: async () => {
      const mine = state.jobs.length;
      assert(mine >= 2, `this run submitted ${mine} jobs; history paging needs at least 2 (run the other steps)`);
      const per = mine >= 3 ? 2 : 1;
      await page.goto(`${BASE}/#/history?label=${encodeURIComponent(`e2e=${RUN}`)}&limit=${per}`);
      const ids = async () => {
        await page.locator('[data-testid="history-list"] [data-job-id]').first().waitFor({ timeout: 20000 });
        return page.locator('[data-testid="history-list"] [data-job-id]').evaluateAll((els) => els.map((e) => e.getAttribute("data-job-id")));
      };
      const p1 = await ids();
      assert(p1.length === per, `page 1 has ${p1.length} jobs, expected ${per}`);
      const newestFirst = [...state.jobs].reverse();
      assert(JSON.stringify(p1) === JSON.stringify(newestFirst.slice(0, per)), `page 1 is not newest first: ${p1} vs ${newestFirst.slice(0, per)}`);
      await shots("history");
      await darkShot("history");
      await page.getByRole("button", { name: "Older" }).click();
      await page.waitForFunction(() => document.querySelector('[data-testid="history-list"]')?.getAttribute("data-page") === "1", null, { timeout: 20000 });
      const p2 = await ids();
      assert(p2.length >= 1 && !p2.some((x) => p1.includes(x)), `page 2 ${p2} overlaps page 1 ${p1}`);
      assert(p2[0] === newestFirst[per], `page 2 starts with ${p2[0]}, expected ${newestFirst[per]}`);
      await page.getByRole("button", { name: "Newer" }).click();
      await page.waitForFunction(() => document.querySelector('[data-testid="history-list"]')?.getAttribute("data-page") === "0", null, { timeout: 20000 });
      const back = await ids();
      assert(JSON.stringify(back) === JSON.stringify(p1), "Newer did not return to page 1");
      const thumbs = await page.locator(".row-thumb img").count();
      await page.goto(`${BASE}/#/history`);
      await page.locator('[data-testid="history-list"]').waitFor({ timeout: 20000 });
      await shots("history-all");
      return `page 1 ${p1.join(", ")}; page 2 ${p2.join(", ")}; ${thumbs} thumbnail(s) on page 1`;
    },
  },
];

// ---------------------------------------------------------------- runner
let connected = false;
for (const s of steps) {
  if (ONLY.length && s.id !== "connect" && !ONLY.includes(s.id)) {
    results.push({ id: s.id, title: s.title, status: "skipped", ms: 0, note: "not selected (E2E_ONLY)" });
    continue;
  }
  if (s.id !== "connect" && !connected) {
    results.push({ id: s.id, title: s.title, status: "skipped", ms: 0, note: "not connected" });
    continue;
  }
  const t0 = Date.now();
  log(`▶ ${s.title}`);
  try {
    const note = await s.run();
    results.push({ id: s.id, title: s.title, status: "passed", ms: Date.now() - t0, note });
    if (s.id === "connect") connected = true;
    log(`  ✓ ${note ?? ""}`);
  } catch (e) {
    const msg = e instanceof Error ? e.message.split("\n")[0] : String(e);
    results.push({ id: s.id, title: s.title, status: "failed", ms: Date.now() - t0, note: msg });
    log(`  ✗ ${msg}`);
    await page.screenshot({ path: join(ART, `FAILED-${s.id}.png`), fullPage: true }).catch(() => {});
  }
}

await desktopCtx.close();
await phoneCtx.close();
for (const d of profiles) rmSync(d, { recursive: true, force: true });

const leaks = consoleErrors.filter((m) => m.startsWith("THE API KEY"));
if (leaks.length) results.push({ id: "no-key-leak", title: "the key never appears in URLs or the console", status: "failed", ms: 0, note: leaks[0] });
writeFileSync(join(ART, "e2e-results.json"), JSON.stringify({ base: BASE, run: RUN, results, consoleErrors: consoleErrors.slice(0, 50) }, null, 2));
const passed = results.filter((r) => r.status === "passed").length;
const failed = results.filter((r) => r.status === "failed").length;
const skipped = results.filter((r) => r.status === "skipped").length;
log("");
for (const r of results) log(`${r.status === "passed" ? "PASS" : r.status === "failed" ? "FAIL" : "SKIP"}  ${r.id.padEnd(10)} ${(r.ms / 1000).toFixed(1).padStart(6)}s  ${r.note ?? ""}`);
log(`screenshots: ${ART}`);
log(`e2e: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
