//! The worker thread and the executor: one prompt at a time, in queue order, with the
//! WebSocket messages of ComfyUI 0.3.64 in the same order (see `comfyui-protocol.md`
//! §8.6), classic caching by node signature, progress state, interrupts and the faults.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::nodes::{self, In, NodeErr, NodeOut, RunCtx, Val};
use crate::pyfmt::{PyErr, obj, py_str};
use crate::state::{Item, MAX_HISTORY, Shared, lock, now_ms};
use comfyui_graph::class_of;

struct CacheEntry {
    outputs: Vec<Val>,
    ui: Option<Value>,
}

#[derive(Default)]
pub(crate) struct Executor {
    /// Outputs (and UI) by node signature: ComfyUI's "classic" cache.
    cache: HashMap<u64, CacheEntry>,
    /// Node instances by (id, class): PreviewImage keeps its random suffix in here.
    objects: HashMap<(String, String), String>,
}

fn is_link(v: &Value) -> Option<(&str, usize)> {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let id = a[0].as_str()?;
            let slot = a[1].as_f64()?;
            Some((id, slot.max(0.0) as usize))
        }
        _ => None,
    }
}

fn inputs_of(prompt: &Map<String, Value>, id: &str) -> Map<String, Value> {
    prompt
        .get(id)
        .and_then(|n| n.get("inputs"))
        .and_then(|i| i.as_object())
        .cloned()
        .unwrap_or_default()
}

/// ComfyUI's `ExecutionList`: pending nodes in insertion order, block counts, and the
/// "UX friendly" pick (outputs and async nodes first, then what feeds an output).
struct ExecList {
    pending: Vec<String>,
    block_count: HashMap<String, usize>,
    blocking: HashMap<String, Vec<String>>,
}

impl ExecList {
    fn add_node(&mut self, id: &str, prompt: &Map<String, Value>, cached: &dyn Fn(&str) -> bool) {
        let mut stack = vec![id.to_string()];
        let mut links = Vec::new();
        while let Some(u) = stack.pop() {
            if self.pending.contains(&u) {
                continue;
            }
            self.pending.push(u.clone());
            self.block_count.insert(u.clone(), 0);
            self.blocking.insert(u.clone(), Vec::new());
            for v in inputs_of(prompt, &u).values() {
                if let Some((from, _)) = is_link(v) {
                    if !cached(from) {
                        stack.push(from.to_string());
                    }
                    links.push((from.to_string(), u.clone()));
                }
            }
        }
        for (from, to) in links {
            if !cached(&from) {
                self.add_node(&from, prompt, cached);
                let b = self.blocking.entry(from).or_default();
                if !b.contains(&to) {
                    b.push(to.clone());
                    *self.block_count.entry(to).or_default() += 1;
                }
            }
        }
    }

    fn pick(&self, prompt: &Map<String, Value>) -> Option<String> {
        let ready: Vec<&String> = self
            .pending
            .iter()
            .filter(|n| self.block_count[*n] == 0)
            .collect();
        let is_output =
            |id: &str| nodes::class_info(&class_of(prompt, id)).is_some_and(|c| c.output_node);
        let is_async =
            |id: &str| nodes::class_info(&class_of(prompt, id)).is_some_and(|c| c.is_async);
        if let Some(n) = ready.iter().find(|n| is_output(n) || is_async(n)) {
            return Some((*n).clone());
        }
        for n in &ready {
            if self.blocking[*n].iter().any(|b| is_output(b)) {
                return Some((*n).clone());
            }
        }
        for n in &ready {
            for b in &self.blocking[*n] {
                if self
                    .blocking
                    .get(b)
                    .is_some_and(|bb| bb.iter().any(|x| is_output(x)))
                {
                    return Some((*n).clone());
                }
            }
        }
        ready.first().map(|n| (*n).clone())
    }

    fn complete(&mut self, id: &str) {
        self.pending.retain(|n| n != id);
        if let Some(b) = self.blocking.remove(id) {
            for x in b {
                if let Some(c) = self.block_count.get_mut(&x) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }
}

/// The per-prompt progress registry behind `progress_state`.
struct Progress {
    prompt_id: String,
    nodes: Vec<(String, Value, Value, &'static str)>,
}

impl Progress {
    fn entry(&mut self, id: &str) -> &mut (String, Value, Value, &'static str) {
        if let Some(i) = self.nodes.iter().position(|n| n.0 == id) {
            &mut self.nodes[i]
        } else {
            self.nodes
                .push((id.to_string(), json!(0), json!(1), "pending"));
            self.nodes.last_mut().expect("just pushed")
        }
    }
    fn snapshot(&self) -> Value {
        let mut m = Map::new();
        for (id, value, max, state) in &self.nodes {
            if *state == "pending" {
                continue;
            }
            m.insert(
                id.clone(),
                obj([
                    ("value", value.clone()),
                    ("max", max.clone()),
                    ("state", json!(state)),
                    ("node_id", json!(id)),
                    ("prompt_id", json!(self.prompt_id)),
                    ("display_node_id", json!(id)),
                    ("parent_node_id", Value::Null),
                    ("real_node_id", json!(id)),
                ]),
            );
        }
        obj([
            ("prompt_id", json!(self.prompt_id)),
            ("nodes", Value::Object(m)),
        ])
    }
}

struct Run<'a> {
    sh: &'a Shared,
    item: &'a Item,
    client: Option<String>,
    messages: Vec<Value>,
    progress: Progress,
    sigs: HashMap<String, u64>,
}

impl Run<'_> {
    fn send(&self, event: &str, data: Value) {
        lock(&self.sh.hub).send(event, data, self.client.as_deref());
    }

    /// `add_message`: recorded for history, sent to the client (or to everyone when
    /// `broadcast` and the prompt has no client).
    fn add_message(&mut self, event: &str, mut data: Value, broadcast: bool) {
        data["timestamp"] = json!(now_ms());
        self.messages.push(json!([event, data.clone()]));
        if self.client.is_some() || broadcast {
            self.send(event, data);
        }
    }

    fn send_progress_state(&self) {
        self.send("progress_state", self.progress.snapshot());
    }
}

fn signature(
    id: &str,
    prompt: &Map<String, Value>,
    env: &nodes::Env,
    memo: &mut HashMap<String, u64>,
    depth: usize,
) -> u64 {
    if let Some(s) = memo.get(id) {
        return *s;
    }
    let class = class_of(prompt, id);
    let inputs = inputs_of(prompt, id);
    let mut keys: Vec<&String> = inputs.keys().collect();
    keys.sort();
    let mut parts = vec![json!(class), json!(nodes::is_changed(&class, &inputs, env))];
    for k in keys {
        let v = &inputs[k];
        match is_link(v) {
            Some((from, slot)) if depth < 1000 && prompt.contains_key(from) => {
                let s = signature(from, prompt, env, memo, depth + 1);
                parts.push(json!([k, "__link__", s.to_string(), slot]));
            }
            _ => parts.push(json!([k, v])),
        }
    }
    let mut h = DefaultHasher::new();
    serde_json::to_string(&parts)
        .unwrap_or_default()
        .hash(&mut h);
    let s = h.finish();
    memo.insert(id.to_string(), s);
    s
}

struct Ctx<'r, 'a> {
    run: &'r mut Run<'a>,
    node: String,
    objects: &'r mut HashMap<(String, String), String>,
}

impl RunCtx for Ctx<'_, '_> {
    fn tick(&mut self, value: Value, max: Value, preview: Option<Vec<u8>>) -> Result<(), NodeErr> {
        let sh = self.run.sh;
        if sh.stopped() {
            return Err(NodeErr::Stopped);
        }
        if sh.interrupt.load(Ordering::SeqCst) {
            return Err(NodeErr::Interrupted);
        }
        {
            let e = self.run.progress.entry(&self.node);
            e.1 = value.clone();
            e.2 = max.clone();
            e.3 = "running";
        }
        let client = self.run.client.clone();
        let hub = lock(&sh.hub);
        hub.send(
            "progress_state",
            self.run.progress.snapshot(),
            client.as_deref(),
        );
        let meta = hub.supports_preview_metadata(client.as_deref());
        if let (Some(png), true) = (&preview, meta) {
            let m = serde_json::to_vec(&obj([
                ("node_id", json!(self.node)),
                ("prompt_id", json!(self.run.item.prompt_id)),
                ("display_node_id", json!(self.node)),
                ("parent_node_id", Value::Null),
                ("real_node_id", json!(self.node)),
                ("image_type", json!("image/png")),
            ]))
            .unwrap_or_default();
            let mut b = Vec::with_capacity(8 + m.len() + png.len());
            b.extend(4u32.to_be_bytes());
            b.extend((m.len() as u32).to_be_bytes());
            b.extend(&m);
            b.extend(png);
            hub.send_binary(b, client.as_deref());
        }
        hub.send(
            "progress",
            json!({"value": value, "max": max, "prompt_id": self.run.item.prompt_id, "node": self.node}),
            client.as_deref(),
        );
        if let (Some(png), false) = (preview, meta) {
            let mut b = Vec::with_capacity(8 + png.len());
            b.extend(1u32.to_be_bytes());
            b.extend(2u32.to_be_bytes());
            b.extend(png);
            hub.send_binary(b, client.as_deref());
        }
        Ok(())
    }

    fn sleep_ms(&mut self, ms: u64) -> Result<(), NodeErr> {
        sleep_unless_stopped(self.run.sh, ms)
    }
    fn env(&self) -> &nodes::Env {
        &self.run.sh.env
    }
    fn prompt(&self) -> &Map<String, Value> {
        &self.run.item.prompt
    }
    fn extra_pnginfo(&self) -> Option<&Value> {
        self.run.item.extra_data.get("extra_pnginfo")
    }
    fn preview_suffix(&mut self) -> String {
        let key = (
            self.node.clone(),
            class_of(&self.run.item.prompt, &self.node),
        );
        self.objects
            .entry(key)
            .or_insert_with(|| {
                const CHARS: &[u8] = b"abcdefghijklmnopqrstupvxyz";
                let mut rng = rand::thread_rng();
                let s: String = (0..5)
                    .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
                    .collect();
                format!("_temp_{s}")
            })
            .clone()
    }
}

fn sleep_unless_stopped(sh: &Shared, ms: u64) -> Result<(), NodeErr> {
    let end = Instant::now() + Duration::from_millis(ms);
    loop {
        if sh.stopped() {
            return Err(NodeErr::Stopped);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

enum Failure {
    Interrupted,
    Error(PyErr, Value),
    Stopped,
}

/// What a finished prompt leaves for history: `(outputs, meta, status)`.
pub(crate) struct Finished {
    outputs: Map<String, Value>,
    meta: Map<String, Value>,
    status: Value,
    client: Option<String>,
}

impl Executor {
    fn reset(&mut self) {
        self.cache.clear();
        self.objects.clear();
    }

    fn execute(&mut self, sh: &Shared, item: &Item) -> Option<Finished> {
        let started = Instant::now();
        let client = item.client_id();
        lock(&sh.hub).client_id = client.clone();
        let mut run = Run {
            sh,
            item,
            client,
            messages: Vec::new(),
            progress: Progress {
                prompt_id: item.prompt_id.clone(),
                nodes: Vec::new(),
            },
            sigs: HashMap::new(),
        };
        run.add_message(
            "execution_start",
            json!({"prompt_id": item.prompt_id}),
            false,
        );

        let prompt = &item.prompt;
        let mut memo = HashMap::new();
        for id in prompt.keys() {
            signature(id, prompt, &sh.env, &mut memo, 0);
        }
        run.sigs = memo;
        let used: std::collections::HashSet<u64> = run.sigs.values().copied().collect();
        self.cache.retain(|k, _| used.contains(k));
        let used_objects: std::collections::HashSet<(String, String)> = prompt
            .keys()
            .map(|id| (id.clone(), class_of(prompt, id)))
            .collect();
        self.objects.retain(|k, _| used_objects.contains(k));

        let cached_nodes: Vec<String> = prompt
            .keys()
            .filter(|id| self.cache.contains_key(&run.sigs[*id]))
            .cloned()
            .collect();
        run.add_message(
            "execution_cached",
            json!({"nodes": cached_nodes, "prompt_id": item.prompt_id}),
            false,
        );

        let mut list = ExecList {
            pending: Vec::new(),
            block_count: HashMap::new(),
            blocking: HashMap::new(),
        };
        {
            let cache = &self.cache;
            let sigs = &run.sigs;
            let cached = |id: &str| sigs.get(id).is_some_and(|s| cache.contains_key(s));
            for o in &item.outputs {
                list.add_node(o, prompt, &cached);
            }
        }

        let mut executed: Vec<String> = Vec::new();
        let mut success = true;
        while !list.pending.is_empty() {
            let Some(node) = list.pick(prompt) else {
                break;
            };
            match self.execute_node(&mut run, &node) {
                Ok(ran) => {
                    if ran {
                        executed.push(node.clone());
                    }
                    list.complete(&node);
                }
                Err(Failure::Stopped) => return None,
                Err(Failure::Interrupted) => {
                    tracing::info!("Processing interrupted");
                    success = false;
                    run.add_message(
                        "execution_interrupted",
                        json!({"prompt_id": item.prompt_id, "node_id": node, "node_type": class_of(prompt, &node), "executed": executed}),
                        true,
                    );
                    break;
                }
                Err(Failure::Error(ex, current_inputs)) => {
                    tracing::error!("!!! Exception during processing !!! {}", ex.msg);
                    success = false;
                    let class = class_of(prompt, &node);
                    let traceback = json!([
                        "  File \"/comfyui-sim/execution.py\", line 496, in execute\n    \u{2026}\n",
                        format!(
                            "  File \"/comfyui-sim/nodes.py\", line 1, in {class}\n    \u{2026}\n"
                        ),
                    ]);
                    let current_outputs: Vec<&String> = prompt.keys().collect();
                    run.add_message(
                        "execution_error",
                        json!({
                            "prompt_id": item.prompt_id,
                            "node_id": node,
                            "node_type": class,
                            "executed": executed,
                            "exception_message": format!("{}\n", ex.msg),
                            "exception_type": ex.ty,
                            "traceback": traceback,
                            "current_inputs": current_inputs,
                            "current_outputs": current_outputs,
                        }),
                        false,
                    );
                    break;
                }
            }
        }
        if success {
            run.add_message(
                "execution_success",
                json!({"prompt_id": item.prompt_id}),
                false,
            );
        }
        let mut outputs = Map::new();
        let mut meta = Map::new();
        for id in prompt.keys() {
            if let Some(CacheEntry { ui: Some(ui), .. }) = self.cache.get(&run.sigs[id]) {
                outputs.insert(id.clone(), ui.clone());
                meta.insert(
                    id.clone(),
                    json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
                );
            }
        }
        lock(&sh.hub).last_node_id = None;
        tracing::info!(
            "Prompt executed in {:.2} seconds",
            started.elapsed().as_secs_f64()
        );
        Some(Finished {
            outputs,
            meta,
            status: json!({
                "status_str": if success { "success" } else { "error" },
                "completed": success,
                "messages": run.messages,
            }),
            client: run.client.clone(),
        })
    }

    /// Run (or replay from cache) one node. `Ok(true)`: it really ran.
    fn execute_node(&mut self, run: &mut Run, node: &str) -> Result<bool, Failure> {
        let sh = run.sh;
        let item = run.item;
        let prompt = &item.prompt;
        let class = class_of(prompt, node);
        let sig = run.sigs[node];
        if let Some(entry) = self.cache.get(&sig) {
            if run.client.is_some() {
                run.send(
                    "executed",
                    json!({"node": node, "display_node": node, "output": entry.ui, "prompt_id": item.prompt_id}),
                );
            }
            let e = run.progress.entry(node);
            e.1 = e.2.clone();
            e.3 = "finished";
            run.send_progress_state();
            return Ok(false);
        }
        {
            let e = run.progress.entry(node);
            e.1 = json!(0.0);
            e.2 = json!(1.0);
            e.3 = "running";
        }
        {
            let mut hub = lock(&sh.hub);
            hub.send(
                "progress_state",
                run.progress.snapshot(),
                run.client.as_deref(),
            );
            if let Some(c) = &run.client {
                hub.last_node_id = Some(node.to_string());
                hub.send(
                    "executing",
                    json!({"node": node, "display_node": node, "prompt_id": item.prompt_id}),
                    Some(c),
                );
            }
        }

        // Faults that fire at a node start.
        let f = sh.faults();
        let here = f.at_node.as_deref().is_none_or(|n| n == node);
        if here && f.drop_ws {
            lock(&sh.faults).drop_ws = false;
            tracing::warn!("comfyui-sim fault: dropping every WebSocket");
            lock(&sh.hub).drop_all();
        }
        if here && f.crash {
            lock(&sh.faults).crash = false;
            sh.teardown(true);
            return Err(Failure::Stopped);
        }
        if here && f.hang {
            tracing::warn!("comfyui-sim fault: node {node} hangs");
            while sh.faults().hang {
                if sh.stopped() {
                    return Err(Failure::Stopped);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if sh.stopped() {
            return Err(Failure::Stopped);
        }
        if sh.interrupt.load(Ordering::SeqCst) {
            return Err(Failure::Interrupted);
        }
        // `slow_node_ms` is part of the node's own work: like a node without progress
        // ticks, it cannot be interrupted mid-way.
        if f.slow_node_ms > 0 && sleep_unless_stopped(sh, f.slow_node_ms).is_err() {
            return Err(Failure::Stopped);
        }

        // Resolve inputs.
        let raw = inputs_of(prompt, node);
        let mut inputs = nodes::Inputs::new();
        let mut resolved: Vec<(String, In)> = Vec::new();
        for (k, v) in &raw {
            let i = match is_link(v) {
                Some((from, slot)) => {
                    let s = run.sigs.get(from).copied().unwrap_or_default();
                    match self.cache.get(&s).and_then(|e| e.outputs.get(slot)) {
                        Some(val) => In::Link(val.clone()),
                        None => In::Lit(Value::Null),
                    }
                }
                None => In::Lit(v.clone()),
            };
            resolved.push((k.clone(), i));
        }
        for (k, i) in &resolved {
            inputs.insert(k.clone(), i.clone());
        }
        let mut ctx = Ctx {
            run,
            node: node.to_string(),
            objects: &mut self.objects,
        };
        let result = nodes::run(&class, &inputs, &mut ctx);
        match result {
            Ok(NodeOut { outputs, ui }) => {
                if let (Some(ui), Some(_)) = (&ui, &run.client) {
                    run.send(
                        "executed",
                        json!({"node": node, "display_node": node, "output": ui, "prompt_id": item.prompt_id}),
                    );
                }
                self.cache.insert(sig, CacheEntry { outputs, ui });
                let e = run.progress.entry(node);
                e.1 = e.2.clone();
                e.3 = "finished";
                run.send_progress_state();
                Ok(true)
            }
            Err(NodeErr::Stopped) => Err(Failure::Stopped),
            Err(NodeErr::Interrupted) => Err(Failure::Interrupted),
            Err(NodeErr::Py(ex)) => {
                let mut ci = Map::new();
                let types = nodes::input_types(&class, &sh.env);
                for cat in ["required", "optional"] {
                    if let Some(Value::Object(defs)) = types.get(cat) {
                        for name in defs.keys() {
                            if let Some((_, i)) = resolved.iter().find(|(k, _)| k == name) {
                                let v = match i {
                                    In::Lit(v) => Val::Json(v.clone()).describe(),
                                    In::Link(val) => val.describe(),
                                };
                                ci.insert(name.clone(), json!([v]));
                            }
                        }
                    }
                }
                if let Some(Value::Object(hidden)) = types.get("hidden") {
                    for (name, kind) in hidden {
                        let v = match kind.as_str() {
                            Some("PROMPT") => json!(py_str(&Value::Object(prompt.clone()))),
                            Some("EXTRA_PNGINFO") => item
                                .extra_data
                                .get("extra_pnginfo")
                                .cloned()
                                .unwrap_or(Value::Null),
                            Some("UNIQUE_ID") => json!(node),
                            _ => Value::Null,
                        };
                        ci.insert(name.clone(), json!([v]));
                    }
                }
                Err(Failure::Error(ex, Value::Object(ci)))
            }
        }
    }
}

/// The worker thread's loop (`prompt_worker` in ComfyUI's `main.py`).
pub(crate) fn worker_loop(sh: Arc<Shared>) {
    let mut ex = Executor::default();
    loop {
        let item = {
            let mut q = lock(&sh.q);
            loop {
                if sh.stopped() {
                    return;
                }
                if q.free_memory {
                    ex.reset();
                }
                q.free_memory = false;
                q.unload_models = false;
                if let Some(item) = q.pop() {
                    q.running.push(item.clone());
                    sh.interrupt.store(false, Ordering::SeqCst);
                    sh.broadcast_status(&q);
                    break item;
                }
                q = sh
                    .cv
                    .wait_timeout(q, Duration::from_millis(250))
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        if sh.faults().kill_worker {
            let client = item.client_id();
            lock(&sh.hub).client_id = client.clone();
            if let Some(c) = &client {
                lock(&sh.hub).send(
                    "execution_start",
                    json!({"prompt_id": item.prompt_id, "timestamp": now_ms()}),
                    Some(c),
                );
            }
            tracing::error!(
                "comfyui-sim fault: the worker thread dies (an exception outside node code); the queue is stalled from now on"
            );
            lock(&sh.q).worker_alive = false;
            return;
        }
        let Some(done) = ex.execute(&sh, &item) else {
            return;
        };
        {
            let mut q = lock(&sh.q);
            q.running.retain(|i| i.prompt_id != item.prompt_id);
            if q.history.len() > MAX_HISTORY
                && let Some(first) = q.history.keys().next().cloned()
            {
                q.history.shift_remove(&first);
            }
            q.history.insert(
                item.prompt_id.clone(),
                obj([
                    ("prompt", item.tuple()),
                    ("outputs", Value::Object(done.outputs)),
                    ("status", done.status),
                    ("meta", Value::Object(done.meta)),
                ]),
            );
            sh.broadcast_status(&q);
        }
        if let Some(c) = &done.client {
            lock(&sh.hub).send(
                "executing",
                json!({"node": null, "prompt_id": item.prompt_id}),
                Some(c),
            );
        }
    }
}
