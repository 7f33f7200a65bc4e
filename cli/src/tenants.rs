//! `serverless-comfyui tenants`: per-tenant quotas of a `dev` data directory.
//!
//! A tenant with no quota set gets the defaults (`jobs::quota::TenantQuota::default`);
//! `set-quota` overrides any of the three limits, keeping the others. Running `dev`
//! servers pick a change up within a few seconds.

use clap::Subcommand;
use jobs::auth::validate_tenant;
use jobs::quota::{self, TenantQuota};

use crate::keys::DataDirArg;

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Set a tenant's limits (any not given keep their current value).
    SetQuota {
        #[arg(long)]
        tenant: String,
        /// Jobs queued or running at once (default 10000).
        #[arg(long)]
        max_active_jobs: Option<u32>,
        /// Submits per second (default 1000).
        #[arg(long)]
        submits_per_second: Option<u32>,
        /// Bytes of stored content, e.g. 10GiB, 500MB or 1048576 (default 1TiB).
        #[arg(long, value_parser = parse_bytes)]
        max_stored_bytes: Option<u64>,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Show a tenant's limits and what it uses now.
    Show {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

/// Parses a byte count with an optional unit (KB, MB, GB, TB; KiB, MiB, GiB, TiB).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count such as 10GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn print(tenant: &str, quota: &TenantQuota, set: bool) {
    println!(
        "tenant {tenant}{}\n  max active jobs     {}\n  submits per second  {}\n  max stored bytes    {}",
        if set { "" } else { " (defaults)" },
        quota.max_active_jobs,
        quota.submits_per_second,
        quota.max_stored_bytes
    );
}

/// Runs a `tenants` subcommand, printing to stdout.
pub async fn run(command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::SetQuota {
            tenant,
            max_active_jobs,
            submits_per_second,
            max_stored_bytes,
            data_dir,
        } => {
            validate_tenant(&tenant).map_err(anyhow::Error::msg)?;
            let store = data_dir.open().await?;
            let mut quota = store.get_tenant_quota(&tenant).await?.unwrap_or_default();
            if let Some(n) = max_active_jobs {
                quota.max_active_jobs = n;
            }
            if let Some(n) = submits_per_second {
                quota.submits_per_second = n;
            }
            if let Some(n) = max_stored_bytes {
                quota.max_stored_bytes = n;
            }
            quota::validate(&quota).map_err(anyhow::Error::msg)?;
            store.put_tenant_quota(&tenant, &quota).await?;
            print(&tenant, &quota, true);
        }
        TenantsCommand::Show { tenant, data_dir } => {
            validate_tenant(&tenant).map_err(anyhow::Error::msg)?;
            let store = data_dir.open().await?;
            let set = store.get_tenant_quota(&tenant).await?;
            print(&tenant, &set.unwrap_or_default(), set.is_some());
            let usage = store.tenant_usage(&tenant).await?;
            println!(
                "  active jobs now     {}\n  stored bytes now    {}",
                usage.active_jobs, usage.stored_bytes
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_take_decimal_and_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("500 MB"), Ok(500_000_000));
        assert!(parse_bytes("10 parsecs").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
