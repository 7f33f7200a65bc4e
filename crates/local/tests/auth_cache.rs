//! A deployed API remembers each accepted key for a while
//! ([`KeyAuthenticator::remembering_accepted_keys`]), so a client polling with it is
//! not looked up on every request. The attack is a revoked key used again: it must stop
//! working once the window passes, and nothing but an acceptance may ride the cache (a
//! wrong key, or one revoked before this process accepted it, is refused at once).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use jobs::auth::{Authenticator, Credentials, KeyAuthenticator, MAX_ACCEPTED_KEYS, mint_key};
use jobs::error::ErrorKind;
use jobs::ports::{Clock, JobStore, ManualClock};
use local::SqliteJobStore;

const WINDOW: Duration = Duration::from_secs(30);

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<SqliteJobStore>,
    clock: Arc<ManualClock>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteJobStore::open(&dir.path().join("jobs.sqlite")).unwrap());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    Setup {
        _dir: dir,
        store,
        clock,
    }
}

impl Setup {
    fn authenticator(&self, remember: bool) -> KeyAuthenticator {
        let auth = KeyAuthenticator::new(self.store.clone(), self.clock.clone(), false);
        if remember {
            auth.remembering_accepted_keys(WINDOW)
        } else {
            auth
        }
    }

    /// A new key for `tenant`: its secret and record, stored.
    async fn key(&self, tenant: &str) -> (String, jobs::model::ApiKeyRecord) {
        let minted = mint_key(tenant, self.clock.now()).unwrap();
        self.store.put_api_key(&minted.record).await.unwrap();
        (minted.secret, minted.record)
    }

    async fn revoke(&self, mut record: jobs::model::ApiKeyRecord) {
        record.revoked_at = Some(self.clock.now());
        self.store.put_api_key(&record).await.unwrap();
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(chrono::Duration::from_std(by).unwrap());
    }
}

fn bearer(secret: &str) -> Credentials {
    Credentials {
        authorization: Some(Some(format!("Bearer {secret}"))),
        addressed_to_loopback: false,
    }
}

async fn tenant_of(auth: &KeyAuthenticator, secret: &str) -> Result<String, String> {
    match auth.authenticate(&bearer(secret)).await {
        Ok(tenant) => Ok(tenant.0),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Unauthenticated, "{e:?}");
            Err(e.message)
        }
    }
}

#[tokio::test]
async fn a_revoked_key_stops_working_once_the_window_since_its_acceptance_passes() {
    let s = setup();
    let auth = s.authenticator(true);
    let (secret, record) = s.key("acme").await;
    assert_eq!(tenant_of(&auth, &secret).await, Ok("acme".into()));
    s.revoke(record).await;
    // Accepted 29 s ago: still remembered (the documented price of the window).
    s.advance(WINDOW - Duration::from_secs(1));
    assert_eq!(tenant_of(&auth, &secret).await, Ok("acme".into()));
    // The window is counted from the acceptance, not renewed by use.
    s.advance(Duration::from_secs(1));
    let refused = tenant_of(&auth, &secret).await.unwrap_err();
    assert!(refused.contains("revoked"), "{refused}");
    // And it stays refused: a refusal is never remembered as an acceptance.
    assert!(tenant_of(&auth, &secret).await.is_err());
}

#[tokio::test]
async fn only_acceptances_ride_the_cache() {
    let s = setup();
    let auth = s.authenticator(true);
    let (good, _) = s.key("acme").await;
    let (revoked_early, record) = s.key("acme").await;
    s.revoke(record).await;
    assert_eq!(tenant_of(&auth, &good).await, Ok("acme".into()));
    // A key revoked before this process accepted it: refused at once.
    assert!(
        tenant_of(&auth, &revoked_early)
            .await
            .unwrap_err()
            .contains("revoked")
    );
    // A wrong key, right after a good one was accepted: refused (keyed by the hash).
    let wrong = format!("{}x", &good[..good.len() - 1]);
    assert!(tenant_of(&auth, &wrong).await.is_err());
    // A key created after the process started works at once (no negative cache).
    let (fresh, _) = s.key("globex").await;
    assert_eq!(tenant_of(&auth, &fresh).await, Ok("globex".into()));
}

#[tokio::test]
async fn without_the_cache_a_revocation_takes_effect_on_the_next_request() {
    let s = setup();
    let auth = s.authenticator(false);
    let (secret, record) = s.key("acme").await;
    assert_eq!(tenant_of(&auth, &secret).await, Ok("acme".into()));
    s.revoke(record).await;
    assert!(
        tenant_of(&auth, &secret)
            .await
            .unwrap_err()
            .contains("revoked")
    );
}

#[tokio::test]
async fn the_cache_is_bounded_and_a_full_one_forgets_rather_than_grows() {
    let s = setup();
    let auth = s.authenticator(true);
    let (first, first_record) = s.key("acme").await;
    assert_eq!(tenant_of(&auth, &first).await, Ok("acme".into()));
    // Fill it with as many other accepted keys, all within the window.
    for _ in 0..MAX_ACCEPTED_KEYS {
        let (secret, _) = s.key("acme").await;
        assert!(tenant_of(&auth, &secret).await.is_ok());
    }
    // Full with live entries: it was cleared, so the first key is read again, and its
    // revocation (made inside the window) is seen at once.
    s.revoke(first_record).await;
    assert!(
        tenant_of(&auth, &first)
            .await
            .unwrap_err()
            .contains("revoked")
    );
}
