//! Launchers on one machine: runner subprocesses instead of ECS tasks.
//!
//! [`SubprocessLauncher`] starts one runner process per ComfyUI endpoint (`dev` gives it
//! the `--comfyui` URLs, or the built-in simulator's). A slot is free when no live child
//! serves its endpoint; exited children are reaped on every call. Children are killed
//! when the launcher is dropped, so `dev` never leaves runners behind.
//!
//! [`SimulatedLauncher`] wraps another launcher to behave like a cold cloud: a boot
//! delay before each start, and capacity failures (`VcpuLimitExceeded`) on demand, so
//! tests can exercise scale-from-zero and the honest "waiting for GPU capacity" path.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jobs::ports::{LaunchError, LaunchedWorker, Launcher};
use tokio::process::{Child, Command};

/// How to start one runner.
#[derive(Debug, Clone)]
pub struct RunnerCommand {
    pub program: PathBuf,
    /// Arguments before the per-worker ones (`--comfyui-url`, `--worker-id`).
    pub args: Vec<String>,
}

struct Slot {
    comfyui_url: String,
    child: Option<(String, Child)>,
}

pub struct SubprocessLauncher {
    command: RunnerCommand,
    slots: Mutex<Vec<Slot>>,
    /// Workers reaped since the dispatcher last asked ([`Launcher::exited`]); at most
    /// one per start.
    exited: Mutex<Vec<String>>,
}

impl SubprocessLauncher {
    pub fn new(command: RunnerCommand, comfyui_urls: Vec<String>) -> Self {
        let slots = comfyui_urls
            .into_iter()
            .map(|comfyui_url| Slot {
                comfyui_url,
                child: None,
            })
            .collect();
        SubprocessLauncher {
            command,
            slots: Mutex::new(slots),
            exited: Mutex::new(Vec::new()),
        }
    }

    /// Runner processes alive now.
    pub fn running(&self) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.reap(&mut slots);
        slots.iter().filter(|s| s.child.is_some()).count()
    }

    /// Frees the slots of exited children, noting their worker ids.
    fn reap(&self, slots: &mut [Slot]) {
        let gone = reap(slots);
        if !gone.is_empty() {
            self.exited
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(gone);
        }
    }
}

/// Frees the slots of exited children; returns their worker ids.
fn reap(slots: &mut [Slot]) -> Vec<String> {
    let mut gone = Vec::new();
    for slot in slots.iter_mut() {
        let exited = match slot.child.as_mut() {
            Some((id, child)) => match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(worker = %id, %status, "runner exited");
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            },
            None => false,
        };
        if exited && let Some((id, _)) = slot.child.take() {
            gone.push(id);
        }
    }
    gone
}

#[async_trait]
impl Launcher for SubprocessLauncher {
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.reap(&mut slots);
        let mut launched = Vec::new();
        for slot in slots.iter_mut().filter(|s| s.child.is_none()) {
            if launched.len() as u32 >= count {
                break;
            }
            let worker_id = format!("runner-{}", ulid::Ulid::new());
            let mut command = Command::new(&self.command.program);
            command
                .args(&self.command.args)
                .arg("--comfyui-url")
                .arg(&slot.comfyui_url)
                .arg("--worker-id")
                .arg(&worker_id)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            // If `dev` dies without cleaning up, its runners get SIGTERM and hand their
            // jobs back rather than running on as orphans. And a runner (with the
            // ComfyUI it starts) runs under the default scheduling policy, whatever
            // policy `dev` chose for its own threads.
            #[cfg(target_os = "linux")]
            // SAFETY: prctl and sched_setscheduler are async-signal-safe and touch only
            // the child's own state.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let param = libc::sched_param { sched_priority: 0 };
                    if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match command.spawn() {
                Ok(child) => {
                    tracing::info!(worker = %worker_id, comfyui = %slot.comfyui_url, pid = ?child.id(), "runner started");
                    launched.push(LaunchedWorker {
                        id: worker_id.clone(),
                        detail: format!("subprocess for {}", slot.comfyui_url),
                    });
                    slot.child = Some((worker_id, child));
                }
                Err(e) => {
                    return Err((
                        launched,
                        LaunchError::Unavailable(format!(
                            "cannot start {}: {e}",
                            self.command.program.display()
                        )),
                    ));
                }
            }
        }
        Ok(launched)
    }

    async fn stop(&self, worker_id: &str) -> Result<(), LaunchError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter_mut() {
            if let Some((id, child)) = slot.child.as_mut()
                && id == worker_id
            {
                let _ = child.start_kill();
            }
        }
        Ok(())
    }

    fn exited(&self) -> Vec<String> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.reap(&mut slots);
        std::mem::take(&mut *self.exited.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn kind(&self) -> &'static str {
        "subprocess"
    }
}

/// A launcher that boots slowly and can run out of capacity, like a cold cloud.
pub struct SimulatedLauncher<L> {
    inner: L,
    boot_delay: Duration,
    out_of_capacity: AtomicBool,
    capacity_reason: String,
}

impl<L: Launcher> SimulatedLauncher<L> {
    pub fn new(inner: L, boot_delay: Duration) -> Self {
        SimulatedLauncher {
            inner,
            boot_delay,
            out_of_capacity: AtomicBool::new(false),
            capacity_reason: "VcpuLimitExceeded".into(),
        }
    }

    /// Makes every launch fail with a capacity error until switched back.
    pub fn set_out_of_capacity(&self, out: bool) {
        self.out_of_capacity.store(out, Ordering::SeqCst);
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }
}

#[async_trait]
impl<L: Launcher> Launcher for SimulatedLauncher<L> {
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        if self.out_of_capacity.load(Ordering::SeqCst) {
            return Err((vec![], LaunchError::Capacity(self.capacity_reason.clone())));
        }
        tokio::time::sleep(self.boot_delay).await;
        self.inner.launch(count).await
    }

    async fn stop(&self, worker_id: &str) -> Result<(), LaunchError> {
        self.inner.stop(worker_id).await
    }

    fn exited(&self) -> Vec<String> {
        self.inner.exited()
    }

    fn kind(&self) -> &'static str {
        "simulated"
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of the process reading `/proc/self/sched`.
    const PRINT_POLICY: &str = "grep '^policy' /proc/self/sched | tr -dc 0-9 > \"$0.tmp\" && mv \"$0.tmp\" \"$0\"; sleep 30";

    /// A child that exits (here at once; a SIGKILLed runner alike) is reported once by
    /// `exited`, so the dispatcher can drop its record.
    #[test]
    fn exited_children_are_reported_once() {
        let launcher = SubprocessLauncher::new(
            RunnerCommand {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 0".into()],
            },
            vec!["http://127.0.0.1:1".into()],
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let launched = launcher.launch(1).await.map_err(|(_, e)| e).unwrap();
            let id = launched[0].id.clone();
            for _ in 0..400 {
                let gone = launcher.exited();
                if !gone.is_empty() {
                    assert_eq!(gone, vec![id]);
                    assert!(launcher.exited().is_empty(), "reported once");
                    assert_eq!(launcher.running(), 0);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the exited child was never reported");
        });
    }

    /// `dev` runs its own threads under SCHED_BATCH; the runners it starts must not
    /// inherit that.
    #[test]
    fn runners_start_under_the_default_scheduling_policy() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("policy");
        let launcher = SubprocessLauncher::new(
            RunnerCommand {
                program: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    PRINT_POLICY.into(),
                    report.to_string_lossy().into_owned(),
                ],
            },
            vec!["http://127.0.0.1:1".into()],
        );
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes only this test thread's policy, which forks the child.
        assert_eq!(
            unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) },
            0
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            launcher.launch(1).await.map_err(|(_, e)| e).unwrap();
            for _ in 0..200 {
                if let Ok(policy) = std::fs::read_to_string(&report) {
                    assert_eq!(policy, libc::SCHED_OTHER.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the runner never reported its policy");
        });
        // SAFETY: as above; back to the default for whatever runs next on this thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    }
}
