//! `serverless-comfyui dev`: the product on one machine.
//!
//! It is the composition root for the local adapters: it opens the data directory,
//! builds the job services and the dispatcher over the ports, and serves the v2
//! router. Beside the server it runs the two loops the AWS stack runs as Lambda
//! triggers:
//!
//! - the **wake consumer** (SQS "wake" → `dispatch`): each nudge makes one scaling
//!   decision;
//! - the **tick** (EventBridge, every minute): the safety net;
//! - the **webhook deliverer** (on AWS: the table's stream and a queue): fans job
//!   events out to endpoints and sends them, retrying with backoff.
//!
//! Shutdown is graceful: on Ctrl-C or SIGTERM the server stops accepting, finishes the
//! requests in flight, and the loops stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use jobs::api::{self, ApiState, ServerInfo};
use jobs::app::{App, AppConfig, WebhookParts};
use jobs::assets::AssetsConfig;
use jobs::auth::KeyAuthenticator;
use jobs::dispatch::{DispatchConfig, Dispatcher};
use jobs::ports::{Clock, NoLauncher, QueueName, SystemClock};
use jobs::service::JobsConfig;
use jobs::webhooks::deliver::Deliverer;
use jobs::webhooks::ports::WebhookSender;
use jobs::webhooks::service::WebhooksConfig;
use local::DataDir;
use serde_json::json;
use tokio::sync::watch;

/// Settings of `dev`, from flags.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// How often the tick runs.
    pub tick_every: Duration,
    pub max_body_bytes: usize,
    /// A built web app to serve at `/` instead of the one embedded in the binary
    /// (`SERVERLESS_COMFYUI_FRONTEND_DIR`, e.g. `frontend/dist` while working on the app).
    pub frontend_dir: Option<PathBuf>,
    /// ComfyUI servers to run jobs on, one runner each. Empty: the built-in simulator.
    pub comfyui_urls: Vec<String>,
    /// How to start a runner; `None` builds the API alone (jobs stay queued).
    pub runner: Option<local::launcher::RunnerCommand>,
    /// Step time of the built-in simulator's sampler.
    pub simulator_step_ms: u64,
    /// Set by `run` when it started the simulator.
    pub simulator_started: bool,
    /// Header timeout and connection cap of the HTTP server.
    pub limits: crate::serve::ServeLimits,
    /// Web origins allowed to call from a browser besides the server's own and loopback
    /// ones (`--allow-origin`).
    pub allowed_origins: Vec<String>,
    /// The origin clients reach this server at (`--public-url`), when it is not the
    /// listen address: behind a reverse proxy, or listening on all interfaces. Signed
    /// URLs start with it, and browsers calling from it are allowed.
    pub public_url: Option<String>,
    /// How long finished jobs and their outputs are kept (`--retention`).
    pub retention: chrono::Duration,
    /// How long an `Idempotency-Key` is remembered (`--idempotency-ttl`).
    pub idempotency_ttl: chrono::Duration,
    /// How long a large-file upload may take (`--upload-ttl`).
    pub upload_ttl: chrono::Duration,
    /// US dollars per GPU-hour, recorded on each job at submit (`--gpu-price-per-hour`);
    /// 0 records none, and `metrics.cost_micro_usd` stays null.
    pub gpu_price_per_hour: f64,
    /// Lets webhook URLs reach loopback and private addresses
    /// (`--webhooks-allow-private`), for a receiver on this machine.
    pub webhooks_allow_private: bool,
    /// The webhook deliverer's timings (tests shorten the retries).
    pub webhook_delivery: jobs::webhooks::deliver::DeliveryConfig,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from(".serverless-comfyui"),
            tick_every: Duration::from_secs(10),
            max_body_bytes: api::DEFAULT_MAX_BODY_BYTES,
            frontend_dir: std::env::var_os("SERVERLESS_COMFYUI_FRONTEND_DIR").map(PathBuf::from),
            comfyui_urls: Vec::new(),
            runner: None,
            simulator_step_ms: 50,
            simulator_started: false,
            limits: crate::serve::ServeLimits::default(),
            allowed_origins: Vec::new(),
            public_url: None,
            retention: JobsConfig::default().retention,
            idempotency_ttl: JobsConfig::default().idempotency_ttl,
            upload_ttl: AssetsConfig::default().upload_ttl,
            gpu_price_per_hour: 0.0,
            webhooks_allow_private: false,
            webhook_delivery: Default::default(),
        }
    }
}

/// The assembled application: state for the router, and the dispatcher for the loops.
pub struct DevApp {
    pub state: Arc<ApiState>,
    pub dispatcher: Arc<Dispatcher>,
    pub data_dir: DataDir,
    /// The services and routers, as every entry point builds them.
    pub app: App,
    blob_server: axum::Router,
    /// A web app on disk that replaces the embedded one (`DevConfig::frontend_dir`).
    site: Option<PathBuf>,
    /// Sends webhooks (and checks their URLs at registration).
    webhook_sender: Arc<dyn WebhookSender>,
    webhook_delivery: jobs::webhooks::deliver::DeliveryConfig,
}

impl DevApp {
    /// Builds everything over the data directory, with the given clock.
    pub fn build(config: &DevConfig, clock: Arc<dyn Clock>) -> anyhow::Result<DevApp> {
        let launcher: Option<(Arc<dyn jobs::ports::Launcher>, u32)> = match &config.runner {
            Some(command) if !config.comfyui_urls.is_empty() => Some((
                Arc::new(local::launcher::SubprocessLauncher::new(
                    command.clone(),
                    config.comfyui_urls.clone(),
                )),
                config.comfyui_urls.len() as u32,
            )),
            _ => None,
        };
        Self::build_with_launcher(config, clock, launcher)
    }

    /// Builds with a given launcher and its worker limit (tests use a simulated one);
    /// `None` launches nothing.
    pub fn build_with_launcher(
        config: &DevConfig,
        clock: Arc<dyn Clock>,
        launcher: Option<(Arc<dyn jobs::ports::Launcher>, u32)>,
    ) -> anyhow::Result<DevApp> {
        // A key outliving its job would answer a replay with 409 until it expired:
        // the job is swept `retention` after it finished, the key `idempotency_ttl`
        // after the submit, so this keeps every key's job alive.
        if config.idempotency_ttl > config.retention {
            bail!(
                "--idempotency-ttl ({}) may not exceed --retention ({}): a replayed key \
                 must still find its job",
                lifetime(config.idempotency_ttl),
                lifetime(config.retention)
            );
        }
        let data_dir = DataDir::open(&config.data_dir)?;
        let public_base = config
            .public_url
            .clone()
            .unwrap_or_else(|| public_base(config.listen));
        let (ports, file_blobs, webhook_store) = data_dir
            .ports_blobs_and_webhooks(clock.clone(), &public_base)
            .with_context(|| format!("opening the data dir {}", config.data_dir.display()))?;
        let secret = data_dir.secret()?;
        let jobs_config = JobsConfig {
            // One process owns these nudges, so folding them is safe here (a Lambda
            // could be frozen before a deferred send).
            wake_coalesce: Duration::from_millis(25),
            // The process lives on after answering, so the bookkeeping can too.
            record_enqueue_in_background: true,
            retention: config.retention,
            idempotency_ttl: config.idempotency_ttl,
            gpu_price_per_hour: config.gpu_price_per_hour,
            ..JobsConfig::default()
        };
        let auth = Arc::new(KeyAuthenticator::new(
            ports.store.clone(),
            clock.clone(),
            config.listen.ip().is_loopback(),
        ));
        let blob_server = local::serve::blob_routes(file_blobs, clock);
        let (launcher, max_workers) = launcher.unwrap_or_else(|| (Arc::new(NoLauncher), 0));
        let webhook_sender: Arc<dyn WebhookSender> = Arc::new(
            local::webhook_http::HttpSender::new(local::webhook_http::HttpSenderConfig {
                timeout: config.webhook_delivery.timeout,
                allow_private: config.webhooks_allow_private,
                ..Default::default()
            })
            .context("building the webhook HTTP client")?,
        );
        let webhooks = WebhookParts {
            store: webhook_store,
            sender: Some(webhook_sender.clone()),
            config: WebhooksConfig {
                allow_private: config.webhooks_allow_private,
                ..WebhooksConfig::default()
            },
        };
        let app = App::build_with_webhooks(
            ports,
            auth,
            secret,
            AppConfig {
                jobs: jobs_config,
                assets: AssetsConfig {
                    upload_ttl: config.upload_ttl,
                    ..AssetsConfig::default()
                },
                dispatch: DispatchConfig {
                    max_workers,
                    // A runner that stopped reporting for two minutes is gone.
                    ..DispatchConfig::default()
                },
                events: jobs::events::EventsConfig::default(),
                cross_site: jobs::cross_site::CrossSitePolicy::local(
                    config
                        .allowed_origins
                        .iter()
                        .chain(&config.public_url)
                        .cloned()
                        .collect(),
                ),
                info: ServerInfo {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    comfyui: comfyui_info(config),
                },
                max_body_bytes: config.max_body_bytes,
                launcher_kind: launcher.kind(),
                // Files on this machine: the API streams them, with Range.
                content_delivery: jobs::api::ContentDelivery::Stream,
            },
            Some(webhooks),
        );
        let dispatcher = Arc::new(app.dispatcher(launcher));
        Ok(DevApp {
            state: app.state().clone(),
            dispatcher,
            data_dir,
            app,
            blob_server,
            site: config
                .frontend_dir
                .clone()
                .filter(|dir| dir.join("index.html").is_file()),
            webhook_sender,
            webhook_delivery: config.webhook_delivery.clone(),
        })
    }

    /// The webhook deliverer: fans the outbox out and sends what is due (the loop
    /// [`run`] starts beside the tick).
    pub fn deliverer(&self) -> Option<Deliverer> {
        Some(Deliverer::new(
            self.app.webhooks()?.clone(),
            self.webhook_sender.clone(),
            self.webhook_delivery.clone(),
        ))
    }

    /// Forgets the worker records the previous `dev` process left (its runners died
    /// with it), so the first job after a restart starts a runner at once.
    pub async fn forget_previous_runners(&self) -> anyhow::Result<usize> {
        self.dispatcher
            .forget_workers()
            .await
            .context("clearing the previous process's worker records")
    }

    /// The v2 API, the signed blob URLs the local blob store hands out, and the web
    /// app at `/` (from disk when one is given, else the one embedded by the build).
    pub fn router(&self) -> axum::Router {
        let api = self.app.all();
        // API paths never fall through to the web app.
        let api_misses =
            axum::Router::new().route("/api/{*rest}", axum::routing::any(api::not_found));
        let app = api.merge(self.blob_server.clone()).merge(api_misses);
        match &self.site {
            Some(dist) => {
                let index = dist.join("index.html");
                let site = tower_http::services::ServeDir::new(dist)
                    .not_found_service(tower_http::services::ServeFile::new(index));
                app.fallback_service(site)
            }
            None => app.fallback(crate::web::serve),
        }
    }
}

/// The origin that signed blob URLs start with. A listen address like `0.0.0.0`
/// names no host a client can reach, so URLs name loopback instead.
pub fn public_base(listen: SocketAddr) -> String {
    let mut reachable = listen;
    if listen.ip().is_unspecified() {
        reachable.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{reachable}")
}

/// Parses `--allow-origin`: an absolute http(s) origin, with no path, query or fragment.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || !bare || url.host().is_none() {
        return Err(format!(
            "{text:?} is not a web origin: give scheme, host and port only, e.g. https://app.example.com"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// Parses `--public-url`: where clients reach this server, as an absolute http(s)
/// origin (a reverse proxy's `https://gpu.example.com`). A path is refused: the API
/// and the signed blob URLs are served at the root.
pub fn parse_public_url(text: &str) -> Result<String, String> {
    parse_origin(text).map_err(|_| {
        format!(
            "{text:?} is not a public URL: give an absolute http(s) URL with no path or query, \
             e.g. https://gpu.example.com"
        )
    })
}

/// Parses a lifetime flag (`--retention 7d`): whole numbers with units `s`, `m`, `h`,
/// `d` or `w`, one or more (`1d12h`). Zero is refused: it would delete everything the
/// moment it finished.
/// `--gpu-price-per-hour`: a finite number of dollars, zero or more.
pub fn parse_price(text: &str) -> Result<f64, String> {
    match text.trim().trim_start_matches('$').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!(
            "{text:?} is not a price: use US dollars per GPU-hour, e.g. 1.21 (0: no estimate)"
        )),
    }
}

pub fn parse_lifetime(text: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("{text:?} is not a duration: use e.g. 7d, 24h, 30m, 1d12h");
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let part = match c {
            's' => chrono::Duration::try_seconds(n),
            'm' => chrono::Duration::try_minutes(n),
            'h' => chrono::Duration::try_hours(n),
            'd' => chrono::Duration::try_days(n),
            'w' => chrono::Duration::try_weeks(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(&part).ok_or_else(bad)?;
    }
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    // Past ~100 years a deadline would overflow timestamp arithmetic.
    if total > chrono::Duration::days(36_500) {
        return Err(format!("{text:?} is too long: at most 36500d"));
    }
    if total <= chrono::Duration::zero() {
        return Err(format!("{text:?} is zero: give a positive duration"));
    }
    Ok(total)
}

/// Puts the calling thread under Linux's `SCHED_BATCH` policy; `dev` calls it on every
/// thread it starts (threads it spawns inherit it).
///
/// A submit hands work from a request thread to three SQLite writer threads and back.
/// Under the default policy each wake-up may preempt whichever thread is running, so a
/// handoff often costs two context switches instead of none: measured with
/// `bench/api.sh` on two cores, `SCHED_BATCH` cut the server's CPU per submit by
/// 8–18% and raised submits/s by as much, with the same p99. The policy only gives up
/// wake-up preemption; it keeps the normal priority. Runner subprocesses (and the
/// ComfyUI they start) go back to the default policy (`local::launcher`).
pub fn schedule_for_throughput() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(0, ..) reads `param` and changes only the policy of
        // the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_BATCH refused; keeping the default policy");
        }
    }
}

/// How `dev` starts a runner: this same executable's hidden `runner` subcommand, over
/// the same data directory.
pub fn runner_command(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    idle_seconds: u64,
) -> anyhow::Result<local::launcher::RunnerCommand> {
    let program =
        std::env::current_exe().context("cannot find this executable to start runners")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve the data dir {}", data_dir.display()))?;
    Ok(local::launcher::RunnerCommand {
        program,
        args: vec![
            "runner".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--public-base".into(),
            public_base(listen),
            "--idle-timeout".into(),
            idle_seconds.to_string(),
        ],
    })
}

/// What health says about ComfyUI. Health shows `urls` to authenticated callers only
/// (see `jobs::api`), and never the credentials a URL may carry.
fn comfyui_info(config: &DevConfig) -> serde_json::Value {
    let urls: Vec<String> = config
        .comfyui_urls
        .iter()
        .map(|u| without_userinfo(u))
        .collect();
    match (&config.runner, urls.as_slice()) {
        (None, _) | (_, []) => json!({
            "mode": "none",
            "message": "no runner: jobs are accepted and stay queued",
        }),
        (Some(_), urls) if config.simulated() => json!({
            "mode": "simulated",
            "urls": urls,
            "auth": "none: the simulator takes no credentials and listens on a random loopback port",
            "message": "simulated ComfyUI: outputs are real files, but model nodes are placeholders",
        }),
        (Some(_), urls) => json!({ "mode": "real", "urls": urls }),
    }
}

/// A URL with any `user:password@` taken out, for health and the banner.
pub fn without_userinfo(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.to_string()
        }
        // Not a URL we can parse: show nothing of it rather than risk a secret.
        Err(_) => "(unparseable URL)".to_string(),
    }
}

impl DevConfig {
    /// True when the ComfyUI in use is our built-in simulator.
    pub fn simulated(&self) -> bool {
        self.simulator_started
    }
}

/// Runs `dev` until Ctrl-C or SIGTERM.
pub async fn run(mut config: DevConfig) -> anyhow::Result<()> {
    let mut simulator = None;
    if config.comfyui_urls.is_empty() && config.runner.is_some() {
        let handle = comfyui_sim::Simulator::start(comfyui_sim::SimConfig {
            // A random loopback port: the simulator has no authentication.
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            step_ms: config.simulator_step_ms,
            base_dir: Some(config.data_dir.join("simulator")),
            ..comfyui_sim::SimConfig::default()
        })
        .await
        .context("starting the built-in ComfyUI simulator")?;
        config.comfyui_urls = vec![handle.base_url()];
        config.simulator_started = true;
        simulator = Some(handle);
    }
    let app = DevApp::build(&config, Arc::new(SystemClock))?;
    app.forget_previous_runners().await?;
    let keys = app.state.jobs.ports().store.list_api_keys().await?;
    let active_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    if !config.listen.ip().is_loopback() && keys.is_empty() {
        bail!(
            "refusing to listen on {}: without API keys, `dev` serves one unauthenticated tenant \
             and binds loopback only (127.0.0.1 or ::1). Create a key first: \
             serverless-comfyui keys create --tenant NAME --data-dir {}",
            config.listen,
            config.data_dir.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let storage = jobs::retention::storage_report(app.state.jobs.ports())
        .await
        .context("reading the data dir's usage")?;
    print_banner(address, &app, &config, keys.len(), active_keys, &storage);

    let (stop_tx, stop_rx) = watch::channel(false);
    let deliverer = app.deliverer().context("webhooks are not configured")?;
    let loops = [
        tokio::spawn(deliverer.run(stop_rx.clone())),
        tokio::spawn(tick_loop(
            app.dispatcher.clone(),
            config.tick_every,
            stop_rx.clone(),
        )),
        tokio::spawn(wake_loop(
            app.dispatcher.clone(),
            app.state.clone(),
            stop_rx.clone(),
        )),
    ];
    crate::serve::serve(
        listener,
        app.router(),
        config.limits.fitted_to_fd_limit(),
        shutdown_signal(),
    )
    .await;
    let _ = stop_tx.send(true);
    for task in loops {
        let _ = task.await;
    }
    // Runners are killed with the launcher (dropped with the app); then the simulator.
    drop(app);
    if let Some(simulator) = simulator {
        simulator.shutdown().await;
    }
    eprintln!("serverless-comfyui dev stopped");
    Ok(())
}

fn print_banner(
    address: SocketAddr,
    app: &DevApp,
    config: &DevConfig,
    keys: usize,
    active_keys: usize,
    storage: &jobs::retention::StorageReport,
) {
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    eprintln!();
    eprintln!("  serverless-comfyui dev {}", env!("CARGO_PKG_VERSION"));
    match &app.site {
        Some(dir) => eprintln!("  web app   {url}/   (from {})", dir.display()),
        None if crate::web::is_embedded() => eprintln!("  web app   {url}/"),
        None => {
            eprintln!("  web app   not in this build (no npm when it was built; {url}/ says more)")
        }
    }
    eprintln!("  API       {url}/api/v2   (Comfy API v2; COMFY_BASE_URL={url})");
    eprintln!("  health    {url}/api/v2/health");
    eprintln!("  data dir  {}", app.data_dir.root().display());
    if config.public_url.is_some() {
        eprintln!("  listening {address} (public URL {url})");
    }
    let mb = |b: Option<u64>| format!("{:.1} MB", b.unwrap_or(0) as f64 / 1e6);
    let jobs: Vec<String> = storage
        .jobs
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    eprintln!(
        "  storage   {} of blobs, {} of databases; jobs: {}",
        mb(storage.blob_bytes),
        mb(storage.database_bytes),
        if jobs.is_empty() {
            "none".to_string()
        } else {
            jobs.join(", ")
        }
    );
    eprintln!(
        "  kept      finished jobs and outputs {}, idempotency keys {}, uploads {}",
        lifetime(config.retention),
        lifetime(config.idempotency_ttl),
        lifetime(config.upload_ttl)
    );
    if config.gpu_price_per_hour > 0.0 {
        eprintln!(
            "  cost      ${} per GPU-hour: each job's metrics.cost_micro_usd estimates its cost",
            config.gpu_price_per_hour
        );
    }
    if keys == 0 {
        eprintln!(
            "  auth      none: one default tenant, loopback only (create a key to require auth)"
        );
    } else {
        eprintln!("  auth      Authorization: Bearer <key> required ({active_keys} active key(s))");
    }
    match (&config.runner, config.simulated()) {
        (None, _) => eprintln!("  ComfyUI   none: jobs are accepted and stay queued"),
        (Some(_), true) => {
            eprintln!();
            eprintln!("  !! ComfyUI: SIMULATED. No --comfyui URL was given, so jobs run on the");
            eprintln!(
                "  !! built-in ComfyUI simulator at {}.",
                config.comfyui_urls[0]
            );
            eprintln!("  !! Image nodes work on real pixels; model nodes return placeholders.");
            eprintln!(
                "  !! For real results: serverless-comfyui dev --comfyui http://127.0.0.1:8188"
            );
        }
        (Some(_), false) => {
            for url in &config.comfyui_urls {
                let url = without_userinfo(url);
                eprintln!("  ComfyUI   {url} (one runner, started when work arrives)");
            }
        }
    }
    eprintln!();
}

/// A lifetime as the flags take it (`7d`, `36h`, `90m`).
fn lifetime(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}

/// The tick, as EventBridge runs it on AWS.
async fn tick_loop(dispatcher: Arc<Dispatcher>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let report = dispatcher.tick().await;
                tracing::debug!(?report, "tick");
            }
            _ = stop.changed() => return,
        }
    }
}

/// The wake consumer, as the SQS event source runs `dispatch` on AWS.
async fn wake_loop(
    dispatcher: Arc<Dispatcher>,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
) {
    let queue = state.jobs.ports().queue.clone();
    loop {
        let receive = queue.receive(
            QueueName::Wake,
            10,
            Duration::from_secs(20),
            Duration::from_secs(30),
        );
        let batch = tokio::select! {
            batch = receive => batch,
            _ = stop.changed() => return,
        };
        match batch {
            Ok(messages) if messages.is_empty() => continue,
            Ok(messages) => {
                if let Err(e) = dispatcher.scale().await {
                    tracing::error!(error = %e, "scale failed; the tick will retry");
                    continue;
                }
                for message in messages {
                    let _ = queue.delete(QueueName::Wake, &message.receipt).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "wake queue unavailable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
