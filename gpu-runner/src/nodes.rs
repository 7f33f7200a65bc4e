//! The custom nodes boot check: the node classes `custom-nodes.toml` promises must be
//! in ComfyUI's `/object_info` before the runner takes a job.
//!
//! The image installs the nodes of `gpu-runner/custom-nodes.toml` at build time; a node
//! can still fail to load at run time (a missing system library, a CUDA mismatch), and
//! ComfyUI then starts without its classes and fails every job that uses them with a
//! validation error. The runner checks once per ComfyUI start, before the warm-up: if a
//! promised class is missing it takes no job, registers in the phase `refusing` with the
//! missing classes in its record's detail (health shows both), and exits when idle.
//!
//! Each time its ComfyUI starts, the runner also publishes that ComfyUI's whole
//! `/object_info` as the node catalogue ([`publish_catalogue`], `jobs::catalogue`):
//! submit then refuses graphs this ComfyUI would refuse, before any GPU starts. It runs
//! beside the boot, bounded in time, and a failure is only logged: jobs never wait on it.
//!
//! The manifest's format (the image build reads the same file; see its comments):
//!
//! ```toml
//! [[node]]
//! git = "https://github.com/kijai/ComfyUI-KJNodes"
//! ref = "0123456789abcdef0123456789abcdef01234567"
//! classes = ["ImageResizeKJ"]
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::error::RunnerError;

/// Classes named in one error message at most (the rest are counted).
const MAX_NAMED: usize = 20;

#[derive(Debug, Default, Deserialize)]
pub struct NodesManifest {
    #[serde(default)]
    node: Vec<NodeEntry>,
}

#[derive(Debug, Deserialize)]
struct NodeEntry {
    #[serde(default)]
    classes: Vec<String>,
}

impl NodesManifest {
    pub fn parse(text: &str) -> Result<Self, RunnerError> {
        toml::from_str(text).map_err(|e| RunnerError::Config(format!("custom nodes manifest: {e}")))
    }

    pub fn read(path: &Path) -> Result<Self, RunnerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunnerError::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| RunnerError::Config(format!("{}: {e}", path.display())))
    }

    /// Every promised class, sorted, without duplicates.
    pub fn classes(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .node
            .iter()
            .flat_map(|n| n.classes.iter().map(|c| c.trim().to_string()))
            .filter(|c| !c.is_empty())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The promised classes ComfyUI does not know, or `None` when all are there.
pub fn missing_classes(
    object_info: &serde_json::Map<String, serde_json::Value>,
    required: &[String],
) -> Option<Vec<String>> {
    let missing: Vec<String> = required
        .iter()
        .filter(|c| !object_info.contains_key(c.as_str()))
        .cloned()
        .collect();
    (!missing.is_empty()).then_some(missing)
}

/// How long publishing the catalogue may take (reading `/object_info`, a blob write
/// and a store write).
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads ComfyUI's `/object_info` and publishes it as the node catalogue. Logs, never
/// fails: the catalogue is an early check; ComfyUI still validates every prompt.
pub async fn publish_catalogue(client: comfyui::Client, ports: jobs::ports::Ports, source: String) {
    let work = async {
        let info = client.object_info().await.map_err(|e| e.to_string())?;
        let bytes =
            serde_json::to_vec(&serde_json::Value::Object(info)).map_err(|e| e.to_string())?;
        let (store, blobs, clock) = (&ports.store, &ports.blobs, &ports.clock);
        jobs::catalogue::publish(
            store.as_ref(),
            blobs.as_ref(),
            clock.as_ref(),
            &bytes,
            &source,
        )
        .await
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, work).await {
        Ok(Ok(pointer)) => {
            tracing::info!(hash = %pointer.hash, classes = pointer.classes, "published the node catalogue")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not publish the node catalogue"),
        Err(_) => tracing::warn!("publishing the node catalogue timed out"),
    }
}

/// The reason a runner refuses jobs, as health shows it.
pub fn refusal_message(missing: &[String]) -> String {
    let named: Vec<&str> = missing.iter().take(MAX_NAMED).map(String::as_str).collect();
    let more = missing.len().saturating_sub(MAX_NAMED);
    let tail = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    format!(
        "custom node classes missing from ComfyUI: {}{tail}; see the runner log for why the custom nodes did not load",
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_lists_every_class_once() {
        let m = NodesManifest::parse(
            r#"
            [[node]]
            git = "https://example.com/a"
            ref = "0123456789abcdef0123456789abcdef01234567"
            classes = ["B", "A"]
            [[node]]
            registry = "x"
            version = "1.0.0"
            classes = ["A", " ", "C"]
            [[node]]
            registry = "y"
            version = "1.0.0"
            "#,
        )
        .unwrap();
        assert_eq!(m.classes(), ["A", "B", "C"]);
        // The stock manifest: comments only.
        let stock = NodesManifest::parse(include_str!("../custom-nodes.toml")).unwrap();
        assert!(stock.classes().is_empty());
        assert!(NodesManifest::parse("[[node]]\nclasses = 3").is_err());
    }

    #[test]
    fn missing_classes_are_named() {
        let info: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"KSampler": {}, "SaveImage": {}}"#).unwrap();
        assert_eq!(missing_classes(&info, &["KSampler".into()]), None);
        let missing = missing_classes(&info, &["KSampler".into(), "NotThere".into()]).unwrap();
        assert_eq!(missing, ["NotThere"]);
        assert!(refusal_message(&missing).contains("NotThere"));
        let many: Vec<String> = (0..25).map(|i| format!("C{i}")).collect();
        let msg = refusal_message(&many);
        assert!(msg.contains("C19") && !msg.contains("C20,") && msg.contains("and 5 more"));
    }
}
