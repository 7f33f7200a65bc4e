//! # comfyui: a client for ComfyUI's own protocol
//!
//! HTTP + WebSocket, workflow and output types, and the helpers the gpu-runner needs:
//! [`Client::run_prompt`] (submit, follow, survive drops, read the verdict from history),
//! [`Client::cancel_prompt`], [`Client::clear_leftovers`]. The building blocks are
//! public too: [`Client::queue_prompt`], [`Client::history`], [`Client::queue`],
//! [`Client::prompt_state`], [`Client::events`] ([`EventStream`]), [`Client::view`],
//! [`Client::upload_image`], [`Client::interrupt`], [`Client::cancel_job`],
//! [`collect_outputs`].
//!
//! Test against `comfyui-sim` (a protocol-faithful double) or a real server.
//!
//! ```no_run
//! # async fn demo() -> comfyui::Result<()> {
//! use comfyui::{Client, RunOptions, new_prompt_id, api_workflow};
//! let client = Client::new("http://127.0.0.1:8188")?.with_client_id("runner-7-abc");
//! client.wait_ready(std::time::Duration::from_secs(60)).await?;
//! let wf = api_workflow(serde_json::from_str(r#"{"1": {"class_type": "EmptyImage",
//!     "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16711680}},
//!     "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}"#).unwrap())?;
//! let run = client.run_prompt(&new_prompt_id(), wf, &RunOptions::default(), |item| {
//!     println!("{item:?}");
//! }).await?;
//! for f in &run.outputs.files {
//!     let bytes = client.view(&f.file).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## The protocol's traps (read this before changing anything)
//!
//! **Submitting.**
//! - Choose the `prompt_id` yourself, a lowercase uuid4 ([`new_prompt_id`]). The worker
//!   can start the prompt, and send its first events, before you read the HTTP answer;
//!   newer servers reject non-canonical ids; nothing checks for duplicates.
//! - Send a `client_id`: it picks the WebSocket that receives the prompt's events.
//!   Without one, `execution_*`, `executing` and `executed` go to nobody.
//! - A 400 has `{error, node_errors}`; `error.details` is often empty: the causes are in
//!   `node_errors[id].errors`. A **200 can carry `node_errors` too**: the valid outputs
//!   were queued and the others dropped. We treat that as a rejection unless asked
//!   otherwise, and `run_prompt` cancels what was queued.
//! - Malformed bodies give **500 with a plain-text body**, never a JSON envelope.
//! - The API format only: the editor's UI format is rejected ([`api_workflow`]).
//!
//! **Following.**
//! - Completion is `executing` with `node: null` **and our `prompt_id`**; the history
//!   entry exists by then. `execution_success` / `execution_interrupted` /
//!   `execution_error` come first. An `execution_error` **without a timestamp** (the
//!   "ExecutionBlocked" variant) is not final. A reconnect replays one `executing` with a
//!   node and **no** `prompt_id`: ignore it for completion.
//! - Cached nodes get no `executing`; a fully cached prompt sends only `executed` for its
//!   outputs. `progress_state` values may be ints or floats.
//! - Binary frames: type 1 (preview, no ids: it belongs to the last `executing`),
//!   type 3 (progress text), type 4 (preview with metadata, only after the
//!   `supports_preview_metadata` handshake, which must be the first text frame).
//! - **Reusing a clientId** silently kills the new socket when the old one's cleanup
//!   runs: close the old socket first ([`EventStream`] does). Nothing missed is
//!   replayed, so after any reconnect **history is the source of truth**; `run_prompt`
//!   also polls `/queue` then `/history` every `poll_interval` so a lost event can never
//!   hang it.
//! - Poll in that order: `/queue` first, then `/history/{id}`. `/history/{id}` answers
//!   `{}` for pending, running and unknown alike.
//! - History: `status_str` is `"error"` for both failures and interruptions; the last
//!   message tells them apart ([`HistoryEntry::outcome`]).
//! - ComfyUI 0.3.64 can lose its worker thread and stall forever: always give
//!   `run_prompt` a `deadline`.
//!
//! **Stopping.**
//! - `/interrupt` with a `prompt_id` only acts if that prompt is running *now*; without
//!   one it hits whatever runs. It lands at the next node boundary or progress tick (a
//!   node without ticks runs to its end). An interrupt sent while idle is lost.
//! - A pending prompt is removed with `POST /queue {"delete": [id]}`; it leaves no
//!   history. Newer servers have the atomic `POST /api/jobs/{id}/cancel`; detect it with
//!   `GET /api/jobs/<uuid>` (a JSON 404 means it exists). [`Client::cancel_prompt`] does
//!   all of this and verifies.
//!
//! **Files.**
//! - No shared filesystem: upload inputs with `/upload/image` (it may rename: use the
//!   returned name) and fetch outputs with `/view`, taking `type` from the record
//!   (previews are `temp`).
//! - Outputs come under many keys (`images`, `gifs`, `audio`, `text`, `latents`, custom
//!   ones): [`collect_outputs`] collects every list item with `filename` and `type`, every
//!   text, and keeps the rest. Never trust a `fullpath`.
//! - Identical prompts are served from cache with the **same file names** and no new
//!   files; rewrite `filename_prefix` per job ([`rewrite_filename_prefixes`]).

mod client;
mod error;
pub mod events;
pub mod outputs;
mod types;
pub mod workflow;
pub mod ws;

pub use client::{
    CancelMethod, CancelOutcome, CancelReport, Client, Leftovers, PromptRequest, PromptRun,
    RunOptions, as_event,
};
pub use error::{
    Error, NodeError, PATH_PLACEHOLDER, PromptError, PromptRejection, Result, scrub_paths,
};
pub use events::{Event, ExecutionError, Interruption, NodeProgress, Preview, PreviewMetadata};
pub use outputs::{
    FileRef, OtherOutput, OutputFile, OutputKind, OutputText, Outputs, collect_node_output,
    collect_outputs, mime_type,
};
pub use types::{
    HistoryEntry, HistoryStatus, PromptAccepted, PromptOutcome, PromptState, QueueItem, QueueState,
    UploadOptions, UploadedFile,
};
pub use workflow::{
    WorkflowFormat, api_workflow, detect_format, new_prompt_id, rewrite_filename_prefixes,
};
pub use ws::{EventStream, StreamConfig, StreamItem};
