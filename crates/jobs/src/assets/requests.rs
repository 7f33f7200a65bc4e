//! The request and response shapes of the asset routes, and the JSON Schemas the
//! OpenAPI document gives their requests (to the letter of [`super::validate_meta`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AssetsConfig;
use super::checks::{FILE_PATH_PATTERN, HASH_PATTERN, MAX_TAGS};

/// v2's `Asset`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssetView {
    #[schema(example = "asset_01JZV8Q3M7K2W9X0Y1Z2A3B4C5")]
    pub id: String,
    /// `blake3:<hex>`.
    pub hash: Option<String>,
    pub size_bytes: u64,
    pub content_type: String,
    pub file_path: Option<String>,
    pub tags: Vec<String>,
    /// On create responses: a brand-new blob (true) or a dedup hit (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_new: Option<bool>,
    pub created_at: String,
    /// Short-lived signed content URL.
    pub url: String,
    pub url_expires_at: String,
}

/// The body of `POST /api/v2/assets/from-hash`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromHashRequest {
    pub hash: String,
    pub file_path: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not in v2; accepted so a client may say what the bytes are.
    pub content_type: Option<String>,
}

/// The body of `POST /api/v2/x-serverless-comfyui/uploads` (our extension).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUploadRequest {
    /// Placement path / filename, as in `POST /api/v2/assets`.
    pub file_path: String,
    pub content_type: String,
    /// The exact size of the file in bytes: the storage behind `upload_url` refuses a
    /// body of any other length (see `size_enforcement` in the answer).
    pub size_bytes: u64,
    pub expected_hash: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An upload in progress: PUT the bytes to `upload_url`, then POST `complete_url`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    pub id: String,
    pub upload_url: String,
    /// The HTTP method for `upload_url`.
    pub upload_method: String,
    /// Headers the upload request must carry exactly as given: they are part of the
    /// signature (`content-length`, the exact size).
    pub upload_headers: std::collections::BTreeMap<String, String>,
    /// How the storage holds the upload to its size: `exact` (a body of any length
    /// other than `size_bytes` is refused by the storage itself).
    pub size_enforcement: SizeEnforcement,
    /// The size the upload must have.
    pub size_bytes: u64,
    /// The same as `size_bytes`, kept for clients written before `size_enforcement`.
    pub max_bytes: u64,
    pub expires_at: String,
    pub complete_url: String,
}

/// How the storage behind a signed upload URL holds an upload to its declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SizeEnforcement {
    /// Exactly `size_bytes`: S3 through a signed `Content-Length`; `dev`'s blob server
    /// by checking the signed size.
    Exact,
}

/// The document's schemas of what clients say about bytes, to the letter of
/// [`validate_meta`]: `(schema name, JSON Schema)` for the request bodies of
/// `POST /api/v2/assets`, `/assets/from-hash` and `/x-serverless-comfyui/uploads`.
/// Lengths are in characters here and in bytes of UTF-8 on the server: the
/// descriptions say so.
pub fn request_schemas(config: &AssetsConfig) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let file_path = json!({
        "type": "string",
        "maxLength": 1024,
        "pattern": FILE_PATH_PATTERN,
        "description": "Placement path / filename: relative, `/`-separated, at most 1024 bytes of \
                        UTF-8, no empty or `..` segment, no NUL, no backslash (422 `invalid_file_path`).",
        "example": "photo.png",
    });
    let content_type = json!({
        "type": "string",
        "maxLength": 255,
        "pattern": "^[ -~]*/[ -~]*$",
        "description": "A media type such as `image/png`: printable ASCII with a `/`, at most 255 \
                        bytes (422 `invalid_content_type`).",
        "example": "image/png",
    });
    let hash = json!({
        "type": "string",
        "pattern": HASH_PATTERN,
        "description": "`blake3:<64 hex digits>` (400 `invalid_hash`).",
    });
    let tags = json!({
        "type": "array",
        "maxItems": MAX_TAGS,
        "items": {"type": "string", "minLength": 1, "maxLength": 64},
        "description": format!("At most {MAX_TAGS} tags, each 1 to 64 bytes of UTF-8 (422 `invalid_tags`)."),
    });
    let nullable = |schema: &serde_json::Value| {
        let mut schema = schema.clone();
        schema["type"] = json!(["string", "null"]);
        schema
    };
    vec![
        (
            "AssetUploadForm",
            json!({
                "type": "object",
                "description": "Parts other than these are ignored; each part but `tags` at most once \
                                (422). Text parts are at most 8 KiB each (413).",
                "required": ["file", "content_type", "file_path"],
                // A part's name is a header parameter: no control characters but tab
                // (encoders percent-encode CR and LF, as browsers do).
                "propertyNames": {"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"},
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "content_type": content_type,
                    "file_path": file_path,
                    "expected_hash": {
                        "allOf": [hash],
                        "description": "Verified against the bytes received: 409 `hash_mismatch` and nothing stored when they differ.",
                    },
                    "tags": tags,
                },
            }),
        ),
        (
            "FromHashRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["hash"],
                "properties": {
                    "hash": hash,
                    "file_path": nullable(&file_path),
                    "tags": tags,
                    // Not in v2; accepted so a client may say what the bytes are.
                    "content_type": nullable(&content_type),
                },
            }),
        ),
        (
            "CreateUploadRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["file_path", "content_type", "size_bytes"],
                "properties": {
                    "file_path": file_path,
                    "content_type": content_type,
                    "size_bytes": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": config.max_large_upload_bytes,
                        "description": "The exact size of the file in bytes; the storage behind the signed URL refuses a body of any other length (422 `invalid_size` when 0 or over the limit).",
                    },
                    "expected_hash": nullable(&hash),
                    "tags": tags,
                },
            }),
        ),
    ]
}
