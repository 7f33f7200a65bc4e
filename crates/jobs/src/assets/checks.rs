//! What a client says about bytes, checked before any byte is kept: placement paths,
//! hashes, tags and media types.

use super::AssetMeta;
use crate::error::{DomainError, ErrorKind};

/// Checks a placement path: relative, no `..`, no NUL, no backslash.
pub fn validate_file_path(path: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        DomainError::unprocessable(
            "invalid_file_path",
            format!("file_path {path:?} is not allowed: {why}"),
        )
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.len() > 1024 {
        return Err(bad("it is longer than 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("it must be relative, without a leading '/'"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(bad("it contains a backslash; use '/'"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(bad("it contains '..'"));
    }
    if path.split('/').any(str::is_empty) {
        return Err(bad("it has an empty path segment"));
    }
    Ok(())
}

/// Parses `blake3:<64 hex digits>`, case-insensitively, into its canonical lowercase form.
pub fn parse_hash(raw: &str) -> Result<String, DomainError> {
    let hex = raw.strip_prefix("blake3:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::new(
            ErrorKind::InvalidRequest,
            "invalid_hash",
            format!("{raw:?} is not a hash: expected blake3:<64 hex digits>"),
        ));
    }
    Ok(format!("blake3:{}", hex.to_ascii_lowercase()))
}

/// The most tags an asset may carry.
pub const MAX_TAGS: usize = 16;

pub(super) fn validate_tags(tags: &[String]) -> Result<(), DomainError> {
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(DomainError::unprocessable(
            "invalid_tags",
            "tags: at most 16, each 1 to 64 bytes",
        ));
    }
    Ok(())
}

pub(super) fn validate_content_type(content_type: &str) -> Result<(), DomainError> {
    let plausible = content_type.len() <= 255
        && content_type.contains('/')
        && content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
    if !plausible {
        return Err(DomainError::unprocessable(
            "invalid_content_type",
            format!("{content_type:?} is not a media type such as image/png"),
        ));
    }
    Ok(())
}

/// Validates what a client says about an upload, before any byte is kept.
pub fn validate_meta(meta: &AssetMeta) -> Result<(), DomainError> {
    validate_content_type(&meta.content_type)?;
    validate_file_path(&meta.file_path)?;
    validate_tags(&meta.tags)?;
    if let Some(expected) = &meta.expected_hash {
        parse_hash(expected)?;
    }
    Ok(())
}

/// [`validate_file_path`] as a pattern: `/`-separated segments, none empty or `..`,
/// without NUL or backslash (no lookaround, so every regex engine reads it alike).
pub const FILE_PATH_PATTERN: &str = r"^(?:[^/\\\x00.][^/\\\x00]*|\.|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)(?:/(?:[^/\\\x00.][^/\\\x00]*|\.|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+))*$";

/// [`parse_hash`] as a pattern.
pub const HASH_PATTERN: &str = "^blake3:[0-9a-fA-F]{64}$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths() {
        for ok in ["photo.png", "models/checkpoints/x.safetensors", "a b.png"] {
            validate_file_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a\\b",
            "a\0b",
            "a//b",
            "a/",
        ] {
            assert_eq!(
                validate_file_path(bad).unwrap_err().code,
                "invalid_file_path",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hashes() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_hash(&format!("blake3:{hex}")).unwrap(),
            format!("blake3:{}", hex.to_lowercase())
        );
        assert!(parse_hash(&hex).is_err());
        assert!(parse_hash("blake3:xyz").is_err());
    }
}
