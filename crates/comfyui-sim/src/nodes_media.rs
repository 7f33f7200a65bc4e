//! Video and audio nodes, reporting their files the way the real ones do, so that
//! every layer above (client, runner, API, CLI, web app) meets the real shapes:
//!
//! - core `CreateVideo` + `SaveVideo` (comfy_extras/nodes_video.py): `images` with
//!   `animated: [true]`, a file `<prefix>_00001_.mp4` under `video/` by default;
//! - VideoHelperSuite's `VHS_VideoCombine`: `gifs` with `format`, `frame_rate`,
//!   `workflow` (a first-frame PNG it also saves) and `fullpath`, a server path that
//!   clients must never trust; files `<prefix>_00001.mp4` (no trailing underscore);
//! - core `EmptyAudio` + `SaveAudio` (comfy_extras/nodes_audio.py): `audio`.
//!
//! The files are real (see [`crate::media`]): H.264 MP4 and WAV. Two differences from
//! ComfyUI, both in the file and not in the protocol: real `SaveAudio` encodes FLAC
//! (the simulator writes 16-bit WAV, as `<prefix>_00001_.wav`), and only the
//! `video/h264-mp4` format of VHS is offered (a workflow naming another gets the usual
//! combo validation error).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::image::Images;
use crate::media;
use crate::nodes::{In, Inputs, NodeErr, NodeOut, RunCtx, Val, lit_f64, lit_i64, lit_str};
use crate::pyfmt::{PyErr, obj};

/// Classes this module runs.
pub const CLASSES: &[&str] = &[
    "CreateVideo",
    "SaveVideo",
    "VHS_VideoCombine",
    "EmptyAudio",
    "SaveAudio",
];

/// Decoded audio as it flows along a link (ComfyUI's `{"waveform", "sample_rate"}`).
#[derive(Debug)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved 16-bit samples.
    pub samples: Vec<i16>,
}

/// A video as it flows along a link (ComfyUI's `VideoFromComponents`).
#[derive(Debug)]
pub struct Video {
    pub images: Arc<Images>,
    pub fps: f64,
}

pub fn input_types(name: &str) -> Option<Value> {
    let hidden = json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"});
    Some(match name {
        "CreateVideo" => json!({
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to create a video from."}],
                "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]
            },
            "optional": {"audio": ["AUDIO", {"tooltip": "The audio to add to the video."}]}
        }),
        "SaveVideo" => json!({
            "required": {
                "video": ["VIDEO", {"tooltip": "The video to save."}],
                "filename_prefix": ["STRING", {"default": "video/ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}],
                "format": [["auto", "mp4"], {"default": "auto", "tooltip": "The format to save the video as."}],
                "codec": [["auto", "h264"], {"default": "auto", "tooltip": "The codec to use for the video."}]
            },
            "hidden": hidden
        }),
        "VHS_VideoCombine" => json!({
            "required": {
                "images": ["IMAGE"],
                "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
                "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
                "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
                "format": [["video/h264-mp4"]],
                "pingpong": ["BOOLEAN", {"default": false}],
                "save_output": ["BOOLEAN", {"default": true}]
            },
            "optional": {"audio": ["AUDIO"]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}
        }),
        "EmptyAudio" => json!({
            "required": {
                "duration": ["FLOAT", {"default": 60.0, "min": 0.0, "max": 1.8446744073709552e19, "step": 0.01, "tooltip": "Duration of the empty audio clip in seconds"}],
                "sample_rate": ["INT", {"default": 44100, "tooltip": "Sample rate of the empty audio clip.", "min": 1, "max": 192000}],
                "channels": ["INT", {"default": 2, "min": 1, "max": 2, "tooltip": "Number of audio channels (1 for mono, 2 for stereo)."}]
            }
        }),
        "SaveAudio" => json!({
            "required": {
                "audio": ["AUDIO", {}],
                "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}]
            },
            "hidden": hidden
        }),
        _ => return None,
    })
}

/// The longest clip `EmptyAudio` makes here: the simulator holds samples in memory.
const MAX_AUDIO_SECONDS: f64 = 600.0;

pub fn run(class: &str, inputs: &Inputs, ctx: &mut dyn RunCtx) -> Result<NodeOut, NodeErr> {
    let out = |v: Val| NodeOut {
        outputs: vec![v],
        ui: None,
    };
    match class {
        "CreateVideo" => {
            let images = crate::nodes::images(inputs, "images", "execute")?;
            let fps = lit_f64(inputs, "fps", "execute")?;
            Ok(out(Val::Video(Arc::new(Video { images, fps }))))
        }
        "SaveVideo" => {
            let f = "execute";
            let video = match inputs.get("video") {
                Some(In::Link(Val::Video(v))) => v.clone(),
                _ => return Err(type_err("'video' must be a VIDEO")),
            };
            let prefix = lit_str(inputs, "filename_prefix", f)?;
            let (w, h) = (video.images.width, video.images.height);
            let (folder, name, counter, subfolder) =
                crate::nodes::save_image_path(&prefix, &ctx.env().output_dir, w, h)?;
            let file = format!("{name}_{counter:05}_.mp4");
            write(&folder.join(&file), &media::mp4(&video.images, video.fps))?;
            Ok(NodeOut {
                outputs: vec![],
                ui: Some(json!({
                    "images": [record(&file, &subfolder, "output")],
                    "animated": [true]
                })),
            })
        }
        "VHS_VideoCombine" => vhs_video_combine(inputs, ctx),
        "EmptyAudio" => {
            let f = "execute";
            let seconds = lit_f64(inputs, "duration", f)?.clamp(0.0, MAX_AUDIO_SECONDS);
            let rate = lit_i64(inputs, "sample_rate", f)?.clamp(1, 192_000) as u32;
            let channels = lit_i64(inputs, "channels", f)?.clamp(1, 2) as u16;
            let n = (seconds * rate as f64) as usize * channels as usize;
            Ok(out(Val::Audio(Arc::new(Audio {
                sample_rate: rate,
                channels,
                samples: vec![0; n], // EmptyAudio is silence
            }))))
        }
        "SaveAudio" => {
            let audio = match inputs.get("audio") {
                Some(In::Link(Val::Audio(a))) => a.clone(),
                _ => return Err(type_err("'audio' must be an AUDIO")),
            };
            let prefix = lit_str(inputs, "filename_prefix", "save_flac")?;
            let (folder, name, counter, subfolder) =
                crate::nodes::save_image_path(&prefix, &ctx.env().output_dir, 0, 0)?;
            let name = name.replace("%batch_num%", "0");
            let file = format!("{name}_{counter:05}_.wav");
            let bytes = media::wav(&audio.samples, audio.sample_rate, audio.channels);
            write(&folder.join(&file), &bytes)?;
            Ok(NodeOut {
                outputs: vec![],
                ui: Some(json!({"audio": [record(&file, &subfolder, "output")]})),
            })
        }
        other => Err(NodeErr::Py(PyErr::new(
            "AttributeError",
            format!("no media node {other}"),
        ))),
    }
}

fn vhs_video_combine(inputs: &Inputs, ctx: &mut dyn RunCtx) -> Result<NodeOut, NodeErr> {
    let f = "combine_video";
    let images = crate::nodes::images(inputs, "images", f)?;
    let fps = lit_f64(inputs, "frame_rate", f)?;
    let prefix = lit_str(inputs, "filename_prefix", f)?;
    let format = lit_str(inputs, "format", f)?;
    let save_output = match inputs.get("save_output") {
        Some(In::Lit(v)) => v.as_bool().unwrap_or(true),
        _ => true,
    };
    let (root, ty) = if save_output {
        (ctx.env().output_dir.clone(), "output")
    } else {
        (ctx.env().temp_dir.clone(), "temp")
    };
    let (folder, name, _, subfolder) =
        crate::nodes::save_image_path(&prefix, &root, images.width, images.height)?;
    // VHS counts `<name>_<digits>…` files itself: one more than the largest.
    let counter = std::fs::read_dir(&folder)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|f| {
                    let rest = f.strip_prefix(&name)?.strip_prefix('_')?;
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1;
    let first = format!("{name}_{counter:05}.png");
    write(&folder.join(&first), &images.to_png(0, &[], true))?;
    let file = format!("{name}_{counter:05}.mp4");
    let path = folder.join(&file);
    write(&path, &media::mp4(&images, fps))?;
    let paths = [folder.join(&first), path.clone()].map(|p| p.to_string_lossy().to_string());
    let mut rec = record(&file, &subfolder, ty);
    rec.insert("format".into(), json!(format));
    rec.insert("frame_rate".into(), json!(fps));
    rec.insert("workflow".into(), json!(first));
    rec.insert("fullpath".into(), json!(path.to_string_lossy()));
    Ok(NodeOut {
        outputs: vec![Val::Json(json!([save_output, paths]))],
        ui: Some(json!({"gifs": [rec]})),
    })
}

fn record(file: &str, subfolder: &str, ty: &str) -> serde_json::Map<String, Value> {
    match obj([
        ("filename", json!(file)),
        ("subfolder", json!(subfolder)),
        ("type", json!(ty)),
    ]) {
        Value::Object(m) => m,
        _ => unreachable!("obj builds an object"),
    }
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<(), NodeErr> {
    std::fs::write(path, bytes).map_err(|e| NodeErr::Py(PyErr::new("OSError", e.to_string())))
}

fn type_err(msg: &str) -> NodeErr {
    NodeErr::Py(PyErr::new("TypeError", msg.to_string()))
}
