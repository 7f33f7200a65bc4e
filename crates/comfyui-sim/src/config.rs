use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How to start a simulator. `SimConfig::default()` binds `127.0.0.1:0` (a free port) and
/// keeps its `input/`, `output/` and `temp/` folders in a fresh temporary directory that
/// is removed when the handle is dropped.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind. Port 0 picks a free port; read it back from
    /// [`SimHandle::base_url`](crate::SimHandle::base_url).
    pub bind: SocketAddr,
    /// Root for `input/`, `output/` and `temp/` (like ComfyUI's `--base-directory`).
    /// `None`: a temporary directory owned by the handle.
    pub base_dir: Option<PathBuf>,
    /// Overrides for the three folders (like `--input-directory` and friends).
    pub input_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    /// The temp folder itself (ComfyUI appends `temp/` to `--temp-directory`; we don't).
    pub temp_dir: Option<PathBuf>,
    /// Time per KSampler step; each step is one `progress` tick and an interrupt point.
    pub step_ms: u64,
    /// Simulated time for the other model nodes (checkpoint load, text encode, VAE decode).
    pub model_node_ms: u64,
    /// File names the `ckpt_name` combo of CheckpointLoaderSimple offers.
    pub checkpoints: Vec<String>,
    /// Send a small latent preview at every KSampler step (like `--preview-method auto`).
    pub previews: bool,
    /// Serve the `[newer]` jobs API (`GET /api/jobs/{id}`, `POST /api/jobs/{id}/cancel`).
    /// Off by default, like 0.3.64.
    pub jobs_api: bool,
    /// With [`SimConfig::jobs_api`]: whether `POST /api/jobs/{id}/cancel` exists. ComfyUI
    /// 0.8.0 serves `GET /api/jobs/{id}` but answers that cancel with 405, so a client must
    /// not take one for the other. On by default.
    pub jobs_api_cancel: bool,
    /// Reject a `prompt_id` that is not a canonical lowercase UUID with 400
    /// `invalid_prompt_id`, like newer servers. Off by default, like 0.3.64.
    pub strict_prompt_id: bool,
    /// `--enable-cors-header`: turns the loopback origin check off and adds CORS headers.
    pub cors_origin: Option<String>,
    /// `--max-upload-size` in MB (also reported by `/features`).
    pub max_upload_size_mb: u64,
    /// When the `crash` fault fires: `true` exits the whole process (the binary does
    /// this); `false` tears the server down in place (listener closed, every connection
    /// dropped, worker stopped), which looks the same from outside and keeps a test
    /// process alive.
    pub crash_exits_process: bool,
    /// Faults switched on from the start.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_dir: None,
            input_dir: None,
            output_dir: None,
            temp_dir: None,
            step_ms: 20,
            model_node_ms: 0,
            checkpoints: vec![
                "v1-5-pruned-emaonly.safetensors".into(),
                "sd_xl_base_1.0.safetensors".into(),
            ],
            previews: false,
            jobs_api: false,
            jobs_api_cancel: true,
            strict_prompt_id: false,
            cors_origin: None,
            max_upload_size_mb: 100,
            crash_exits_process: false,
            faults: Faults::default(),
        }
    }
}

/// Fault switches. Every field defaults to off. They can be set at start
/// ([`SimConfig::faults`], CLI flags), from a test ([`SimHandle::set_faults`](crate::SimHandle::set_faults)),
/// or over HTTP (`POST /__sim/faults` with any subset of these fields as JSON;
/// `GET /__sim/faults` reads them back).
///
/// "At a node start" means: after the simulator has sent `executing` for a node that is
/// really about to run (not a cached one), before the node does any work. With
/// [`Faults::at_node`] set, only that node id triggers them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Crash at the next node start: the process exits (binary) or the server is torn
    /// down (library). One-shot.
    pub crash: bool,
    /// Hang at the next node start: the node never finishes and ignores `/interrupt`;
    /// HTTP keeps answering. Clear the fault to let it go on.
    pub hang: bool,
    /// Drop every WebSocket connection (no close frame) at the next node start. One-shot.
    pub drop_ws: bool,
    /// Answer every ComfyUI route with 500 (the admin routes under `/__sim` keep working).
    pub http_500: bool,
    /// Extra time every node takes, in ms (not interruptible, like a node without ticks).
    pub slow_node_ms: u64,
    /// Extra latency before every HTTP answer, in ms.
    pub slow_http_ms: u64,
    /// Kill the worker thread when it takes the next prompt: that prompt stays "running"
    /// in `/queue` forever and the queue stalls, as when 0.3.64's executor raises outside
    /// node code. Not recoverable: clearing the switch does not restart the worker.
    pub kill_worker: bool,
    /// Restrict `crash`, `hang` and `drop_ws` to the start of this node id.
    pub at_node: Option<String>,
}
