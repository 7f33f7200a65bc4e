//! Downloading a job's outputs into a folder.
//!
//! Each output is saved as `<node id>-<output name>` (for example
//! `9-ComfyUI_00001_.png`), made safe for a file name: anything but letters, digits,
//! `.`, `-` and `_` becomes `_`, so a name with a subfolder stays inside the folder.
//! Two outputs that would share a name get `-2`, `-3`, ... before the extension.
//!
//! The bytes come from the output's signed `url`; if that has expired, from
//! `/api/v2/assets/{id}/content`, which signs a fresh one. They are streamed to
//! `.<name>.part`, checked against the output's `size_bytes` and its `blake3:` hash
//! when the server gave them, and only then renamed into place: a file with the final
//! name is always complete and correct.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::api::Api;
use super::error::ClientError;
use super::types::{Job, Output};

/// One saved output.
#[derive(Debug, Clone, Serialize)]
pub struct Downloaded {
    pub node_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub size_bytes: u64,
    pub path: PathBuf,
}

/// Saves every output of `job` into `out`.
pub async fn download_all(
    api: &Api,
    job: &Job,
    out: &Path,
) -> Result<Vec<Downloaded>, ClientError> {
    if job.outputs.is_empty() {
        return Ok(Vec::new());
    }
    tokio::fs::create_dir_all(out)
        .await
        .map_err(|source| ClientError::WriteFile {
            path: out.to_path_buf(),
            source,
        })?;
    let mut taken = HashSet::new();
    let mut saved = Vec::new();
    for output in &job.outputs {
        let name = unique(file_name(output), &mut taken);
        saved.push(download_one(api, output, &out.join(name)).await?);
    }
    Ok(saved)
}

async fn download_one(api: &Api, output: &Output, path: &Path) -> Result<Downloaded, ClientError> {
    let what = format!("output {} of node {}", output.name, output.node_id);
    let response = api
        .open_download(output.url.as_deref(), output.id.as_deref())
        .await?;
    let part = path.with_file_name(format!(
        ".{}.part",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let write_error = |source| ClientError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(&part).await.map_err(write_error)?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut chunks = response.bytes_stream();
    let result: Result<(), ClientError> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ClientError::Download {
                what: what.clone(),
                reason: api.transport_error(&e).to_string(),
            })?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        if let Some(expected) = output.size_bytes
            && expected != size
        {
            return Err(ClientError::Download {
                what: what.clone(),
                reason: format!("got {size} bytes, the server said {expected}"),
            });
        }
        if let Some(expected) = output
            .hash
            .as_deref()
            .and_then(|h| h.strip_prefix("blake3:"))
        {
            let got = hasher.finalize().to_hex();
            if !expected.eq_ignore_ascii_case(got.as_str()) {
                return Err(ClientError::Download {
                    what: what.clone(),
                    reason: format!("its BLAKE3 is {got}, the server said {expected}"),
                });
            }
        }
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, path).await.map_err(write_error)?;
    Ok(Downloaded {
        node_id: output.node_id.clone(),
        name: output.name.clone(),
        kind: output.kind.clone(),
        content_type: output.content_type.clone(),
        size_bytes: size,
        path: path.to_path_buf(),
    })
}

/// `<node>-<name>`, safe as one file name.
pub fn file_name(output: &Output) -> String {
    let name = if output.name.is_empty() {
        output.id.clone().unwrap_or_else(|| "output".into())
    } else {
        output.name.clone()
    };
    let raw = format!("{}-{}", output.node_id, name);
    let safe: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never hidden, never `.` or `..`.
    let safe = safe.trim_start_matches('.').to_string();
    if safe.is_empty() {
        "output".into()
    } else {
        safe
    }
}

fn unique(name: String, taken: &mut HashSet<String>) -> String {
    if taken.insert(name.clone()) {
        return name;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name.as_str(), ""),
    };
    for n in 2.. {
        let candidate = format!("{stem}-{n}{ext}");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    unreachable!("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(node: &str, name: &str) -> Output {
        serde_json::from_value(serde_json::json!({"node_id": node, "name": name})).unwrap()
    }

    #[test]
    fn names_are_safe_and_unique() {
        assert_eq!(
            file_name(&output("9", "ComfyUI_00001_.png")),
            "9-ComfyUI_00001_.png"
        );
        assert_eq!(
            file_name(&output("9", "sub/../x y.png")),
            "9-sub_.._x_y.png"
        );
        assert_eq!(file_name(&output("", "..")), "-..");
        assert_eq!(file_name(&output(".", ".")), "-.");
        let mut taken = HashSet::new();
        assert_eq!(unique("9-a.png".into(), &mut taken), "9-a.png");
        assert_eq!(unique("9-a.png".into(), &mut taken), "9-a-2.png");
        assert_eq!(unique("9-a.png".into(), &mut taken), "9-a-3.png");
        assert_eq!(unique("noext".into(), &mut taken), "noext");
        assert_eq!(unique("noext".into(), &mut taken), "noext-2");
    }
}
