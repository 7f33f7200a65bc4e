//! The client's errors: one enum, one clear line each.
//!
//! Every failure a command can meet is a [`ClientError`]. Its `Display` is the whole
//! message the user sees (after `error: `), written to say what happened *and* what to
//! do: a refused connection says to start a server or fix `--url`, a 401 says where the
//! key goes, a 5xx says to retry and look at the server's health. The server's own error
//! code and message are always shown as the server sent them.
//!
//! Nothing here ever holds the API key, so no error can print it.
//!
//! All of these end the process with exit code 3 ([`ClientError::EXIT_CODE`]): usage
//! and connection problems. A job that ran and failed is not an error of the client: it
//! is an outcome, with its own exit code (see [`super::commands`]).

use std::path::PathBuf;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line asks for something impossible (an unknown node in `--set`, a
    /// malformed `--label`, a UI-format workflow, ...). The message says what to change.
    #[error("{0}")]
    Usage(String),

    /// A local file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A local file could not be written (downloads).
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },

    /// `--url` / `COMFY_BASE_URL` is not an http(s) URL.
    #[error(
        "bad server URL {url:?}: {reason}. Pass the server's base URL, e.g. --url http://127.0.0.1:8787 \
         (or set COMFY_BASE_URL)"
    )]
    BadUrl { url: String, reason: String },

    /// Nothing answered at the server's address.
    #[error(
        "cannot connect to {url}: {reason}. Is the server running? Start one with \
         `serverless-comfyui dev`, or point --url (or COMFY_BASE_URL) at a Comfy API v2 server"
    )]
    Connect { url: String, reason: String },

    /// The server took too long, or the connection broke mid-answer.
    #[error("{url} did not answer ({reason}); check the network and the server, then retry")]
    Transport { url: String, reason: String },

    /// 401: no key, or a key the server refused.
    #[error("{}", unauthorized_line(message, *sent_key))]
    Unauthorized { message: String, sent_key: bool },

    /// 5xx: the server failed. Not the request's fault.
    #[error(
        "the server failed: {status} {code}: {message}. Retry in a moment; if it persists, check \
         the server's logs and GET /api/v2/health"
    )]
    Server {
        status: u16,
        code: String,
        message: String,
    },

    /// Any other error envelope (4xx): the server's code and message.
    #[error("{}", api_line(code, message, details.as_ref()))]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Option<Value>,
    },

    /// The answer is not Comfy API v2 (no error envelope, or a body that does not parse).
    #[error(
        "{url} answered {what}, which is not a Comfy API v2 response; is --url (or COMFY_BASE_URL) \
         the base URL of a Comfy API v2 server?"
    )]
    NotV2 { url: String, what: String },

    /// A downloaded output does not match what the server said about it.
    #[error("download of {what} failed: {reason}")]
    Download { what: String, reason: String },
}

impl ClientError {
    /// The exit code of every client error: usage or connection problems.
    pub const EXIT_CODE: u8 = 3;

    /// The server's machine code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } | ClientError::Server { code, .. } => Some(code),
            ClientError::Unauthorized { .. } => Some("unauthorized"),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Server { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// A machine-readable form, for `--json` callers that read stderr.
    pub fn to_json(&self) -> Value {
        let mut error = serde_json::json!({
            "code": self.code().unwrap_or(match self {
                ClientError::Usage(_) => "usage",
                ClientError::ReadFile { .. } | ClientError::WriteFile { .. } => "file",
                ClientError::BadUrl { .. } => "bad_url",
                ClientError::Connect { .. } => "connect",
                ClientError::Transport { .. } => "transport",
                ClientError::NotV2 { .. } => "not_v2",
                ClientError::Download { .. } => "download",
                _ => "error",
            }),
            "message": self.to_string(),
        });
        if let Some(status) = self.status() {
            error["status"] = status.into();
        }
        if let ClientError::Api {
            details: Some(details),
            ..
        } = self
        {
            error["details"] = details.clone();
        }
        serde_json::json!({ "error": error })
    }
}

fn unauthorized_line(message: &str, sent_key: bool) -> String {
    if sent_key {
        format!(
            "unauthorized: {message}. The server refused the API key: pass a valid one with \
             --api-key or COMFY_API_KEY (for `dev`: serverless-comfyui keys create --tenant NAME)"
        )
    } else {
        format!(
            "unauthorized: {message}. This server requires an API key: set COMFY_API_KEY or pass \
             --api-key (for `dev`: serverless-comfyui keys create --tenant NAME)"
        )
    }
}

/// `code: message`, plus the per-node problems of an `invalid_workflow`, on one line.
fn api_line(code: &str, message: &str, details: Option<&Value>) -> String {
    let mut line = format!("{code}: {message}");
    let node_errors = details
        .and_then(|d| d.get("node_errors"))
        .and_then(Value::as_object);
    if let Some(node_errors) = node_errors {
        let mut parts = Vec::new();
        for (node, problems) in node_errors {
            for problem in problems.as_array().into_iter().flatten() {
                let text = problem
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| problem.to_string());
                if message.contains(&text) {
                    continue;
                }
                parts.push(if text.contains(&format!("node {node}")) {
                    text
                } else {
                    format!("node {node}: {text}")
                });
            }
        }
        if !parts.is_empty() {
            line.push_str(" (");
            line.push_str(&parts.join("; "));
            line.push(')');
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_errors_are_listed_on_the_line() {
        let e = ClientError::Api {
            status: 422,
            code: "invalid_workflow".into(),
            message: "the workflow is invalid".into(),
            details: Some(json!({"node_errors": {"3": [
                {"field": "model", "reason": "missing_link_source", "message": "node 3 input `model` links to node 4, which is not in the workflow"}
            ], "9": [{"message": "bad"}]}})),
        };
        assert_eq!(
            e.to_string(),
            "invalid_workflow: the workflow is invalid (node 3 input `model` links to node 4, \
             which is not in the workflow; node 9: bad)"
        );
        assert_eq!(e.to_json()["error"]["code"], "invalid_workflow");
        assert_eq!(e.to_json()["error"]["status"], 422);
    }

    #[test]
    fn unauthorized_says_what_to_do() {
        let without = ClientError::Unauthorized {
            message: "missing credentials".into(),
            sent_key: false,
        };
        assert!(without.to_string().contains("COMFY_API_KEY"));
        let with = ClientError::Unauthorized {
            message: "invalid API key".into(),
            sent_key: true,
        };
        assert!(with.to_string().contains("refused the API key"));
    }
}
