//! `serverless-comfyui webhooks ...`: a tenant's signed webhooks (our extension,
//! `/api/v2/x-serverless-comfyui/webhooks`).
//!
//! `create` prints the signing secret once; keep it to verify requests (any Standard
//! Webhooks verifier accepts them). `deliveries` shows the latest attempts of an
//! endpoint: event, job, status code, latency and when the next try is due.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::commands::Connection;
use super::error::ClientError;
use super::workflow;

const ROUTE: [&str; 2] = ["x-serverless-comfyui", "webhooks"];

#[derive(Debug, Clone, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its signing secret, shown only this once.
    Create {
        /// Where to POST events (http or https, a public address).
        #[arg(value_name = "ENDPOINT_URL")]
        endpoint_url: String,
        /// An event type to receive: job.succeeded, job.failed, job.canceled,
        /// job.expired, job.running. Repeatable; default: the four terminal ones.
        #[arg(long = "event", value_name = "TYPE")]
        event: Vec<String>,
        /// Only jobs with this label, KEY=VALUE. Repeatable (all must match).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        label: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the endpoints (without secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete an endpoint and its pending deliveries.
    Delete {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show an endpoint's latest delivery attempts, newest first.
    Deliveries {
        id: String,
        /// At most this many (1 to 100).
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

impl WebhooksCommand {
    pub fn json(&self) -> bool {
        match self {
            WebhooksCommand::Create { json, .. }
            | WebhooksCommand::List { json, .. }
            | WebhooksCommand::Delete { json, .. }
            | WebhooksCommand::Deliveries { json, .. } => *json,
        }
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn endpoint_line(e: &Value) -> String {
    let events: Vec<String> = e["events"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let labels: Vec<String> = e["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
        .unwrap_or_default();
    format!(
        "{}  {}  {}  {}",
        text(&e["id"]),
        text(&e["url"]),
        events.join(","),
        labels.join(",")
    )
}

pub async fn webhooks(command: WebhooksCommand) -> Result<ExitCode, ClientError> {
    match command {
        WebhooksCommand::Create {
            endpoint_url,
            event,
            label,
            json,
            connection,
        } => {
            let labels = label
                .iter()
                .map(|l| workflow::parse_label(l))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({ "url": endpoint_url });
            if !event.is_empty() {
                body["events"] = json!(event);
            }
            if !labels.is_empty() {
                body["labels"] = Value::Object(
                    labels
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                );
            }
            let created = connection
                .api()?
                .extension(Method::POST, &ROUTE, &[], Some(&body))
                .await?
                .unwrap_or_default();
            if json {
                print_json(&created);
            } else {
                println!("{}", endpoint_line(&created));
                println!("secret  {}", text(&created["secret"]));
                eprintln!("keep the secret: it signs every request and is not shown again");
            }
        }
        WebhooksCommand::List { json, connection } => {
            let listed = connection
                .api()?
                .extension(Method::GET, &ROUTE, &[], None)
                .await?
                .unwrap_or_default();
            if json {
                print_json(&listed);
            } else {
                let endpoints = listed["endpoints"].as_array().cloned().unwrap_or_default();
                if endpoints.is_empty() {
                    println!("no webhooks");
                }
                for e in &endpoints {
                    println!("{}", endpoint_line(e));
                }
            }
        }
        WebhooksCommand::Delete {
            id,
            json,
            connection,
        } => {
            connection
                .api()?
                .extension(Method::DELETE, &[ROUTE[0], ROUTE[1], &id], &[], None)
                .await?;
            if json {
                print_json(&json!({ "deleted": id }));
            } else {
                println!("deleted {id}");
            }
        }
        WebhooksCommand::Deliveries {
            id,
            limit,
            json,
            connection,
        } => {
            let listed = connection
                .api()?
                .extension(
                    Method::GET,
                    &[ROUTE[0], ROUTE[1], &id, "deliveries"],
                    &[("limit", limit.to_string())],
                    None,
                )
                .await?
                .unwrap_or_default();
            if json {
                print_json(&listed);
            } else {
                let attempts = listed["attempts"].as_array().cloned().unwrap_or_default();
                if attempts.is_empty() {
                    println!("no delivery attempts");
                }
                for a in &attempts {
                    println!(
                        "{}  {:<13}  {}  #{}  {}  {} ms  {:<9}  next {}{}",
                        text(&a["at"]),
                        text(&a["event"]),
                        text(&a["job_id"]),
                        text(&a["attempt"]),
                        text(&a["status_code"]),
                        text(&a["latency_ms"]),
                        text(&a["state"]),
                        text(&a["next_attempt_at"]),
                        a["error"]
                            .as_str()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
