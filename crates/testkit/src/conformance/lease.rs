//! The lease protocol end to end: concurrent simulated runners, and fencing of a stalled one.

use super::*;

/// What the simulated runners recorded: successful finishing writes per job.
#[derive(Default)]
struct Ledger {
    commits: HashMap<JobId, Vec<Fence>>,
    fenced_out: u32,
    pushed_back: u32,
}

/// Several simulated runners work through `jobs` jobs concurrently over the store and
/// the queue. Every job must end `succeeded`, committed exactly once, listing exactly
/// its finishing attempt's outputs, whatever the queue does.
pub async fn lease_protocol(
    store: Arc<dyn JobStore>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    runners: usize,
    jobs: usize,
) {
    let now = clock.now();
    let mut ids = Vec::new();
    for _ in 0..jobs {
        let job = sample_job("chaos", now, &[]);
        create(store.as_ref(), &job).await;
        let body = serde_json::to_string(&WorkMessage {
            v: SCHEMA_VERSION,
            job_id: job.id.clone(),
        })
        .unwrap();
        queue.send(QueueName::Work, &body).await.unwrap();
        ids.push(job.id);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let lease = Duration::seconds(5);
    let mut tasks = Vec::new();
    for r in 0..runners {
        let (store, queue, clock, ledger, ids) = (
            store.clone(),
            queue.clone(),
            clock.clone(),
            ledger.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let runner = format!("runner-{r}");
            let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
            loop {
                let mut all_done = true;
                for id in &ids {
                    let job = store.get_job(id).await.unwrap().unwrap();
                    if !job.status.is_terminal() {
                        all_done = false;
                        break;
                    }
                }
                if all_done {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "runners did not finish all jobs"
                );
                let batch = queue
                    .receive(
                        QueueName::Work,
                        1,
                        StdDuration::from_millis(20),
                        StdDuration::from_secs(5),
                    )
                    .await
                    .unwrap();
                for message in batch {
                    let work: WorkMessage = serde_json::from_str(&message.body).unwrap();
                    let job = store.get_job(&work.job_id).await.unwrap().unwrap();
                    if job.status.is_terminal() {
                        let _ = queue.delete(QueueName::Work, &message.receipt).await;
                        continue;
                    }
                    let claim = Move::Claim {
                        runner: runner.clone(),
                        lease,
                        max_attempts: 3,
                    };
                    let claimed =
                        match apply_move(store.as_ref(), clock.as_ref(), job, &claim).await {
                            Ok(job) => job,
                            Err(MoveError::Refused(
                                Refusal::LeaseHeld { .. } | Refusal::Reserved { .. },
                            )) => {
                                // Another runner holds it: push the copy back, never delete it.
                                ledger.lock().unwrap().pushed_back += 1;
                                let _ = queue
                                    .change_visibility(
                                        QueueName::Work,
                                        &message.receipt,
                                        StdDuration::from_millis(100),
                                    )
                                    .await;
                                continue;
                            }
                            Err(MoveError::Refused(_)) => continue,
                            Err(e) => panic!("claim failed: {e}"),
                        };
                    if claimed.status != JobStatus::Running
                        || claimed.lease_owner.as_deref() != Some(&runner)
                    {
                        continue;
                    }
                    let fence = Fence {
                        owner: runner.clone(),
                        attempt: claimed.attempt,
                    };
                    // "Execute" long enough for duplicate deliveries to overlap.
                    tokio::time::sleep(StdDuration::from_millis(10)).await;
                    let output = OutputRecord {
                        node_id: "9".into(),
                        name: format!("{}_{}.png", fence.owner, fence.attempt),
                        kind: OutputKind::Image,
                        content_type: "image/png".into(),
                        size_bytes: 1,
                        asset_id: format!("asset_{}_{}", claimed.id, fence.attempt),
                        hash: None,
                        blob_key: format!("outputs/{}/{}/out.png", claimed.id, fence.attempt),
                    };
                    let finish = Move::Finish {
                        fence: fence.clone(),
                        finish: Finish::Succeeded {
                            outputs: vec![output],
                        },
                    };
                    match apply_move(store.as_ref(), clock.as_ref(), claimed.clone(), &finish).await
                    {
                        Ok(_) => {
                            ledger
                                .lock()
                                .unwrap()
                                .commits
                                .entry(claimed.id.clone())
                                .or_default()
                                .push(fence);
                            let _ = queue.delete(QueueName::Work, &message.receipt).await;
                        }
                        Err(MoveError::Refused(_)) => ledger.lock().unwrap().fenced_out += 1,
                        Err(e) => panic!("finish failed: {e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("runner task panicked");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    for id in &ids {
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(
            job.status,
            JobStatus::Succeeded,
            "job {id} ended {}",
            job.status
        );
        let commits = ledger.commits.get(id).map(Vec::len).unwrap_or(0);
        assert_eq!(commits, 1, "job {id} was committed {commits} times");
        let fence = &ledger.commits[id][0];
        assert_eq!(
            job.attempt, fence.attempt,
            "the stored attempt is the finishing one"
        );
        assert_eq!(
            job.outputs.len(),
            1,
            "exactly the finishing attempt's outputs"
        );
        assert!(
            job.outputs[0]
                .blob_key
                .contains(&format!("/{}/", fence.attempt))
        );
    }
}

/// A stalled runner that wakes after a takeover is fenced out, through a real store.
pub async fn stalled_runner_is_fenced(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) {
    let job = sample_job("fence", clock.now(), &[]);
    create(store.as_ref(), &job).await;
    let lease = Duration::seconds(30);
    let claim = |runner: &str| Move::Claim {
        runner: runner.into(),
        lease,
        max_attempts: 3,
    };
    let a = apply_move(store.as_ref(), clock.as_ref(), job, &claim("a"))
        .await
        .unwrap();
    assert_eq!(a.attempt, 1);
    clock.advance(Duration::seconds(31));
    let b = apply_move(store.as_ref(), clock.as_ref(), a.clone(), &claim("b"))
        .await
        .unwrap();
    assert_eq!((b.attempt, b.lease_owner.as_deref()), (2, Some("b")));
    // Runner a wakes with its stale copy; the write re-reads and is refused.
    let finish_a = Move::Finish {
        fence: Fence {
            owner: "a".into(),
            attempt: 1,
        },
        finish: Finish::Succeeded { outputs: vec![] },
    };
    let refused = apply_move(store.as_ref(), clock.as_ref(), a, &finish_a).await;
    assert!(
        matches!(refused, Err(MoveError::Refused(Refusal::Fenced))),
        "stale runner must be fenced, got {refused:?}"
    );
    let stored = store.get_job(&b.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running);
    assert_eq!(stored.lease_owner.as_deref(), Some("b"));
}
