//! Builds the web app (`frontend/`) into `$OUT_DIR/web`, which `src/web.rs` embeds in the
//! binary, so that `cargo run -p serverless-comfyui -- dev` on a fresh clone serves the app
//! at `/` with no second step.
//!
//! - npm present: `npm ci` (only when `node_modules` is missing or older than the lock
//!   file) and `vite build --outDir $OUT_DIR/web`. Cargo reruns this only when the app's
//!   sources change.
//! - npm missing, or `SERVERLESS_COMFYUI_WEB=skip`: the folder stays empty and `dev`
//!   answers `/` with a page that says how to build the app.
//! - A failing npm build fails the cargo build, loudly: a silently missing app would
//!   look like a bug in `dev`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web");
    std::fs::create_dir_all(&out).expect("create $OUT_DIR/web");
    let frontend = Path::new(env!("CARGO_MANIFEST_DIR")).join("../frontend");

    println!("cargo:rerun-if-env-changed=SERVERLESS_COMFYUI_WEB");
    for input in [
        "src",
        "public",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={}", frontend.join(input).display());
    }

    if std::env::var("SERVERLESS_COMFYUI_WEB").as_deref() == Ok("skip") {
        clear(&out);
        return;
    }
    if !frontend.join("package.json").is_file()
        || Command::new("npm").arg("--version").output().is_err()
    {
        println!("cargo:warning=npm not found: the web app is not embedded (dev explains at /)");
        clear(&out);
        return;
    }

    if needs_install(&frontend) {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&frontend));
    }
    run(Command::new("npx")
        .args([
            "vite",
            "build",
            "--emptyOutDir",
            "--logLevel",
            "warn",
            "--outDir",
        ])
        .arg(&out)
        .current_dir(&frontend));
}

/// `npm ci` is needed when there is no `node_modules`, or the lock file is newer.
fn needs_install(frontend: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(frontend.join("node_modules/.package-lock.json")),
        modified(frontend.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    assert!(
        status.success(),
        "{command:?} failed ({status}); set SERVERLESS_COMFYUI_WEB=skip to build without the web app"
    );
}

fn clear(out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).expect("create $OUT_DIR/web");
}
