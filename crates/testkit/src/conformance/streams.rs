//! Live event-stream slots (`acquire_stream_slot`, `release_stream_slot`): the limit
//! is exact, a renewal keeps its own slot, expired slots count for nothing, and
//! concurrent takers never overshoot, also through two store handles on the same data
//! (two Lambda instances of `status`).

use super::*;

/// The slot promises on one store. `now` is passed explicitly, so no clock is needed.
pub async fn stream_slots(store: Arc<dyn JobStore>) {
    let now = Utc::now();
    let until = now + Duration::seconds(30);
    let tenant = format!("streams-{}", now.timestamp_nanos_opt().unwrap_or(0));
    for holder in ["a", "b", "c"] {
        assert!(
            store
                .acquire_stream_slot(&tenant, holder, 3, now, until)
                .await
                .unwrap(),
            "slot for {holder}"
        );
    }
    assert!(
        !store
            .acquire_stream_slot(&tenant, "d", 3, now, until)
            .await
            .unwrap(),
        "the fourth of three is refused"
    );
    // A holder renews its own slot even when all are taken.
    assert!(
        store
            .acquire_stream_slot(&tenant, "b", 3, now, until + Duration::seconds(5))
            .await
            .unwrap()
    );
    // Other tenants are not affected.
    let other = format!("{tenant}-other");
    assert!(
        store
            .acquire_stream_slot(&other, "a", 3, now, until)
            .await
            .unwrap()
    );
    // A freed slot is taken again; freeing what is not held is fine.
    store.release_stream_slot(&tenant, "a").await.unwrap();
    store.release_stream_slot(&tenant, "nobody").await.unwrap();
    assert!(
        store
            .acquire_stream_slot(&tenant, "d", 3, now, until)
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire_stream_slot(&tenant, "e", 3, now, until)
            .await
            .unwrap()
    );
    // Past their `until`, slots count for nothing (a crashed holder frees its own):
    // "b" was renewed to until + 5 s, so at until + 1 s two slots are free.
    let later = until + Duration::seconds(1);
    let far = later + Duration::seconds(30);
    assert!(
        store
            .acquire_stream_slot(&tenant, "e", 3, later, far)
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire_stream_slot(&tenant, "f", 3, later, far)
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire_stream_slot(&tenant, "g", 3, later, far)
            .await
            .unwrap(),
        "the renewed slot still counts"
    );
}

/// Concurrent takers through two handles on the same data (`a` and `b` may be the same
/// store): exactly `max` of them get a slot.
pub async fn stream_slots_are_exact_under_concurrency(a: Arc<dyn JobStore>, b: Arc<dyn JobStore>) {
    let now = Utc::now();
    let until = now + Duration::seconds(30);
    let tenant = format!("streams-race-{}", now.timestamp_nanos_opt().unwrap_or(0));
    let max = 4;
    let tries = (0..12).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tenant = tenant.clone();
        async move {
            store
                .acquire_stream_slot(&tenant, &format!("h{i}"), max, now, until)
                .await
                .unwrap()
        }
    });
    let granted = futures::future::join_all(tries)
        .await
        .into_iter()
        .filter(|g| *g)
        .count();
    assert!(granted <= max as usize, "{granted} slots granted of {max}");
    assert!(granted >= 1, "someone gets a slot");
    // Whatever raced, the limit is reached exactly once the dust settles.
    let mut holders = granted;
    for i in 100..120 {
        if a.acquire_stream_slot(&tenant, &format!("h{i}"), max, now, until)
            .await
            .unwrap()
        {
            holders += 1;
        }
    }
    assert_eq!(holders, max as usize);
}
