//! Output collection from a history entry's `outputs` (or an `executed` event's
//! `output`): every file, every text, and everything else kept as-is. Nothing is
//! silently dropped.
//!
//! Keys seen in the wild: `images` (SaveImage, PreviewImage, SaveAnimated*, and also
//! core SaveVideo/SaveWEBM, with `animated: [true]`), `animated`, `audio`, `text`
//! (plain strings), `latents`, `gifs` (VideoHelperSuite; never trust its `fullpath`),
//! `result` (3D previews), and anything a custom node invents. A list item that carries
//! `filename` and `type` is a file, whatever its key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a file lives on the server: what `/view` takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    /// `output`, `temp` or `input`. Take it from the record: previews are `temp`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
}

fn default_type() -> String {
    "output".into()
}

impl FileRef {
    pub fn new(
        filename: impl Into<String>,
        subfolder: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        FileRef {
            filename: filename.into(),
            subfolder: subfolder.into(),
            kind: kind.into(),
        }
    }

    /// The name `LoadImage` accepts for this file (`sub/x.png`, `x.png [output]`).
    pub fn load_image_name(&self) -> String {
        let name = if self.subfolder.is_empty() {
            self.filename.clone()
        } else {
            format!("{}/{}", self.subfolder, self.filename)
        };
        match self.kind.as_str() {
            "input" => name,
            other => format!("{name} [{other}]"),
        }
    }
}

/// A normalised output kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Image,
    Video,
    Audio,
    Text,
    File,
    Latent,
}

const IMAGE_EXT: &[&str] = &[
    "png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "avif", "svg",
];
const VIDEO_EXT: &[&str] = &["mp4", "webm", "mov", "mkv", "avi", "gif", "m4v"];
const AUDIO_EXT: &[&str] = &["flac", "mp3", "wav", "ogg", "opus", "m4a", "aac"];

fn ext(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

impl OutputKind {
    /// Classify a file by its extension first, then by the key it was listed under.
    pub fn classify(key: &str, filename: &str) -> OutputKind {
        let e = ext(filename);
        if e == "latent" || key == "latents" {
            return OutputKind::Latent;
        }
        if VIDEO_EXT.contains(&e.as_str()) {
            return OutputKind::Video;
        }
        if IMAGE_EXT.contains(&e.as_str()) {
            return OutputKind::Image;
        }
        if AUDIO_EXT.contains(&e.as_str()) {
            return OutputKind::Audio;
        }
        match key {
            "images" => OutputKind::Image,
            "gifs" | "video" | "videos" | "animated" => OutputKind::Video,
            "audio" | "audios" => OutputKind::Audio,
            "text" => OutputKind::Text,
            _ => OutputKind::File,
        }
    }
}

/// A MIME type guessed from the file name.
pub fn mime_type(filename: &str) -> &'static str {
    match ext(filename).as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        "flac" => "audio/flac",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" | "opus" => "audio/ogg",
        "m4a" | "aac" => "audio/aac",
        "json" => "application/json",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// A file output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    pub node_id: String,
    /// The key it was listed under (`images`, `gifs`, `audio`, ...).
    pub key: String,
    /// Position in that list.
    pub index: usize,
    pub kind: OutputKind,
    pub file: FileRef,
    /// The node also reported `animated: [true]`.
    pub animated: bool,
    /// The record's other fields (`format`, `frame_rate`, ...). `fullpath` is a server
    /// path: never use it.
    pub extra: Map<String, Value>,
}

/// A text output (`text: ["..."]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputText {
    pub node_id: String,
    pub key: String,
    pub index: usize,
    pub text: String,
}

/// Anything else a node reported (`animated` flags, `result`, custom keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherOutput {
    pub node_id: String,
    pub key: String,
    pub value: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    pub files: Vec<OutputFile>,
    pub texts: Vec<OutputText>,
    pub other: Vec<OtherOutput>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.texts.is_empty() && self.other.is_empty()
    }

    /// Files of one kind.
    pub fn of_kind(&self, kind: OutputKind) -> impl Iterator<Item = &OutputFile> {
        self.files.iter().filter(move |f| f.kind == kind)
    }

    fn add_node(&mut self, node_id: &str, ui: &Value) {
        let Some(m) = ui.as_object() else {
            if !ui.is_null() {
                self.other.push(OtherOutput {
                    node_id: node_id.into(),
                    key: String::new(),
                    value: ui.clone(),
                });
            }
            return;
        };
        let animated = m
            .get("animated")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == &Value::Bool(true)));
        for (key, value) in m {
            let Value::Array(items) = value else {
                self.other.push(OtherOutput {
                    node_id: node_id.into(),
                    key: key.clone(),
                    value: value.clone(),
                });
                continue;
            };
            let mut leftovers = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::Object(rec)
                        if rec.get("filename").is_some_and(Value::is_string)
                            && rec.contains_key("type") =>
                    {
                        let filename = rec["filename"].as_str().unwrap_or_default().to_string();
                        let file = FileRef {
                            kind: rec
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("output")
                                .to_string(),
                            subfolder: rec
                                .get("subfolder")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                            filename: filename.clone(),
                        };
                        let mut extra = rec.clone();
                        for k in ["filename", "subfolder", "type"] {
                            extra.remove(k);
                        }
                        self.files.push(OutputFile {
                            node_id: node_id.into(),
                            key: key.clone(),
                            index,
                            kind: OutputKind::classify(key, &filename),
                            file,
                            animated,
                            extra,
                        });
                    }
                    Value::String(t) if key == "text" => self.texts.push(OutputText {
                        node_id: node_id.into(),
                        key: key.clone(),
                        index,
                        text: t.clone(),
                    }),
                    other => leftovers.push(other.clone()),
                }
            }
            if !leftovers.is_empty() {
                self.other.push(OtherOutput {
                    node_id: node_id.into(),
                    key: key.clone(),
                    value: Value::Array(leftovers),
                });
            }
        }
    }
}

/// Collect every output of a history entry's `outputs` map (node id → UI dict).
pub fn collect_outputs(outputs: &Map<String, Value>) -> Outputs {
    let mut out = Outputs::default();
    for (node, ui) in outputs {
        out.add_node(node, ui);
    }
    out
}

/// Collect the outputs of one `executed` event.
pub fn collect_node_output(node_id: &str, output: &Value) -> Outputs {
    let mut out = Outputs::default();
    out.add_node(node_id, output);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_is_collected() {
        let outputs = json!({
            "9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]},
            "10": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
            "11": {"images": [{"filename": "v_00001_.webm", "subfolder": "video", "type": "output"}], "animated": [true]},
            "12": {"images": [{"filename": "w_00001_.webp", "subfolder": "", "type": "output"}], "animated": [true]},
            "13": {"audio": [{"filename": "s.flac", "subfolder": "audio", "type": "output"}]},
            "14": {"text": ["hello", "world"]},
            "15": {"latents": [{"filename": "l_00001_.latent", "subfolder": "latents", "type": "output"}]},
            "16": {"gifs": [{"filename": "g.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4", "frame_rate": 8.0, "fullpath": "/srv/out/g.mp4"}]},
            "17": {"meshes": [{"filename": "m.glb", "subfolder": "3d", "type": "output"}], "result": ["m.glb", null]},
        });
        let o = collect_outputs(outputs.as_object().unwrap());
        let kinds: Vec<(String, OutputKind)> = o
            .files
            .iter()
            .map(|f| (f.node_id.clone(), f.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("9".into(), OutputKind::Image),
                ("10".into(), OutputKind::Image),
                ("11".into(), OutputKind::Video),
                ("12".into(), OutputKind::Image),
                ("13".into(), OutputKind::Audio),
                ("15".into(), OutputKind::Latent),
                ("16".into(), OutputKind::Video),
                ("17".into(), OutputKind::File),
            ]
        );
        assert_eq!(o.files[1].file.kind, "temp");
        assert!(o.files[3].animated);
        assert_eq!(o.files[6].extra["frame_rate"], json!(8.0));
        assert_eq!(
            o.texts.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            ["hello", "world"]
        );
        // `animated` flags and `result` are kept, not dropped.
        assert!(
            o.other
                .iter()
                .any(|x| x.key == "animated" && x.node_id == "11")
        );
        assert!(o.other.iter().any(|x| x.key == "result"));
        assert_eq!(
            FileRef::new("x.png", "sub", "output").load_image_name(),
            "sub/x.png [output]"
        );
    }
}
