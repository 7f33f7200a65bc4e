//! `validate_prompt` and `validate_inputs` of ComfyUI 0.3.64's `execution.py`, over any
//! [`Catalogue`], with the same error types, messages, `extra_info` keys and quirks:
//! - class checks first, first offender only (`invalid_prompt`);
//! - an exception while validating an upstream node is filed under that upstream node but
//!   carries the *downstream* input's name and config (`exception_during_inner_validation`);
//! - `dependent_outputs` is appended for every failed node seen so far;
//! - literals are coerced in place (`"64"` → `64`), and history shows the coerced prompt.
//!
//! One difference: Python walks a node's inputs in `set` order (random per process); we
//! walk them in declaration order, so several errors on one node may come in another
//! order than a given real run.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use crate::Catalogue;
use crate::pyfmt::{PyErr, obj, py_eq, py_float, py_int, py_num, py_repr, py_str, py_truthy};

/// A Python exception escaped: aiohttp answers 500.
#[derive(Debug)]
pub struct Crash(pub PyErr);

/// What a prompt ComfyUI would queue: its output nodes that passed, and the errors of
/// the outputs it dropped (a 200 that carries `node_errors`).
#[derive(Debug)]
pub struct Validated {
    pub outputs: Vec<String>,
    pub node_errors: Map<String, Value>,
}

/// What ComfyUI answers 400 with: `{"error": .., "node_errors": ..}`.
#[derive(Debug)]
pub struct Rejected {
    pub error: Value,
    pub node_errors: Map<String, Value>,
}

pub(crate) fn err(ty: &str, message: &str, details: &str, extra: Value) -> Value {
    obj([
        ("type", json!(ty)),
        ("message", json!(message)),
        ("details", json!(details)),
        ("extra_info", extra),
    ])
}

fn fake_traceback(lines: &[(u32, &str)]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(n, f)| {
                json!(format!(
                    "  File \"/comfyui-sim/execution.py\", line {n}, in {f}\n    \u{2026}\n"
                ))
            })
            .collect(),
    )
}

type Result3 = (bool, Vec<Value>);

struct Ctx<'a, C: Catalogue + ?Sized> {
    prompt: &'a Map<String, Value>,
    catalogue: &'a C,
    /// The literals ComfyUI would coerce in place (node, input, value), when the caller
    /// wants them written back; `None` leaves the graph as it was, copying nothing.
    coerced: Option<&'a mut Vec<(String, String, Value)>>,
    validated: Vec<(String, Result3)>,
    /// Nodes being validated further up the stack: a cycle is Python's RecursionError.
    stack: Vec<String>,
}

impl<C: Catalogue + ?Sized> Ctx<'_, C> {
    fn get_validated(&self, id: &str) -> Option<&Result3> {
        self.validated.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }
    fn set_validated(&mut self, id: &str, r: Result3) {
        if let Some(e) = self.validated.iter_mut().find(|(k, _)| k == id) {
            e.1 = r;
        } else {
            self.validated.push((id.to_string(), r));
        }
    }
}

/// A node's `class_type`, or "" when it has none.
pub fn class_of(prompt: &Map<String, Value>, id: &str) -> String {
    prompt
        .get(id)
        .and_then(|n| n.get("class_type"))
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_string()
}

/// `validate_node_input`.
fn types_match(received: &Value, input: &Value) -> bool {
    if received == input {
        return true;
    }
    let (Some(r), Some(i)) = (received.as_str(), input.as_str()) else {
        return false;
    };
    let rs: Vec<&str> = r.split(',').map(str::trim).collect();
    let is: Vec<&str> = i.split(',').map(str::trim).collect();
    if rs.contains(&"*") || is.contains(&"*") {
        return true;
    }
    rs.iter().any(|t| is.contains(t))
}

fn validate_inputs<C: Catalogue + ?Sized>(ctx: &mut Ctx<C>, id: &str) -> Result<Result3, PyErr> {
    if let Some(r) = ctx.get_validated(id) {
        return Ok(r.clone());
    }
    if ctx.stack.iter().any(|s| s == id) || ctx.stack.len() > 900 {
        return Err(PyErr::new(
            "RecursionError",
            "maximum recursion depth exceeded",
        ));
    }
    ctx.stack.push(id.to_string());
    let r = validate_inputs_inner(ctx, id);
    ctx.stack.pop();
    r
}

fn validate_inputs_inner<C: Catalogue + ?Sized>(
    ctx: &mut Ctx<C>,
    id: &str,
) -> Result<Result3, PyErr> {
    let prompt = ctx.prompt;
    let node = prompt.get(id).unwrap_or(&Value::Null);
    let inputs = match node.get("inputs") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(PyErr::new(
                "TypeError",
                format!(
                    "argument of type '{}' is not iterable",
                    crate::pyfmt::py_type_name(other)
                ),
            ));
        }
        None => return Err(PyErr::key_error(&json!("inputs"))),
    };
    let class = class_of(ctx.prompt, id);
    let catalogue = ctx.catalogue;
    let class_inputs = catalogue.input_types(&class).unwrap_or_default();
    let skip_checks = catalogue.validate_inputs(&class);
    let mut errors = Vec::new();
    let mut valid = true;
    let mut coerced: Vec<(String, Value)> = Vec::new();

    for cat in ["required", "optional"] {
        let Some(Value::Object(defs)) = class_inputs.get(cat) else {
            continue;
        };
        for (x, def) in defs {
            let input_type = def.get(0).unwrap_or(&Value::Null);
            let no_options = json!({});
            let extra_info = def.get(1).unwrap_or(&no_options);
            // Built only for an error: a combo of thousands of model names is not copied
            // for every valid input.
            let info_pair = || json!([input_type, extra_info]);
            let Some(val) = inputs.get(x) else {
                if cat == "required" {
                    errors.push(err(
                        "required_input_missing",
                        "Required input is missing",
                        x,
                        json!({ "input_name": x }),
                    ));
                }
                continue;
            };
            if let Value::Array(link) = val {
                if link.len() != 2 {
                    errors.push(err(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        x,
                        json!({"input_name": x, "input_config": info_pair(), "received_value": val}),
                    ));
                    continue;
                }
                let o_id = &link[0];
                let o_key = match o_id {
                    Value::String(s) if ctx.prompt.contains_key(s) => s.clone(),
                    Value::Array(_) | Value::Object(_) => {
                        return Err(PyErr::new(
                            "TypeError",
                            format!("unhashable type: '{}'", crate::pyfmt::py_type_name(o_id)),
                        ));
                    }
                    other => return Err(PyErr::key_error(other)),
                };
                let o_class = class_of(ctx.prompt, &o_key);
                let returns = catalogue.returns(&o_class);
                let received_type = match &link[1] {
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        let i = n.as_i64().unwrap_or(i64::MAX);
                        let len = returns.len() as i64;
                        let idx = if i < 0 { i + len } else { i };
                        if idx < 0 || idx >= len {
                            return Err(PyErr::new("IndexError", "tuple index out of range"));
                        }
                        returns[idx as usize].clone()
                    }
                    Value::Bool(b) => {
                        let idx = *b as usize;
                        returns
                            .get(idx)
                            .cloned()
                            .ok_or_else(|| PyErr::new("IndexError", "tuple index out of range"))?
                    }
                    other => {
                        return Err(PyErr::new(
                            "TypeError",
                            format!(
                                "tuple indices must be integers or slices, not {}",
                                crate::pyfmt::py_type_name(other)
                            ),
                        ));
                    }
                };
                let received = received_type;
                if !types_match(&received, input_type) {
                    errors.push(err(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        &format!(
                            "{x}, received_type({}) mismatch input_type({})",
                            py_str(&received),
                            py_str(input_type)
                        ),
                        json!({"input_name": x, "input_config": info_pair(), "received_type": received, "linked_node": val}),
                    ));
                    continue;
                }
                match validate_inputs(ctx, &o_key) {
                    Ok((false, _)) => {
                        valid = false;
                        continue;
                    }
                    Ok(_) => {}
                    Err(ex) => {
                        valid = false;
                        let reasons = vec![err(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            &ex.msg,
                            json!({
                                "input_name": x,
                                "input_config": info_pair(),
                                "exception_message": ex.msg,
                                "exception_type": ex.ty,
                                "traceback": fake_traceback(&[(808, "validate_inputs"), (788, "validate_inputs")]),
                                "linked_node": val,
                            }),
                        )];
                        ctx.set_validated(&o_key, (false, reasons));
                        continue;
                    }
                }
            } else {
                // Borrowed until a coercion changes it: a long prompt is not copied.
                let raw: &Value = val;
                let mut val = Cow::Borrowed(raw);
                if let Value::Object(m) = raw
                    && let Some(inner) = m.get("__value__")
                {
                    val = Cow::Borrowed(inner);
                    coerced.push((x.clone(), inner.clone()));
                }
                let ty = input_type.as_str().unwrap_or("");
                let conv = match ty {
                    "INT" => Some(py_int(&val)),
                    "FLOAT" => Some(py_float(&val)),
                    // str() of a str is itself: nothing to convert.
                    "STRING" if val.is_string() => None,
                    "STRING" => Some(Ok(Value::String(py_str(&val)))),
                    "BOOLEAN" => Some(Ok(Value::Bool(py_truthy(&val)))),
                    _ => None,
                };
                match conv {
                    Some(Ok(v)) => {
                        coerced.push((x.clone(), v.clone()));
                        val = Cow::Owned(v);
                    }
                    Some(Err(ex)) => {
                        errors.push(err(
                            "invalid_input_type",
                            &format!("Failed to convert an input value to a {ty} value"),
                            &format!("{x}, {}, {}", py_str(&val), ex.msg),
                            json!({"input_name": x, "input_config": info_pair(), "received_value": val, "exception_message": ex.msg}),
                        ));
                        continue;
                    }
                    None => {}
                }
                if skip_checks.iter().any(|s| s == x) || catalogue.resolved_later(&val) {
                    continue;
                }
                if let (Some(min), Some(v)) = (extra_info.get("min"), py_num(&val))
                    && py_num(min).is_some_and(|m| v < m)
                {
                    errors.push(err(
                        "value_smaller_than_min",
                        &format!("Value {} smaller than min of {}", py_str(&val), py_str(min)),
                        x,
                        json!({"input_name": x, "input_config": info_pair(), "received_value": val}),
                    ));
                    continue;
                }
                if let (Some(max), Some(v)) = (extra_info.get("max"), py_num(&val))
                    && py_num(max).is_some_and(|m| v > m)
                {
                    errors.push(err(
                        "value_bigger_than_max",
                        &format!("Value {} bigger than max of {}", py_str(&val), py_str(max)),
                        x,
                        json!({"input_name": x, "input_config": info_pair(), "received_value": val}),
                    ));
                    continue;
                }
                // Newer servers spell a combo `["COMBO", {"options": [...]}]`.
                let options = match input_type {
                    Value::String(s) if s == "COMBO" => extra_info.get("options"),
                    other => Some(other),
                };
                if let Some(Value::Array(options)) = options
                    && !options.iter().any(|o| py_eq(o, &val))
                {
                    let (list_info, config) = if options.len() > 20 {
                        (format!("(list of length {})", options.len()), Value::Null)
                    } else {
                        let items: Vec<String> = options.iter().map(py_repr).collect();
                        (format!("[{}]", items.join(", ")), info_pair())
                    };
                    errors.push(err(
                        "value_not_in_list",
                        "Value not in list",
                        &format!("{x}: '{}' not in {list_info}", py_str(&val)),
                        json!({"input_name": x, "input_config": config, "received_value": val}),
                    ));
                    continue;
                }
            }
        }
    }

    if !skip_checks.is_empty() {
        // What the node's inputs are once coerced, as VALIDATE_INPUTS sees them.
        let mut inputs_now = inputs.clone();
        for (k, v) in &coerced {
            inputs_now.insert(k.clone(), v.clone());
        }
        let all_present = skip_checks
            .iter()
            .all(|n| inputs_now.contains_key(n.as_str()));
        if all_present {
            for (input, msg) in catalogue.custom_validate(&class, &inputs_now) {
                errors.push(err(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    &format!("{input} - {msg}"),
                    json!({ "input_name": input }),
                ));
            }
        }
    }

    // Written back by the caller, as ComfyUI coerces in place.
    if let Some(out) = ctx.coerced.as_mut() {
        out.extend(coerced.into_iter().map(|(k, v)| (id.to_string(), k, v)));
    }
    let r = (errors.is_empty() && valid, errors);
    ctx.set_validated(id, r.clone());
    Ok(r)
}

/// Validate a prompt in place, as ComfyUI does: its literals are coerced (`"64"` → `64`).
/// `Err(Crash)`: the real server would raise (500).
pub fn validate_prompt<C: Catalogue + ?Sized>(
    prompt: &mut Map<String, Value>,
    partial: Option<&Value>,
    catalogue: &C,
) -> Result<Result<Validated, Rejected>, Crash> {
    let mut coerced = Vec::new();
    let verdict = run(prompt, partial, catalogue, Some(&mut coerced));
    for (id, k, v) in coerced {
        if let Some(Value::Object(inputs)) = prompt.get_mut(&id).and_then(|n| n.get_mut("inputs")) {
            inputs.insert(k, v);
        }
    }
    verdict
}

/// The same verdict as [`validate_prompt`], leaving the prompt as it is (and copying
/// none of it).
pub fn validate_prompt_unchanged<C: Catalogue + ?Sized>(
    prompt: &Map<String, Value>,
    partial: Option<&Value>,
    catalogue: &C,
) -> Result<Result<Validated, Rejected>, Crash> {
    run(prompt, partial, catalogue, None)
}

fn run<'a, C: Catalogue + ?Sized>(
    prompt: &'a Map<String, Value>,
    partial: Option<&Value>,
    catalogue: &'a C,
    coerced: Option<&'a mut Vec<(String, String, Value)>>,
) -> Result<Result<Validated, Rejected>, Crash> {
    let mut outputs = Vec::new();
    for (id, node) in prompt.iter() {
        let class = match node {
            Value::Object(m) => m.get("class_type").cloned(),
            Value::String(s) => {
                if s.contains("class_type") {
                    return Err(Crash(PyErr::new(
                        "TypeError",
                        "string indices must be integers, not 'str'",
                    )));
                }
                None
            }
            Value::Array(a) => {
                if a.iter().any(|v| v == "class_type") {
                    return Err(Crash(PyErr::new(
                        "TypeError",
                        "list indices must be integers or slices, not str",
                    )));
                }
                None
            }
            other => {
                return Err(Crash(PyErr::new(
                    "TypeError",
                    format!(
                        "argument of type '{}' is not iterable",
                        crate::pyfmt::py_type_name(other)
                    ),
                )));
            }
        };
        let Some(class) = class else {
            return Ok(Err(Rejected {
                error: err(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ),
                node_errors: Map::new(),
            }));
        };
        let output_node = class.as_str().and_then(|c| catalogue.output_node(c));
        let Some(output_node) = output_node else {
            return Ok(Err(Rejected {
                error: err(
                    "invalid_prompt",
                    &format!(
                        "Cannot execute because node {} does not exist.",
                        py_str(&class)
                    ),
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ),
                node_errors: Map::new(),
            }));
        };
        if output_node {
            let included = match partial {
                None => true,
                Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(id)),
                Some(Value::Object(m)) => m.contains_key(id),
                Some(Value::String(s)) => s.contains(id.as_str()),
                Some(_) => return Err(Crash(PyErr::new("TypeError", "argument is not iterable"))),
            };
            if included {
                outputs.push(id.clone());
            }
        }
    }
    if outputs.is_empty() {
        return Ok(Err(Rejected {
            error: err("prompt_no_outputs", "Prompt has no outputs", "", json!({})),
            node_errors: Map::new(),
        }));
    }

    let mut ctx = Ctx {
        prompt,
        catalogue,
        coerced,
        validated: Vec::new(),
        stack: Vec::new(),
    };
    let mut good = Vec::new();
    let mut failed: Vec<(String, Vec<Value>)> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        let (valid, reasons) = match validate_inputs(&mut ctx, o) {
            Ok(r) => r,
            Err(ex) => {
                let reasons = vec![err(
                    "exception_during_validation",
                    "Exception when validating node",
                    &ex.msg,
                    json!({"exception_type": ex.ty, "traceback": fake_traceback(&[(1032, "validate_prompt"), (788, "validate_inputs")])}),
                )];
                ctx.set_validated(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        tracing::warn!(output = %o, "Failed to validate prompt for output {o}; output will be ignored");
        failed.push((o.clone(), reasons));
        for (node_id, (v, reasons)) in &ctx.validated {
            if !*v && !reasons.is_empty() {
                let entry = node_errors.entry(node_id.clone()).or_insert_with(|| {
                    obj([
                        ("errors", Value::Array(reasons.clone())),
                        ("dependent_outputs", json!([])),
                        ("class_type", json!(class_of(ctx.prompt, node_id))),
                    ])
                });
                if let Some(Value::Array(d)) = entry.get_mut("dependent_outputs") {
                    d.push(json!(o));
                }
            }
        }
    }
    if good.is_empty() {
        let lines: Vec<String> = failed
            .iter()
            .flat_map(|(_, errs)| {
                errs.iter().map(|e| {
                    format!(
                        "{}: {}",
                        e["message"].as_str().unwrap_or(""),
                        e["details"].as_str().unwrap_or("")
                    )
                })
            })
            .collect();
        return Ok(Err(Rejected {
            error: err(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                &lines.join("\n"),
                json!({}),
            ),
            node_errors,
        }));
    }
    Ok(Ok(Validated {
        outputs: good,
        node_errors,
    }))
}
