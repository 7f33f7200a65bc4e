//! Workflow formats. `/prompt` takes the **API format** (node id → `{class_type,
//! inputs}`); the editor's **UI format** (`nodes` + `links`) is rejected by the server and
//! cannot be converted without frontend logic, so we reject it up front. A saved
//! `/prompt` body (`{"prompt": {...}}`) is unwrapped.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowFormat {
    /// Node id → `{class_type, inputs}`.
    Api,
    /// The editor's graph (`nodes` array and `links`).
    Ui,
    /// A `/prompt` request body: `{"prompt": <api>, ...}`.
    Wrapped,
    Unknown,
}

/// Tell the formats apart, as the official v2 proxy does.
pub fn detect_format(v: &Value) -> WorkflowFormat {
    let Some(m) = v.as_object() else {
        return WorkflowFormat::Unknown;
    };
    if m.get("nodes").is_some_and(Value::is_array) && m.contains_key("links") {
        return WorkflowFormat::Ui;
    }
    if m.get("prompt")
        .is_some_and(|p| detect_format(p) == WorkflowFormat::Api)
    {
        return WorkflowFormat::Wrapped;
    }
    let api = !m.is_empty()
        && m.values().all(|n| {
            n.get("class_type").is_some_and(Value::is_string)
                && n.get("inputs").is_some_and(Value::is_object)
        });
    if api {
        WorkflowFormat::Api
    } else {
        WorkflowFormat::Unknown
    }
}

/// The API-format workflow inside `v`, or a clear error.
pub fn api_workflow(v: Value) -> Result<Map<String, Value>> {
    match (detect_format(&v), v) {
        (WorkflowFormat::Api, Value::Object(m)) => Ok(m),
        (WorkflowFormat::Wrapped, Value::Object(mut m)) => match m.remove("prompt") {
            Some(Value::Object(p)) => Ok(p),
            _ => Err(Error::InvalidWorkflow("no prompt".into())),
        },
        (WorkflowFormat::Ui, _) => Err(Error::InvalidWorkflow(
            "this is the editor's UI format (nodes and links); export the workflow in API format"
                .into(),
        )),
        _ => Err(Error::InvalidWorkflow(
            "not an API-format workflow: expected an object of node id -> {class_type, inputs}"
                .into(),
        )),
    }
}

/// Rewrite every literal `filename_prefix` input with `f(node_id, old) -> new`
/// (per-job file names, so ComfyUI's cache never hands one job another's files).
/// Returns how many were rewritten. Linked prefixes are left alone.
pub fn rewrite_filename_prefixes(
    workflow: &mut Map<String, Value>,
    mut f: impl FnMut(&str, &str) -> String,
) -> usize {
    let mut n = 0;
    for (id, node) in workflow.iter_mut() {
        if let Some(Value::String(old)) = node
            .get_mut("inputs")
            .and_then(|i| i.get_mut("filename_prefix"))
        {
            *old = f(id, old);
            n += 1;
        }
    }
    n
}

/// A fresh prompt id: a uuid4 in canonical lowercase form (what newer servers demand).
pub fn new_prompt_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        let api = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
        assert_eq!(detect_format(&api), WorkflowFormat::Api);
        assert_eq!(
            detect_format(&json!({"prompt": api.clone(), "client_id": "x"})),
            WorkflowFormat::Wrapped
        );
        assert_eq!(
            detect_format(&json!({"nodes": [], "links": [], "version": 0.4})),
            WorkflowFormat::Ui
        );
        assert!(api_workflow(json!({"nodes": [], "links": []})).is_err());
        assert!(api_workflow(json!({"prompt": api})).is_ok());
        let mut wf = json!({"3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["2", 0]}}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            rewrite_filename_prefixes(&mut wf, |id, old| format!("job/{id}/{old}")),
            1
        );
        assert_eq!(wf["3"]["inputs"]["filename_prefix"], "job/3/x");
        let id = new_prompt_id();
        assert_eq!(id, id.to_lowercase());
        assert_eq!(id.len(), 36);
    }
}
