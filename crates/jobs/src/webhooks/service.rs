//! What the webhook routes call: register, list, delete endpoints, and show attempts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ports::{CreateEndpoint, MAX_ENDPOINTS_PER_TENANT, WebhookSender, WebhookStore};
use super::{Attempt, Endpoint, EventType, WEBHOOK_SCHEMA_VERSION, address, signing};
use crate::error::{DomainError, ErrorKind};
use crate::model::timestamp;
use crate::service::JobService;

/// Attempts one deliveries request returns at most (newest first).
pub const MAX_ATTEMPTS_LISTED: usize = 100;

/// Settings of webhooks.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Endpoints a tenant may register.
    pub max_endpoints_per_tenant: usize,
    /// Whether URLs may reach loopback and private addresses (`dev
    /// --webhooks-allow-private`, for a receiver on the same machine). Off by default.
    pub allow_private: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_endpoints_per_tenant: MAX_ENDPOINTS_PER_TENANT,
            allow_private: false,
        }
    }
}

/// `POST /api/v2/x-serverless-comfyui/webhooks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// Where to POST events: an absolute `http(s)` URL at a public address, at most
    /// 2048 bytes, without credentials (422 `invalid_webhook_url`: also for a host that is
    /// loopback, private, link-local or a metadata address, or a name resolving to one).
    #[schema(
        min_length = 8,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://"
    )]
    pub url: String,
    /// Event types to receive; absent: the four terminal ones (`job.running` only
    /// when asked for).
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub events: Option<Vec<String>>,
    /// Only jobs whose metadata has every one of these labels.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub labels: Option<serde_json::Value>,
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EndpointView {
    #[schema(example = "wh_01JZTGXW9Q2M4R8V0B1N3P5D7F")]
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    /// The signing secret, `whsec_<base64>`: in the answer to the create only. Keep it;
    /// it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
}

impl EndpointView {
    fn of(endpoint: &Endpoint, with_secret: bool) -> Self {
        EndpointView {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            events: endpoint.events.clone(),
            labels: endpoint.labels.clone(),
            created_at: timestamp(endpoint.created_at),
            secret: with_secret.then(|| endpoint.secret.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptList {
    /// Newest first, at most 100.
    pub attempts: Vec<Attempt>,
}

/// Webhook registration over a [`WebhookStore`].
pub struct WebhookService {
    pub(super) store: Arc<dyn WebhookStore>,
    pub(super) jobs: Arc<JobService>,
    /// Checks names at registration, where a sender is configured.
    sender: Option<Arc<dyn WebhookSender>>,
    config: WebhooksConfig,
}

impl WebhookService {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        jobs: Arc<JobService>,
        sender: Option<Arc<dyn WebhookSender>>,
        config: WebhooksConfig,
    ) -> Self {
        WebhookService {
            store,
            jobs,
            sender,
            config,
        }
    }

    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// Registers an endpoint; the answer carries its secret, the only time it is shown.
    pub async fn create(
        &self,
        tenant: &str,
        request: CreateEndpointRequest,
    ) -> Result<EndpointView, DomainError> {
        let url = address::check_url(&request.url, self.config.allow_private)?;
        let events = parse_events(request.events)?;
        let labels = match request.labels {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(value) => crate::validate::validate_metadata(value).map_err(|e| {
                DomainError::unprocessable("invalid_labels", e.message)
                    .with_details(e.details.map(|d| *d).unwrap_or(serde_json::Value::Null))
            })?,
        };
        if let (false, Some(sender)) = (self.config.allow_private, &self.sender) {
            sender
                .check_url(&url)
                .await
                .map_err(|m| DomainError::unprocessable("invalid_webhook_url", m))?;
        }
        let endpoint = Endpoint {
            v: WEBHOOK_SCHEMA_VERSION,
            id: format!("wh_{}", ulid::Ulid::new()),
            tenant: tenant.to_string(),
            url: url.to_string(),
            events,
            labels,
            secret: signing::new_secret(),
            created_at: self.jobs.ports().clock.now(),
        };
        match self
            .store
            .create_endpoint(&endpoint, self.config.max_endpoints_per_tenant)
            .await?
        {
            CreateEndpoint::Created => {
                tracing::info!(tenant, endpoint_id = %endpoint.id, "webhook endpoint created");
                Ok(EndpointView::of(&endpoint, true))
            }
            CreateEndpoint::TooMany => Err(DomainError::new(
                ErrorKind::Conflict,
                "too_many_webhooks",
                format!(
                    "a tenant may register at most {} webhook endpoints; delete one first",
                    self.config.max_endpoints_per_tenant
                ),
            )),
        }
    }

    /// The tenant's endpoints, without secrets.
    pub async fn list(&self, tenant: &str) -> Result<EndpointList, DomainError> {
        let endpoints = self
            .store
            .list_endpoints(tenant, self.config.max_endpoints_per_tenant)
            .await?;
        Ok(EndpointList {
            endpoints: endpoints
                .iter()
                .map(|e| EndpointView::of(e, false))
                .collect(),
        })
    }

    /// Deletes an endpoint; its pending deliveries go with it.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), DomainError> {
        if self.store.delete_endpoint(tenant, id).await? {
            Ok(())
        } else {
            Err(DomainError::not_found("webhook"))
        }
    }

    /// The endpoint's latest attempts, newest first.
    pub async fn attempts(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
    ) -> Result<AttemptList, DomainError> {
        if self.store.get_endpoint(tenant, id).await?.is_none() {
            return Err(DomainError::not_found("webhook"));
        }
        let attempts = self
            .store
            .list_attempts(tenant, id, limit.clamp(1, MAX_ATTEMPTS_LISTED))
            .await?;
        Ok(AttemptList { attempts })
    }
}

fn parse_events(raw: Option<Vec<String>>) -> Result<Vec<EventType>, DomainError> {
    let Some(raw) = raw else {
        return Ok(vec![
            EventType::JobSucceeded,
            EventType::JobFailed,
            EventType::JobCanceled,
            EventType::JobExpired,
        ]);
    };
    let mut events = Vec::new();
    for name in &raw {
        let event = EventType::parse(name).ok_or_else(|| {
            DomainError::unprocessable(
                "invalid_event_type",
                format!(
                    "unknown event type {:?}; known: {}",
                    name.chars().take(64).collect::<String>(),
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(DomainError::unprocessable(
            "invalid_event_type",
            "`events` is empty: name at least one event type",
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_default_to_the_terminal_ones_and_unknown_ones_are_refused() {
        assert_eq!(parse_events(None).unwrap().len(), 4);
        assert_eq!(
            parse_events(Some(vec!["job.running".into(), "job.running".into()])).unwrap(),
            vec![EventType::JobRunning]
        );
        assert_eq!(
            parse_events(Some(vec!["job.exploded".into()]))
                .unwrap_err()
                .code,
            "invalid_event_type"
        );
        assert_eq!(
            parse_events(Some(vec![])).unwrap_err().code,
            "invalid_event_type"
        );
    }
}
