//! [`ObjectInfo`]: a ComfyUI server's `GET /object_info`, parsed once into what the
//! checker reads (each class's `input`, `output` and `output_node`).
//!
//! Two things differ from ComfyUI's own check, because the graph is checked before the
//! runner has prepared it:
//! - inputs that take an upload (`image_upload`, `video_upload`, `audio_upload`, or
//!   `upload` in their options: `LoadImage`'s `image`) are not checked against their
//!   combo: the runner uploads the job's files just before `POST /prompt`, so they are
//!   not in the list yet; ComfyUI checks them then.
//! - a typed reference (`{"__type": "core/ASSET", ...}`) is resolved by the runner into a
//!   file name, so it is not checked either.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::Catalogue;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogueError {
    #[error("the catalogue is not JSON: {0}")]
    Json(String),
    #[error("the catalogue is not an object of node classes")]
    NotAnObject,
    #[error("the catalogue has no node classes")]
    Empty,
    #[error("node class {0:?} is not an object")]
    BadClass(String),
}

#[derive(Debug)]
struct Class {
    input: Value,
    output: Vec<Value>,
    output_node: bool,
    uploads: Vec<String>,
}

/// A parsed `/object_info`.
#[derive(Debug)]
pub struct ObjectInfo {
    classes: HashMap<String, Class>,
}

impl ObjectInfo {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CatalogueError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| CatalogueError::Json(e.to_string()))?;
        Self::from_value(v)
    }

    /// Takes the JSON apart without copying the input specs.
    pub fn from_value(v: Value) -> Result<Self, CatalogueError> {
        let Value::Object(map) = v else {
            return Err(CatalogueError::NotAnObject);
        };
        if map.is_empty() {
            return Err(CatalogueError::Empty);
        }
        let mut classes = HashMap::with_capacity(map.len());
        for (name, rec) in map {
            let Value::Object(mut rec) = rec else {
                return Err(CatalogueError::BadClass(name));
            };
            let input = match rec.remove("input") {
                Some(v @ Value::Object(_)) => v,
                _ => Value::Object(Map::new()),
            };
            let output = match rec.remove("output") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            let output_node = rec.get("output_node").and_then(Value::as_bool) == Some(true);
            let uploads = upload_inputs(&input);
            classes.insert(
                name,
                Class {
                    input,
                    output,
                    output_node,
                    uploads,
                },
            );
        }
        Ok(ObjectInfo { classes })
    }

    /// How many node classes it knows.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

fn upload_inputs(input: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for cat in ["required", "optional"] {
        let Some(Value::Object(defs)) = input.get(cat) else {
            continue;
        };
        for (name, def) in defs {
            let Some(Value::Object(opts)) = def.get(1) else {
                continue;
            };
            let takes_upload = opts.iter().any(|(k, v)| {
                (k.ends_with("_upload") && v.as_bool() == Some(true))
                    || (k == "upload" && !v.is_null())
            });
            if takes_upload {
                out.push(name.clone());
            }
        }
    }
    out
}

impl Catalogue for ObjectInfo {
    fn output_node(&self, class: &str) -> Option<bool> {
        self.classes.get(class).map(|c| c.output_node)
    }

    fn input_types(&self, class: &str) -> Option<Cow<'_, Value>> {
        self.classes.get(class).map(|c| Cow::Borrowed(&c.input))
    }

    fn returns(&self, class: &str) -> Cow<'_, [Value]> {
        match self.classes.get(class) {
            Some(c) => Cow::Borrowed(&c.output),
            None => Cow::Borrowed(&[]),
        }
    }

    fn validate_inputs(&self, class: &str) -> Vec<String> {
        self.classes
            .get(class)
            .map(|c| c.uploads.clone())
            .unwrap_or_default()
    }

    fn resolved_later(&self, value: &Value) -> bool {
        matches!(value, Value::Object(m) if m.contains_key("__type"))
    }
}
