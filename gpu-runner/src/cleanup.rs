//! Leaving nothing of a job in ComfyUI's folders.
//!
//! ComfyUI 0.3.64 has no HTTP route that deletes a file from its input, output or temp
//! folder. So:
//!
//! - **Always** (attach or spawn): nothing of one job is *reachable* by another. Staged
//!   inputs get per-job names that start with the asset id ([`STAGED_NAME_PREFIX`]),
//!   which submit and the runner refuse in plain strings; outputs and previews live in
//!   the output and temp folders, which only `[output]`/`[temp]` annotations reach, and
//!   those are refused too (`jobs::validate::check_file_input`). The bytes stay on
//!   ComfyUI's disk, though, until someone removes them.
//! - **When the runner owns the folders** ([`ComfyDirs`], `--comfyui-workdir` with a
//!   spawned ComfyUI, as in the GPU container), each job's files are deleted when its
//!   task ends, whatever the outcome: its staged inputs, every file its prompt's history
//!   listed, and every file in the output and temp folders whose name carries the job's
//!   `filename_prefix` tag (`_<job id>_a`), which catches a failed or canceled prompt's
//!   partial outputs. At start the runner empties the output and temp folders and
//!   removes staged inputs a predecessor left.
//!
//! Limit: a prompt that keeps running after its job let go (fenced out, or ComfyUI
//! ignoring an interrupt) can write after the cleanup; those files are removed at the
//! next start of the runner (and ComfyUI itself wipes temp at start).

use std::path::{Component, Path, PathBuf};

use comfyui::FileRef;
use jobs::validate::STAGED_NAME_PREFIX;

/// ComfyUI's folders, on a filesystem the runner shares (the runner spawned ComfyUI with
/// `--input-directory`, `--output-directory` and `--temp-directory` pointing here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfyDirs {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The temp folder itself (ComfyUI's `--temp-directory D` writes to `D/temp`).
    pub temp: PathBuf,
}

impl ComfyDirs {
    /// The folders under a work directory: `input/`, `output/`, and `temp/` (ComfyUI is
    /// given the work directory itself as `--temp-directory`, and appends `temp`).
    pub fn under(workdir: &Path) -> ComfyDirs {
        ComfyDirs {
            input: workdir.join("input"),
            output: workdir.join("output"),
            temp: workdir.join("temp"),
        }
    }

    fn by_type(&self, kind: &str) -> Option<&Path> {
        match kind {
            "input" => Some(&self.input),
            "output" | "" => Some(&self.output),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }

    /// Creates the folders; empties output and temp, and removes staged inputs a
    /// previous runner left (the runner owns these folders).
    pub fn prepare(&self) -> std::io::Result<()> {
        for dir in [&self.input, &self.output, &self.temp] {
            std::fs::create_dir_all(dir)?;
        }
        for dir in [&self.output, &self.temp] {
            remove_matching(dir, &|_| true);
        }
        remove_matching(&self.input, &|name| name.starts_with(STAGED_NAME_PREFIX));
        Ok(())
    }
}

/// The most directory entries one sweep looks at (a bound, not an expectation: the
/// folders hold one or two jobs' files).
const MAX_ENTRIES: usize = 100_000;
const MAX_DEPTH: usize = 16;

/// Deletes a job's files (see the module docs). Returns how many were removed.
pub(crate) fn clean_job(dirs: &ComfyDirs, job_id: &str, files: &[FileRef]) -> usize {
    let mut removed = 0;
    for f in files {
        if let Some(path) = dirs
            .by_type(&f.kind)
            .and_then(|dir| contained(dir, &f.subfolder, &f.filename))
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    let tag = format!("_{job_id}_a");
    for dir in [&dirs.output, &dirs.temp] {
        removed += remove_matching(dir, &|name| name.contains(&tag));
    }
    removed
}

/// `dir/subfolder/basename(filename)`, or `None` if it would leave `dir`.
fn contained(dir: &Path, subfolder: &str, filename: &str) -> Option<PathBuf> {
    let sub = Path::new(subfolder);
    if !sub.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let name = Path::new(filename).file_name()?;
    Some(dir.join(sub).join(name))
}

/// Removes the regular files (and symlinks) under `dir` whose name matches; never
/// follows a symlink. Bounded in depth and entries.
fn remove_matching(dir: &Path, matches: &dyn Fn(&str) -> bool) -> usize {
    let mut removed = 0;
    let mut seen = 0;
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                tracing::warn!(dir = %dir.display(), "cleanup stopped after {MAX_ENTRIES} entries");
                return removed;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((entry.path(), depth + 1));
                }
            } else if matches(&entry.file_name().to_string_lossy())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_their_folder() {
        let d = Path::new("/w/output");
        assert_eq!(contained(d, "", "a.png"), Some(d.join("a.png")));
        assert_eq!(contained(d, "sub", "a.png"), Some(d.join("sub/a.png")));
        assert_eq!(contained(d, "", "../../x/a.png"), Some(d.join("a.png")));
        assert_eq!(contained(d, "../x", "a.png"), None);
        assert_eq!(contained(d, "/etc", "a.png"), None);
        assert_eq!(contained(d, "", ".."), None);
    }

    #[test]
    fn a_jobs_files_are_removed_and_others_kept() {
        let w = tempfile::tempdir().unwrap();
        let dirs = ComfyDirs::under(w.path());
        dirs.prepare().unwrap();
        let write = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        let job = "job_01AAA";
        write(dirs.input.join("asset_1_job_01AAA_a.png"));
        write(dirs.output.join(format!("sub/out_{job}_a1_00001_.png")));
        write(dirs.output.join(format!("partial_{job}_a2_00001_.png")));
        write(dirs.temp.join("ComfyUI_temp_abcde_00001_.png"));
        write(dirs.output.join("other_job_01BBB_a1_00001_.png"));
        write(dirs.input.join("example.png"));
        let files = [
            FileRef::new("asset_1_job_01AAA_a.png", "", "input"),
            FileRef::new("ComfyUI_temp_abcde_00001_.png", "", "temp"),
            FileRef::new("passwd", "../../etc", "output"),
        ];
        assert_eq!(clean_job(&dirs, job, &files), 4);
        assert!(dirs.output.join("other_job_01BBB_a1_00001_.png").exists());
        assert!(dirs.input.join("example.png").exists());
        // A new runner starts from empty output and temp folders, and no staged inputs.
        write(dirs.input.join("asset_2_job_01CCC_b.png"));
        dirs.prepare().unwrap();
        assert!(!dirs.output.join("other_job_01BBB_a1_00001_.png").exists());
        assert!(!dirs.input.join("asset_2_job_01CCC_b.png").exists());
        assert!(dirs.input.join("example.png").exists());
    }
}
