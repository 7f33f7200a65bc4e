//! # comfyui-graph: a graph checked against a node catalogue, as ComfyUI checks it
//!
//! ComfyUI refuses a prompt in `POST /prompt` with
//! `{"error": {...}, "node_errors": {"<id>": {"errors": [...], "dependent_outputs": [...],
//! "class_type": "..."}}}` (see `docs/comfyui-protocol.md`). This crate is the one home of
//! that check ([`validate_prompt`]), written once over a [`Catalogue`] (what node classes
//! exist, their inputs and outputs):
//! - the simulator (`comfyui-sim`) implements [`Catalogue`] over its own node table, and
//!   answers `POST /prompt` with it;
//! - submit (`crates/jobs`) checks a job's graph against [`ObjectInfo`], the parsed
//!   `/object_info` a runner published, before any GPU starts, and answers 422 with the
//!   same `node_errors` so that tools that show ComfyUI's errors show ours.
//!
//! Why its own crate: `jobs` must not depend on the ComfyUI *client* (`crates/comfyui`,
//! reqwest and WebSockets: a submit Lambda has no use for them), and the simulator must
//! not carry a second validator. This crate needs only `serde_json`.
//!
//! What it checks, in ComfyUI's order and words: unknown class (`invalid_prompt`, first
//! offender only), no output node (`prompt_no_outputs`), missing required input, a link
//! from an output of another type (`return_type_mismatch`), a link to a node or an
//! output slot that does not exist (`exception_during_inner_validation`, with Python's
//! `KeyError` / `IndexError`), literals that do not convert (`invalid_input_type`),
//! numbers outside min/max, and combo values not in the list (a model not installed).
//! [`pyfmt`] reproduces how Python prints values, so the messages match byte for byte
//! (tests/captures.rs compares them with a real ComfyUI's answers).

mod catalogue;
pub mod pyfmt;
mod validate;

use std::borrow::Cow;

use serde_json::{Map, Value};

pub use catalogue::{CatalogueError, ObjectInfo};
pub use validate::{
    Crash, Rejected, Validated, class_of, validate_prompt, validate_prompt_unchanged,
};

/// What the checker needs to know about node classes.
pub trait Catalogue {
    /// `None`: no such class. `Some(true)`: an output node (`OUTPUT_NODE`).
    fn output_node(&self, class: &str) -> Option<bool>;
    /// `INPUT_TYPES()`: `{"required": {name: [type, options]}, "optional": {...}}`.
    fn input_types(&self, class: &str) -> Option<Cow<'_, Value>>;
    /// `RETURN_TYPES`, empty for an unknown class.
    fn returns(&self, class: &str) -> Cow<'_, [Value]>;
    /// Inputs named by the class's `VALIDATE_INPUTS`: their min/max/combo checks are
    /// skipped, and [`Catalogue::custom_validate`] runs instead.
    fn validate_inputs(&self, class: &str) -> Vec<String> {
        let _ = class;
        Vec::new()
    }
    /// `VALIDATE_INPUTS` itself: `(input, message)` for each failure.
    fn custom_validate(&self, class: &str, inputs: &Map<String, Value>) -> Vec<(String, String)> {
        let _ = (class, inputs);
        Vec::new()
    }
    /// A literal that something resolves before ComfyUI sees it (a `core/ASSET`
    /// reference the runner stages): no min/max/combo check. ComfyUI itself has none.
    fn resolved_later(&self, value: &Value) -> bool {
        let _ = value;
        false
    }
}

/// The checker's verdict in ComfyUI's 400 body shape, or `None` when ComfyUI would run
/// the whole graph. A graph ComfyUI would partly run (some outputs valid, a 200 with
/// `node_errors`) counts as refused: the runner treats it as a rejection too. The graph
/// is left as its user sent it (ComfyUI would coerce literals in place), and not copied.
pub fn check(catalogue: &impl Catalogue, graph: &Map<String, Value>) -> Option<Value> {
    let body = |error: Value, node_errors: Map<String, Value>| {
        pyfmt::obj([
            ("error", error),
            ("node_errors", Value::Object(node_errors)),
        ])
    };
    match validate::validate_prompt_unchanged(graph, None, catalogue) {
        Ok(Ok(v)) if v.node_errors.is_empty() => None,
        Ok(Ok(v)) => Some(body(
            validate::err(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                "",
                Value::Object(Map::new()),
            ),
            v.node_errors,
        )),
        Ok(Err(r)) => Some(body(r.error, r.node_errors)),
        // Where ComfyUI would raise (500), say so in the same shape.
        Err(Crash(e)) => Some(body(
            validate::err(
                "invalid_prompt",
                "The graph cannot be read by ComfyUI",
                &format!("{}: {}", e.ty, e.msg),
                Value::Object(Map::new()),
            ),
            Map::new(),
        )),
    }
}
