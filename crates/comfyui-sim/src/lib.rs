//! # comfyui-sim: a protocol-faithful ComfyUI double
//!
//! An axum server that speaks ComfyUI 0.3.64's HTTP and WebSocket protocol, quirks
//! included, so that the client (`crates/comfyui`), the gpu-runner and `dev` can be
//! tested without Python, torch or a GPU. It is checked against real captures (see
//! `tests/replay.rs`). It is **not** ComfyUI: it knows a handful of node classes, and its
//! model nodes produce placeholders. See the crate's README.
//!
//! ## As a library
//!
//! ```no_run
//! # async fn demo() -> Result<(), comfyui_sim::SimError> {
//! use comfyui_sim::{Faults, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?; // 127.0.0.1, a free port
//! let url = sim.base_url(); // "http://127.0.0.1:PORT"
//! sim.set_faults(Faults { drop_ws: true, ..Faults::default() });
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## What it does
//!
//! - Every route bare and under `/api`; the loopback origin check; 500 text/plain on a
//!   body that is not JSON; empty 200 bodies for the control POSTs.
//! - `POST /prompt` with the counter, `number`/`front`, client `prompt_id`, the same
//!   validation order and 400 shapes, and 200 with `node_errors` for partial failures.
//!   The validation itself is `comfyui-graph`'s, over this simulator's node table
//!   (`catalogue.rs`): the same code checks a job's graph at submit, against a real
//!   server's `/object_info`.
//! - One worker thread, a heap-ordered queue, three `status` broadcasts per prompt, and
//!   the WebSocket order of normal, cached, error and interrupted runs, `progress_state`
//!   included; the reconnect replay; the clientId-reuse quirk; the feature-flag
//!   handshake; binary previews (type 1, or type 4 when negotiated).
//! - Classic caching by node signature; `/free {"free_memory": true}` clears it.
//! - Real pixels for EmptyImage, ImageInvert, ImageScale, ImageBlur, LoadImage,
//!   SaveImage, PreviewImage and SaveImageWebsocket; TestSleep from ComfyUI's testing
//!   pack; simulated CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler
//!   (one `progress` tick per step, interruptible) and VAEDecode (a deterministic
//!   gradient).
//! - Real files from video and audio nodes, reported in the real shapes:
//!   VHS_VideoCombine (`gifs`), CreateVideo + SaveVideo (`images` + `animated`),
//!   EmptyAudio + SaveAudio (`audio`); H.264 MP4 and WAV written by `media.rs`.
//! - `/view` path-safety, upload renaming and deduplication, `<prefix>_00001_.png`.
//! - Faults ([`Faults`]), switchable at start, from a test, or over HTTP at
//!   `POST /__sim/faults`.
//! - Optionally the newer jobs API ([`SimConfig::jobs_api`]).

mod catalogue;
mod config;
mod image;
mod media;
mod nodes;
mod nodes_media;
// One checker and one Python formatter, shared with submit (see comfyui-graph).
use comfyui_graph::pyfmt;
mod server;
mod state;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

pub use config::{Faults, SimConfig};
pub use state::CRASH_EXIT_CODE;

use state::{Hub, Queue, Shared, lock};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the simulator: {0}")]
    Start(std::io::Error),
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Bind, start the worker thread and the server (on its own thread and runtime),
    /// and return at once: the port accepts connections when this returns.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        Self::start_blocking(config)
    }

    /// [`Simulator::start`] for code that is not async.
    pub fn start_blocking(config: SimConfig) -> Result<SimHandle, SimError> {
        let tmp = if config.base_dir.is_none()
            && (config.input_dir.is_none()
                || config.output_dir.is_none()
                || config.temp_dir.is_none())
        {
            Some(
                tempfile::Builder::new()
                    .prefix("comfyui-sim-")
                    .tempdir()
                    .map_err(SimError::Start)?,
            )
        } else {
            None
        };
        let base: PathBuf = match (&config.base_dir, &tmp) {
            (Some(b), _) => b.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => std::env::temp_dir(),
        };
        let abs = |p: PathBuf| -> Result<PathBuf, SimError> {
            std::fs::create_dir_all(&p).map_err(|source| SimError::Folder {
                path: p.clone(),
                source,
            })?;
            std::fs::canonicalize(&p).map_err(|source| SimError::Folder {
                path: p.clone(),
                source,
            })
        };
        let input_dir = abs(config
            .input_dir
            .clone()
            .unwrap_or_else(|| base.join("input")))?;
        let output_dir = abs(config
            .output_dir
            .clone()
            .unwrap_or_else(|| base.join("output")))?;
        let temp_dir = abs(config.temp_dir.clone().unwrap_or_else(|| base.join("temp")))?;
        // 0.3.64 wipes the temp folder at start.
        if let Ok(rd) = std::fs::read_dir(&temp_dir) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }

        let listener =
            std::net::TcpListener::bind(config.bind).map_err(|source| SimError::Bind {
                addr: config.bind,
                source,
            })?;
        listener.set_nonblocking(true).map_err(SimError::Start)?;
        let addr = listener.local_addr().map_err(SimError::Start)?;

        let env = nodes::Env {
            input_dir,
            output_dir,
            temp_dir,
            checkpoints: config.checkpoints.clone(),
            step_ms: config.step_ms,
            model_node_ms: config.model_node_ms,
            previews: config.previews,
        };
        let (teardown_tx, teardown_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::new(Shared {
            faults: Mutex::new(config.faults.clone()),
            cfg: config,
            env,
            q: Mutex::new(Queue {
                worker_alive: true,
                ..Queue::default()
            }),
            cv: Condvar::new(),
            hub: Mutex::new(Hub::default()),
            interrupt: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            teardown: Mutex::new(Some(teardown_tx)),
            started: std::time::Instant::now(),
        });

        tracing::warn!(
            "comfyui-sim {} listening on http://{addr}: this is a SIMULATOR of ComfyUI 0.3.64, not ComfyUI (no Python, no models; model nodes return placeholders)",
            env!("CARGO_PKG_VERSION")
        );
        tracing::info!(
            input = %shared.env.input_dir.display(),
            output = %shared.env.output_dir.display(),
            temp = %shared.env.temp_dir.display(),
            "comfyui-sim folders"
        );

        let worker = {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("comfyui-sim-worker".into())
                .spawn(move || worker::worker_loop(sh))
                .map_err(SimError::Start)?
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("comfyui-sim-http")
            .enable_all()
            .build()
            .map_err(SimError::Start)?;
        let app = server::router(shared.clone());
        let server = std::thread::Builder::new()
            .name("comfyui-sim-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // No Nagle, as aiohttp (ComfyUI's server) sets too: a small
                    // WebSocket frame written behind an unacknowledged one leaves at
                    // once instead of after the peer's delayed ACK.
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r { tracing::error!("comfyui-sim server stopped: {e}"); }
                        }
                        _ = teardown_rx => {}
                    }
                });
                // Drop every task, connections included: sockets close at once.
                rt.shutdown_background();
            })
            .map_err(SimError::Start)?;

        Ok(SimHandle {
            shared,
            addr,
            _tmp: tmp,
            threads: Mutex::new(vec![worker, server]),
        })
    }
}

/// A running simulator. Dropping it stops the simulator (without waiting).
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _tmp: Option<tempfile::TempDir>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn input_dir(&self) -> &Path {
        &self.shared.env.input_dir
    }

    pub fn output_dir(&self) -> &Path {
        &self.shared.env.output_dir
    }

    pub fn temp_dir(&self) -> &Path {
        &self.shared.env.temp_dir
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replace every fault switch.
    pub fn set_faults(&self, faults: Faults) {
        tracing::warn!("comfyui-sim faults set: {faults:?}");
        *lock(&self.shared.faults) = faults;
    }

    /// Change some fault switches.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.shared.faults));
    }

    /// Crash now, as the `crash` fault does at a node start.
    pub fn crash(&self) {
        self.shared.teardown(true);
    }

    /// Drop every WebSocket connection now (no close frame).
    pub fn drop_websockets(&self) {
        lock(&self.shared.hub).drop_all();
    }

    /// Whether the simulator has crashed or been shut down.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped()
    }

    /// Whether the `crash` fault (or [`SimHandle::crash`]) has torn it down.
    pub fn has_crashed(&self) -> bool {
        self.shared.crashed.load(Ordering::SeqCst)
    }

    /// Whether the worker thread is alive (the `kill_worker` fault kills it).
    pub fn worker_alive(&self) -> bool {
        lock(&self.shared.q).worker_alive
    }

    /// Stop the server and the worker, and wait for both threads to end.
    pub async fn shutdown(self) {
        self.shared.teardown(false);
        let threads = std::mem::take(&mut *lock(&self.threads));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.teardown(false);
    }
}
