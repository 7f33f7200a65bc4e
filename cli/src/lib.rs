//! # serverless-comfyui, the command
//!
//! The binary's subcommands live here as a library so that tests drive the same code:
//!
//! - [`dev`]: the whole product on one machine: the Comfy API v2 server over the local
//!   adapters (SQLite, files), the tick, and the dispatcher.
//! - [`keys`]: API keys for `dev`.
//! - [`catalogue`]: publish and show the node catalogue submit checks graphs against.
//! - [`client`]: the command-line client of any Comfy API v2 endpoint (`run`, `jobs`,
//!   `assets`).
pub mod catalogue;
pub mod client;
pub mod dev;
pub mod keys;
pub mod serve;
pub mod tenants;
pub mod web;
