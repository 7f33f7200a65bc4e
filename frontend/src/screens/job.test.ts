import { describe, expect, it } from "vitest";
import type { Job } from "../api/types";
import { coldWorkerMessage, metricLabel, metricValue, progressLabel } from "./JobScreen";
import { applyEvent } from "../lib/useJobLive";

const base: Job = { id: "job_1", status: "queued", created_at: "2025-01-01T00:00:00Z", outputs: [] };

describe("job view logic", () => {
  it("labels progress like ComfyUI: class step/steps", () => {
    expect(progressLabel({ ...base, status: "running", progress: { value: 0.5, nodes_done: 1, nodes_total: 3, current_node_class: "KSampler", step: 12, steps: 20 } })).toBe("KSampler 12/20");
    expect(progressLabel({ ...base, status: "running", progress: { value: 0.5, nodes_done: 1, nodes_total: 3 } })).toBe("Node 1/3");
    expect(progressLabel({ ...base, progress: { value: 0, nodes_done: 0, nodes_total: 3, message: "waiting for GPU capacity: VcpuLimitExceeded" } })).toMatch(/VcpuLimitExceeded/);
  });

  it("says honestly why a queued job waits", () => {
    const cap = coldWorkerMessage({ ...base, progress: { value: 0, nodes_done: 0, nodes_total: 1, message: "waiting for GPU capacity: VcpuLimitExceeded" } }, null);
    expect(cap.title).toBe("Waiting for GPU capacity");
    expect(cap.body).toContain("VcpuLimitExceeded");
    const cold = coldWorkerMessage(base, { workers: { busy: 0, idle: 0, starting: 1, max: 2 }, comfyui: { mode: "real" } });
    expect(cold.title).toBe("A GPU worker is starting");
    expect(cold.body).toMatch(/5–12 minutes/);
    const queuedNews = coldWorkerMessage({ ...base, progress: { value: 0, nodes_done: 0, nodes_total: 1, message: "queued behind 1 job(s)" } }, { workers: { busy: 1, idle: 0, max: 1 } });
    expect(queuedNews.title).toBe("All workers are busy");
    expect(coldWorkerMessage(base, { comfyui: { mode: "none", message: "no runner yet" } }).title).toMatch(/no ComfyUI runner/);
  });

  it("applies SSE events to the snapshot", () => {
    let j = applyEvent(base, { event: "status", data: '{"status":"running","queue_position":null}' }).job;
    expect(j.status).toBe("running");
    j = applyEvent(j, { event: "progress", data: '{"value":0.25,"nodes_done":1,"nodes_total":4}' }).job;
    expect(j.progress?.value).toBe(0.25);
    const out = '{"id":"asset_1","node_id":"3","name":"a.png","type":"image","content_type":"image/png","size_bytes":1,"url":"/x"}';
    j = applyEvent(j, { event: "output", data: out }).job;
    j = applyEvent(j, { event: "output", data: out }).job;
    expect(j.outputs).toHaveLength(1);
    expect(applyEvent(j, { event: "log", data: '{"level":"info","message":"hi"}' }).log?.message).toBe("hi");
    expect(applyEvent(j, { event: "preview", data: '{"node_id":"3","content_type":"image/jpeg","data_base64":"AA=="}' }).preview).toBe("data:image/jpeg;base64,AA==");
    expect(applyEvent(j, { event: "status", data: "not json" }).job).toBe(j);
  });

  it("shows GPU time and the estimated cost", () => {
    expect(metricLabel("gpu_ms")).toBe("GPU time");
    expect(metricLabel("cost_micro_usd")).toBe("Estimated cost");
    expect(metricValue("gpu_ms", 90500)).toBe("1:30");
    expect(metricValue("gpu_ms", 1250)).toBe("1.3 s");
    expect(metricValue("cost_micro_usd", 30468)).toBe("$0.03");
    expect(metricValue("cost_micro_usd", 404)).toBe("$0.000404");
    expect(metricValue("execution_ms", 1200)).toBe("1.2 s");
  });
});
