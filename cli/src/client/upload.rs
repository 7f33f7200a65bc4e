//! Uploading a local file as an asset, without sending bytes the server already has.
//!
//! Assets are content-addressed by BLAKE3. Before uploading, the client hashes the file
//! and asks `HEAD /api/v2/assets/by-hash/blake3:<hex>`:
//!
//! - **200**: the server holds those bytes and this tenant may use them, so the asset is
//!   minted with `POST /api/v2/assets/from-hash`, and no file byte crosses the network.
//!   Running the same workflow on the same photo twice uploads it once.
//! - **404**: the file goes up as `POST /api/v2/assets` (multipart), with
//!   `expected_hash`, so the server refuses bytes that changed on the way.
//! - **413** on that upload (a serverless edge caps request bodies at a few MB): the
//!   file goes through this project's large-file extension instead (create → PUT to a
//!   signed URL → complete), where the server offers it.
//!
//! The asset's `file_path` is the file's name: it is the name ComfyUI's loaders see.

use std::path::{Path, PathBuf};

use super::api::Api;
use super::error::ClientError;
use super::types::Asset;

/// A local file, read and hashed.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub path: PathBuf,
    /// Shared, not copied, by each attempt to send it.
    pub bytes: bytes::Bytes,
    /// `blake3:<hex>`.
    pub hash: String,
    pub content_type: String,
    /// The name the asset gets (`file_path`).
    pub file_path: String,
}

/// How the asset came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The server had the bytes: minted from the hash, nothing uploaded.
    Dedup,
    /// Uploaded; `true` when the bytes were new to the server.
    Upload { new_bytes: bool },
}

impl Via {
    pub fn describe(self) -> &'static str {
        match self {
            Via::Dedup => "already on the server: minted from its hash, no bytes sent",
            Via::Upload { new_bytes: true } => "uploaded",
            Via::Upload { new_bytes: false } => {
                "uploaded; the server already had these bytes (deduplicated)"
            }
        }
    }
}

impl LocalFile {
    /// Reads and hashes `path`. `file_path` and `content_type` default to the file's
    /// name and the type its extension suggests.
    pub fn read(
        path: &Path,
        file_path: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<LocalFile, ClientError> {
        let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = format!("blake3:{}", blake3::hash(&bytes).to_hex());
        let file_path = match file_path {
            Some(given) => given.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    ClientError::Usage(format!("{} is not a file name", path.display()))
                })?,
        };
        let content_type = content_type.map(str::to_string).unwrap_or_else(|| {
            mime_guess::from_path(path)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string()
        });
        Ok(LocalFile {
            path: path.to_path_buf(),
            bytes: bytes::Bytes::from(bytes),
            hash,
            content_type,
            file_path,
        })
    }

    /// Makes this file an asset on the server: the dedup probe first, then an upload.
    pub async fn upload(&self, api: &Api) -> Result<(Asset, Via), ClientError> {
        if api.asset_exists(&self.hash).await? {
            match api
                .asset_from_hash(&self.hash, &self.file_path, &self.content_type)
                .await
            {
                Ok(asset) => return Ok((asset, Via::Dedup)),
                // The blob went away between the probe and the mint: upload after all.
                Err(ClientError::Api { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let uploaded = match api
            .upload_asset(
                self.bytes.clone(),
                &self.file_path,
                &self.content_type,
                &self.hash,
            )
            .await
        {
            Err(ClientError::Api { status: 413, .. }) => {
                api.upload_asset_large(
                    self.bytes.clone(),
                    &self.file_path,
                    &self.content_type,
                    &self.hash,
                )
                .await?
            }
            other => other?,
        };
        let new_bytes = uploaded.created_new.unwrap_or(true);
        Ok((uploaded, Via::Upload { new_bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_hashes_and_guesses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.png");
        std::fs::write(&path, b"abc").unwrap();
        let file = LocalFile::read(&path, None, None).unwrap();
        assert_eq!(
            file.hash,
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(file.content_type, "image/png");
        assert_eq!(file.file_path, "photo.png");
        let missing = LocalFile::read(&dir.path().join("nope.png"), None, None).unwrap_err();
        assert!(matches!(missing, ClientError::ReadFile { .. }));
        assert!(missing.to_string().contains("nope.png"));
    }

    /// A scripted server: no dedup hit, the multipart upload is too large (413), and the
    /// large-file extension takes the bytes.
    #[tokio::test]
    async fn a_413_falls_back_to_the_large_file_extension() {
        use std::sync::{Arc, Mutex};

        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::{head, post, put};
        use serde_json::json;

        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let router = axum::Router::new()
            .route(
                "/api/v2/assets/by-hash/{hash}",
                head(|| async { StatusCode::NOT_FOUND }),
            )
            .route(
                "/api/v2/assets",
                post(|| async {
                    let body = json!({"error": {"code": "payload_too_large", "message": "use the extension"}});
                    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
                }),
            )
            .route(
                "/api/v2/x-serverless-comfyui/uploads",
                post(|| async {
                    (
                        StatusCode::CREATED,
                        axum::Json(json!({
                            "id": "up_1",
                            "upload_url": "/_blobs/staging/up_1?sig=x",
                            "upload_method": "PUT",
                            "complete_url": "/api/v2/x-serverless-comfyui/uploads/up_1/complete",
                        })),
                    )
                }),
            )
            .route(
                "/_blobs/{*key}",
                put(move |body: axum::body::Bytes| {
                    let sink = sink.clone();
                    async move {
                        sink.lock().unwrap().extend_from_slice(&body);
                        StatusCode::OK
                    }
                }),
            )
            .route(
                "/api/v2/x-serverless-comfyui/uploads/{id}/complete",
                post(|| async {
                    (
                        StatusCode::CREATED,
                        axum::Json(json!({"id": "asset_big", "created_new": true})),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let api = Api::new(&format!("http://{address}"), None).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let file = LocalFile::read(&path, None, None).unwrap();
        assert_eq!(file.content_type, "application/octet-stream");
        let (asset, via) = file.upload(&api).await.unwrap();
        assert_eq!(asset.id, "asset_big");
        assert_eq!(via, Via::Upload { new_bytes: true });
        assert_eq!(*received.lock().unwrap(), vec![7u8; 5000]);
    }
}
