//! The functions' settings, from environment variables the template sets.
//!
//! Resource names (table, bucket, queues, cluster) are read by `aws::AwsConfig`; this
//! module reads the policy settings ([`Tunables`]) and the cursor key. Both are read
//! once, at start, and a bad deployment fails there with one error naming *every*
//! variable that is missing or malformed ([`EnvError`]), so the first log line says
//! what to fix. docs/functions.md lists each function's variables.

use chrono::Duration;

pub const MAX_WORKERS: &str = "SERVERLESS_COMFYUI_MAX_WORKERS";
pub const MIN_WARM_WORKERS: &str = "SERVERLESS_COMFYUI_MIN_WARM_WORKERS";
pub const QUEUE_TIMEOUT_SECONDS: &str = "SERVERLESS_COMFYUI_QUEUE_TIMEOUT_SECONDS";
pub const MAX_ATTEMPTS: &str = "SERVERLESS_COMFYUI_MAX_ATTEMPTS";
pub const RETENTION_DAYS: &str = "SERVERLESS_COMFYUI_RETENTION_DAYS";
pub const IDEMPOTENCY_TTL_HOURS: &str = "SERVERLESS_COMFYUI_IDEMPOTENCY_TTL_HOURS";
pub const UPLOAD_TTL_MINUTES: &str = "SERVERLESS_COMFYUI_UPLOAD_TTL_MINUTES";
pub const ALLOWED_ORIGINS: &str = "SERVERLESS_COMFYUI_ALLOWED_ORIGINS";
pub const CURSOR_KEY: &str = "SERVERLESS_COMFYUI_CURSOR_KEY";
pub const GPU_PRICE_PER_HOUR: &str = "SERVERLESS_COMFYUI_GPU_PRICE_PER_HOUR";
/// The webhook delivery queue (the `webhooks` and `dispatch` functions).
pub const WEBHOOK_QUEUE_URL: &str = "SERVERLESS_COMFYUI_WEBHOOK_QUEUE_URL";
/// `true` lets webhooks reach loopback and private addresses: for local testing only.
pub const WEBHOOKS_ALLOW_PRIVATE: &str = "SERVERLESS_COMFYUI_WEBHOOKS_ALLOW_PRIVATE";

/// The shortest cursor key accepted: 32 bytes, as many as the MAC's output.
pub const MIN_CURSOR_KEY_BYTES: usize = 32;

/// The environment is incomplete or malformed: one line per variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad environment: {}", .problems.join("; "))]
pub struct EnvError {
    pub problems: Vec<String>,
}

/// The policy settings every function reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub max_workers: u32,
    /// Clamped to `max_workers`, as the template's parameter says.
    pub min_warm_workers: u32,
    pub queue_timeout: Duration,
    pub max_attempts: u32,
    pub retention: Duration,
    pub idempotency_ttl: Duration,
    pub upload_ttl: Duration,
    /// Web origins allowed to call from a browser; empty allows none.
    pub allowed_origins: Vec<String>,
    /// Dollars per GPU-hour, recorded on each accepted job for its `cost_micro_usd`; 0: no
    /// estimate.
    pub gpu_price_per_hour: f64,
}

/// Reads variables through `lookup`, recording every problem instead of stopping at
/// the first.
pub(crate) struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) problems: Vec<String>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Reader {
            lookup,
            problems: Vec::new(),
        }
    }

    fn raw(&mut self, name: &str) -> Option<String> {
        match (self.lookup)(name).map(|v| v.trim().to_string()) {
            Some(value) if !value.is_empty() => Some(value),
            _ => {
                self.problems.push(format!("{name} is missing"));
                None
            }
        }
    }

    /// A whole number in `min..=max`; 0 when missing or bad (the error is recorded).
    fn number(&mut self, name: &str, min: u64, max: u64) -> u64 {
        let Some(text) = self.raw(name) else { return 0 };
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            // The value is a number or not, never a secret: safe to quote.
            _ => {
                self.problems.push(format!(
                    "{name} is {text:?}: expected a whole number from {min} to {max}"
                ));
                0
            }
        }
    }

    /// A non-negative price in dollars; 0 when unset (no estimate), and when bad (the
    /// error is recorded).
    fn price(&mut self, name: &str) -> f64 {
        let Some(text) = (self.lookup)(name).map(|v| v.trim().to_string()) else {
            return 0.0;
        };
        if text.is_empty() {
            return 0.0;
        }
        match text.parse::<f64>() {
            Ok(p) if p.is_finite() && p >= 0.0 => p,
            _ => {
                self.problems.push(format!(
                    "{name} is {text:?}: expected a price in dollars, 0 or more"
                ));
                0.0
            }
        }
    }

    /// A secret: its length is checked, its value never quoted.
    pub(crate) fn secret(&mut self, name: &str, min_bytes: usize) -> Vec<u8> {
        let Some(value) = self.raw(name) else {
            return Vec::new();
        };
        if value.len() < min_bytes {
            self.problems.push(format!(
                "{name} is {} bytes long: at least {min_bytes} are needed",
                value.len()
            ));
        }
        value.into_bytes()
    }
}

/// Where webhook deliveries go through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookSettings {
    /// The delivery queue's URL; required by the functions that send to it (`webhooks`,
    /// and `dispatch` for its safety net), absent elsewhere.
    pub queue_url: Option<String>,
    /// Whether webhook URLs may reach loopback and private addresses (off unless
    /// [`WEBHOOKS_ALLOW_PRIVATE`] is `true`).
    pub allow_private: bool,
}

impl WebhookSettings {
    pub(crate) fn read(r: &mut Reader<'_>, needs_queue: bool) -> WebhookSettings {
        let queue_url = if needs_queue {
            r.raw(WEBHOOK_QUEUE_URL)
        } else {
            None
        };
        let allow_private = match (r.lookup)(WEBHOOKS_ALLOW_PRIVATE)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                r.problems.push(format!(
                    "{WEBHOOKS_ALLOW_PRIVATE} is {other:?}: expected true or false"
                ));
                false
            }
        };
        WebhookSettings {
            queue_url,
            allow_private,
        }
    }
}

impl Tunables {
    pub(crate) fn read(r: &mut Reader<'_>) -> Tunables {
        let max_workers = r.number(MAX_WORKERS, 1, 1000) as u32;
        let min_warm_workers = r.number(MIN_WARM_WORKERS, 0, 1000) as u32;
        let queue_timeout = Duration::seconds(r.number(QUEUE_TIMEOUT_SECONDS, 60, 604_800) as i64);
        let max_attempts = r.number(MAX_ATTEMPTS, 1, 100) as u32;
        let retention = Duration::days(r.number(RETENTION_DAYS, 1, 36_500) as i64);
        let idempotency_ttl = Duration::hours(r.number(IDEMPOTENCY_TTL_HOURS, 1, 876_000) as i64);
        let upload_ttl = Duration::minutes(r.number(UPLOAD_TTL_MINUTES, 1, 10_080) as i64);
        let gpu_price_per_hour = r.price(GPU_PRICE_PER_HOUR);
        // Unset means no browser origin; the template always sets it.
        let allowed_origins: Vec<String> = (r.lookup)(ALLOWED_ORIGINS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        for origin in &allowed_origins {
            let bare = origin.starts_with("https://") || origin.starts_with("http://");
            if !bare || origin.ends_with('/') || origin.matches('/').count() != 2 {
                r.problems.push(format!(
                    "{ALLOWED_ORIGINS} has {origin:?}: expected origins like https://app.example.com, comma-separated"
                ));
            }
        }
        // A key outliving its job would answer a replay with 409 (as `dev` refuses).
        if retention > Duration::zero() && idempotency_ttl > retention {
            r.problems.push(format!(
                "{IDEMPOTENCY_TTL_HOURS} ({}h) exceeds {RETENTION_DAYS} ({}d): a replayed key must still find its job",
                idempotency_ttl.num_hours(),
                retention.num_days()
            ));
        }
        Tunables {
            max_workers,
            min_warm_workers: min_warm_workers.min(max_workers),
            queue_timeout,
            max_attempts,
            retention,
            idempotency_ttl,
            upload_ttl,
            allowed_origins,
            gpu_price_per_hour,
        }
    }

    /// Reads the tunables alone (tests, tools).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Tunables, EnvError> {
        let mut reader = Reader::new(&lookup);
        let tunables = Tunables::read(&mut reader);
        if reader.problems.is_empty() {
            Ok(tunables)
        } else {
            Err(EnvError {
                problems: reader.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn template_defaults() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (MAX_WORKERS, "2"),
            (MIN_WARM_WORKERS, "0"),
            (QUEUE_TIMEOUT_SECONDS, "3600"),
            (MAX_ATTEMPTS, "3"),
            (RETENTION_DAYS, "7"),
            (IDEMPOTENCY_TTL_HOURS, "24"),
            (UPLOAD_TTL_MINUTES, "60"),
            (ALLOWED_ORIGINS, "http://localhost:5173"),
            (GPU_PRICE_PER_HOUR, "0.8048"),
        ])
    }

    fn read(env: &HashMap<&str, &str>) -> Result<Tunables, EnvError> {
        Tunables::from_lookup(|k| env.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn the_template_defaults_read_into_typed_settings() {
        let t = read(&template_defaults()).unwrap();
        assert_eq!(t.max_workers, 2);
        assert_eq!(t.queue_timeout, Duration::hours(1));
        assert_eq!(t.retention, Duration::days(7));
        assert_eq!(t.idempotency_ttl, Duration::hours(24));
        assert_eq!(t.upload_ttl, Duration::minutes(60));
        assert_eq!(t.allowed_origins, vec!["http://localhost:5173"]);
        assert_eq!(t.gpu_price_per_hour, 0.8048);
    }

    #[test]
    fn the_gpu_price_is_optional_but_never_negative() {
        let mut env = template_defaults();
        env.remove(GPU_PRICE_PER_HOUR);
        assert_eq!(
            read(&env).unwrap().gpu_price_per_hour,
            0.0,
            "unset: no estimate"
        );
        env.insert(GPU_PRICE_PER_HOUR, "-1");
        let err = read(&env).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.contains(GPU_PRICE_PER_HOUR)),
            "{err}"
        );
    }

    #[test]
    fn every_missing_or_bad_variable_is_named_at_once() {
        let mut env = template_defaults();
        env.remove(MAX_ATTEMPTS);
        env.insert(MAX_WORKERS, "two");
        env.insert(QUEUE_TIMEOUT_SECONDS, "5");
        env.insert(
            ALLOWED_ORIGINS,
            "https://ok.example.com, https://bad.example.com/",
        );
        let err = read(&env).unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        for name in [
            MAX_ATTEMPTS,
            MAX_WORKERS,
            QUEUE_TIMEOUT_SECONDS,
            ALLOWED_ORIGINS,
        ] {
            assert!(text.contains(name), "{name} not named in: {text}");
        }
        assert!(text.contains("\"two\""), "{text}");
        assert!(
            !text.contains("ok.example.com"),
            "good values are not reported: {text}"
        );
    }

    #[test]
    fn warm_workers_are_clamped_and_an_idempotency_key_may_not_outlive_its_job() {
        let mut env = template_defaults();
        env.insert(MIN_WARM_WORKERS, "5");
        assert_eq!(read(&env).unwrap().min_warm_workers, 2);
        env.insert(IDEMPOTENCY_TTL_HOURS, "169");
        let err = read(&env).unwrap_err();
        assert!(err.to_string().contains(IDEMPOTENCY_TTL_HOURS), "{err}");
    }

    #[test]
    fn the_webhook_queue_is_required_where_it_is_sent_to_and_private_addresses_are_opt_in() {
        let env = HashMap::from([(WEBHOOKS_ALLOW_PRIVATE, "yes")]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut reader = Reader::new(&lookup);
        let settings = WebhookSettings::read(&mut reader, true);
        assert!(!settings.allow_private);
        let text = reader.problems.join("; ");
        assert!(
            text.contains(&format!("{WEBHOOK_QUEUE_URL} is missing")),
            "{text}"
        );
        assert!(text.contains(WEBHOOKS_ALLOW_PRIVATE), "{text}");

        let env = HashMap::from([(WEBHOOKS_ALLOW_PRIVATE, "true")]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut reader = Reader::new(&lookup);
        let settings = WebhookSettings::read(&mut reader, false);
        assert!(reader.problems.is_empty() && settings.allow_private);
        assert_eq!(settings.queue_url, None);
    }

    #[test]
    fn a_secret_is_measured_but_never_quoted() {
        let env = HashMap::from([(CURSOR_KEY, "short-secret-value")]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut reader = Reader::new(&lookup);
        reader.secret(CURSOR_KEY, MIN_CURSOR_KEY_BYTES);
        let text = reader.problems.join("; ");
        assert!(
            text.contains(CURSOR_KEY) && text.contains("18 bytes"),
            "{text}"
        );
        assert!(!text.contains("short-secret-value"), "{text}");
    }
}
