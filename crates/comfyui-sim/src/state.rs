//! State shared by the HTTP handlers, the WebSocket sessions and the worker thread.
//!
//! Lock order, always: `q` → `hub` (→ `faults`). Never hold a lock across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Faults, SimConfig};
use crate::nodes::Env;

/// Exit code of the binary when the `crash` fault fires.
pub const CRASH_EXIT_CODE: i32 = 70;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub(crate) enum WsOut {
    Text(String),
    Binary(Vec<u8>),
    /// Drop the connection without a close frame.
    Drop,
}

pub(crate) struct Session {
    pub tx: UnboundedSender<WsOut>,
    pub flags: Value,
}

/// The WebSocket session table and the executor's "current client" (`server.client_id`,
/// `server.last_node_id` in ComfyUI).
#[derive(Default)]
pub(crate) struct Hub {
    pub sessions: HashMap<String, Session>,
    pub client_id: Option<String>,
    pub last_node_id: Option<String>,
}

impl Hub {
    /// `send_sync(event, data, sid)`: `sid = None` broadcasts; an unknown sid drops it.
    pub fn send(&self, event: &str, data: Value, sid: Option<&str>) {
        let text = serde_json::to_string(&json!({"type": event, "data": data})).unwrap_or_default();
        self.deliver(WsOut::Text(text), sid);
    }

    pub fn send_binary(&self, bytes: Vec<u8>, sid: Option<&str>) {
        self.deliver(WsOut::Binary(bytes), sid);
    }

    /// To every session (`sid = None`) or to one; an unknown sid drops it.
    fn deliver(&self, message: WsOut, sid: Option<&str>) {
        match sid {
            None => {
                for s in self.sessions.values() {
                    let _ = s.tx.send(message.clone());
                }
            }
            Some(sid) => {
                if let Some(s) = self.sessions.get(sid) {
                    let _ = s.tx.send(message);
                }
            }
        }
    }

    pub fn supports_preview_metadata(&self, sid: Option<&str>) -> bool {
        sid.and_then(|s| self.sessions.get(s))
            .map(|s| s.flags.get("supports_preview_metadata") == Some(&Value::Bool(true)))
            .unwrap_or(false)
    }

    pub fn drop_all(&self) {
        for s in self.sessions.values() {
            let _ = s.tx.send(WsOut::Drop);
        }
    }
}

/// A queue entry: `(number, prompt_id, prompt, extra_data, outputs_to_execute)`.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub number: Value,
    pub prompt_id: String,
    pub prompt: Map<String, Value>,
    pub extra_data: Map<String, Value>,
    pub outputs: Vec<String>,
}

impl Item {
    pub fn tuple(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }
    fn lt(&self, other: &Item) -> bool {
        let a = self.number.as_f64().unwrap_or(0.0);
        let b = other.number.as_f64().unwrap_or(0.0);
        a < b || (a == b && self.prompt_id < other.prompt_id)
    }
    pub fn client_id(&self) -> Option<String> {
        match self.extra_data.get("client_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(crate::pyfmt::py_str(other)),
        }
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    pub counter: i64,
    /// A binary min-heap laid out exactly like Python's `heapq` (what `/queue` shows).
    pub heap: Vec<Item>,
    pub running: Vec<Item>,
    pub history: Map<String, Value>,
    pub free_memory: bool,
    pub unload_models: bool,
    pub worker_alive: bool,
}

pub(crate) const MAX_HISTORY: usize = 10_000;

impl Queue {
    pub fn remaining(&self) -> usize {
        self.heap.len() + self.running.len()
    }

    pub fn push(&mut self, item: Item) {
        self.heap.push(item);
        let mut pos = self.heap.len() - 1;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[pos].lt(&self.heap[parent]) {
                self.heap.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    fn sift_up_from(&mut self, mut pos: usize) {
        // heapq._siftup: move the smaller child up until a leaf, then _siftdown.
        let end = self.heap.len();
        let start = pos;
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !self.heap[child].lt(&self.heap[right]) {
                child = right;
            }
            self.heap.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        while pos > start {
            let parent = (pos - 1) / 2;
            if self.heap[pos].lt(&self.heap[parent]) {
                self.heap.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    pub fn pop(&mut self) -> Option<Item> {
        let last = self.heap.pop()?;
        if self.heap.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.heap[0], last);
        self.sift_up_from(0);
        Some(top)
    }

    fn heapify(&mut self) {
        let n = self.heap.len();
        for i in (0..n / 2).rev() {
            self.sift_up_from(i);
        }
    }

    /// Remove the pending item with this id; `Some(was_last)` when found.
    pub fn remove_pending(&mut self, prompt_id: &str) -> Option<bool> {
        let idx = self.heap.iter().position(|i| i.prompt_id == prompt_id)?;
        let was_last = self.heap.len() == 1;
        self.heap.remove(idx);
        self.heapify();
        Some(was_last)
    }
}

pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub env: Env,
    pub q: Mutex<Queue>,
    pub cv: Condvar,
    pub hub: Mutex<Hub>,
    pub faults: Mutex<Faults>,
    pub interrupt: AtomicBool,
    pub stop: AtomicBool,
    pub crashed: AtomicBool,
    pub teardown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    pub started: std::time::Instant,
}

impl Shared {
    pub fn status_data(q: &Queue) -> Value {
        json!({"status": {"exec_info": {"queue_remaining": q.remaining()}}})
    }

    /// `queue_updated()`: a `status` broadcast. Call with the queue locked.
    pub fn broadcast_status(&self, q: &Queue) {
        lock(&self.hub).send("status", Self::status_data(q), None);
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Stop everything: worker, sessions, listener. With `crash_exits_process` and
    /// `crash = true`, exit the process instead.
    pub fn teardown(&self, crash: bool) {
        if crash {
            tracing::error!("comfyui-sim: simulated crash (fault `crash`)");
            if self.cfg.crash_exits_process {
                // Let answers already being written (the POST /prompt that queued this
                // run) go out first, so a test sees "accepted, then died".
                std::thread::sleep(std::time::Duration::from_millis(100));
                std::process::exit(CRASH_EXIT_CODE);
            }
            self.crashed.store(true, Ordering::SeqCst);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
        if let Some(tx) = lock(&self.teardown).take() {
            let _ = tx.send(());
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
