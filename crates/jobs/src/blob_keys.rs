//! Where bytes live in the blob store: every key is spelled here, once.
//!
//! | prefix | holds | written by | removed by |
//! |---|---|---|---|
//! | `inputs/{job}.json` | a job's workflow and `extra_data` | submit | retention, with the job |
//! | `outputs/{job}/{attempt}/{node}/{name}` | a job's output files | the runner | retention, asset delete |
//! | `cas/{tenant}/{hex}-{ulid}` | uploaded content, one copy per tenant and hash | asset minting | asset delete |
//! | `staging/{ulid}` | bytes being hashed before they are minted | uploads | minting; retention after a day |
//! | `uploads/{upload id}` | a large-file upload's signed PUT target | the client | complete; the upload sweep |
//! | `catalogues/{hex}.json` | node catalogues (`/object_info`), one copy per content | publishing | never (small, few) |
//! | `models/` | model files the runner syncs (the operator's) | the operator | the operator |
//!
//! Storage rules that follow a prefix (S3 lifecycle rules, IAM policies, the local
//! store's disk report) name these constants. A `cas/` key carries a ULID of its own so
//! a signed URL of deleted bytes never serves a later upload of the same bytes;
//! `outputs/` keys carry the attempt so a fenced-out runner never overwrites the
//! finishing attempt's files.

use std::fmt::Display;

/// Workflows of jobs.
pub const INPUTS: &str = "inputs/";
/// Outputs of jobs.
pub const OUTPUTS: &str = "outputs/";
/// Content-addressed uploads.
pub const CAS: &str = "cas/";
/// Bytes on their way to `cas/`.
pub const STAGING: &str = "staging/";
/// Large-file uploads in progress.
pub const UPLOADS: &str = "uploads/";
/// Node catalogues, content-addressed.
pub const CATALOGUES: &str = "catalogues/";
/// Model files for the runner.
pub const MODELS: &str = "models/";

/// Where a job's input (workflow and `extra_data`) is stored.
pub fn input(job: &impl Display) -> String {
    format!("{INPUTS}{job}.json")
}

/// Where an output file of one attempt of a job is stored.
pub fn output(job: &impl Display, attempt: u32, node_id: &str, name: &str) -> String {
    format!("{OUTPUTS}{job}/{attempt}/{node_id}/{name}")
}

/// A fresh key for a tenant's copy of content whose hash is `hash` (`blake3:<hex>`).
pub fn cas(tenant: &str, hash: &str) -> String {
    let hex = hash.trim_start_matches("blake3:");
    let unique = ulid::Ulid::new().to_string().to_ascii_lowercase();
    format!("{CAS}{tenant}/{hex}-{unique}")
}

/// Where the catalogue whose hash is `hash` (`blake3:<hex>`) is stored: one key per
/// content, so identical catalogues are stored once.
pub fn catalogue(hash: &str) -> String {
    format!("{CATALOGUES}{}.json", hash.trim_start_matches("blake3:"))
}

/// A fresh staging key.
pub fn staging() -> String {
    format!("{STAGING}{}", ulid::Ulid::new())
}

/// Where the bytes of upload `upload_id` are PUT.
pub fn upload(upload_id: &str) -> String {
    format!("{UPLOADS}{upload_id}")
}

/// The upload a key belongs to, if it is an upload key.
pub fn upload_id(key: &str) -> Option<&str> {
    key.strip_prefix(UPLOADS).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let job = "job_01JZV8Q3M7K2W9X0Y1Z2A3B4C5";
        assert_eq!(input(&job), "inputs/job_01JZV8Q3M7K2W9X0Y1Z2A3B4C5.json");
        assert_eq!(
            output(&job, 2, "9", "fox_00001_.png"),
            "outputs/job_01JZV8Q3M7K2W9X0Y1Z2A3B4C5/2/9/fox_00001_.png"
        );
        let hex = "ab".repeat(32);
        assert_eq!(
            catalogue(&format!("blake3:{hex}")),
            format!("catalogues/{hex}.json")
        );
        let key = cas("t1", &format!("blake3:{hex}"));
        let suffix = key
            .strip_prefix(&format!("cas/t1/{hex}-"))
            .unwrap_or_else(|| panic!("{key}"));
        assert_eq!(suffix.len(), 26, "a ULID: {key}");
        assert_eq!(suffix, suffix.to_ascii_lowercase());
        assert_eq!(upload("upload_01X"), "uploads/upload_01X");
        assert_eq!(upload_id(&upload("upload_01X")), Some("upload_01X"));
        assert_eq!(upload_id("uploads/"), None);
        assert_eq!(upload_id("staging/upload_01X"), None);
        assert!(staging().starts_with(STAGING));
    }

    #[test]
    fn fresh_keys_never_repeat() {
        let hash = format!("blake3:{}", "0".repeat(64));
        assert_ne!(cas("t", &hash), cas("t", &hash));
        assert_ne!(staging(), staging());
    }

    /// No prefix is inside another, so a sweep or a rule on one never touches another.
    #[test]
    fn prefixes_are_disjoint() {
        let all = [INPUTS, OUTPUTS, CAS, STAGING, UPLOADS, MODELS];
        for a in all {
            assert!(a.ends_with('/') && !a[..a.len() - 1].contains('/'), "{a}");
            for b in all {
                assert!(a == b || !a.starts_with(b), "{a} inside {b}");
            }
        }
    }
}
