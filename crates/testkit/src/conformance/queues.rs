//! Queue semantics: SQS's exact rules without faults, and at-least-once delivery with them.

use super::*;

const VIS: StdDuration = StdDuration::from_secs(30);
const NO_WAIT: StdDuration = StdDuration::ZERO;

/// SQS's exact semantics, for a queue with no injected faults. `max_receive_count` is
/// what the adapter was built with. Stale receipts must be refused.
pub async fn queue_strict(queue: Arc<dyn Queue>, time: &dyn TimeControl, max_receive_count: u32) {
    queue_semantics(queue, time, max_receive_count, true).await
}

/// [`queue_strict`] for SQS itself, which promises less about stale receipts: a
/// delete or visibility change with a receipt from an earlier receive, or a second
/// delete, may be refused (`StaleReceipt`) *or* answer Ok (and a stale delete may
/// even act, as moto's does), as the `Queue` port documents. Every other check holds.
pub async fn queue_sqs(queue: Arc<dyn Queue>, time: &dyn TimeControl, max_receive_count: u32) {
    queue_semantics(queue, time, max_receive_count, false).await
}

async fn queue_semantics(
    queue: Arc<dyn Queue>,
    time: &dyn TimeControl,
    max_receive_count: u32,
    stale_receipts_refused: bool,
) {
    let q = QueueName::Work;
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "a new queue is empty"
    );

    queue.send(q, "a").await.unwrap();
    let depth = queue.depth(q).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (1, 0));
    let first = queue.receive(q, 10, NO_WAIT, VIS).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, "a");
    assert_eq!(first[0].receive_count, 1);
    let depth = queue.depth(q).await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 1),
        "received means in flight"
    );
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "a received message is hidden for its visibility timeout"
    );

    // Visibility lapses: the message comes back with a new receipt and a higher count.
    time.advance(VIS + StdDuration::from_secs(1)).await;
    let second = queue.receive(q, 1, NO_WAIT, VIS).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(
        second[0].receipt, first[0].receipt,
        "each receive mints a receipt"
    );
    if stale_receipts_refused {
        assert!(
            matches!(
                queue.delete(q, &first[0].receipt).await,
                Err(QueueError::StaleReceipt)
            ),
            "the old receipt is stale"
        );
        assert!(matches!(
            queue.change_visibility(q, &first[0].receipt, VIS).await,
            Err(QueueError::StaleReceipt)
        ));
    } else {
        // A stale delete's effect is undefined on SQS (ignored, or acting), so it is
        // not tried here; a stale visibility change may be refused or accepted.
        assert!(matches!(
            queue.change_visibility(q, &first[0].receipt, VIS).await,
            Ok(()) | Err(QueueError::StaleReceipt)
        ));
    }

    // Change visibility: extend, then reveal at once.
    queue
        .change_visibility(q, &second[0].receipt, StdDuration::from_secs(120))
        .await
        .unwrap();
    time.advance(VIS + StdDuration::from_secs(1)).await;
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "extended visibility holds"
    );
    queue
        .change_visibility(q, &second[0].receipt, StdDuration::ZERO)
        .await
        .unwrap();
    let third = queue.receive(q, 1, NO_WAIT, VIS).await.unwrap();
    assert_eq!(third.len(), 1, "visibility zero reveals at once");
    queue.delete(q, &third[0].receipt).await.unwrap();
    let again = queue.delete(q, &third[0].receipt).await;
    if stale_receipts_refused {
        assert!(matches!(again, Err(QueueError::StaleReceipt)));
    } else {
        assert!(matches!(again, Ok(()) | Err(QueueError::StaleReceipt)));
    }
    let depth = queue.depth(q).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "deleted is gone");

    // Batches, and queues are separate.
    for body in ["1", "2", "3"] {
        queue.send(q, body).await.unwrap();
    }
    queue.send(QueueName::Wake, "w").await.unwrap();
    let batch = queue.receive(q, 2, NO_WAIT, VIS).await.unwrap();
    assert_eq!(batch.len(), 2, "at most `max`");
    let rest = queue.receive(q, 10, NO_WAIT, VIS).await.unwrap();
    assert_eq!(rest.len(), 1);
    for m in batch.iter().chain(&rest) {
        assert_ne!(m.body, "w", "the wake queue is separate");
        queue.delete(q, &m.receipt).await.unwrap();
    }
    let wake = queue
        .receive(QueueName::Wake, 10, NO_WAIT, VIS)
        .await
        .unwrap();
    assert_eq!(wake.len(), 1);
    queue
        .delete(QueueName::Wake, &wake[0].receipt)
        .await
        .unwrap();

    // Dead-lettering after max_receive_count receives.
    queue.send(q, "poison").await.unwrap();
    for n in 1..=max_receive_count {
        let got = queue
            .receive(q, 1, NO_WAIT, StdDuration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "receive {n} of {max_receive_count}");
        assert_eq!(got[0].receive_count, n);
    }
    assert!(
        queue.receive(q, 1, NO_WAIT, VIS).await.unwrap().is_empty(),
        "past max_receive_count the message is dead-lettered, not delivered"
    );
    let dead = queue
        .receive(QueueName::WorkDeadLetter, 1, NO_WAIT, VIS)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    queue
        .delete(QueueName::WorkDeadLetter, &dead[0].receipt)
        .await
        .unwrap();

    // Long polling returns as soon as a message arrives.
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.receive(q, 1, StdDuration::from_secs(10), VIS).await })
    };
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    queue.send(q, "late").await.unwrap();
    let got = tokio::time::timeout(StdDuration::from_secs(5), waiter)
        .await
        .expect("long poll must return when a message arrives")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "late");
    queue.delete(q, &got[0].receipt).await.unwrap();
}

/// What holds under injected faults: every message sent is received at least once,
/// and a consumer that deletes what it processed (retrying what comes back) drains the
/// queue. Uses short visibility timeouts and real time.
pub async fn queue_at_least_once(queue: Arc<dyn Queue>, messages: usize) {
    let q = QueueName::Work;
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..messages {
        let body = format!("m{i}");
        queue.send(q, &body).await.unwrap();
        expected.insert(body);
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    loop {
        let depth = queue.depth(q).await.unwrap();
        if seen.len() == expected.len() && depth.visible + depth.in_flight == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain: seen {}/{}, depth {depth:?}",
            seen.len(),
            expected.len()
        );
        let batch = queue
            .receive(
                q,
                5,
                StdDuration::from_millis(50),
                StdDuration::from_millis(200),
            )
            .await
            .unwrap();
        for m in batch {
            seen.insert(m.body.clone());
            // A stale receipt means someone else holds it now; it will come back.
            let _ = queue.delete(q, &m.receipt).await;
        }
    }
    assert_eq!(seen, expected, "every message sent was received");
}
