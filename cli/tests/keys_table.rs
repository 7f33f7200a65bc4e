//! `keys --table NAME`: the same commands against a deployed stack's DynamoDB table,
//! here on moto (credentials and endpoint from the usual AWS environment variables,
//! as a user's shell would give them).

use std::process::Command;
use std::sync::Arc;

use aws::testing::{clients, fresh_table, moto};
use jobs::ports::{JobStore, SystemClock};

const BIN: &str = env!("CARGO_BIN_EXE_serverless-comfyui");

/// Runs the CLI against `table` on moto; answers (success, stdout, stderr).
fn cli(table: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--table", table])
        .env("AWS_ENDPOINT_URL", &moto().endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("SERVERLESS_COMFYUI_DATA_DIR")
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_and_revoked_in_a_deployed_table() {
    let table = fresh_table().await;
    let store = aws::DynamoJobStore::new(
        clients().await.dynamodb,
        table.clone(),
        Arc::new(SystemClock),
    );

    let (ok, secret, err) = cli(&table, &["keys", "create", "--tenant", "acme"]);
    assert!(ok, "{err}");
    let secret = secret.trim();
    let stored = store.list_api_keys().await.unwrap();
    assert_eq!(stored.len(), 1, "one key item in the table");
    let key = &stored[0];
    assert_eq!(key.tenant, "acme");
    assert_eq!(
        key.key_hash,
        jobs::auth::key_hash(secret),
        "only the hash is stored"
    );
    assert!(
        !err.contains(secret),
        "the secret is printed once, on stdout"
    );

    let (ok, listed, err) = cli(&table, &["keys", "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains(&key.id) && listed.contains("tenant=acme"),
        "{listed}"
    );
    assert!(!listed.contains(secret), "lists never show secrets");

    let (ok, _, err) = cli(&table, &["keys", "revoke", &key.id]);
    assert!(ok, "{err}");
    assert!(
        err.contains("the deployed API refuses every request"),
        "{err}"
    );
    let revoked = store.list_api_keys().await.unwrap();
    assert!(revoked[0].revoked_at.is_some());

    // Purging is dev's way back to no authentication; a deployment has none.
    let (ok, _, err) = cli(&table, &["keys", "purge", "--yes-serve-without-auth"]);
    assert!(!ok && err.contains("purge is for dev"), "{err}");
    assert_eq!(
        store.list_api_keys().await.unwrap().len(),
        1,
        "nothing deleted"
    );
}
