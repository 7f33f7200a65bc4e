//! Preparing a job's workflow for ComfyUI, and bringing its outputs back.
//!
//! **Inputs.** ComfyUI shares no filesystem with us (ARCHITECTURE.md §2), so every
//! `core/ASSET` reference (`{"__type": "core/ASSET", "info": {"id": "asset_..."}}`) is
//! resolved here: the asset record (it must belong to the job's tenant), then its blob,
//! uploaded with `POST /upload/image` under a name made of the asset id and the job id
//! (`asset_…_job_…_<name>`: no plain string may name it, see
//! `jobs::validate::STAGED_NAME_PREFIX`), and the workflow input rewritten to the name
//! ComfyUI returned (it may rename).
//!
//! **File names.** Every literal `filename_prefix` gets `_<job id>_a<attempt>` appended,
//! so ComfyUI's cache never hands one job another job's files.
//!
//! **Outputs.** Every file the prompt's history lists (saved images, temp previews,
//! videos, anything with `filename` and `type`) is streamed from `/view` straight into
//! storage (never held whole in memory), hashed with blake3 on the way, and stored under `outputs/{job}/{attempt}/{node}/{file}`; every text output
//! as a `.txt` beside them. Each one is minted as an asset owned by the job's tenant.

use bytes::Bytes;
use comfyui::{Client, Outputs, UploadOptions};
use jobs::assets::NewOutput;
use jobs::model::{Job, JobError, OutputKind, OutputRecord};
use jobs::ports::BlobWriteError;
use jobs::service::Ports;
use serde_json::{Map, Value};

/// Why staging or collecting did not work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    /// The job itself is at fault: it fails with this error.
    #[error("{}", .0.message)]
    Job(JobError),
    /// ComfyUI failed: the job is released to another attempt.
    #[error("ComfyUI: {0}")]
    Engine(#[from] comfyui::Error),
    /// Our storage failed: the job is released to another attempt.
    #[error("storage: {0}")]
    Store(#[from] jobs::ports::StoreError),
}

/// The input every node gets when a job bypasses the cache (see [`stage`]).
pub(crate) const CACHE_NONCE_INPUT: &str = "x_serverless_comfyui_nonce";

/// The job's workflow with inputs uploaded and prefixes rewritten. With `cache_bypass`,
/// every node also gets a literal [`CACHE_NONCE_INPUT`] holding the job id: ComfyUI
/// keys its cache on every input of a node (unknown literal inputs included) and ignores
/// unknown literals otherwise, so no node of this job matches anything cached.
pub(crate) async fn stage(
    client: &Client,
    ports: &Ports,
    job: &Job,
    workflow: &Map<String, Value>,
    attempt: u32,
    cache_bypass: bool,
    staged_files: &mut Vec<comfyui::FileRef>,
) -> Result<Map<String, Value>, StageError> {
    let mut wf = workflow.clone();
    for (node_id, input, asset_id) in jobs::validate::asset_references(&wf) {
        let class = class_of(&wf, &node_id).map(str::to_string);
        let missing = || {
            let mut e = JobError::new(
                "missing_asset",
                format!(
                    "node {node_id} input `{input}` references asset {asset_id:?}, which no longer exists"
                ),
            );
            e.node_id = Some(node_id.clone());
            e.class_type = class.clone();
            StageError::Job(e)
        };
        let asset = ports
            .store
            .get_asset(&asset_id)
            .await?
            .filter(|a| a.tenant == job.tenant)
            .ok_or_else(missing)?;
        let bytes = ports
            .blobs
            .get(&asset.blob_key)
            .await?
            .ok_or_else(missing)?;
        let base = asset
            .file_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .filter(|b| !b.is_empty())
            .unwrap_or("input");
        // Starts with the asset id (`asset_…`), a prefix the validator refuses in plain
        // strings, so no other job can name this file; per job, so cleaning one job's
        // files never removes another's (crate::cleanup).
        let name = format!("{}_{}_{}", asset.id, job.id, sanitize(base));
        debug_assert!(name.starts_with(jobs::validate::STAGED_NAME_PREFIX));
        let uploaded = client
            .upload_image(
                &name,
                bytes,
                &UploadOptions {
                    overwrite: true,
                    ..UploadOptions::default()
                },
            )
            .await?;
        let kind = if uploaded.kind.is_empty() {
            "input"
        } else {
            &uploaded.kind
        };
        staged_files.push(comfyui::FileRef::new(
            &uploaded.name,
            &uploaded.subfolder,
            kind,
        ));
        if let Some(Value::Object(inputs)) = wf.get_mut(&node_id).and_then(|n| n.get_mut("inputs"))
        {
            inputs.insert(input, Value::String(uploaded.load_image_name()));
        }
    }
    let tag = format!("_{}_a{attempt}", job.id);
    comfyui::rewrite_filename_prefixes(&mut wf, |_, old| format!("{old}{tag}"));
    if cache_bypass {
        for node in wf.values_mut() {
            if let Some(Value::Object(inputs)) = node.get_mut("inputs") {
                inputs.insert(CACHE_NONCE_INPUT.into(), Value::String(job.id.to_string()));
            }
        }
    }
    Ok(wf)
}

/// The job's error if its workflow has a node id or a literal file input that must not
/// reach ComfyUI ([`jobs::validate::first_unsafe_input`]): `invalid_node_id` or
/// `unsafe_file_input`.
pub(crate) fn unsafe_input_error(workflow: &Map<String, Value>) -> Option<JobError> {
    let (node_id, input, message) = jobs::validate::first_unsafe_input(workflow)?;
    let code = if input.is_some() {
        "unsafe_file_input"
    } else {
        "invalid_node_id"
    };
    let mut e = JobError::new(code, message);
    e.class_type = class_of(workflow, &node_id).map(str::to_string);
    e.node_id = Some(node_id);
    Some(e)
}

/// Longest error message and traceback a job keeps (ComfyUI's can be long).
const MAX_ERROR_MESSAGE_BYTES: usize = 4 * 1024;
const MAX_TRACEBACK_BYTES: usize = 16 * 1024;

/// A job error as clients may see it: no server paths ([`comfyui::scrub_paths`]) and
/// bounded in size.
pub(crate) fn client_safe(mut e: JobError) -> JobError {
    use jobs::validate::clip;
    e.message = clip(&comfyui::scrub_paths(&e.message), MAX_ERROR_MESSAGE_BYTES);
    e.traceback = e
        .traceback
        .map(|t| clip(&comfyui::scrub_paths(&t), MAX_TRACEBACK_BYTES));
    e.node_id = e
        .node_id
        .map(|n| clip(&n, jobs::validate::MAX_NODE_ID_BYTES));
    e.class_type = e.class_type.map(|c| clip(&c, 256));
    e
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("f{s}")
    } else {
        s
    }
}

fn kind(k: comfyui::OutputKind) -> OutputKind {
    match k {
        comfyui::OutputKind::Image => OutputKind::Image,
        comfyui::OutputKind::Video => OutputKind::Video,
        comfyui::OutputKind::Audio => OutputKind::Audio,
        comfyui::OutputKind::Text => OutputKind::Text,
        comfyui::OutputKind::File => OutputKind::File,
        comfyui::OutputKind::Latent => OutputKind::Latent,
    }
}

/// Where an output's bytes come from.
pub(crate) enum OutputSource {
    /// A file ComfyUI wrote, read back through `/view`.
    File(comfyui::FileRef),
    /// A text a node returned in its history record.
    Text(String),
}

/// One output to store, named and typed, its bytes not fetched yet.
pub(crate) struct PlannedOutput {
    node_id: String,
    name: String,
    kind: OutputKind,
    content_type: String,
    source: OutputSource,
}

/// Names every output of a finished prompt (sanitised, unique within its node) and
/// types it; nothing is fetched yet.
pub(crate) fn plan_outputs(outputs: &Outputs) -> Vec<PlannedOutput> {
    let mut planned = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &outputs.files {
        let mut name = sanitize(&f.file.filename);
        if !seen.insert((f.node_id.clone(), name.clone())) {
            name = format!("{}_{name}", f.index);
            seen.insert((f.node_id.clone(), name.clone()));
        }
        planned.push(PlannedOutput {
            node_id: f.node_id.clone(),
            content_type: comfyui::mime_type(&f.file.filename).to_string(),
            name,
            kind: kind(f.kind),
            source: OutputSource::File(f.file.clone()),
        });
    }
    for t in &outputs.texts {
        planned.push(PlannedOutput {
            node_id: t.node_id.clone(),
            name: format!("{}_{}.txt", sanitize(&t.key), t.index),
            kind: OutputKind::Text,
            content_type: "text/plain; charset=utf-8".into(),
            source: OutputSource::Text(t.text.clone()),
        });
    }
    planned
}

/// How many outputs stream from ComfyUI into storage at once.
const OUTPUT_STREAMS: usize = 4;

/// Streams each planned output from ComfyUI (`/view`) into storage and mints an asset
/// for it through the assets service ([`jobs::assets::mint_output`]), a few at a time.
/// No output is ever held whole in memory.
pub(crate) async fn store_outputs(
    client: &Client,
    ports: &Ports,
    job: &Job,
    attempt: u32,
    planned: Vec<PlannedOutput>,
) -> Result<Vec<OutputRecord>, StageError> {
    use futures::{StreamExt, TryStreamExt};
    let minted = futures::stream::iter(planned)
        .map(|output| store_one(client, ports, job, attempt, output))
        .buffered(OUTPUT_STREAMS);
    minted.try_collect().await
}

async fn store_one(
    client: &Client,
    ports: &Ports,
    job: &Job,
    attempt: u32,
    output: PlannedOutput,
) -> Result<OutputRecord, StageError> {
    use futures::TryStreamExt;
    let body: jobs::ports::ByteStream = match output.source {
        OutputSource::File(file) => Box::pin(
            client
                .view_response(&file)
                .await?
                .bytes_stream()
                .map_err(std::io::Error::other),
        ),
        OutputSource::Text(text) => Box::pin(futures::stream::once(async move {
            Ok(Bytes::from(text.into_bytes()))
        })),
    };
    let name = output.name.clone();
    let new = NewOutput {
        node_id: output.node_id,
        name: output.name,
        kind: output.kind,
        content_type: output.content_type,
        body,
    };
    jobs::assets::mint_output(ports, job, attempt, new, jobs::assets::MAX_OUTPUT_BYTES)
        .await
        .map_err(|e| match e {
            BlobWriteError::TooLarge { max_bytes } => StageError::Job(JobError::new(
                "output_too_large",
                format!("the output {name} is larger than {max_bytes} bytes"),
            )),
            // The stream from ComfyUI broke: treated as ComfyUI failing.
            BlobWriteError::Body(e) => StageError::Engine(comfyui::Error::ServerGone(format!(
                "the output {name} stopped streaming: {e}"
            ))),
            BlobWriteError::Store(e) => StageError::Store(e),
        })
}

/// A node's `class_type`, if the workflow has the node and it names one.
pub(crate) fn class_of<'a>(workflow: &'a Map<String, Value>, id: &str) -> Option<&'a str> {
    workflow
        .get(id)
        .and_then(|n| n.get("class_type"))
        .and_then(Value::as_str)
}

/// A `POST /prompt` rejection as the job's error: `node_validation_error` naming the
/// first offending node when ComfyUI says which, else `invalid_prompt`.
pub(crate) fn rejection_error(
    r: &comfyui::PromptRejection,
    workflow: &Map<String, Value>,
) -> JobError {
    let class_of = |id: &str| class_of(workflow, id).map(str::to_string);
    if let Some((id, ne)) = r.node_errors.iter().next() {
        let mut e = JobError::new("node_validation_error", r.to_string());
        e.node_id = Some(id.clone());
        e.class_type = if ne.class_type.is_empty() {
            class_of(id)
        } else {
            Some(ne.class_type.clone())
        };
        return e;
    }
    let mut e = JobError::new("invalid_prompt", r.to_string());
    // ComfyUI names the node in `details` as "Node ID '#5'".
    if let Some(rest) = r.error.details.split("Node ID '#").nth(1)
        && let Some(id) = rest.split('\'').next()
    {
        e.class_type = class_of(id);
        e.node_id = Some(id.to_string());
    }
    e
}

/// An `execution_error` as the job's error.
pub(crate) fn execution_error(x: &comfyui::ExecutionError) -> JobError {
    let mut e = JobError::new(
        "node_execution_error",
        format!("{}: {}", x.exception_type, x.exception_message.trim_end()),
    );
    e.node_id = Some(x.node_id.clone()).filter(|s| !s.is_empty());
    e.class_type = Some(x.node_type.clone()).filter(|s| !s.is_empty());
    e.traceback = (!x.traceback.is_empty()).then(|| x.traceback.concat());
    e
}
