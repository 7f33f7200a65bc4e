import { describe, expect, it } from "vitest";
import type { Output } from "../api/types";
import { kindOf } from "./Outputs";

const out = (o: Partial<Output>): Output => ({ id: "asset_1", node_id: "3", name: "x", type: "file", content_type: "application/octet-stream", size_bytes: 1, url: "/x", ...o }) as Output;

describe("output kinds", () => {
  it("plays video and audio outputs, as the runner reports them", () => {
    // VideoHelperSuite's `gifs` MP4 and core SaveVideo: type video.
    expect(kindOf(out({ name: "vhs_00001.mp4", type: "video", content_type: "video/mp4" }))).toBe("video");
    // core SaveAudio: type audio (FLAC on ComfyUI, WAV on the simulator).
    expect(kindOf(out({ name: "clip_00001_.wav", type: "audio", content_type: "audio/wav" }))).toBe("audio");
    expect(kindOf(out({ name: "clip_00001_.flac", type: "audio", content_type: "audio/flac" }))).toBe("audio");
    // A custom node's file under an unknown key still plays by its content type.
    expect(kindOf(out({ name: "x.webm", type: "file", content_type: "video/webm" }))).toBe("video");
    expect(kindOf(out({ name: "x.mp3", type: "file", content_type: "audio/mpeg" }))).toBe("audio");
    // VHS's default format is a GIF, typed video: an <img> plays it, a <video> cannot.
    expect(kindOf(out({ name: "vhs_00001.gif", type: "video", content_type: "image/gif" }))).toBe("image");
    // A latent is never rendered, whatever its type says.
    expect(kindOf(out({ name: "l.latent", type: "latent", content_type: "video/mp4" }))).toBe("file");
  });
});
