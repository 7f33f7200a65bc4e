//! Small helpers that reproduce how Python (the language ComfyUI is written in) turns
//! values into text, compares them and coerces them. The simulator needs them to produce
//! byte-for-byte the same error messages as the real server.

use serde_json::{Map, Number, Value};

/// A Python exception, as the simulator reports it: its qualified type name and `str(ex)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PyErr {
    pub ty: String,
    pub msg: String,
}

impl PyErr {
    pub fn new(ty: &str, msg: impl Into<String>) -> Self {
        PyErr {
            ty: ty.to_string(),
            msg: msg.into(),
        }
    }
    /// `KeyError(key)`: Python prints the key's repr.
    pub fn key_error(key: &Value) -> Self {
        PyErr::new("KeyError", py_repr(key))
    }
}

/// `repr(float)` in Python: shortest round-trip digits, `1.0`, `1e-05`, `1e+16`.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{}", f);
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

fn py_number_str(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        py_float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c)
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `repr(value)` for a value decoded from JSON (dicts, lists, str, int, float, bool, None).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => py_str_repr(s),
        other => py_str(other),
    }
}

/// `str(value)` for a value decoded from JSON.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => py_number_str(n),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(py_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python truthiness.
pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(true),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// The Python type name of a JSON value.
pub fn py_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Numeric value of a JSON number or bool, as Python would compare it.
pub fn py_num(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// `a == b` with Python semantics for JSON values (1 == 1.0 == True).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (py_num(a), py_num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).map(|w| py_eq(v, w)).unwrap_or(false))
            }
            _ => a == b,
        },
    }
}

fn int_value(i: i128) -> Value {
    if let Ok(v) = i64::try_from(i) {
        Value::from(v)
    } else if let Ok(v) = u64::try_from(i) {
        Value::from(v)
    } else {
        Value::from(i as f64)
    }
}

fn parse_py_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let v: i128 = clean.parse().ok()?;
    Some(if neg { -v } else { v })
}

fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim().replace('_', "");
    let lower = t.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if matches!(body, "inf" | "infinity" | "nan") {
        let neg = lower.starts_with('-');
        let v = if body == "nan" {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if neg { -v } else { v });
    }
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) {
        return None;
    }
    t.parse().ok()
}

/// `int(v)` in Python.
pub fn py_int(v: &Value) -> Result<Value, PyErr> {
    match v {
        Value::Bool(b) => Ok(Value::from(*b as i64)),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_nan() {
                    return Err(PyErr::new(
                        "ValueError",
                        "cannot convert float NaN to integer",
                    ));
                }
                if f.is_infinite() {
                    return Err(PyErr::new(
                        "OverflowError",
                        "cannot convert float infinity to integer",
                    ));
                }
                Ok(int_value(f.trunc() as i128))
            } else {
                Ok(v.clone())
            }
        }
        Value::String(s) => parse_py_int(s).map(int_value).ok_or_else(|| {
            PyErr::new(
                "ValueError",
                format!("invalid literal for int() with base 10: {}", py_str_repr(s)),
            )
        }),
        other => Err(PyErr::new(
            "TypeError",
            format!(
                "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                py_type_name(other)
            ),
        )),
    }
}

/// `float(v)` in Python.
pub fn py_float(v: &Value) -> Result<Value, PyErr> {
    let f = match v {
        Value::Bool(b) => *b as i64 as f64,
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => parse_py_float(s).ok_or_else(|| {
            PyErr::new(
                "ValueError",
                format!("could not convert string to float: {}", py_str_repr(s)),
            )
        })?,
        other => {
            return Err(PyErr::new(
                "TypeError",
                format!(
                    "float() argument must be a string or a real number, not '{}'",
                    py_type_name(other)
                ),
            ));
        }
    };
    // JSON cannot carry inf/nan; Python would keep them. Clamp to a representable value.
    Ok(Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null))
}

/// Python's `round()` for floats: half to even.
pub fn py_round(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// A JSON object from pairs, in order.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(1e-5), "1e-05");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(123456.5), "123456.5");
        assert_eq!(py_float_repr(2.5e-7), "2.5e-07");
    }

    #[test]
    fn str_and_repr() {
        assert_eq!(py_repr(&json!("99")), "'99'");
        assert_eq!(
            py_str(&json!({"a": [1, "b", null, true]})),
            "{'a': [1, 'b', None, True]}"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
    }

    #[test]
    fn coercions() {
        assert_eq!(py_int(&json!("64")).unwrap(), json!(64));
        assert_eq!(py_int(&json!(64.9)).unwrap(), json!(64));
        assert_eq!(
            py_int(&json!("64.0")).unwrap_err().msg,
            "invalid literal for int() with base 10: '64.0'"
        );
        assert_eq!(py_float(&json!("1.5")).unwrap(), json!(1.5));
        assert_eq!(py_float(&json!(2)).unwrap(), json!(2.0));
        assert!(py_truthy(&json!("false")));
        assert_eq!(py_round(2.5), 2.0);
        assert_eq!(py_round(3.5), 4.0);
    }
}
