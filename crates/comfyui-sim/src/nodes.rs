//! The node classes the simulator knows: their `/object_info` records (real input specs:
//! defaults, min, max, combo options, tooltips) and their implementations.
//!
//! Weightless core nodes run for real on real pixels. Model nodes are simulated: they
//! take configurable time, tick progress (KSampler) and produce deterministic
//! placeholders.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::image::{Frame, Images, Masks, decode_png};
use crate::pyfmt::{PyErr, obj, py_str};

pub const MAX_RESOLUTION: i64 = 16384;

/// Everything the nodes need from the server's configuration.
#[derive(Debug, Clone)]
pub struct Env {
    pub input_dir: PathBuf,
    pub output_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub checkpoints: Vec<String>,
    pub step_ms: u64,
    pub model_node_ms: u64,
    pub previews: bool,
}

/// A value flowing along a link.
#[derive(Debug, Clone)]
pub enum Val {
    Images(Arc<Images>),
    Masks(Arc<Masks>),
    Model(String),
    Clip(String),
    Vae(String),
    Conditioning(String),
    Latent {
        width: usize,
        height: usize,
        batch: usize,
        tag: u64,
    },
    Json(Value),
    Video(Arc<crate::nodes_media::Video>),
    Audio(Arc<crate::nodes_media::Audio>),
}

impl Val {
    /// How ComfyUI's `format_value` prints a non-primitive input in `execution_error`.
    pub fn describe(&self) -> Value {
        match self {
            Val::Images(i) => Value::String(format!(
                "tensor([[[[...]]]]) shape=[{}, {}, {}, 3]",
                i.frames.len(),
                i.height,
                i.width
            )),
            Val::Masks(m) => Value::String(format!(
                "tensor([[[...]]]) shape=[{}, {}, {}]",
                m.frames.len(),
                m.height,
                m.width
            )),
            Val::Model(n) => Value::String(format!("<comfy.model_patcher.ModelPatcher ({n})>")),
            Val::Clip(n) => Value::String(format!("<comfy.sd.CLIP ({n})>")),
            Val::Vae(n) => Value::String(format!("<comfy.sd.VAE ({n})>")),
            Val::Conditioning(t) => Value::String(format!(
                "[[tensor(...), {{'pooled_output': tensor(...)}}]] ({t})"
            )),
            Val::Latent { .. } => Value::String("{'samples': tensor(...)}".into()),
            Val::Video(v) => Value::String(format!(
                "<comfy_api.latest._input_impl.video_types.VideoFromComponents ({} frames)>",
                v.images.frames.len()
            )),
            Val::Audio(a) => Value::String(format!(
                "{{'waveform': tensor(...), 'sample_rate': {}}}",
                a.sample_rate
            )),
            Val::Json(v) => match v {
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => v.clone(),
                other => Value::String(py_str(other)),
            },
        }
    }
}

/// A node's inputs by name.
pub type Inputs = std::collections::HashMap<String, In>;

/// An input as the node function receives it.
#[derive(Debug, Clone)]
pub enum In {
    Lit(Value),
    Link(Val),
}

/// What a node returns: its outputs and its UI dict (what `executed` and history show).
pub struct NodeOut {
    pub outputs: Vec<Val>,
    pub ui: Option<Value>,
}

pub enum NodeErr {
    Interrupted,
    Py(PyErr),
    /// The simulator is shutting down or crashing.
    Stopped,
}

impl From<PyErr> for NodeErr {
    fn from(e: PyErr) -> Self {
        NodeErr::Py(e)
    }
}

/// What a running node can ask of the executor.
pub trait RunCtx {
    /// A progress-bar tick: checks the interrupt flag first, then sends `progress_state`,
    /// `progress` and the preview (binary type 1 or 4).
    fn tick(
        &mut self,
        value: Value,
        max: Value,
        preview_png: Option<Vec<u8>>,
    ) -> Result<(), NodeErr>;
    /// Sleep, returning early only when the simulator stops.
    fn sleep_ms(&mut self, ms: u64) -> Result<(), NodeErr>;
    fn env(&self) -> &Env;
    fn prompt(&self) -> &Map<String, Value>;
    fn extra_pnginfo(&self) -> Option<&Value>;
    /// PreviewImage's random `_temp_xxxxx` suffix, fixed per node instance.
    fn preview_suffix(&mut self) -> String;
}

/// Static facts about a node class.
pub struct ClassInfo {
    pub name: &'static str,
    pub display_name: &'static str,
    pub category: &'static str,
    pub python_module: &'static str,
    pub description: &'static str,
    pub output_node: bool,
    pub returns: &'static [&'static str],
    pub return_names: Option<&'static [&'static str]>,
    pub output_tooltips: Option<&'static [&'static str]>,
    /// A v3-schema node (its record carries `deprecated`, `experimental`, `api_node`).
    pub v3: bool,
    /// Inputs named by the class's `VALIDATE_INPUTS`: no min/max/combo checks for them.
    pub validate_inputs: &'static [&'static str],
    /// Async nodes are picked first by the scheduler.
    pub is_async: bool,
}

const fn class(
    name: &'static str,
    display_name: &'static str,
    category: &'static str,
    returns: &'static [&'static str],
) -> ClassInfo {
    ClassInfo {
        name,
        display_name,
        category,
        python_module: "nodes",
        description: "",
        output_node: false,
        returns,
        return_names: None,
        output_tooltips: None,
        v3: false,
        validate_inputs: &[],
        is_async: false,
    }
}

pub static CLASSES: &[ClassInfo] = &[
    ClassInfo {
        output_tooltips: Some(&[
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ]),
        description: "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        ..class(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            &["MODEL", "CLIP", "VAE"],
        )
    },
    ClassInfo {
        output_tooltips: Some(&[
            "A conditioning containing the embedded text used to guide the diffusion model.",
        ]),
        description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
        ..class(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            &["CONDITIONING"],
        )
    },
    ClassInfo {
        output_tooltips: Some(&["The empty latent image batch."]),
        description: "Create a new batch of empty latent images to be denoised via sampling.",
        ..class(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            &["LATENT"],
        )
    },
    ClassInfo {
        output_tooltips: Some(&["The denoised latent."]),
        description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
        ..class("KSampler", "KSampler", "sampling", &["LATENT"])
    },
    ClassInfo {
        output_tooltips: Some(&["The decoded image."]),
        description: "Decodes latent images back into pixel space images.",
        ..class("VAEDecode", "VAE Decode", "latent", &["IMAGE"])
    },
    class("EmptyImage", "EmptyImage", "image", &["IMAGE"]),
    class("ImageInvert", "Invert Image", "image", &["IMAGE"]),
    class("ImageScale", "Upscale Image", "image/upscaling", &["IMAGE"]),
    ClassInfo {
        python_module: "comfy_extras.nodes_post_processing",
        v3: true,
        ..class(
            "ImageBlur",
            "Image Blur",
            "image/postprocessing",
            &["IMAGE"],
        )
    },
    ClassInfo {
        validate_inputs: &["image"],
        ..class("LoadImage", "Load Image", "image", &["IMAGE", "MASK"])
    },
    ClassInfo {
        output_node: true,
        description: "Saves the input images to your ComfyUI output directory.",
        ..class("SaveImage", "Save Image", "image", &[])
    },
    ClassInfo {
        output_node: true,
        description: "Saves the input images to your ComfyUI output directory.",
        ..class("PreviewImage", "Preview Image", "image", &[])
    },
    ClassInfo {
        output_node: true,
        python_module: "custom_nodes.websocket_image_save",
        ..class(
            "SaveImageWebsocket",
            "SaveImageWebsocket",
            "api node/image",
            &[],
        )
    },
    ClassInfo {
        python_module: "comfy_extras.nodes_video",
        v3: true,
        ..class("CreateVideo", "Create Video", "image/video", &["VIDEO"])
    },
    ClassInfo {
        python_module: "comfy_extras.nodes_video",
        v3: true,
        output_node: true,
        description: "Saves the input images to your ComfyUI output directory.",
        ..class("SaveVideo", "Save Video", "image/video", &[])
    },
    ClassInfo {
        python_module: "custom_nodes.ComfyUI-VideoHelperSuite",
        output_node: true,
        return_names: Some(&["Filenames"]),
        ..class(
            "VHS_VideoCombine",
            "Video Combine 🎥🅥🅗🅢",
            "Video Helper Suite 🎥🅥🅗🅢",
            &["VHS_FILENAMES"],
        )
    },
    ClassInfo {
        python_module: "comfy_extras.nodes_audio",
        v3: true,
        ..class("EmptyAudio", "Empty Audio", "audio", &["AUDIO"])
    },
    ClassInfo {
        python_module: "comfy_extras.nodes_audio",
        v3: true,
        output_node: true,
        ..class("SaveAudio", "Save Audio (FLAC)", "audio", &[])
    },
    ClassInfo {
        python_module: "custom_nodes.testing-pack",
        is_async: true,
        ..class("TestSleep", "Test Sleep", "_for_testing", &["*"])
    },
];

pub fn class_info(name: &str) -> Option<&'static ClassInfo> {
    CLASSES.iter().find(|c| c.name == name)
}

fn int(default: i64, min: i64, max: i64, step: Option<i64>) -> Value {
    let mut m = Map::new();
    m.insert("default".into(), default.into());
    m.insert("min".into(), min.into());
    m.insert("max".into(), max.into());
    if let Some(s) = step {
        m.insert("step".into(), s.into());
    }
    json!(["INT", m])
}

pub const SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];
pub const SCHEDULERS: &[&str] = &[
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
];
pub const UPSCALE_METHODS: &[&str] = &["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];

/// Image files directly in the input folder, sorted (LoadImage's combo).
pub fn input_images(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    [
                        ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                    ]
                    .iter()
                    .any(|ext| l.ends_with(ext))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `INPUT_TYPES()` of a class: `{"required": {...}, "optional": {...}, "hidden": {...}}`.
pub fn input_types(name: &str, env: &Env) -> Value {
    match name {
        "CheckpointLoaderSimple" => json!({"required": {
            "ckpt_name": [env.checkpoints, {"tooltip": "The name of the checkpoint (model) to load."}]
        }}),
        "CLIPTextEncode" => json!({"required": {
            "text": ["STRING", {"multiline": true, "dynamicPrompts": true, "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}]
        }}),
        "EmptyLatentImage" => json!({"required": {
            "width": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The width of the latent images in pixels."}],
            "height": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8, "tooltip": "The height of the latent images in pixels."}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "The number of latent images in the batch."}]
        }}),
        "KSampler" => json!({"required": {
            "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": u64::MAX, "control_after_generate": true, "tooltip": "The random seed used for creating the noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of steps used in the denoising process."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}],
            "sampler_name": [SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}],
            "scheduler": [SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}],
            "positive": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}],
            "negative": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}],
            "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}]
        }}),
        "VAEDecode" => json!({"required": {
            "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
            "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}]
        }}),
        "EmptyImage" => {
            let mut color = int(0, 0, 0xFFFFFF, Some(1));
            color[1]["display"] = json!("color");
            json!({"required": {
                "width": int(512, 1, MAX_RESOLUTION, Some(1)),
                "height": int(512, 1, MAX_RESOLUTION, Some(1)),
                "batch_size": int(1, 1, 4096, None),
                "color": color
            }})
        }
        "ImageInvert" => json!({"required": {"image": ["IMAGE"]}}),
        "ImageScale" => json!({"required": {
            "image": ["IMAGE"],
            "upscale_method": [UPSCALE_METHODS],
            "width": int(512, 0, MAX_RESOLUTION, Some(1)),
            "height": int(512, 0, MAX_RESOLUTION, Some(1)),
            "crop": [["disabled", "center"]]
        }}),
        "ImageBlur" => json!({"required": {
            "image": ["IMAGE", {}],
            "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
            "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}]
        }}),
        "LoadImage" => json!({"required": {
            "image": [input_images(&env.input_dir), {"image_upload": true}]
        }}),
        "SaveImage" => json!({
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}]
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
        }),
        "PreviewImage" => json!({
            "required": {"images": ["IMAGE"]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
        }),
        "SaveImageWebsocket" => json!({"required": {"images": ["IMAGE"]}}),
        "TestSleep" => json!({
            "required": {
                "value": ["*", {}],
                "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 9999.0, "step": 0.01, "tooltip": "The amount of seconds to sleep."}]
            },
            "hidden": {"unique_id": "UNIQUE_ID"}
        }),
        other => crate::nodes_media::input_types(other).unwrap_or_else(|| json!({})),
    }
}

/// The `/object_info` record of a class.
pub fn object_info(info: &ClassInfo, env: &Env) -> Value {
    let inputs = input_types(info.name, env);
    let mut order = Map::new();
    if let Value::Object(m) = &inputs {
        for (k, v) in m {
            let names: Vec<Value> = v
                .as_object()
                .map(|o| o.keys().map(|k| Value::String(k.clone())).collect())
                .unwrap_or_default();
            order.insert(k.clone(), Value::Array(names));
        }
    }
    let mut m = Map::new();
    m.insert("input".into(), inputs);
    m.insert("input_order".into(), Value::Object(order));
    m.insert("output".into(), json!(info.returns));
    m.insert(
        "output_is_list".into(),
        json!(vec![false; info.returns.len()]),
    );
    m.insert(
        "output_name".into(),
        json!(info.return_names.unwrap_or(info.returns)),
    );
    m.insert("name".into(), json!(info.name));
    m.insert("display_name".into(), json!(info.display_name));
    m.insert("description".into(), json!(info.description));
    m.insert("python_module".into(), json!(info.python_module));
    m.insert("category".into(), json!(info.category));
    m.insert("output_node".into(), json!(info.output_node));
    if let Some(t) = info.output_tooltips {
        m.insert("output_tooltips".into(), json!(t));
    } else if info.v3 {
        m.insert(
            "output_tooltips".into(),
            json!(vec![Value::Null; info.returns.len()]),
        );
    }
    if info.v3 {
        m.insert("deprecated".into(), json!(false));
        m.insert("experimental".into(), json!(false));
        m.insert("api_node".into(), json!(false));
    }
    Value::Object(m)
}

/// Split `"x.png [output]"` into the name and the folder it points to.
pub fn annotated_filepath<'a>(name: &'a str, env: &'a Env) -> (&'a str, &'a Path) {
    if let Some(n) = name.strip_suffix("[output]") {
        (n.strip_suffix(' ').unwrap_or(n), &env.output_dir)
    } else if let Some(n) = name.strip_suffix("[input]") {
        (n.strip_suffix(' ').unwrap_or(n), &env.input_dir)
    } else if let Some(n) = name.strip_suffix("[temp]") {
        (n.strip_suffix(' ').unwrap_or(n), &env.temp_dir)
    } else {
        (name, &env.input_dir)
    }
}

/// `folder_paths.get_annotated_filepath`: the name joined to its folder, as ComfyUI
/// does it, with no containment check (`../x` and `/etc/x` leave the folder). The
/// simulator must not guard here, or tests would prove the double, not the guard.
fn annotated_path(name: &str, env: &Env) -> PathBuf {
    let (n, dir) = annotated_filepath(name, env);
    dir.join(n)
}

/// The most bytes the simulator reads from one input file.
pub const MAX_INPUT_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Reads an input file, but only a regular file of at most [`MAX_INPUT_FILE_BYTES`]:
/// ComfyUI would read `/dev/zero` until memory ran out; the double refuses instead.
pub fn read_input_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_INPUT_FILE_BYTES {
        return Err(Error::new(ErrorKind::InvalidInput, "file too large"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The size can change after the check: the limit holds whatever happens.
    file.take(MAX_INPUT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INPUT_FILE_BYTES {
        return Err(Error::new(ErrorKind::InvalidInput, "file too large"));
    }
    Ok(bytes)
}

/// `VALIDATE_INPUTS`: `Ok(())` or the message ComfyUI puts after `"<input> - "`.
pub fn custom_validate(
    class: &str,
    inputs: &Map<String, Value>,
    env: &Env,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if class == "LoadImage"
        && let Some(v) = inputs.get("image")
        && !v.is_array()
    {
        let name = py_str(v);
        if !annotated_path(&name, env).exists() {
            out.push(("image".to_string(), format!("Invalid image file: {name}")));
        }
    }
    out
}

/// `IS_CHANGED`, as part of the cache signature. `None`: the class has none.
/// A value that never repeats means "always run again".
pub fn is_changed(class: &str, inputs: &Map<String, Value>, env: &Env) -> Option<String> {
    match class {
        "LoadImage" => {
            let name = inputs.get("image").map(py_str).unwrap_or_default();
            match read_input_file(&annotated_path(&name, env)) {
                Ok(bytes) => {
                    let mut h = DefaultHasher::new();
                    bytes.hash(&mut h);
                    Some(format!("{:016x}", h.finish()))
                }
                // IS_CHANGED raising gives NaN, which never equals itself.
                Err(_) => Some(format!("nan-{}", uuid::Uuid::new_v4())),
            }
        }
        "SaveImageWebsocket" => Some(format!("time-{}", uuid::Uuid::new_v4())),
        _ => None,
    }
}

fn type_err(msg: String) -> NodeErr {
    NodeErr::Py(PyErr::new("TypeError", msg))
}

fn get<'a>(inputs: &'a Inputs, name: &str, fname: &str) -> Result<&'a In, NodeErr> {
    inputs.get(name).ok_or_else(|| {
        type_err(format!(
            "{fname}() missing 1 required positional argument: '{name}'"
        ))
    })
}

pub(crate) fn images(inputs: &Inputs, name: &str, fname: &str) -> Result<Arc<Images>, NodeErr> {
    match get(inputs, name, fname)? {
        In::Link(Val::Images(i)) => Ok(i.clone()),
        In::Lit(v) => Err(type_err(format!(
            "'{}' object has no attribute 'shape'",
            crate::pyfmt::py_type_name(v)
        ))),
        In::Link(_) => Err(type_err("expected an IMAGE tensor".into())),
    }
}

pub(crate) fn lit_i64(inputs: &Inputs, name: &str, fname: &str) -> Result<i64, NodeErr> {
    match get(inputs, name, fname)? {
        In::Lit(v) => v
            .as_i64()
            .or_else(|| v.as_u64().map(|u| u as i64))
            .or_else(|| v.as_f64().map(|f| f as i64))
            .ok_or_else(|| type_err(format!("'{name}' must be an integer"))),
        In::Link(Val::Json(v)) => v
            .as_i64()
            .ok_or_else(|| type_err(format!("'{name}' must be an integer"))),
        In::Link(_) => Err(type_err(format!("'{name}' must be an integer"))),
    }
}

pub(crate) fn lit_f64(inputs: &Inputs, name: &str, fname: &str) -> Result<f64, NodeErr> {
    match get(inputs, name, fname)? {
        In::Lit(v) | In::Link(Val::Json(v)) => v
            .as_f64()
            .ok_or_else(|| type_err(format!("'{name}' must be a number"))),
        In::Link(_) => Err(type_err(format!("'{name}' must be a number"))),
    }
}

pub(crate) fn lit_str(inputs: &Inputs, name: &str, fname: &str) -> Result<String, NodeErr> {
    match get(inputs, name, fname)? {
        In::Lit(v) | In::Link(Val::Json(v)) => Ok(py_str(v)),
        In::Link(other) => Ok(py_str(&other.describe())),
    }
}

fn hash_str(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Run a node.
pub fn run(class: &str, inputs: &Inputs, ctx: &mut dyn RunCtx) -> Result<NodeOut, NodeErr> {
    let one = |v: Val| NodeOut {
        outputs: vec![v],
        ui: None,
    };
    match class {
        "EmptyImage" => {
            let f = "generate";
            let (w, h) = (lit_i64(inputs, "width", f)?, lit_i64(inputs, "height", f)?);
            let b = lit_i64(inputs, "batch_size", f)?;
            let c = lit_i64(inputs, "color", f)?;
            Ok(one(Val::Images(Arc::new(Images::solid(
                w.max(0) as usize,
                h.max(0) as usize,
                b.max(0) as usize,
                c as u32,
            )))))
        }
        "ImageInvert" => Ok(one(Val::Images(Arc::new(
            images(inputs, "image", "invert")?.invert(),
        )))),
        "ImageBlur" => {
            let f = "execute";
            let img = images(inputs, "image", f)?;
            let r = lit_i64(inputs, "blur_radius", f)?.max(0) as usize;
            let s = lit_f64(inputs, "sigma", f)?;
            Ok(one(Val::Images(Arc::new(img.blur(r, s)?))))
        }
        "ImageScale" => {
            let f = "upscale";
            let img = images(inputs, "image", f)?;
            let m = lit_str(inputs, "upscale_method", f)?;
            let w = lit_i64(inputs, "width", f)?.max(0) as usize;
            let h = lit_i64(inputs, "height", f)?.max(0) as usize;
            let c = lit_str(inputs, "crop", f)?;
            Ok(one(Val::Images(Arc::new(img.scale(&m, w, h, &c)))))
        }
        "LoadImage" => {
            let name = lit_str(inputs, "image", "load_image")?;
            let path = annotated_path(&name, ctx.env());
            let bytes = read_input_file(&path).map_err(|_| {
                PyErr::new(
                    "FileNotFoundError",
                    format!("[Errno 2] No such file or directory: '{}'", path.display()),
                )
            })?;
            let dec = decode_png(&bytes).ok_or_else(|| {
                PyErr::new(
                    "PIL.UnidentifiedImageError",
                    format!("cannot identify image file '{}'", path.display()),
                )
            })?;
            let (img, mask) = dec.to_image_and_mask();
            Ok(NodeOut {
                outputs: vec![Val::Images(Arc::new(img)), Val::Masks(Arc::new(mask))],
                ui: None,
            })
        }
        "SaveImage" | "PreviewImage" => {
            let img = images(inputs, "images", "save_images")?;
            let (dir, ty, prefix, fast) = if class == "SaveImage" {
                let p = match inputs.get("filename_prefix") {
                    Some(_) => lit_str(inputs, "filename_prefix", "save_images")?,
                    None => "ComfyUI".to_string(),
                };
                (ctx.env().output_dir.clone(), "output", p, false)
            } else {
                let suffix = ctx.preview_suffix();
                (
                    ctx.env().temp_dir.clone(),
                    "temp",
                    format!("ComfyUI{suffix}"),
                    true,
                )
            };
            let results = save_images(&img, &prefix, &dir, ty, fast, ctx)?;
            Ok(NodeOut {
                outputs: vec![],
                ui: Some(json!({ "images": results })),
            })
        }
        "SaveImageWebsocket" => {
            let img = images(inputs, "images", "save_images")?;
            let n = img.frames.len();
            for i in 0..n {
                let png = img.to_png(i, &[], true);
                ctx.tick(json!(i), json!(n), Some(png))?;
            }
            Ok(NodeOut {
                outputs: vec![],
                ui: None,
            })
        }
        "TestSleep" => {
            let seconds = lit_f64(inputs, "seconds", "sleep")?;
            let value = match get(inputs, "value", "sleep")? {
                In::Link(v) => v.clone(),
                In::Lit(v) => Val::Json(v.clone()),
            };
            let start = std::time::Instant::now();
            loop {
                let now = start.elapsed().as_secs_f64();
                ctx.tick(json!(now.min(seconds)), json!(seconds), None)?;
                if now >= seconds {
                    break;
                }
                ctx.sleep_ms(10)?;
            }
            Ok(one(value))
        }
        "CheckpointLoaderSimple" => {
            let name = lit_str(inputs, "ckpt_name", "load_checkpoint")?;
            let ms = ctx.env().model_node_ms;
            ctx.sleep_ms(ms)?;
            Ok(NodeOut {
                outputs: vec![
                    Val::Model(name.clone()),
                    Val::Clip(name.clone()),
                    Val::Vae(name),
                ],
                ui: None,
            })
        }
        "CLIPTextEncode" => {
            let text = lit_str(inputs, "text", "encode")?;
            match get(inputs, "clip", "encode")? {
                In::Link(Val::Clip(_)) => {}
                _ => {
                    return Err(NodeErr::Py(PyErr::new(
                        "RuntimeError",
                        "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint does not contain a valid clip or text encoder model.",
                    )));
                }
            }
            let ms = ctx.env().model_node_ms;
            ctx.sleep_ms(ms)?;
            Ok(one(Val::Conditioning(text)))
        }
        "EmptyLatentImage" => {
            let f = "generate";
            Ok(one(Val::Latent {
                width: lit_i64(inputs, "width", f)?.max(0) as usize,
                height: lit_i64(inputs, "height", f)?.max(0) as usize,
                batch: lit_i64(inputs, "batch_size", f)?.max(0) as usize,
                tag: 0,
            }))
        }
        "KSampler" => {
            let f = "sample";
            let steps = lit_i64(inputs, "steps", f)?.max(1);
            let seed = match get(inputs, "seed", f)? {
                In::Lit(v) => py_str(v),
                _ => "0".into(),
            };
            let text = |n: &str| match inputs.get(n) {
                Some(In::Link(Val::Conditioning(t))) => t.clone(),
                _ => String::new(),
            };
            let model = match inputs.get("model") {
                Some(In::Link(Val::Model(m))) => m.clone(),
                _ => String::new(),
            };
            let (width, height, batch, tag0) = match get(inputs, "latent_image", f)? {
                In::Link(Val::Latent {
                    width,
                    height,
                    batch,
                    tag,
                }) => (*width, *height, *batch, *tag),
                _ => return Err(type_err("'latent_image' must be a LATENT".into())),
            };
            let tag = hash_str(&[
                &model,
                &seed,
                &text("positive"),
                &text("negative"),
                &steps.to_string(),
                &tag0.to_string(),
            ]);
            let step_ms = ctx.env().step_ms;
            let previews = ctx.env().previews;
            for i in 0..steps {
                ctx.sleep_ms(step_ms)?;
                let preview = previews.then(|| {
                    let p = placeholder(64, 64, 1, tag ^ i as u64);
                    p.to_png(0, &[], true)
                });
                ctx.tick(json!(i + 1), json!(steps), preview)?;
            }
            Ok(one(Val::Latent {
                width,
                height,
                batch,
                tag,
            }))
        }
        "VAEDecode" => {
            let (w, h, b, tag) = match get(inputs, "samples", "decode")? {
                In::Link(Val::Latent {
                    width,
                    height,
                    batch,
                    tag,
                }) => (*width, *height, *batch, *tag),
                _ => return Err(type_err("'samples' must be a LATENT".into())),
            };
            let ms = ctx.env().model_node_ms;
            ctx.sleep_ms(ms)?;
            Ok(one(Val::Images(Arc::new(placeholder(w, h, b, tag)))))
        }
        media if crate::nodes_media::CLASSES.contains(&media) => {
            crate::nodes_media::run(media, inputs, ctx)
        }
        other => Err(NodeErr::Py(PyErr::new(
            "NotImplementedError",
            format!("the simulator cannot run {other}"),
        ))),
    }
}

/// The deterministic stand-in for a generated image: a diagonal gradient whose colours
/// come from a hash of everything that would change a real sample.
pub fn placeholder(w: usize, h: usize, batch: usize, tag: u64) -> Images {
    let frames = (0..batch)
        .map(|b| {
            let t = tag
                .wrapping_add(b as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let c1 = [
                (t & 0xFF) as f32 / 255.0,
                ((t >> 8) & 0xFF) as f32 / 255.0,
                ((t >> 16) & 0xFF) as f32 / 255.0,
            ];
            let c2 = [
                ((t >> 24) & 0xFF) as f32 / 255.0,
                ((t >> 32) & 0xFF) as f32 / 255.0,
                ((t >> 40) & 0xFF) as f32 / 255.0,
            ];
            let mut d = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    let s = (x + y) as f32 / (w + h).max(2) as f32;
                    for c in 0..3 {
                        d.push(c1[c] * (1.0 - s) + c2[c] * s);
                    }
                }
            }
            Frame::Data(d)
        })
        .collect();
    Images {
        width: w,
        height: h,
        frames,
    }
}

/// Python's `os.path.normpath` for POSIX paths.
pub fn normpath(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `os.path.join(a, b)`: `b` wins when absolute.
pub fn pjoin(a: &str, b: &str) -> String {
    if b.starts_with('/') {
        b.to_string()
    } else if a.is_empty() || a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// `os.path.commonpath` of two absolute, normalised paths.
pub fn commonpath(a: &str, b: &str) -> String {
    let pa: Vec<&str> = a.split('/').filter(|s| !s.is_empty()).collect();
    let pb: Vec<&str> = b.split('/').filter(|s| !s.is_empty()).collect();
    let common: Vec<&str> = pa
        .iter()
        .zip(&pb)
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| *x)
        .collect();
    format!("/{}", common.join("/"))
}

fn dirname(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "",
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn civil_now() -> [String; 6] {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [
        y.to_string(),
        format!("{m:02}"),
        format!("{d:02}"),
        format!("{:02}", rem / 3600),
        format!("{:02}", (rem % 3600) / 60),
        format!("{:02}", rem % 60),
    ]
}

/// `folder_paths.get_save_image_path`: (full folder, file stem, first counter, subfolder).
/// Date variables use UTC.
pub fn save_image_path(
    prefix: &str,
    output_dir: &Path,
    width: usize,
    height: usize,
) -> Result<(PathBuf, String, u64, String), PyErr> {
    let mut prefix = prefix.to_string();
    if prefix.contains('%') {
        let [y, mo, d, h, mi, s] = civil_now();
        prefix = prefix
            .replace("%width%", &width.to_string())
            .replace("%height%", &height.to_string())
            .replace("%year%", &y)
            .replace("%month%", &mo)
            .replace("%day%", &d)
            .replace("%hour%", &h)
            .replace("%minute%", &mi)
            .replace("%second%", &s);
    }
    let norm = normpath(&prefix);
    let subfolder = dirname(&norm).to_string();
    let filename = basename(&norm).to_string();
    let out = output_dir.to_string_lossy().to_string();
    let full = pjoin(&out, &subfolder);
    let abs = normpath(&full);
    let common = commonpath(&out, &abs);
    if common != out {
        return Err(PyErr::new(
            "Exception",
            format!(
                "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {abs}\n         output_dir: {out}\n         commonpath: {common}"
            ),
        ));
    }
    let prefix_len = basename(&prefix).chars().count();
    let counter = match std::fs::read_dir(&full) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|f| {
                let chars: Vec<char> = f.chars().collect();
                let head: String = chars.iter().take(prefix_len + 1).collect();
                let rest: String = chars.iter().skip(prefix_len + 1).collect();
                let digits: u64 = rest
                    .split('_')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                let mut h = head.chars();
                let last = h.next_back();
                (h.as_str() == filename && last == Some('_')).then_some(digits)
            })
            .max()
            .map(|m| m + 1)
            .unwrap_or(1),
        Err(_) => {
            std::fs::create_dir_all(&full).map_err(|e| PyErr::new("OSError", e.to_string()))?;
            1
        }
    };
    Ok((PathBuf::from(full), filename, counter, subfolder))
}

fn save_images(
    img: &Images,
    prefix: &str,
    dir: &Path,
    ty: &str,
    fast: bool,
    ctx: &mut dyn RunCtx,
) -> Result<Vec<Value>, NodeErr> {
    let (folder, filename, mut counter, subfolder) =
        save_image_path(prefix, dir, img.width, img.height)?;
    let mut text = vec![(
        "prompt".to_string(),
        serde_json::to_string(ctx.prompt()).unwrap_or_default(),
    )];
    if let Some(Value::Object(extra)) = ctx.extra_pnginfo() {
        for (k, v) in extra {
            text.push((k.clone(), serde_json::to_string(v).unwrap_or_default()));
        }
    }
    let fast = fast || img.width * img.height > 1 << 20;
    let mut results = Vec::new();
    for i in 0..img.frames.len() {
        let name = filename.replace("%batch_num%", &i.to_string());
        let file = format!("{name}_{counter:05}_.png");
        let png = img.to_png(i, &text, fast);
        std::fs::write(folder.join(&file), png)
            .map_err(|e| PyErr::new("OSError", e.to_string()))?;
        results.push(obj([
            ("filename", json!(file)),
            ("subfolder", json!(subfolder)),
            ("type", json!(ty)),
        ]));
        counter += 1;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_are_capped() {
        let started = std::time::Instant::now();
        assert!(read_input_file(Path::new("/dev/zero")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_INPUT_FILE_BYTES + 1).unwrap(); // sparse: no disk used
        assert!(read_input_file(&big).is_err());
        let small = dir.path().join("small.png");
        std::fs::write(&small, b"png").unwrap();
        assert_eq!(read_input_file(&small).unwrap(), b"png");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn paths() {
        assert_eq!(normpath("a/./b/../c"), "a/c");
        assert_eq!(normpath("../escape"), "../escape");
        assert_eq!(normpath("/x/../../y"), "/y");
        assert_eq!(commonpath("/out", "/out/sub"), "/out");
        assert_eq!(commonpath("/out", "/escape"), "/");
    }

    #[test]
    fn save_path_counts_and_refuses_escape() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().to_path_buf();
        let (_, f, c, s) = save_image_path("test", &out, 1, 1).unwrap();
        assert_eq!((f.as_str(), c, s.as_str()), ("test", 1, ""));
        std::fs::write(out.join("test_00001_.png"), b"x").unwrap();
        std::fs::write(out.join("test_00007_.webp"), b"x").unwrap();
        std::fs::write(out.join("testing_00009_.png"), b"x").unwrap();
        assert_eq!(save_image_path("test", &out, 1, 1).unwrap().2, 8);
        let (_, _, _, s) = save_image_path("sub/dir/x", &out, 1, 1).unwrap();
        assert_eq!(s, "sub/dir");
        let e = save_image_path("../escape", &out, 1, 1).unwrap_err();
        assert!(
            e.msg
                .starts_with("**** ERROR: Saving image outside the output folder is not allowed.")
        );
    }
}
