//! `serverless-comfyui keys`: API keys, stored in `dev`'s data directory or, with
//! `--table NAME`, in a deployed stack's DynamoDB table (credentials and region from
//! the usual AWS chain: `AWS_PROFILE`, `AWS_REGION`...).
//!
//! A key is shown once, at creation; only its SHA-256 is stored. Keys belong to
//! tenants, and a tenant's jobs and assets belong to the tenant, not the key, so
//! rotating a key (create a new one, revoke the old) orphans nothing.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use jobs::auth::mint_key;
use jobs::ports::{Clock, JobStore, SystemClock};
use local::DataDir;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant and print it (it is shown only once).
    Create {
        /// The tenant the key acts for: 1 to 64 of a-z, 0-9, '-' and '_'.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// List keys (never the secrets).
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Delete every key, revoked ones too, so that `dev` (restarted) serves one
    /// unauthenticated default tenant on loopback again. Revoking keys never does that.
    Purge {
        /// Confirms that the server may run without authentication.
        #[arg(long)]
        yes_serve_without_auth: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Revoke a key by its id (`key_…`, from `keys list`). Revoking the last key does
    /// not turn authentication off: every request is refused until a new key exists.
    Revoke {
        id: String,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

/// Where the commands that manage keys and tenants find the store: a `dev` data
/// directory, or a deployed stack's table.
#[derive(Debug, clap::Args)]
pub struct DataDirArg {
    #[arg(
        long = "data-dir",
        default_value = ".serverless-comfyui",
        env = "SERVERLESS_COMFYUI_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// A deployed stack's DynamoDB table (the stack's `TableName` output) instead of a
    /// data directory. Credentials and region come from the usual AWS chain.
    #[cfg(feature = "aws")]
    #[arg(long, env = "SERVERLESS_COMFYUI_TABLE")]
    pub table: Option<String>,
}

impl DataDirArg {
    /// The store the flags name.
    pub(crate) async fn open(&self) -> anyhow::Result<Arc<dyn JobStore>> {
        #[cfg(feature = "aws")]
        if let Some(table) = &self.table {
            let clients = aws::Clients::load().await;
            return Ok(Arc::new(aws::DynamoJobStore::new(
                clients.dynamodb,
                table.clone(),
                Arc::new(SystemClock),
            )));
        }
        let dir = DataDir::open(&self.data_dir)?;
        let ports = dir
            .ports(Arc::new(SystemClock), "http://127.0.0.1")
            .with_context(|| format!("opening {}", self.data_dir.display()))?;
        Ok(ports.store)
    }

    /// What serves requests from this store, for messages.
    fn server(&self) -> &'static str {
        #[cfg(feature = "aws")]
        if self.table.is_some() {
            return "the deployed API";
        }
        "dev"
    }
}

/// Runs a `keys` subcommand, printing to stdout.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { tenant, data_dir } => {
            let store = data_dir.open().await?;
            let minted = mint_key(&tenant, SystemClock.now()).map_err(anyhow::Error::msg)?;
            store.put_api_key(&minted.record).await?;
            println!("{}", minted.secret);
            eprintln!(
                "created {} for tenant {tenant}. Store it now: it is not shown again.\n\
                 Use it as: Authorization: Bearer <key>  (comfy-sdk: COMFY_API_KEY=<key>)",
                minted.record.id
            );
        }
        KeysCommand::List { data_dir } => {
            let store = data_dir.open().await?;
            let keys = store.list_api_keys().await?;
            if keys.is_empty() && data_dir.server() == "dev" {
                println!("no keys: dev serves one default tenant on loopback");
            } else if keys.is_empty() {
                println!("no keys: the deployed API refuses every request until one exists");
            }
            for key in keys {
                let state = match key.revoked_at {
                    Some(at) => format!("revoked {}", at.to_rfc3339()),
                    None => "active".to_string(),
                };
                println!(
                    "{}  tenant={}  {}…  created {}  {state}",
                    key.id,
                    key.tenant,
                    key.prefix,
                    key.created_at.to_rfc3339()
                );
            }
        }
        KeysCommand::Revoke { id, data_dir } => {
            let server = data_dir.server();
            let store = data_dir.open().await?;
            let keys = store.list_api_keys().await?;
            let Some(mut key) = keys.into_iter().find(|k| k.id == id) else {
                bail!("no key {id}; see `serverless-comfyui keys list`");
            };
            if key.revoked_at.is_none() {
                key.revoked_at = Some(SystemClock.now());
                store.put_api_key(&key).await?;
            }
            println!("revoked {id} (tenant {})", key.tenant);
            if data_dir.table.is_some() {
                eprintln!(
                    "the deployed API refuses it within {} s (a warm function that accepted it \
                     just before remembers it that long)",
                    jobs::auth::ACCEPTED_KEY_WINDOW.as_secs()
                );
            }
            let active = store
                .list_api_keys()
                .await?
                .iter()
                .filter(|k| k.revoked_at.is_none())
                .count();
            if active == 0 {
                eprintln!(
                    "no active key is left: {server} refuses every request until you create one"
                );
                if server == "dev" {
                    eprintln!(
                        "(`keys purge --yes-serve-without-auth` goes back to no authentication)"
                    );
                }
            }
        }
        KeysCommand::Purge {
            yes_serve_without_auth,
            data_dir,
        } => {
            if !yes_serve_without_auth {
                bail!(
                    "purging keys lets a loopback dev serve without authentication; \
                     pass --yes-serve-without-auth to confirm"
                );
            }
            if data_dir.server() != "dev" {
                bail!(
                    "purge is for dev's data directory: a deployed API never serves without \
                     a key; revoke keys one by one (`keys revoke ID --table ...`)"
                );
            }
            let store = data_dir.open().await?;
            let deleted = store.delete_all_api_keys().await?;
            println!(
                "deleted {deleted} key(s): once restarted, dev serves one default tenant \
                 without authentication, on loopback only"
            );
        }
    }
    Ok(())
}
