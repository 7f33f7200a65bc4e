//! The API-format graph: node ids, links, cycles, and inputs that name files, with
//! every problem reported per node and bounded.

use super::*;

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Per-node problems, collected so the client sees them at once, but bounded: the
/// first [`MAX_REPORTED_ERRORS`] are listed, the rest only counted.
#[derive(Default)]
struct NodeErrors {
    listed: BTreeMap<String, Vec<Value>>,
    first: Option<String>,
    reported: usize,
    omitted: usize,
}

impl NodeErrors {
    fn add(&mut self, node: &str, field: Option<&str>, reason: &str, message: String) {
        let message = clip(&message, MAX_MESSAGE_BYTES);
        if self.first.is_none() {
            self.first = Some(message.clone());
        }
        if self.reported >= MAX_REPORTED_ERRORS {
            self.omitted += 1;
            return;
        }
        self.reported += 1;
        self.listed
            .entry(clip(node, MAX_NODE_ID_BYTES))
            .or_default()
            .push(json!({
                "field": field.map(|f| clip(f, MAX_NODE_ID_BYTES)),
                "reason": reason,
                "message": message,
            }));
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// `s` cut to at most `max` bytes (on a char boundary), with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks a node id: 1–64 bytes of ASCII letters, digits, `_`, `-`, `:` and `.`, and
/// not `.` or `..`. Node ids become parts of storage keys (`outputs/{job}/{attempt}/{node}/…`).
pub fn check_node_id(id: &str) -> Result<(), String> {
    let shown = clip(id, 32);
    if id.is_empty() {
        return Err("a node id is empty".into());
    }
    if id.len() > MAX_NODE_ID_BYTES {
        return Err(format!(
            "node id {shown:?} is {} bytes; at most {MAX_NODE_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("node id {id:?} is not allowed"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
    {
        return Err(format!(
            "node id {shown:?} may only contain ASCII letters, digits, `_`, `-`, `:` and `.`"
        ));
    }
    Ok(())
}

/// Why a plain-string file name is refused, or `None` for a bare file name.
///
/// ComfyUI joins these names to its input folder without a containment check, so only a
/// bare name is safe: never absolute, no `..`, no `/` or `\`, no NUL, no
/// `[input]`/`[output]`/`[temp]` annotation, and not a name the runner staged for a job
/// ([`STAGED_NAME_PREFIX`]). That leaves the files the runner's image ships in its input
/// folder. (Issue 15 will also check the name against the image's catalogue; until then
/// this bare-name rule is the guard.) Uploaded files enter only through `core/ASSET`.
pub fn unsafe_file_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else if has_annotation(name) {
        Some("carries an [input]/[output]/[temp] annotation")
    } else if name.starts_with('/')
        || name.starts_with('\\')
        || name.as_bytes().get(1) == Some(&b':')
    {
        Some("is an absolute path")
    } else if name.contains("..") {
        Some("contains `..`")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.len() > MAX_FILE_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else if name.starts_with(STAGED_NAME_PREFIX) {
        Some("names a file staged for a job; send uploads as core/ASSET references")
    } else {
        None
    }
}

fn has_annotation(value: &str) -> bool {
    // ComfyUI tests `name.endswith("[output]")`, with or without the space.
    ANNOTATIONS.iter().any(|a| value.ends_with(a))
}

/// Checks one literal input: a file input ([`FILE_INPUTS`]) must be a bare file name
/// ([`unsafe_file_name`]), and no input may carry a folder annotation (custom nodes
/// resolve those too). `Err`: the message, naming node and input.
pub fn check_file_input(
    node_id: &str,
    class: Option<&str>,
    input: &str,
    value: &Value,
) -> Result<(), String> {
    let is_file_input = class.is_some_and(|c| FILE_INPUTS.contains(&(c, input)));
    let is_asset = value.get("__type").and_then(Value::as_str) == Some("core/ASSET");
    if is_file_input && (value.is_array() || (value.is_object() && !is_asset)) {
        // A link (or a wrapped value) is only known at run time, where nothing checks it:
        // a custom node with a `*` output could hand LoadImage any path.
        return Err(format!(
            "node {} input `{}` is a file input: give it a bare file name or a core/ASSET \
             reference, not a link or another object (its value could not be checked)",
            clip(node_id, MAX_NODE_ID_BYTES),
            clip(input, MAX_NODE_ID_BYTES),
        ));
    }
    let Value::String(name) = value else {
        return Ok(());
    };
    let why = if is_file_input {
        unsafe_file_name(name)
    } else if has_annotation(name) {
        Some("carries an [input]/[output]/[temp] annotation")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "node {} input `{}`: the file name {:?} {why}; a file input takes a bare file name, \
             and uploads go in as core/ASSET references",
            clip(node_id, MAX_NODE_ID_BYTES),
            clip(input, MAX_NODE_ID_BYTES),
            clip(name, 64),
        )),
    }
}

/// The first node id or literal file input of a workflow that must not reach ComfyUI:
/// `(node id, input, message)`. The runner's check before `POST /prompt`, for a job that
/// did not come through [`validate_workflow`].
pub fn first_unsafe_input(
    workflow: &Map<String, Value>,
) -> Option<(String, Option<String>, String)> {
    for (id, node) in workflow {
        if let Err(message) = check_node_id(id) {
            return Some((clip(id, MAX_NODE_ID_BYTES), None, message));
        }
        let class = node.get("class_type").and_then(Value::as_str);
        let Some(Value::Object(inputs)) = node.get("inputs") else {
            continue;
        };
        for (input, value) in inputs {
            if let Err(message) = check_file_input(id, class, input, value) {
                return Some((id.clone(), Some(clip(input, MAX_NODE_ID_BYTES)), message));
            }
        }
    }
    None
}

/// The message for a workflow in the editor's UI format.
pub const UI_FORMAT_MESSAGE: &str = "This is a ComfyUI UI-format workflow (it has `nodes` and `links`), \
     but the API runs the API format. In ComfyUI, open the workflow and use \
     Workflow → Export (API) (enable the dev mode options in the settings if the \
     menu entry is missing), then submit the exported file.";

/// True for the editor's UI format (`nodes` + `links` arrays).
pub fn is_ui_format(workflow: &Map<String, Value>) -> bool {
    workflow.get("nodes").is_some_and(Value::is_array) && workflow.contains_key("links")
}

/// Validates an API-format workflow graph and returns it (unwrapped from a saved
/// `/prompt` body if it was one).
pub fn validate_workflow(workflow: Value) -> Result<Map<String, Value>, DomainError> {
    let Value::Object(mut graph) = workflow else {
        return Err(DomainError::unprocessable(
            "invalid_workflow",
            format!(
                "`workflow` must be an object of nodes (node id → {{class_type, inputs}}), not {}",
                json_type(&workflow)
            ),
        ));
    };
    if is_ui_format(&graph) {
        return Err(DomainError::unprocessable(
            "workflow_format_ui",
            UI_FORMAT_MESSAGE,
        ));
    }
    // A saved `/prompt` request body: {"prompt": {...graph...}, "client_id": ...}.
    let is_saved_prompt_body = matches!(graph.get("prompt"), Some(Value::Object(_)))
        && !graph.values().any(|node| node.get("class_type").is_some());
    if is_saved_prompt_body {
        let Some(Value::Object(inner)) = graph.remove("prompt") else {
            unreachable!("checked above")
        };
        graph = inner;
        if is_ui_format(&graph) {
            return Err(DomainError::unprocessable(
                "workflow_format_ui",
                UI_FORMAT_MESSAGE,
            ));
        }
    }
    if graph.is_empty() {
        return Err(DomainError::unprocessable(
            "invalid_workflow",
            "the workflow has no nodes",
        ));
    }
    if graph.len() > MAX_NODES {
        return Err(DomainError::unprocessable(
            "workflow_too_large",
            format!(
                "the workflow has {} nodes; at most {MAX_NODES} are allowed",
                graph.len()
            ),
        )
        .with_details(json!({ "nodes": graph.len(), "max_nodes": MAX_NODES })));
    }

    let mut errors = NodeErrors::default();
    // Edges for the cycle check: node → the nodes it reads from.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, node) in &graph {
        if let Err(message) = check_node_id(id) {
            errors.add(id, None, "invalid_node_id", message);
        }
        let Value::Object(node) = node else {
            errors.add(
                id,
                None,
                "invalid_node",
                format!(
                    "node {id} must be an object with `class_type` and `inputs`, not {}",
                    json_type(node)
                ),
            );
            continue;
        };
        let class = node.get("class_type").and_then(Value::as_str);
        match node.get("class_type") {
            Some(Value::String(class)) if !class.trim().is_empty() => {}
            Some(Value::String(_)) => errors.add(
                id,
                Some("class_type"),
                "invalid_class_type",
                format!("node {id} has an empty `class_type`"),
            ),
            Some(other) => errors.add(
                id,
                Some("class_type"),
                "invalid_class_type",
                format!(
                    "node {id}: `class_type` must be a string, not {}",
                    json_type(other)
                ),
            ),
            None => errors.add(
                id,
                Some("class_type"),
                "missing_class_type",
                format!("node {id} has no `class_type`"),
            ),
        }
        let inputs = match node.get("inputs") {
            Some(Value::Object(inputs)) => inputs,
            Some(other) => {
                errors.add(
                    id,
                    Some("inputs"),
                    "invalid_inputs",
                    format!(
                        "node {id}: `inputs` must be an object, not {}",
                        json_type(other)
                    ),
                );
                continue;
            }
            None => {
                errors.add(
                    id,
                    Some("inputs"),
                    "missing_inputs",
                    format!("node {id} has no `inputs` object"),
                );
                continue;
            }
        };
        let sources = edges.entry(id.as_str()).or_default();
        for (name, value) in inputs {
            if let Err(message) = check_file_input(id, class, name, value) {
                errors.add(id, Some(name), "unsafe_file_input", message);
            }
            let Value::Array(link) = value else { continue };
            // ComfyUI reads every array input as a link.
            match link.as_slice() {
                [Value::String(source), Value::Number(index)] if index.as_u64().is_some() => {
                    if graph.contains_key(source) {
                        sources.push(source.as_str());
                    } else {
                        errors.add(
                            id,
                            Some(name),
                            "missing_link_source",
                            format!("node {id} input `{name}` links to node {source}, which is not in the workflow"),
                        );
                    }
                }
                _ => errors.add(
                    id,
                    Some(name),
                    "invalid_link",
                    format!(
                        "node {id} input `{name}` is an array, so it must be a link \
                         [\"<node id>\", <output index>] with a string id and a non-negative integer index"
                    ),
                ),
            }
        }
    }
    if errors.is_empty()
        && let Some(cycle) = find_cycle(&edges)
    {
        // Named once, on its first node: listing the whole cycle on each of its nodes
        // made a 10,000-node ring a 1.3 GB answer.
        let len = cycle.len() - 1;
        let mut shown = cycle
            .iter()
            .take(MAX_CYCLE_IDS_SHOWN)
            .map(|n| clip(n, MAX_NODE_ID_BYTES))
            .collect::<Vec<_>>()
            .join(" → ");
        if cycle.len() > MAX_CYCLE_IDS_SHOWN {
            shown.push_str(" → …");
        }
        errors.add(
            cycle[0],
            None,
            "cycle",
            format!(
                "node {} is part of a cycle of {len} node(s): {shown}",
                cycle[0]
            ),
        );
    }
    let Some(first) = errors.first.take() else {
        return Ok(graph);
    };
    let total = errors.reported + errors.omitted;
    let message = if total == 1 {
        format!("invalid workflow: {first}")
    } else {
        format!(
            "invalid workflow: {first} (and {} more problem(s))",
            total - 1
        )
    };
    let mut details = json!({ "node_errors": errors.listed });
    if errors.omitted > 0 {
        details["omitted_errors"] = json!(errors.omitted);
    }
    Err(DomainError::unprocessable("invalid_workflow", message).with_details(details))
}

/// Finds one cycle in the graph, iteratively (no recursion, so no stack overflow on a
/// long chain). Returns the node ids around the cycle.
fn find_cycle<'a>(edges: &HashMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    let mut roots: Vec<&&str> = edges.keys().collect();
    roots.sort();
    for root in roots {
        if marks.contains_key(*root) {
            continue;
        }
        // Stack of (node, index of the next edge to follow).
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::Visiting);
        while let Some((node, next)) = stack.last_mut() {
            let targets = edges.get(*node).map(Vec::as_slice).unwrap_or_default();
            if let Some(target) = targets.get(*next) {
                *next += 1;
                match marks.get(target) {
                    Some(Mark::Visiting) => {
                        let start = stack.iter().position(|(n, _)| n == target).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[start..].iter().map(|(n, _)| *n).collect();
                        cycle.push(target);
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(target, Mark::Visiting);
                        stack.push((target, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

/// The `core/ASSET` references in a workflow: `(node id, input name, asset id)`.
/// A reference without a string `info.id` is reported with an empty id.
pub fn asset_references(workflow: &Map<String, Value>) -> Vec<(String, String, String)> {
    let mut refs = Vec::new();
    for (node_id, node) in workflow {
        let Some(Value::Object(inputs)) = node.get("inputs") else {
            continue;
        };
        for (input, value) in inputs {
            if value.get("__type").and_then(Value::as_str) == Some("core/ASSET") {
                let id = value
                    .pointer("/info/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                refs.push((node_id.clone(), input.clone(), id.to_string()));
            }
        }
    }
    refs
}
