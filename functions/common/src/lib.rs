//! # functions-common — what the three Lambda functions share
//!
//! The deployed product runs as four functions behind one API (ARCHITECTURE §3):
//!
//! | function | trigger | serves |
//! |---|---|---|
//! | `submit` | API Gateway HTTP API, `POST`/`DELETE /api/*` | [`submit_router`]: the write routes |
//! | `status` | API Gateway HTTP API, `GET`/`HEAD /api/*` | [`status_router`]: the read routes |
//! | `dispatch` | SQS wake queue, EventBridge tick, Spot notices | [`dispatch::DispatchHandler`] |
//! | `webhooks` | the jobs table's DynamoDB stream, the webhook delivery queue | [`webhooks::WebhooksHandler`] |
//!
//! Each binary's `main.rs` only wires: [`init_tracing`], [`Deployment::from_env`], then
//! hands the router to `lambda_http::run` or the handler to `lambda_runtime::run`.
//! Everything else is here, as library functions, so the tests serve the very same
//! routers with axum on 127.0.0.1 and call the very same handler with event JSON,
//! over moto (see tests/).
//!
//! **Cold start does as little as possible.** [`Deployment::from_env`] reads the
//! environment and builds the SDK clients, which makes no network call (credentials are
//! resolved on the first request). Nothing else runs before the first event: no
//! table check, no secret fetch. The cursor key therefore arrives in the environment,
//! resolved by CloudFormation from a generated Secrets Manager secret (see
//! docs/functions.md); only `status` (the one function that lists) receives it.

pub mod dispatch;
pub mod env;
pub mod webhooks;

use std::sync::Arc;

use aws::{
    AwsConfig, Clients, DynamoJobStore, DynamoWebhookStore, EcsLauncher, InlineInputs, S3BlobStore,
    SqsQueue,
};
use jobs::api::{self, ServerInfo};
use jobs::app::{App, AppConfig, WebhookParts};
use jobs::assets::AssetsConfig;
use jobs::auth::KeyAuthenticator;
use jobs::cross_site::CrossSitePolicy;
use jobs::dispatch::DispatchConfig;
use jobs::events::EventsConfig;
use jobs::ports::{Clock, SystemClock};
use jobs::service::{JobsConfig, Ports};
use jobs::webhooks::service::WebhooksConfig;
use serde_json::json;

pub use env::{EnvError, Tunables, WebhookSettings};

/// Which function is starting: decides which variables it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Submit,
    Status,
    Dispatch,
    Webhooks,
}

/// Everything a function reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub aws: AwsConfig,
    pub tunables: Tunables,
    pub cursor_key: Vec<u8>,
    pub webhooks: WebhookSettings,
}

/// The largest `POST /api/v2/assets` body on Lambda. A synchronous invocation carries
/// at most 6 MB, counted after base64, so about 4.4 MB of file; larger files go
/// through the upload extension (a presigned PUT straight to S3).
pub const MAX_LAMBDA_UPLOAD_BYTES: u64 = 4 * 1024 * 1024;

/// One deployment's resources, clients and settings, read once per process.
#[derive(Clone)]
pub struct Deployment {
    pub aws: AwsConfig,
    pub clients: Clients,
    pub tunables: Tunables,
    /// The key list cursors are MACed with: the deployment's secret for `status`, a
    /// random one elsewhere (no other function hands out cursors).
    pub cursor_key: Vec<u8>,
    pub clock: Arc<dyn Clock>,
    pub webhooks: WebhookSettings,
}

impl Deployment {
    /// Reads the environment and builds the SDK clients. No network call.
    pub async fn from_env(function: Function) -> Result<Deployment, EnvError> {
        let settings = Self::settings(function, |name| std::env::var(name).ok())?;
        Ok(Deployment {
            aws: settings.aws,
            clients: Clients::load().await,
            tunables: settings.tunables,
            cursor_key: settings.cursor_key,
            clock: Arc::new(SystemClock),
            webhooks: settings.webhooks,
        })
    }

    /// Every setting through `lookup`, naming every problem at once.
    pub fn settings(
        function: Function,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, EnvError> {
        let mut reader = env::Reader::new(&lookup);
        let tunables = Tunables::read(&mut reader);
        let cursor_key = match function {
            Function::Status => reader.secret(env::CURSOR_KEY, env::MIN_CURSOR_KEY_BYTES),
            Function::Submit | Function::Dispatch | Function::Webhooks => {
                rand::random::<[u8; 32]>().to_vec()
            }
        };
        let webhooks = WebhookSettings::read(
            &mut reader,
            matches!(function, Function::Dispatch | Function::Webhooks),
        );
        let aws = AwsConfig::from_lookup(&lookup);
        let mut problems: Vec<String> = match &aws {
            Ok(_) => Vec::new(),
            Err(aws::ConfigError::Missing(names)) => {
                names.iter().map(|n| format!("{n} is missing")).collect()
            }
        };
        problems.extend(reader.problems);
        match aws {
            Ok(aws) if problems.is_empty() => Ok(Settings {
                aws,
                tunables,
                cursor_key,
                webhooks,
            }),
            _ => Err(EnvError { problems }),
        }
    }

    /// The ports on DynamoDB, S3 and SQS.
    pub fn ports(&self) -> Ports {
        Ports {
            store: Arc::new(DynamoJobStore::new(
                self.clients.dynamodb.clone(),
                self.aws.table.clone(),
                self.clock.clone(),
            )),
            blobs: Arc::new(InlineInputs::new(
                Arc::new(S3BlobStore::new(
                    self.clients.s3.clone(),
                    self.aws.bucket.clone(),
                )),
                self.clients.dynamodb.clone(),
                self.aws.table.clone(),
                self.tunables.retention,
            )),
            queue: Arc::new(SqsQueue::new(
                self.clients.sqs.clone(),
                self.aws.queues.clone(),
            )),
            clock: self.clock.clone(),
        }
    }

    /// The ECS launcher (only `dispatch` may start and stop tasks).
    pub fn launcher(&self) -> EcsLauncher {
        EcsLauncher::new(self.clients.ecs.clone(), self.aws.ecs.clone())
    }

    /// The webhook store, on the jobs table.
    pub fn webhook_store(&self) -> DynamoWebhookStore {
        DynamoWebhookStore::new(self.clients.dynamodb.clone(), self.aws.table.clone())
    }

    /// The application, as every function builds it: with webhooks, whose routes
    /// register endpoints that the `webhooks` function delivers to.
    pub fn app(&self) -> App {
        let t = &self.tunables;
        let ports = self.ports();
        // Deployed, every request needs a key: there is no loopback default tenant.
        let auth = Arc::new(
            KeyAuthenticator::new(ports.store.clone(), ports.clock.clone(), false)
                .remembering_accepted_keys(jobs::auth::ACCEPTED_KEY_WINDOW),
        );
        let config = AppConfig {
            jobs: JobsConfig {
                retention: t.retention,
                queue_timeout: t.queue_timeout,
                idempotency_ttl: t.idempotency_ttl,
                max_attempts: t.max_attempts,
                gpu_price_per_hour: t.gpu_price_per_hour,
                // A Lambda may be frozen right after it answers: no deferred work
                // (the defaults: no wake coalescing, enqueue recorded before answering).
                ..JobsConfig::default()
            },
            assets: AssetsConfig {
                max_upload_bytes: MAX_LAMBDA_UPLOAD_BYTES,
                upload_ttl: t.upload_ttl,
                ..AssetsConfig::default()
            },
            dispatch: DispatchConfig {
                max_workers: t.max_workers,
                min_warm_workers: t.min_warm_workers,
                ..DispatchConfig::default()
            },
            // An HTTP API cannot stream: an event stream is buffered and answered
            // whole, so its window must end well inside the 29 s integration timeout.
            events: EventsConfig::default(),
            cross_site: CrossSitePolicy::deployed(t.allowed_origins.clone()),
            info: ServerInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                comfyui: json!({
                    "mode": "real",
                    "message": "ComfyUI runs inside the GPU runner tasks on ECS",
                }),
            },
            max_body_bytes: api::DEFAULT_MAX_BODY_BYTES,
            launcher_kind: "ecs",
            // S3 serves the bytes: a Lambda answer is capped at 6 MB.
            content_delivery: api::ContentDelivery::Redirect,
        };
        let webhooks = WebhookParts {
            store: Arc::new(self.webhook_store()),
            // Checks names at registration too; its HTTP client is built on first use.
            sender: Some(Arc::new(webhooks::LazySender::new(
                self.webhooks.allow_private,
            ))),
            config: WebhooksConfig {
                allow_private: self.webhooks.allow_private,
                ..WebhooksConfig::default()
            },
        };
        App::build_with_webhooks(ports, auth, self.cursor_key.clone(), config, Some(webhooks))
    }
}

/// The `submit` function's router: the write routes; anything else a 404 envelope.
pub fn submit_router(deployment: &Deployment) -> axum::Router {
    deployment.app().writes().fallback(api::not_found)
}

/// The `status` function's router: the read routes; anything else a 404 envelope.
/// `/content` answers 302 to a presigned S3 GET (S3 does not serve through the API),
/// and an event stream closes after `EventsConfig::window` (20 s).
pub fn status_router(deployment: &Deployment) -> axum::Router {
    deployment.app().reads().fallback(api::not_found)
}

/// JSON log lines (CloudWatch's JSON log format), filtered by `AWS_LAMBDA_LOG_LEVEL`
/// (set from the template's `ApplicationLogLevel`) or `RUST_LOG`, `info` by default.
pub fn init_tracing() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".to_string())
        .to_lowercase();
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        // Lambda stamps each line itself; the current span names the event.
        .without_time()
        .with_current_span(true)
        .with_target(false)
        .init();
}
