//! One application builder for every entry point.
//!
//! `serverless-comfyui dev`, the `submit` and `status` Lambdas and the `dispatch`
//! Lambda all run the same application: the job and asset services over a bundle of
//! ports, and the API state the v2 router serves. [`App::build`] assembles it once, from
//!
//! - the ports ([`Ports`]: SQLite and files locally, DynamoDB, S3 and SQS on AWS),
//! - an [`Authenticator`] (API keys),
//! - the key that MACs list cursors (a per-deployment secret),
//! - an [`AppConfig`] of plain settings.
//!
//! and then hands out what each entry point needs:
//!
//! | entry point | takes |
//! |---|---|
//! | `dev` | [`App::all`], [`App::dispatcher`] over its subprocess launcher |
//! | `submit` Lambda | [`App::writes`] |
//! | `status` Lambda | [`App::reads`] |
//! | `dispatch` Lambda | [`App::dispatcher`] over the ECS launcher |
//!
//! Health needs no launcher: it reads the fleet from the store through a
//! [`FleetView`] built from the same [`DispatchConfig`] the dispatcher uses, so the
//! `status` function (which may not start tasks) shows what `dispatch` decides.
//! The routers come from [`api::router_for`]: whichever half a router serves, its
//! OpenAPI document describes the union.

use std::sync::Arc;

use crate::api::{self, ApiState, ContentDelivery, Router, Routes, ServerInfo};
use crate::assets::{AssetService, AssetsConfig};
use crate::auth::Authenticator;
use crate::cross_site::CrossSitePolicy;
use crate::dispatch::{DispatchConfig, Dispatcher, FleetView};
use crate::events::EventsConfig;
use crate::ports::Launcher;
use crate::service::{JobService, JobsConfig, Ports};
use crate::webhooks::ports::{WebhookSender, WebhookStore};
use crate::webhooks::service::{WebhookService, WebhooksConfig};

/// The plain settings of an application.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub jobs: JobsConfig,
    pub assets: AssetsConfig,
    pub dispatch: DispatchConfig,
    pub events: EventsConfig,
    pub cross_site: CrossSitePolicy,
    pub info: ServerInfo,
    /// The largest JSON request body.
    pub max_body_bytes: usize,
    /// What starts workers (`subprocess`, `ecs`, `none`), as health names it. The
    /// launcher itself is given only to [`App::dispatcher`].
    pub launcher_kind: &'static str,
    /// Whether the API streams asset content or redirects to a presigned URL.
    pub content_delivery: ContentDelivery,
}

/// What webhooks run on: their store, the sender that also checks URLs at
/// registration (where this entry point sends), and their settings.
pub struct WebhookParts {
    pub store: Arc<dyn WebhookStore>,
    pub sender: Option<Arc<dyn WebhookSender>>,
    pub config: WebhooksConfig,
}

/// The assembled application.
pub struct App {
    state: Arc<ApiState>,
    dispatch: DispatchConfig,
    max_body_bytes: usize,
}

impl App {
    /// Builds the services and the API state over `ports`.
    pub fn build(
        ports: Ports,
        auth: Arc<dyn Authenticator>,
        cursor_key: Vec<u8>,
        config: AppConfig,
    ) -> App {
        Self::build_with_webhooks(ports, auth, cursor_key, config, None)
    }

    /// [`App::build`], with webhooks over their store (their routes answer 501
    /// without).
    pub fn build_with_webhooks(
        ports: Ports,
        auth: Arc<dyn Authenticator>,
        cursor_key: Vec<u8>,
        config: AppConfig,
        webhooks: Option<WebhookParts>,
    ) -> App {
        let assets = Arc::new(AssetService::new(
            ports.clone(),
            config.assets,
            &config.jobs,
        ));
        let streams = Arc::new(crate::events::StreamLimiter::new(
            ports.store.clone(),
            ports.clock.clone(),
        ));
        let jobs = Arc::new(JobService::new(ports, config.jobs, cursor_key));
        let webhooks = webhooks.map(|parts| {
            Arc::new(WebhookService::new(
                parts.store,
                jobs.clone(),
                parts.sender,
                parts.config,
            ))
        });
        let state = Arc::new(ApiState {
            jobs,
            assets,
            fleet: FleetView {
                config: config.dispatch.clone(),
                launcher_kind: config.launcher_kind,
            },
            auth,
            info: config.info,
            events: config.events,
            streams,
            cross_site: Arc::new(config.cross_site),
            content_delivery: config.content_delivery,
            webhooks,
        });
        App {
            state,
            dispatch: config.dispatch,
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// The state the routers serve (services, auth, settings).
    pub fn state(&self) -> &Arc<ApiState> {
        &self.state
    }

    /// The job service.
    pub fn jobs(&self) -> &Arc<JobService> {
        &self.state.jobs
    }

    /// The webhook service, when built with one.
    pub fn webhooks(&self) -> Option<&Arc<WebhookService>> {
        self.state.webhooks.as_ref()
    }

    /// The dispatcher over `launcher`, with the same settings health reports. Its
    /// `launcher.kind()` should be the configured `launcher_kind`.
    pub fn dispatcher(&self, launcher: Arc<dyn Launcher>) -> Dispatcher {
        debug_assert_eq!(launcher.kind(), self.state.fleet.launcher_kind);
        Dispatcher::new(self.state.jobs.clone(), launcher, self.dispatch.clone())
    }

    /// The read routes (the `status` function). No fallback: add
    /// [`api::not_found`] when serving it alone, or merge it.
    pub fn reads(&self) -> Router {
        self.router(Routes::Reads)
    }

    /// The write routes (the `submit` function). No fallback, as [`App::reads`].
    pub fn writes(&self) -> Router {
        self.router(Routes::Writes)
    }

    /// Every route (`dev`). No fallback, as [`App::reads`].
    pub fn all(&self) -> Router {
        self.router(Routes::All)
    }

    fn router(&self, routes: Routes) -> Router {
        api::router_for(self.state.clone(), self.max_body_bytes, routes).0
    }
}
