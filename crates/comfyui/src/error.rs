use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never got an HTTP answer (connection refused, reset, timeout...).
    #[error("cannot reach ComfyUI at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP answer with an unexpected status. ComfyUI's 5xx bodies are plain text,
    /// never a JSON envelope.
    #[error("ComfyUI answered {status} to {method} {path}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    /// `POST /prompt` refused the prompt (400), or accepted it with `node_errors` (200;
    /// then `queued` is true and the valid outputs are on the queue).
    #[error("{0}")]
    Rejected(Box<PromptRejection>),
    /// A body that does not have the shape the protocol promises.
    #[error("unexpected answer from ComfyUI ({what}): {detail}")]
    Decode { what: String, detail: String },
    /// The WebSocket could not be opened.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The server is gone: the WebSocket dropped and neither it nor HTTP came back.
    #[error("ComfyUI is unreachable: {0}")]
    ServerGone(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Our prompt is neither on the queue nor in history (server restarted, history
    /// evicted, or deleted by someone else).
    #[error("prompt {0} is neither queued, running nor in history")]
    PromptLost(String),
    /// Not an API-format workflow (UI format, or not a workflow at all).
    #[error("invalid workflow: {0}")]
    InvalidWorkflow(String),
    #[error("invalid URL: {0}")]
    Url(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation error (`error` of a 400, or an entry of `node_errors[id].errors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub extra_info: Value,
}

/// `node_errors[id]`: the errors of one node and the output nodes it blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeError {
    #[serde(default)]
    pub errors: Vec<PromptError>,
    #[serde(default)]
    pub dependent_outputs: Vec<String>,
    #[serde(default)]
    pub class_type: String,
}

/// Why `POST /prompt` did not cleanly accept a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRejection {
    pub prompt_id: String,
    /// 400, or 200 when only some outputs failed validation.
    pub http_status: u16,
    /// The top-level error (`prompt_outputs_failed_validation`, `invalid_prompt`,
    /// `prompt_no_outputs`, `no_prompt`, `missing_node_type`, `invalid_prompt_id`...).
    /// On a 200 with `node_errors` there is none, and this is synthesised with type
    /// `partial_validation_failure`.
    pub error: PromptError,
    /// Per-node causes. `error.details` is often empty: read these.
    pub node_errors: BTreeMap<String, NodeError>,
    /// The valid outputs were queued anyway (200 with `node_errors`): cancel the prompt
    /// if you treat this as a failure (`run_prompt` does).
    pub queued: bool,
}

impl fmt::Display for PromptRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ComfyUI rejected the prompt: {}: {}",
            self.error.kind, self.error.message
        )?;
        if !self.error.details.is_empty() {
            write!(f, " ({})", self.error.details)?;
        }
        for (id, ne) in &self.node_errors {
            for e in &ne.errors {
                write!(
                    f,
                    "; node {id} ({}): {}: {}",
                    ne.class_type, e.message, e.details
                )?;
            }
        }
        if self.queued {
            write!(f, "; the valid outputs were queued")?;
        }
        Ok(())
    }
}

/// What [`scrub_paths`] puts where a server path was.
pub const PATH_PLACEHOLDER: &str = "<path>";

/// ComfyUI's error text with every absolute server path replaced by [`PATH_PLACEHOLDER`]:
/// its messages and tracebacks name files (`cannot identify image file
/// '/opt/ComfyUI/input/x.png'`, `File "/usr/lib/python3/…", line 5`), and those must not
/// reach clients. A path is a `/` (or `C:\`) that starts a word, up to the next space,
/// quote or bracket, with at least one more separator in it; URLs (`http://…`) and
/// route names (`/view`) are left alone. The one home of this rule.
pub fn scrub_paths(text: &str) -> String {
    const ENDS: &[char] = &[
        ' ', '\t', '\n', '\r', '\'', '"', '(', ')', '[', ']', '<', '>', ',', ';', '`',
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let word_start = prev.is_none_or(|p| ENDS.contains(&p) || p == '=');
        let bytes = rest.as_bytes();
        let unix = c == '/' && bytes.get(1).is_some_and(|b| *b != b'/' && *b != b' ');
        let windows = c.is_ascii_alphabetic()
            && bytes.get(1) == Some(&b':')
            && matches!(bytes.get(2), Some(b'\\') | Some(b'/'));
        if word_start && (unix || windows) {
            let end = rest.find(ENDS).unwrap_or(rest.len());
            let token = &rest[..end];
            let separators = token.matches(['/', '\\']).count();
            if separators >= 2 || windows {
                out.push_str(PATH_PLACEHOLDER);
                prev = token.chars().last();
                rest = &rest[end..];
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_scrubbed() {
        let cases = [
            (
                "cannot identify image file '/opt/ComfyUI/input/x.png'",
                "cannot identify image file '<path>'",
            ),
            (
                "[Errno 2] No such file or directory: '/etc/hostname'",
                "[Errno 2] No such file or directory: '<path>'",
            ),
            (
                "  File \"/usr/lib/python3/site.py\", line 5, in f\n",
                "  File \"<path>\", line 5, in f\n",
            ),
            (
                "open C:\\ComfyUI\\input\\a.png failed",
                "open <path> failed",
            ),
            ("path=/srv/data/blobs/cas/t1/ab", "path=<path>"),
            ("at /a/b and /c/d", "at <path> and <path>"),
            // Not paths: URLs, single route names, relative names, fractions.
            (
                "cannot reach ComfyUI at http://127.0.0.1:8188/prompt",
                "cannot reach ComfyUI at http://127.0.0.1:8188/prompt",
            ),
            (
                "ComfyUI answered 404 to GET /view",
                "ComfyUI answered 404 to GET /view",
            ),
            (
                "Invalid image file: ../../x.png",
                "Invalid image file: ../../x.png",
            ),
            ("step 1/2 of 3/4", "step 1/2 of 3/4"),
            ("é /ü/ö ok", "é <path> ok"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub_paths(input), want, "{input}");
        }
    }
}
