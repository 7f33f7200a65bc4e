//! Supervision of ComfyUI: start it (or attach to it), wait until it answers, watch it,
//! and restart it when it dies.
//!
//! Three ways to get a ComfyUI ([`EngineSpec`]):
//!
//! - **Spawn** (`--comfyui-cmd`): the runner starts the command as a child in its own
//!   process group, with a parent-death signal (`PR_SET_PDEATHSIG`, Linux), so the child
//!   dies with the runner even when the runner is SIGKILLed. `{port}` in the command is
//!   replaced by a free loopback port, and the runner talks to `http://127.0.0.1:{port}`;
//!   without `{port}` it uses `--comfyui-url` (default `http://127.0.0.1:8188`).
//! - **Attach** (`--comfyui-url` alone): someone else runs ComfyUI. The runner first
//!   clears what a predecessor left behind: pending prompts whose `client_id` starts with
//!   [`CLIENT_ID_PREFIX`] are deleted, and a running one is interrupted.
//! - **Custom** ([`EngineLauncher`]): tests supply their own (an in-process simulator).
//!
//! The supervisor publishes an [`EngineState`] on a watch channel. Every job task
//! watches it: when the engine goes down, the running job is released at once (its lease
//! is shortened to zero and its message made visible, so a takeover happens now, as the
//! next charged attempt) and a reserved one is unreserved; nothing is left hanging. Then
//! the supervisor restarts ComfyUI and publishes a new generation.
//!
//! Health: a child's exit is seen at once; besides, `/system_stats` is probed every two
//! seconds (and at once when a job reports trouble); two failures in a row mean down, and
//! so does an event socket that gave up reconnecting. After a report of trouble the
//! runner takes no new job until health answers ([`Trouble`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use comfyui::{Client, RunOptions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::CLIENT_ID_PREFIX;
use crate::error::RunnerError;

/// Where the runner's ComfyUI comes from.
#[derive(Clone)]
pub enum EngineSpec {
    /// Use a ComfyUI someone else runs.
    Attach { url: String },
    /// Start this command line as a child (see the module docs for `{port}`).
    Spawn {
        command: String,
        url: Option<String>,
    },
    /// Start it through a custom launcher.
    Custom(Arc<dyn EngineLauncher>),
}

impl std::fmt::Debug for EngineSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineSpec::Attach { url } => write!(f, "Attach({url})"),
            EngineSpec::Spawn { command, .. } => write!(f, "Spawn({command})"),
            EngineSpec::Custom(_) => write!(f, "Custom"),
        }
    }
}

/// Starts a ComfyUI.
#[async_trait]
pub trait EngineLauncher: Send + Sync + 'static {
    async fn launch(&self) -> Result<Launched, RunnerError>;
}

/// A started ComfyUI: where it listens, and the handle to watch and stop it.
pub struct Launched {
    pub url: String,
    pub process: Box<dyn EngineProcess>,
}

/// A ComfyUI the runner started.
#[async_trait]
pub trait EngineProcess: Send + 'static {
    /// Resolves when it has exited, with a description of how.
    async fn wait(&mut self) -> String;
    /// Stops it and everything it started.
    async fn kill(&mut self);
}

/// A usable ComfyUI.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Bumped on every (re)start: a job submitted to one generation is lost with it.
    pub generation: u64,
    pub client: Client,
    pub url: String,
    /// The runner's one WebSocket to this generation.
    pub events: Arc<crate::events::EventHub>,
}

/// What the supervisor says about ComfyUI.
#[derive(Clone, Debug)]
pub enum EngineState {
    Starting,
    Up(Engine),
    Down {
        reason: String,
    },
    /// Could not be (re)started: the runner must exit.
    Failed(String),
    /// Up, but without node classes the custom nodes manifest promises: the runner
    /// takes no job and says why in the registry (health shows it).
    Refused(String),
}

impl EngineState {
    pub fn up(&self) -> Option<&Engine> {
        match self {
            EngineState::Up(e) => Some(e),
            _ => None,
        }
    }
}

/// A job's report that ComfyUI misbehaved. Health is probed at once, and until a probe
/// answers (or ComfyUI is up again after a restart) the runner takes no new job: each
/// would fail to reach ComfyUI and be released as a charged attempt, so an attached
/// ComfyUI that restarts in a second would otherwise burn every attempt of the jobs
/// arriving meanwhile.
#[derive(Default)]
pub(crate) struct Trouble {
    notify: Notify,
    suspect: AtomicBool,
}

impl Trouble {
    pub fn report(&self) {
        self.suspect.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// True from a report until health answers again.
    pub fn suspect(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.suspect.store(false, Ordering::SeqCst);
    }
}

/// Consecutive failed starts before the runner gives up.
const MAX_START_FAILURES: u32 = 3;

pub(crate) struct SupervisorHandle {
    pub state: watch::Receiver<EngineState>,
    /// Report it when a job saw ComfyUI misbehave: health is checked at once.
    pub trouble: Arc<Trouble>,
    /// Poke it when ComfyUI must be restarted (a prompt that ignores interrupts).
    pub restart: Arc<Notify>,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) struct SupervisorConfig {
    pub ready_timeout: Duration,
    pub warmup: Option<serde_json::Map<String, serde_json::Value>>,
    pub worker_id: String,
    /// Checked in `/object_info` before the warm-up ([`crate::nodes`]).
    pub required_classes: Vec<String>,
    /// Where each started ComfyUI's `/object_info` is published as the node catalogue
    /// ([`crate::nodes::publish_catalogue`]); `None` publishes nothing.
    pub catalogue: Option<jobs::ports::Ports>,
}

pub(crate) fn spawn_supervisor(
    spec: EngineSpec,
    config: SupervisorConfig,
    stop: CancellationToken,
) -> SupervisorHandle {
    let (tx, rx) = watch::channel(EngineState::Starting);
    let trouble = Arc::new(Trouble::default());
    let restart = Arc::new(Notify::new());
    let task = tokio::spawn(supervise(
        spec,
        config,
        tx,
        trouble.clone(),
        restart.clone(),
        stop,
    ));
    SupervisorHandle {
        state: rx,
        trouble,
        restart,
        task,
    }
}

async fn supervise(
    spec: EngineSpec,
    config: SupervisorConfig,
    tx: watch::Sender<EngineState>,
    trouble: Arc<Trouble>,
    restart: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut generation = 0u64;
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let _ = tx.send(EngineState::Starting);
        let launched = match &spec {
            EngineSpec::Attach { url } => Ok((url.clone(), None)),
            EngineSpec::Spawn { command, url } => {
                spawn_child(command, url.as_deref()).map(|(u, p)| (u, Some(p)))
            }
            EngineSpec::Custom(launcher) => {
                launcher.launch().await.map(|l| (l.url, Some(l.process)))
            }
        };
        let (url, mut process) = match launched {
            Ok(x) => x,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, failures, "cannot start ComfyUI");
                if failures >= MAX_START_FAILURES {
                    let _ = tx.send(EngineState::Failed(e.to_string()));
                    return;
                }
                sleep_or_stop(Duration::from_secs(1), &stop).await;
                continue;
            }
        };
        let client = match Client::new(&url) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(EngineState::Failed(e.to_string()));
                kill(&mut process).await;
                return;
            }
        };
        // Ready, with a deadline; a child that dies meanwhile is a failed start.
        let ready = tokio::select! {
            r = client.wait_ready(config.ready_timeout) => r.map(|_| ()).map_err(|e| e.to_string()),
            why = wait(&mut process) => Err(format!("ComfyUI exited while starting: {why}")),
            _ = stop.cancelled() => {
                kill(&mut process).await;
                return;
            }
        };
        if let Err(e) = ready {
            failures += 1;
            tracing::error!(error = %e, failures, "ComfyUI did not become ready");
            kill(&mut process).await;
            if failures >= MAX_START_FAILURES {
                let _ = tx.send(EngineState::Failed(e));
                return;
            }
            sleep_or_stop(Duration::from_secs(1), &stop).await;
            continue;
        }
        failures = 0;
        match client.clear_leftovers(CLIENT_ID_PREFIX).await {
            Ok(l) if !l.deleted.is_empty() || !l.interrupted.is_empty() => tracing::warn!(
                deleted = l.deleted.len(),
                interrupted = l.interrupted.len(),
                "cleared prompts a predecessor left behind"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not clear leftovers"),
        }
        if !config.required_classes.is_empty() {
            match client.object_info().await {
                Ok(info) => {
                    if let Some(missing) =
                        crate::nodes::missing_classes(&info, &config.required_classes)
                    {
                        let message = crate::nodes::refusal_message(&missing);
                        tracing::error!(missing = ?missing, "refusing jobs: {message}");
                        // No job will run: ComfyUI is not needed until the runner exits.
                        kill(&mut process).await;
                        let _ = tx.send(EngineState::Refused(message));
                        stop.cancelled().await;
                        return;
                    }
                    tracing::info!(
                        classes = config.required_classes.len(),
                        "the custom nodes' classes are all there"
                    );
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "cannot read ComfyUI's /object_info");
                    kill(&mut process).await;
                    if failures >= MAX_START_FAILURES {
                        let _ = tx.send(EngineState::Failed(e.to_string()));
                        return;
                    }
                    sleep_or_stop(Duration::from_secs(1), &stop).await;
                    continue;
                }
            }
        }
        if let Some(ports) = &config.catalogue {
            let source = format!("runner:{} {url}", config.worker_id);
            tokio::spawn(crate::nodes::publish_catalogue(
                client.clone(),
                ports.clone(),
                source,
            ));
        }
        if let Some(wf) = &config.warmup {
            warm_up(&client, wf, &config).await;
        }
        let events = match crate::events::EventHub::connect(&client, &config.worker_id).await {
            Ok(hub) => hub,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, failures, "cannot open ComfyUI's WebSocket");
                kill(&mut process).await;
                if failures >= MAX_START_FAILURES {
                    let _ = tx.send(EngineState::Failed(e.to_string()));
                    return;
                }
                sleep_or_stop(Duration::from_secs(1), &stop).await;
                continue;
            }
        };
        generation += 1;
        tracing::info!(generation, url = %url, "ComfyUI is up");
        trouble.clear();
        let _ = tx.send(EngineState::Up(Engine {
            generation,
            client: client.clone(),
            url: url.clone(),
            events: events.clone(),
        }));

        let reason = tokio::select! {
            why = wait(&mut process) => why,
            why = watch_health(&client, &events, &trouble) => why,
            _ = restart.notified() => "restart requested (a prompt would not stop)".to_string(),
            _ = stop.cancelled() => {
                events.close();
                kill(&mut process).await;
                return;
            }
        };
        events.close();
        tracing::error!(%reason, generation, "ComfyUI is down");
        let _ = tx.send(EngineState::Down {
            reason: reason.clone(),
        });
        kill(&mut process).await;
        sleep_or_stop(Duration::from_millis(200), &stop).await;
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

async fn wait(process: &mut Option<Box<dyn EngineProcess>>) -> String {
    match process {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

async fn kill(process: &mut Option<Box<dyn EngineProcess>>) {
    if let Some(p) = process {
        p.kill().await;
    }
}

async fn watch_health(
    client: &Client,
    events: &crate::events::EventHub,
    trouble: &Trouble,
) -> String {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = trouble.notify.notified() => {}
        }
        if events.is_dead() {
            // ComfyUI may answer again, but this generation's socket is gone for good:
            // every prompt on it would fail and burn an attempt.
            return "the event stream gave up reconnecting".into();
        }
        let probe = tokio::time::timeout(Duration::from_secs(5), client.system_stats()).await;
        match probe {
            Ok(Ok(_)) => {
                failures = 0;
                trouble.clear();
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures >= 2 {
                    return format!("/system_stats failed twice: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                failures += 1;
                if failures >= 2 {
                    return "/system_stats did not answer twice".into();
                }
            }
        }
    }
}

async fn warm_up(
    client: &Client,
    workflow: &serde_json::Map<String, serde_json::Value>,
    config: &SupervisorConfig,
) {
    let mut wf = workflow.clone();
    comfyui::rewrite_filename_prefixes(&mut wf, |_, old| format!("{old}_warmup"));
    let opts = RunOptions {
        client_id: Some(format!("{CLIENT_ID_PREFIX}{}-warmup", config.worker_id)),
        deadline: Some(config.ready_timeout),
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    match client
        .run_prompt(&comfyui::new_prompt_id(), wf, &opts, |_| {})
        .await
    {
        Ok(run) => {
            tracing::info!(outcome = ?run.outcome, elapsed_ms = started.elapsed().as_millis() as u64, "warm-up done")
        }
        Err(e) => tracing::warn!(error = %e, "warm-up failed; taking jobs anyway"),
    }
}

// ---------------------------------------------------------------------- child process

struct ChildProcess {
    child: tokio::process::Child,
    pgid: Option<i32>,
    exited: Option<String>,
}

#[async_trait]
impl EngineProcess for ChildProcess {
    async fn wait(&mut self) -> String {
        if let Some(e) = &self.exited {
            return e.clone();
        }
        let why = match self.child.wait().await {
            Ok(status) => format!("ComfyUI exited: {status}"),
            Err(e) => format!("ComfyUI wait failed: {e}"),
        };
        self.exited = Some(why.clone());
        why
    }

    async fn kill(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg only sends a signal to the child's own process group.
            unsafe {
                libc::killpg(pgid, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
                .await
                .is_err()
            {
                // SAFETY: as above.
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
            }
            // Take whatever else is left in the group.
            // SAFETY: as above.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        self.exited
            .get_or_insert_with(|| "killed by the runner".into());
    }
}

/// Default URL of a spawned ComfyUI when the command does not use `{port}`.
pub const DEFAULT_COMFYUI_URL: &str = "http://127.0.0.1:8188";

fn free_port() -> Result<u16, RunnerError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| RunnerError::Engine(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| RunnerError::Engine(e.to_string()))
}

fn spawn_child(
    command: &str,
    url: Option<&str>,
) -> Result<(String, Box<dyn EngineProcess>), RunnerError> {
    let mut line = command.to_string();
    let url = if line.contains("{port}") {
        let port = free_port()?;
        line = line.replace("{port}", &port.to_string());
        format!("http://127.0.0.1:{port}")
    } else {
        url.unwrap_or(DEFAULT_COMFYUI_URL).to_string()
    };
    let words = split_command(&line)?;
    let (program, args) = words
        .split_first()
        .ok_or_else(|| RunnerError::Config("--comfyui-cmd is empty".into()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: we can signal ComfyUI and all it started at once.
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpid is async-signal-safe and called before the fork.
            let parent = unsafe { libc::getpid() };
            // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) after fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The runner died before prctl took effect: do not outlive it.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| RunnerError::Engine(format!("cannot start {program}: {e}")))?;
    let pgid = child.id().map(|p| p as i32);
    tracing::info!(pid = ?pgid, %url, "started ComfyUI");
    Ok((
        url,
        Box::new(ChildProcess {
            child,
            pgid,
            exited: None,
        }),
    ))
}

/// Splits a command line into words: whitespace separates, `'...'` and `"..."` quote,
/// a backslash escapes the next character (outside single quotes). No other shell
/// syntax: wrap the command in `sh -c '...'` if you need it.
pub fn split_command(line: &str) -> Result<Vec<String>, RunnerError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => {
                            return Err(RunnerError::Config(
                                "unbalanced ' in --comfyui-cmd".into(),
                            ));
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => {
                                return Err(RunnerError::Config(
                                    "trailing \\ in --comfyui-cmd".into(),
                                ));
                            }
                        },
                        Some(x) => cur.push(x),
                        None => {
                            return Err(RunnerError::Config(
                                "unbalanced \" in --comfyui-cmd".into(),
                            ));
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err(RunnerError::Config("trailing \\ in --comfyui-cmd".into())),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_command_lines() {
        assert_eq!(
            split_command(r#"python main.py --listen 127.0.0.1 --port {port}"#).unwrap(),
            [
                "python",
                "main.py",
                "--listen",
                "127.0.0.1",
                "--port",
                "{port}"
            ]
        );
        assert_eq!(
            split_command(r#"a 'b c' "d \"e\"" f\ g ''"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g", ""]
        );
        assert!(split_command("a 'b").is_err());
    }
}
