//! `EcsLauncher` against `aws-smithy-mocks`: the exact `RunTask` and `StopTask`
//! requests, and how ECS's answers become the port's results.
//!
//! Why not moto: its `RunTask` needs registered container instances (HTTP 500 without
//! them), ignores capacity providers, and answers `tasks: [], failures: []` when a
//! task does not fit. The mocks assert the typed requests instead. Retries are turned
//! off here: the SDK's retry backoff really sleeps, and a test must see one call per
//! request.

use std::sync::{Arc, Mutex};

use aws::{EcsLauncher, EcsSettings};
use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::operation::run_task::{RunTaskInput, RunTaskOutput};
use aws_sdk_ecs::operation::stop_task::{StopTaskError, StopTaskInput, StopTaskOutput};
use aws_sdk_ecs::types::error::ServerException;
use aws_sdk_ecs::types::{Failure, Task};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use jobs::ports::{LaunchError, Launcher};

fn settings() -> EcsSettings {
    EcsSettings {
        cluster: "gpu-cluster".into(),
        task_definition: "runner:7".into(),
        capacity_provider: "gpu-spot".into(),
        started_by: "serverless-comfyui".into(),
        tags: vec![("app".into(), "serverless-comfyui".into())],
    }
}

fn client(rules: &[&Rule]) -> Client {
    mock_client!(aws_sdk_ecs, RuleMode::MatchAny, rules, |c| c
        .retry_config(RetryConfig::disabled()))
}

fn tasks(prefix: &str, count: i32) -> Vec<Task> {
    (0..count)
        .map(|i| {
            Task::builder()
                .task_arn(format!(
                    "arn:aws:ecs:us-east-1:1:task/gpu-cluster/{prefix}{i}"
                ))
                .build()
        })
        .collect()
}

type Seen<T> = Arc<Mutex<Vec<T>>>;

/// A RunTask rule that records each request and starts what it asks for, except on
/// the calls listed in `fail_on` (0-based), which start one task and report failures.
fn run_task_rule(seen: &Seen<RunTaskInput>, fail_on: &'static [usize]) -> Rule {
    let seen = seen.clone();
    mock!(Client::run_task).then_compute_output(move |input: &RunTaskInput| {
        let mut seen = seen.lock().unwrap();
        let call = seen.len();
        seen.push(input.clone());
        if fail_on.contains(&call) {
            return RunTaskOutput::builder()
                .set_tasks(Some(tasks(&format!("c{call}-"), 1)))
                .failures(
                    Failure::builder()
                        .reason("RESOURCE:GPU")
                        .detail("no container instance has a free GPU")
                        .build(),
                )
                .failures(Failure::builder().reason("AGENT").arn("arn:ci/1").build())
                .build();
        }
        RunTaskOutput::builder()
            .set_tasks(Some(tasks(
                &format!("c{call}-"),
                input.count().unwrap_or(1),
            )))
            .build()
    })
}

#[tokio::test]
async fn launches_in_batches_of_ten_with_the_exact_run_task_request() {
    let seen: Seen<RunTaskInput> = Arc::default();
    let rule = run_task_rule(&seen, &[]);
    let launcher = EcsLauncher::new(client(&[&rule]), settings());
    let workers = launcher.launch(23).await.unwrap();
    assert_eq!(workers.len(), 23);
    assert_eq!(
        workers[0].id, "c0-0",
        "the worker id is the task id, as the runner reads it from its metadata"
    );
    assert!(workers[0].detail.contains("gpu-cluster"));
    let seen = seen.lock().unwrap();
    let counts: Vec<_> = seen.iter().map(|i| i.count()).collect();
    assert_eq!(counts, [Some(10), Some(10), Some(3)], "at most 10 a call");
    for input in seen.iter() {
        assert_eq!(input.cluster(), Some("gpu-cluster"));
        assert_eq!(input.task_definition(), Some("runner:7"));
        let strategy = input.capacity_provider_strategy();
        assert_eq!(strategy.len(), 1);
        assert_eq!(strategy[0].capacity_provider(), "gpu-spot");
        assert_eq!(strategy[0].weight(), 1);
        assert_eq!(
            input.launch_type(),
            None,
            "never a launch type with a strategy"
        );
        assert!(
            input.overrides().is_none(),
            "runners are generic: no overrides"
        );
        assert_eq!(input.started_by(), Some("serverless-comfyui"));
        let tags: Vec<_> = input
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
            .collect();
        assert_eq!(tags, [("app", "serverless-comfyui")]);
        let token = input.client_token().expect("a client token");
        assert!(!token.is_empty() && token.len() <= 64);
    }
    let mut tokens: Vec<_> = seen.iter().filter_map(|i| i.client_token()).collect();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        3,
        "one token per batch, so retries never double a batch"
    );
}

#[tokio::test]
async fn failures_stop_the_launch_and_carry_ecs_reasons() {
    let seen: Seen<RunTaskInput> = Arc::default();
    let rule = run_task_rule(&seen, &[1]);
    let launcher = EcsLauncher::new(client(&[&rule]), settings());
    let (started, error) = launcher.launch(25).await.unwrap_err();
    assert_eq!(
        started.len(),
        11,
        "the first batch and the one task that did start"
    );
    assert_eq!(rule.num_calls(), 2, "no batch after a capacity failure");
    let LaunchError::Capacity(message) = error else {
        panic!("expected a capacity error, got {error:?}")
    };
    assert_eq!(
        message,
        "RunTask failed: RESOURCE:GPU (no container instance has a free GPU); AGENT for arn:ci/1"
    );
}

#[tokio::test]
async fn fewer_tasks_than_asked_without_a_reason_is_still_a_capacity_error() {
    let rule = mock!(Client::run_task).then_output(|| {
        RunTaskOutput::builder()
            .set_tasks(Some(tasks("t", 1)))
            .build()
    });
    let launcher = EcsLauncher::new(client(&[&rule]), settings());
    let (started, error) = launcher.launch(3).await.unwrap_err();
    assert_eq!(started.len(), 1);
    assert!(
        matches!(&error, LaunchError::Capacity(m) if m.contains("started 1 of 3")),
        "{error:?}"
    );
}

#[tokio::test]
async fn sdk_errors_are_unavailable_and_zero_launches_nothing() {
    let rule = mock!(Client::run_task).then_error(|| {
        aws_sdk_ecs::operation::run_task::RunTaskError::ServerException(
            ServerException::builder().message("internal").build(),
        )
    });
    let launcher = EcsLauncher::new(client(&[&rule]), settings());
    assert!(launcher.launch(0).await.unwrap().is_empty());
    assert_eq!(rule.num_calls(), 0);
    let (started, error) = launcher.launch(2).await.unwrap_err();
    assert!(started.is_empty());
    assert!(
        matches!(&error, LaunchError::Unavailable(m) if m.contains("RunTask on gpu-cluster")),
        "{error:?}"
    );
    assert_eq!(rule.num_calls(), 1, "retries are off in these tests");
    assert_eq!(launcher.kind(), "ecs");
}

#[tokio::test]
async fn stop_sends_stop_task_for_the_worker() {
    let seen: Seen<StopTaskInput> = Arc::default();
    let recorder = seen.clone();
    let rule = mock!(Client::stop_task).then_compute_output(move |input: &StopTaskInput| {
        recorder.lock().unwrap().push(input.clone());
        StopTaskOutput::builder().build()
    });
    let launcher = EcsLauncher::new(client(&[&rule]), settings());
    launcher
        .stop("arn:aws:ecs:us-east-1:1:task/gpu-cluster/abc")
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].cluster(), Some("gpu-cluster"));
    assert_eq!(
        seen[0].task(),
        Some("arn:aws:ecs:us-east-1:1:task/gpu-cluster/abc")
    );
    assert!(seen[0].reason().is_some_and(|r| !r.is_empty()));

    let failing = mock!(Client::stop_task)
        .then_error(|| StopTaskError::ServerException(ServerException::builder().build()));
    let launcher = EcsLauncher::new(client(&[&failing]), settings());
    assert!(matches!(
        launcher.stop("x").await,
        Err(LaunchError::Unavailable(m)) if m.contains("StopTask on gpu-cluster")
    ));
}

#[tokio::test]
async fn a_spot_notice_stops_every_runner_task_on_that_instance() {
    let tasks = [
        "arn:aws:ecs:us-east-1:123456789012:task/gpu-cluster/aaa",
        "arn:aws:ecs:us-east-1:123456789012:task/gpu-cluster/bbb",
    ];
    let ecs = aws::testing::mock_ecs_instance("i-0abcdef1234567890", &tasks);
    let launcher = EcsLauncher::new(ecs.client.clone(), settings());
    let stopped = launcher
        .stop_tasks_on_instance(
            "i-0abcdef1234567890",
            "EC2 Spot Instance Interruption Warning",
        )
        .await
        .unwrap();
    assert_eq!(stopped, tasks);

    let lists = ecs.list_instances.lock().unwrap().clone();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].cluster(), Some("gpu-cluster"));
    assert_eq!(
        lists[0].filter(),
        Some("ec2InstanceId == i-0abcdef1234567890")
    );
    let pages = ecs.list_tasks.lock().unwrap().clone();
    assert_eq!(
        pages.len(),
        2,
        "one task per page: the second page is fetched"
    );
    for page in &pages {
        assert_eq!(page.cluster(), Some("gpu-cluster"));
        assert_eq!(
            page.container_instance(),
            Some(aws::testing::MOCK_CONTAINER_INSTANCE)
        );
        assert_eq!(
            page.started_by(),
            Some("serverless-comfyui"),
            "only our runners"
        );
    }
    assert_eq!(pages[1].next_token(), Some("1"));
    let stops = ecs.stops.lock().unwrap().clone();
    assert_eq!(
        stops.iter().map(|s| s.task().unwrap()).collect::<Vec<_>>(),
        tasks
    );
    for stop in &stops {
        assert_eq!(stop.cluster(), Some("gpu-cluster"));
        assert_eq!(
            stop.reason(),
            Some("EC2 Spot Instance Interruption Warning")
        );
    }
}

#[tokio::test]
async fn another_instance_stops_nothing_and_a_bad_instance_id_calls_nothing() {
    let ecs = aws::testing::mock_ecs_instance("i-0abcdef1234567890", &["arn:task/x"]);
    let launcher = EcsLauncher::new(ecs.client.clone(), settings());
    let stopped = launcher
        .stop_tasks_on_instance("i-0123456789abcdef0", "rebalance")
        .await
        .unwrap();
    assert!(stopped.is_empty());
    assert!(ecs.list_tasks.lock().unwrap().is_empty());
    assert!(ecs.stops.lock().unwrap().is_empty());

    // A filter expression is built from the id: anything but an instance id is refused.
    for bad in [
        "i-0abc or 1 == 1",
        "",
        "i-xyz12345",
        "vol-0abcdef1234567890",
    ] {
        let error = launcher.stop_tasks_on_instance(bad, "x").await.unwrap_err();
        assert!(
            matches!(error, LaunchError::Unavailable(_)),
            "{bad}: {error:?}"
        );
    }
    assert_eq!(ecs.list_instances.lock().unwrap().len(), 1);
}
