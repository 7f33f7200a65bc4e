//! # The command-line client of any Comfy API v2 endpoint
//!
//! `serverless-comfyui run`, `jobs` and `assets` talk to a Comfy API v2 server over
//! HTTP: `serverless-comfyui dev` on this machine, a deployed stack, or any other v2
//! server. They find it the way comfy-sdk does, with `--url` and `--api-key` or
//! `COMFY_BASE_URL` and `COMFY_API_KEY`.
//!
//! ## What `run` does, in order
//!
//! 1. **Reads the workflow and checks it here** ([`workflow`]): the server's own
//!    validator refuses a UI-format file with the server's explanation, and every
//!    `--set NODE.INPUT=VALUE` and `--input NODE.INPUT=FILE` must name a node and an
//!    input the workflow has. Nothing has been sent yet, so a typo costs nothing.
//! 2. **Uploads the inputs** ([`upload`]): each file is hashed (BLAKE3) and the server
//!    is asked whether it already has those bytes; only if not are they sent. The input
//!    becomes a `core/ASSET` reference to the new asset.
//! 3. **Submits** with an `Idempotency-Key` ([`api`]): the submit is retried on
//!    connection errors, 429 and 503 with the *same* key, so a retry can never run the
//!    workflow twice.
//! 4. **Follows the job** ([`follow`], shown by [`display`]): live events (SSE) drive
//!    an `indicatif` bar with the node class, step/steps and the elapsed time; a server
//!    without events is polled. While the job is queued, the bar says why (waiting for
//!    a worker, or for GPU capacity). The first Ctrl-C cancels the job; a second stops
//!    waiting and leaves it to the server.
//! 5. **Downloads the outputs** ([`download`]) into `--out`, as `<node>-<name>`, each
//!    checked against its size and hash.
//! 6. **Reports** ([`commands`]): id, status, timings and files, or one JSON document
//!    with `--json`; the exit code says how it ended (0 succeeded, 1 failed, 2
//!    canceled, 3 usage or connection error).
//!
//! ## Errors
//!
//! Every failure is a [`ClientError`] whose message is one line: the server's error
//! code and message when it sent one, and what to do (start a server, fix `--url`, set
//! a key, retry a 5xx). The API key never appears in any output.
//!
//! ## Map
//!
//! | module | what it holds |
//! |---|---|
//! | [`commands`] | the subcommands' arguments (clap) and their flow, printing, exit codes |
//! | [`api`] | [`Api`]: one method per v2 route; addresses, the key, retries, error envelopes |
//! | [`types`] | the v2 `Job`, `Output`, `Asset`, read leniently from any server |
//! | [`workflow`] | loading and validating a workflow; `--set`, `--input`, `--label` |
//! | [`upload`] | a local file → an asset, with the dedup probe |
//! | [`sse`] | the SSE decoder and the v2 job events |
//! | [`follow`] | following a job: events, polling, Ctrl-C |
//! | [`display`] | the progress bar, or plain lines when stderr is not a terminal |
//! | [`download`] | outputs → files, checked |
//! | [`error`] | [`ClientError`] |
//! | [`webhooks`] | `webhooks create|list|delete|deliveries` (our extension) |

pub mod api;
pub mod commands;
pub mod display;
pub mod download;
pub mod error;
pub mod follow;
pub mod sse;
pub mod types;
pub mod upload;
pub mod webhooks;
pub mod workflow;

pub use api::Api;
pub use commands::{AssetsCommand, Connection, JobsCommand, RunArgs};
pub use error::ClientError;
pub use webhooks::WebhooksCommand;
