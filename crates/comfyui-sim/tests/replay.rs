//! Replays every transcript in `tests/captures/` (what a real ComfyUI 0.3.64 did)
//! against the simulator and compares the WebSocket message-type sequences, the message
//! bodies and the HTTP responses (status, content type, body), ignoring timing and
//! generated ids.
//!
//! Normalisation (applied to both sides, see `norm`):
//! - prompt ids, sids and other UUIDs; `timestamp`; the queue `number` (the real server's
//!   counter had run other prompts before each capture);
//! - `traceback` contents (Python frames; the simulator has its own);
//! - absolute folders inside `exception_message`;
//! - the 5 random letters of PreviewImage's `_temp_xxxxx_` file names;
//! - progress `value`s that are fractions (TestSleep ticks elapsed wall time);
//! - the order of `node_errors[*].errors` and of `current_outputs` (Python set order,
//!   random per process).
//!
//! Documented exceptions (see the crate README):
//! - Runs of `progress_state`/`progress` tick pairs are collapsed to one pair: the count
//!   depends on timing.
//! - `queue_ops`: `status` broadcasts caused by the client's own requests during a run
//!   interleave with the run's events according to timing; the non-`status` sequence and
//!   the sequence of `status` values are compared separately.
//! - `queue_ops`: `/history?max_items=2` returned an older interrupted run as its first
//!   entry; the simulator starts empty, so a normal run stands in for it and only the
//!   entry count and the last entry are compared.
//! - `wsimage`: binary frames are compared by event type, image format and the PNG
//!   signature (the first 16 bytes), not by length: another PNG encoder.
//! - Slow nodes: the real 2048² blurs took ~4.5 s each; the simulator gets the same
//!   interleaving from the `slow_node_ms` fault instead of spending real time.

use std::path::PathBuf;
use std::time::Duration;

use comfyui_sim::{Faults, SimConfig, SimHandle, Simulator};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(20);

fn captures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

fn load(name: &str) -> Value {
    let p = captures_dir().join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&s).expect("capture is JSON")
}

async fn sim(faults: Faults) -> SimHandle {
    Simulator::start(SimConfig {
        faults,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

#[derive(Debug, Clone)]
enum Frame {
    Text(Value),
    Binary(Vec<u8>),
}

impl Frame {
    fn kind(&self) -> String {
        match self {
            Frame::Text(v) => v["type"].as_str().unwrap_or("?").to_string(),
            Frame::Binary(_) => "binary".into(),
        }
    }
}

struct Ws {
    rx: mpsc::UnboundedReceiver<Frame>,
    seen: Vec<Frame>,
}

impl Ws {
    async fn connect(sim: &SimHandle, client_id: &str, feature_flags: bool) -> Ws {
        let url = format!("{}?clientId={client_id}", sim.ws_url());
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        if feature_flags {
            ws.send(Message::Text(
                json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let f = match m {
                    Message::Text(t) => Frame::Text(serde_json::from_str(t.as_str()).unwrap()),
                    Message::Binary(b) => Frame::Binary(b.to_vec()),
                    _ => continue,
                };
                if tx.send(f).is_err() {
                    break;
                }
            }
        });
        let mut w = Ws {
            rx,
            seen: Vec::new(),
        };
        w.wait(|f| f.kind() == "status").await;
        if feature_flags {
            w.wait(|f| f.kind() == "feature_flags").await;
        }
        w
    }

    async fn wait(&mut self, pred: impl Fn(&Frame) -> bool) -> Frame {
        let fut = async {
            loop {
                let f = self.rx.recv().await.expect("ws still open");
                self.seen.push(f.clone());
                if pred(&f) {
                    return f;
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .expect("frame in time")
    }

    async fn wait_done(&mut self, pid: &str) {
        let pid = pid.to_string();
        self.wait(move |f| match f {
            Frame::Text(v) => {
                v["type"] == "executing"
                    && v["data"]["node"].is_null()
                    && v["data"]["prompt_id"] == pid.as_str()
            }
            _ => false,
        })
        .await;
    }

    async fn settle(&mut self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        while let Ok(f) = self.rx.try_recv() {
            self.seen.push(f);
        }
    }
}

struct Http {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

async fn http(method: &str, url: String, body: Option<Vec<u8>>) -> Http {
    let c = reqwest::Client::new();
    let mut rb = if method == "GET" {
        c.get(url)
    } else {
        c.post(url)
    };
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let r = rb.send().await.expect("http");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = r.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&bytes).to_string())
    };
    Http {
        status,
        content_type,
        body,
    }
}

fn is_uuid_like(s: &str) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    (s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                hex(c)
            }
        }))
        || (s.len() == 32 && s.chars().all(hex))
}

fn strip_dirs(s: &str) -> String {
    // "cannot identify image file '/opt/ComfyUI/input/x.png'" -> "... '<dir>/x.png'"
    let mut out = s.to_string();
    for folder in ["/input/", "/output/", "/temp/"] {
        while let Some(i) = out.find(folder) {
            let start = out[..i].rfind(['\'', ' ']).map(|j| j + 1).unwrap_or(0);
            out = format!("{}<dir>/{}", &out[..start], &out[i + folder.len()..]);
        }
    }
    out
}

fn norm_temp_name(s: &str) -> String {
    match s.find("_temp_") {
        Some(i) if s.len() >= i + 11 => format!("{}_temp_<r>{}", &s[..i], &s[i + 11..]),
        _ => s.to_string(),
    }
}

fn norm(v: &Value, key: &str) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let nk = if is_uuid_like(k) {
                    "<uuid>".to_string()
                } else {
                    k.clone()
                };
                let nv = match k.as_str() {
                    "timestamp" => json!("<ts>"),
                    "traceback" => json!("<traceback>"),
                    "number" if x.is_number() => {
                        json!(if x.is_f64() { "<float>" } else { "<int>" })
                    }
                    "exception_message" => json!(strip_dirs(x.as_str().unwrap_or(""))),
                    "current_outputs" => {
                        let mut a: Vec<String> = x
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_string())
                            .collect();
                        a.sort();
                        json!(a)
                    }
                    "errors" if x.is_array() => {
                        let mut a: Vec<Value> =
                            x.as_array().unwrap().iter().map(|e| norm(e, "")).collect();
                        a.sort_by_key(|e| e.to_string());
                        Value::Array(a)
                    }
                    "value" if x.as_f64().is_some_and(|f| x.is_f64() && f.fract() != 0.0) => {
                        json!("<frac>")
                    }
                    "filename" => json!(norm_temp_name(x.as_str().unwrap_or(""))),
                    _ => norm(x, k),
                };
                out.insert(nk, nv);
            }
            Value::Object(out)
        }
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(|x| norm(x, "")).collect();
            // Queue and history tuples: [number, prompt_id, prompt, extra_data, outputs].
            let tuple_ctx = matches!(key, "prompt" | "queue_running" | "queue_pending" | "tuple");
            if tuple_ctx && items.len() == 5 && items[0].is_number() && items[1].is_string() {
                items[0] = json!("<number>");
            }
            if matches!(key, "queue_running" | "queue_pending") {
                items = a.iter().map(|x| norm(x, "tuple")).collect();
            }
            Value::Array(items)
        }
        Value::String(s) if is_uuid_like(s) => json!("<uuid>"),
        other => other.clone(),
    }
}

#[track_caller]
fn same(label: &str, real: &Value, sim: &Value) {
    let (r, s) = (norm(real, ""), norm(sim, ""));
    assert!(
        r == s,
        "{label} differs\n  real: {}\n  sim:  {}",
        serde_json::to_string(&r).unwrap(),
        serde_json::to_string(&s).unwrap()
    );
}

#[track_caller]
fn same_http(label: &str, real: &Value, sim: &Http) {
    assert_eq!(
        real["status"].as_u64().unwrap() as u16,
        sim.status,
        "{label}: status"
    );
    assert_eq!(
        real["content_type"].as_str(),
        sim.content_type.as_deref(),
        "{label}: content type"
    );
    same(label, &real["body"], &sim.body);
}

fn real_frames(cap: &Value) -> Vec<Frame> {
    cap["ws"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| match f["kind"].as_str() {
            Some("text") => Some(Frame::Text(f["msg"].clone())),
            Some("binary") => Some(Frame::Binary(
                (0..f["head_hex"].as_str().unwrap().len() / 2)
                    .map(|i| {
                        u8::from_str_radix(&f["head_hex"].as_str().unwrap()[2 * i..2 * i + 2], 16)
                            .unwrap()
                    })
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Collapse runs of `progress_state, progress` tick pairs (and a run of binary frames
/// between them) to the first pair.
fn collapse_ticks(frames: &[Frame]) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let is_pair = i + 1 < frames.len()
            && frames[i].kind() == "progress_state"
            && frames[i + 1].kind() == "progress";
        if is_pair {
            let n = out.len();
            let prev_pair =
                n >= 2 && out[n - 2].kind() == "progress_state" && out[n - 1].kind() == "progress";
            if !prev_pair {
                out.push(frames[i].clone());
                out.push(frames[i + 1].clone());
            }
            i += 2;
        } else {
            out.push(frames[i].clone());
            i += 1;
        }
    }
    out
}

#[track_caller]
fn same_frames(label: &str, real: &[Frame], sim: &[Frame], collapse: bool) {
    let (real, sim) = if collapse {
        (collapse_ticks(real), collapse_ticks(sim))
    } else {
        (real.to_vec(), sim.to_vec())
    };
    let rk: Vec<String> = real.iter().map(Frame::kind).collect();
    let sk: Vec<String> = sim.iter().map(Frame::kind).collect();
    assert_eq!(rk, sk, "{label}: message types differ");
    for (i, (r, s)) in real.iter().zip(&sim).enumerate() {
        match (r, s) {
            (Frame::Text(r), Frame::Text(s)) => {
                same(&format!("{label}: message {i} ({})", rk[i]), r, s)
            }
            (Frame::Binary(r), Frame::Binary(s)) => {
                assert_eq!(
                    &s[..r.len().min(s.len())],
                    &r[..],
                    "{label}: binary frame {i} header"
                )
            }
            _ => unreachable!(),
        }
    }
}

fn write_probe_png(sim: &SimHandle, name: &str) {
    let (w, h) = (40u32, 30u32);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.extend([(x * 6) as u8, (y * 8) as u8, 128]);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }
    std::fs::write(sim.input_dir().join(name), out).unwrap();
}

#[derive(Default)]
struct Opts {
    feature_flags: bool,
    faults: Faults,
    /// Run the same request once before the replay (warm the cache).
    warm: bool,
    /// Send `/interrupt` when this frame arrives.
    interrupt_on: Option<fn(&Frame) -> bool>,
    collapse: bool,
}

/// The single-prompt captures: WS first, then POST /prompt, then history and queue.
async fn replay(name: &str, opts: Opts) {
    let cap = load(name);
    let sim = sim(opts.faults.clone()).await;
    let base = sim.base_url();
    write_probe_png(&sim, "probe_in.png");
    std::fs::write(
        sim.input_dir().join("probe_broken.png"),
        b"this is not an image",
    )
    .unwrap();
    let body = match &cap["request_body"] {
        // no_prompt: the body had a client_id and no prompt.
        Value::Null => serde_json::to_vec(&json!({"client_id": "replay"})).unwrap(),
        b => serde_json::to_vec(b).unwrap(),
    };
    if opts.warm {
        let cid = "warm-up";
        let mut ws = Ws::connect(&sim, cid, false).await;
        let mut req = cap["request_body"].clone();
        req["client_id"] = json!(cid);
        let r = http(
            "POST",
            format!("{base}/prompt"),
            Some(serde_json::to_vec(&req).unwrap()),
        )
        .await;
        ws.wait_done(r.body["prompt_id"].as_str().unwrap()).await;
    }
    let client_id = cap["client_id"].as_str().unwrap_or("replay");
    let mut ws = if cap["ws"].as_array().unwrap().is_empty() {
        None
    } else {
        Some(Ws::connect(&sim, client_id, opts.feature_flags).await)
    };
    let body = if name == "bad_json.json" {
        b"{not json".to_vec()
    } else {
        body
    };
    let post = http("POST", format!("{base}/prompt"), Some(body)).await;
    same_http(&format!("{name}: POST /prompt"), &cap["post"], &post);

    if post.status == 200 {
        let pid = post.body["prompt_id"].as_str().unwrap().to_string();
        let ws = ws.as_mut().unwrap();
        if let Some(trigger) = opts.interrupt_on {
            ws.wait(trigger).await;
            let r = http("POST", format!("{base}/interrupt"), None).await;
            same_http(&format!("{name}: POST /interrupt"), &cap["interrupt"], &r);
        }
        ws.wait_done(&pid).await;
        let h = http("GET", format!("{base}/history/{pid}"), None).await;
        same_http(&format!("{name}: GET /history"), &cap["history"], &h);
        let q = http("GET", format!("{base}/queue"), None).await;
        same_http(&format!("{name}: GET /queue"), &cap["queue_after"], &q);
    }
    if let Some(ws) = ws.as_mut() {
        ws.settle().await;
        same_frames(name, &real_frames(&cap), &ws.seen, opts.collapse);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn normal() {
    replay("normal.json", Opts::default()).await;
}

#[tokio::test]
async fn cached() {
    replay(
        "cached.json",
        Opts {
            warm: true,
            ..Opts::default()
        },
    )
    .await;
}

#[tokio::test]
async fn load_scale_blur() {
    replay("load.json", Opts::default()).await;
}

#[tokio::test]
async fn preview_flags() {
    replay(
        "preview_flags.json",
        Opts {
            feature_flags: true,
            ..Opts::default()
        },
    )
    .await;
}

#[tokio::test]
async fn runtime_error() {
    replay("runtime_error.json", Opts::default()).await;
}

fn executing(node: &'static str) -> impl Fn(&Frame) -> bool {
    move |f| matches!(f, Frame::Text(v) if v["type"] == "executing" && v["data"]["node"] == node)
}

#[tokio::test]
async fn interrupt_between_nodes() {
    replay(
        "interrupt.json",
        Opts {
            faults: Faults {
                slow_node_ms: 300,
                ..Faults::default()
            },
            interrupt_on: Some(|f| executing("2")(f)),
            ..Opts::default()
        },
    )
    .await;
}

#[tokio::test]
async fn slow_chain() {
    replay("slow.json", Opts::default()).await;
}

#[tokio::test]
async fn sleep_progress() {
    replay(
        "sleep_progress.json",
        Opts {
            collapse: true,
            ..Opts::default()
        },
    )
    .await;
}

#[tokio::test]
async fn sleep_interrupt() {
    replay(
        "sleep_interrupt.json",
        Opts {
            collapse: true,
            interrupt_on: Some(|f| f.kind() == "progress"),
            ..Opts::default()
        },
    )
    .await;
}

#[tokio::test]
async fn wsimage_binary_frames() {
    replay("wsimage.json", Opts::default()).await;
}

#[tokio::test]
async fn validation_errors() {
    for name in [
        "bad_class.json",
        "bad_combo.json",
        "bad_link.json",
        "bad_value.json",
        "missing_input.json",
        "no_outputs.json",
        "no_prompt.json",
        "bad_json.json",
    ] {
        replay(name, Opts::default()).await;
    }
}

#[tokio::test]
async fn queue_ops() {
    let cap = load("queue_ops.json");
    let steps: Vec<(String, Value)> = cap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (k, v) = s.as_object().unwrap().iter().next().unwrap();
            (k.clone(), v.clone())
        })
        .collect();
    let step = |n: &str| steps.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let sim = sim(Faults {
        slow_node_ms: 300,
        ..Faults::default()
    })
    .await;
    let base = sim.base_url();

    // Stand-in for the older run that `history?max_items=2` returned first.
    {
        let mut ws = Ws::connect(&sim, "warm-up", false).await;
        let r = http(
            "POST",
            format!("{base}/prompt"),
            Some(serde_json::to_vec(&json!({"prompt": load("normal.json")["request_body"]["prompt"], "client_id": "warm-up"})).unwrap()),
        )
        .await;
        ws.wait_done(r.body["prompt_id"].as_str().unwrap()).await;
    }

    let cid = cap["client_id"].as_str().unwrap();
    let mut ws = Ws::connect(&sim, cid, false).await;
    let slow = json!({"prompt": step("queue_while_running")["body"]["queue_running"][0][2], "client_id": cid});
    let small = json!({"prompt": step("queue_while_running")["body"]["queue_pending"][0][2], "client_id": cid});
    let a = http(
        "POST",
        format!("{base}/prompt"),
        Some(serde_json::to_vec(&slow).unwrap()),
    )
    .await;
    same_http("post_A", &step("post_A"), &a);
    let a_id = a.body["prompt_id"].as_str().unwrap().to_string();
    let b = http(
        "POST",
        format!("{base}/prompt"),
        Some(serde_json::to_vec(&small).unwrap()),
    )
    .await;
    same_http("post_B", &step("post_B"), &b);
    let b_id = b.body["prompt_id"].as_str().unwrap().to_string();
    ws.wait(executing("1")).await;
    let q = http("GET", format!("{base}/queue"), None).await;
    same_http("queue_while_running", &step("queue_while_running"), &q);
    let p = http("GET", format!("{base}/prompt"), None).await;
    same_http("get_prompt", &step("get_prompt"), &p);
    let r = http(
        "POST",
        format!("{base}/interrupt"),
        Some(br#"{"prompt_id": "not-running"}"#.to_vec()),
    )
    .await;
    same_http("interrupt_wrong_id", &step("interrupt_wrong_id"), &r);
    ws.wait(executing("2")).await;
    let r = http(
        "POST",
        format!("{base}/queue"),
        Some(serde_json::to_vec(&json!({"delete": [b_id]})).unwrap()),
    )
    .await;
    same_http("delete_B", &step("delete_B"), &r);
    let q = http("GET", format!("{base}/queue"), None).await;
    same_http("queue_after_delete", &step("queue_after_delete"), &q);
    let r = http(
        "POST",
        format!("{base}/interrupt"),
        Some(serde_json::to_vec(&json!({"prompt_id": a_id})).unwrap()),
    )
    .await;
    same_http("interrupt_A", &step("interrupt_A"), &r);
    ws.wait_done(&a_id).await;
    let h = http("GET", format!("{base}/history/{a_id}"), None).await;
    same_http("history_A", &step("history_A"), &h);
    let h = http("GET", format!("{base}/history/{b_id}"), None).await;
    same_http("history_B", &step("history_B"), &h);
    let h = http("GET", format!("{base}/history?max_items=2"), None).await;
    let real = step("history_max2");
    assert_eq!(real["status"], json!(h.status));
    let (rm, sm) = (
        real["body"].as_object().unwrap(),
        h.body.as_object().unwrap(),
    );
    assert_eq!(rm.len(), sm.len(), "history_max2: entry count");
    same(
        "history_max2: last entry",
        rm.values().next_back().unwrap(),
        sm.values().next_back().unwrap(),
    );
    ws.settle().await;

    let real = real_frames(&cap);
    let not_status = |fs: &[Frame]| -> Vec<Frame> {
        fs.iter()
            .filter(|f| f.kind() != "status")
            .cloned()
            .collect()
    };
    let status_values = |fs: &[Frame]| -> Vec<Value> {
        fs.iter()
            .filter(|f| f.kind() == "status")
            .map(|f| match f {
                Frame::Text(v) => v["data"]["status"].clone(),
                _ => unreachable!(),
            })
            .collect()
    };
    same_frames(
        "queue_ops (without status)",
        &not_status(&real),
        &not_status(&ws.seen),
        false,
    );
    assert_eq!(
        status_values(&real),
        status_values(&ws.seen),
        "queue_ops: status values"
    );
    sim.shutdown().await;
}

#[test]
fn every_capture_is_replayed() {
    let src =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/replay.rs"))
            .unwrap();
    for e in std::fs::read_dir(captures_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(
                src.contains(&format!("\"{name}\"")),
                "capture {name} has no replay test"
            );
        }
    }
}
