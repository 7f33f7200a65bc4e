//! The moto harness: for the tests of this crate and of every crate that runs the AWS
//! adapters on moto (the Lambda functions). Compiled only with the `testing` feature,
//! which only dev-dependencies enable.
//!
//! [`moto`] starts one `moto_server` per test binary on a free loopback port, waits
//! until it answers, and ties its life to the test process: it is spawned with
//! `PR_SET_PDEATHSIG` from a thread that lives as long as the process, so the kernel
//! kills it when the test binary exits, however it exits (the signal follows the
//! *thread* that spawned the child, hence the dedicated thread). The server comes from
//! the workspace's `.venv-moto`, installed by `scripts/moto.sh` (pinned in
//! tests/aws/requirements.txt), and runs through tests/aws/moto_server.py, which
//! serializes moto's DynamoDB writes so that conditional writes are atomic as on AWS.
//!
//! Each test makes its own uniquely named resources ([`unique`], [`fresh_resources`]):
//! moto's reset is global, and tests run concurrently in one server.
//!
//! The end-to-end suite (functions/common/examples/local_stack.rs) starts moto itself,
//! behind a counting proxy, and names it in [`MOTO_ENDPOINT_VAR`]; each of its parts
//! signs as its own caller ([`clients_as`]) so the proxy can tell them apart. It lets
//! moto's ECS record the launcher's tasks ([`fresh_ecs`], [`running_tasks`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use crate::{AwsConfig, Clients, EcsSettings, QueueUrls, SqsQueue};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;

/// How long moto may take to answer after spawning (it answers within ~3 s here).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Moto {
    pub endpoint: String,
    pub pid: u32,
}

fn workspace_root() -> PathBuf {
    // This crate is crates/aws, whichever crate's tests call it.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// True once the server answers an HTTP request.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Names a moto server that is already running (or a proxy in front of one, such as
/// the end-to-end suite's request counter): [`moto`] then uses it instead of starting
/// its own. Whoever started it stops it.
pub const MOTO_ENDPOINT_VAR: &str = "SERVERLESS_COMFYUI_MOTO_ENDPOINT";

/// The test binary's moto server, started on first use (or the one
/// [`MOTO_ENDPOINT_VAR`] names; its `pid` is then 0: not ours). It starts
/// moto_server through tests/aws/moto_server.py, which makes DynamoDB's conditional
/// writes atomic as they are on AWS (moto checks a condition and writes without a
/// lock, so two concurrent writers expecting the same revision could both win; the
/// chaos suite on moto caught a job committed twice that way).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| match std::env::var(MOTO_ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => Moto { endpoint, pid: 0 },
        _ => start(),
    })
}

fn start() -> Moto {
    let python = workspace_root().join(".venv-moto/bin/python");
    let wrapper = workspace_root().join("tests/aws/moto_server.py");
    let server = workspace_root().join(".venv-moto/bin/moto_server");
    assert!(
        server.exists(),
        "{} is missing: run scripts/moto.sh first (scripts/test.sh does)",
        server.display()
    );
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    // This thread spawns the server and then lives as long as the process: the death
    // signal fires when the spawning thread ends.
    std::thread::Builder::new()
        .name("moto-server".into())
        .spawn(move || {
            let mut command = Command::new(&python);
            command
                .arg(&wrapper)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            #[cfg(target_os = "linux")]
            unsafe {
                use std::os::unix::process::CommandExt;
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command.spawn();
            let _ = tx.send(child.as_ref().map(|c| c.id()).map_err(|e| e.to_string()));
            let Ok(mut child) = child else { return };
            loop {
                // Reap it if it dies early, so the waiter below sees it gone.
                if child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .expect("spawn the moto thread");
    let pid = rx
        .recv()
        .expect("the moto thread reports")
        .unwrap_or_else(|e| panic!("moto_server did not start: {e}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while !answers(addr) {
        assert!(
            Instant::now() < deadline,
            "moto_server (pid {pid}) did not answer on {addr} within {STARTUP_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        endpoint: format!("http://{addr}"),
        pid,
    }
}

/// SDK configuration pointed at moto: endpoint override, fixed test credentials,
/// us-east-1, retries as in production (standard).
pub async fn sdk_config() -> SdkConfig {
    sdk_config_as("test").await
}

/// As [`sdk_config`], signing with the access key id `caller`: moto accepts any, and
/// a proxy in front of it can tell the callers apart by the key id in each request's
/// credential scope (the end-to-end suite counts requests per function that way).
pub async fn sdk_config_as(caller: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&moto().endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(caller, "test", None, None, "moto-tests"))
        .load()
        .await
}

/// The production clients, on moto (S3 path-style, as `Clients` sets for overrides).
pub async fn clients() -> Clients {
    Clients::from_sdk_config(&sdk_config().await)
}

/// As [`clients`], signing as `caller` (see [`sdk_config_as`]).
pub async fn clients_as(caller: &str) -> Clients {
    Clients::from_sdk_config(&sdk_config_as(caller).await)
}

/// A resource name no other test uses: `prefix-<ulid, lowercase>` (valid for buckets,
/// tables and queues).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    redrive: Option<(&str, u32)>,
) -> String {
    let mut attributes = HashMap::new();
    if let Some((dlq_url, max_receive_count)) = redrive {
        let arn = client
            .get_queue_attributes()
            .queue_url(dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq arn")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("dlq arn attribute");
        attributes.insert(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receive_count}"}}"#),
        );
    }
    client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url")
}

/// Four fresh queues (work and wake, each with its DLQ), as the template makes them.
pub async fn fresh_queues(max_receive_count: u32) -> QueueUrls {
    let client = clients().await.sqs;
    let base = unique("q");
    let work_dlq = create_queue(&client, &format!("{base}-work-dlq"), None).await;
    let wake_dlq = create_queue(&client, &format!("{base}-wake-dlq"), None).await;
    let work = create_queue(
        &client,
        &format!("{base}-work"),
        Some((&work_dlq, max_receive_count)),
    )
    .await;
    let wake = create_queue(
        &client,
        &format!("{base}-wake"),
        Some((&wake_dlq, max_receive_count)),
    )
    .await;
    QueueUrls {
        work,
        wake,
        work_dead_letter: work_dlq,
        wake_dead_letter: wake_dlq,
    }
}

/// A fresh webhook delivery queue with its dead-letter queue, as the template makes
/// them; returns the delivery queue's URL.
pub async fn fresh_webhook_queue(max_receive_count: u32) -> String {
    let client = clients().await.sqs;
    let base = unique("q");
    let dlq = create_queue(&client, &format!("{base}-webhooks-dlq"), None).await;
    create_queue(
        &client,
        &format!("{base}-webhooks"),
        Some((&dlq, max_receive_count)),
    )
    .await
}

/// Turns on `table`'s stream as the template does (`NEW_AND_OLD_IMAGES`); returns the
/// stream's ARN.
pub async fn enable_stream(table: &str) -> String {
    use aws_sdk_dynamodb::types::{StreamSpecification, StreamViewType};
    clients()
        .await
        .dynamodb
        .update_table()
        .table_name(table)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .expect("stream specification"),
        )
        .send()
        .await
        .expect("enable the stream")
        .table_description
        .and_then(|t| t.latest_stream_arn)
        .expect("a stream ARN")
}

/// One DynamoDB Streams call to moto over its JSON protocol (the Streams SDK is not a
/// dependency; moto checks no signatures, the credential scope only routes it).
async fn streams_call(target: &str, body: serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(&moto().endpoint)
        .header("X-Amz-Target", format!("DynamoDBStreams_20120810.{target}"))
        .header("Content-Type", "application/x-amz-json-1.0")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("a DynamoDB Streams call")
        .error_for_status()
        .expect("a DynamoDB Streams answer")
        .json()
        .await
        .expect("DynamoDB Streams JSON")
}

/// Every record of the stream `stream_arn` from its start, after `after` (a sequence
/// number) if given, as Lambda hands them to a function (`eventSourceARN` added).
/// moto keeps one shard.
pub async fn stream_records(stream_arn: &str, after: Option<&str>) -> Vec<serde_json::Value> {
    use serde_json::json;
    let description = streams_call("DescribeStream", json!({ "StreamArn": stream_arn })).await;
    let mut records = Vec::new();
    for shard in description["StreamDescription"]["Shards"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let mut iterator = streams_call(
            "GetShardIterator",
            json!({"StreamArn": stream_arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"}),
        )
        .await["ShardIterator"]
            .clone();
        // moto answers every record at once; the bound only stops a runaway.
        for _ in 0..100 {
            if iterator.is_null() {
                break;
            }
            let page = streams_call("GetRecords", json!({ "ShardIterator": iterator })).await;
            let got = page["Records"].as_array().cloned().unwrap_or_default();
            if got.is_empty() {
                break;
            }
            records.extend(got);
            iterator = page["NextShardIterator"].clone();
        }
    }
    let sequence = |r: &serde_json::Value| {
        r["dynamodb"]["SequenceNumber"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    records
        .into_iter()
        .filter(|r| after.is_none_or(|a| sequence(r).parse::<u128>().ok() > a.parse::<u128>().ok()))
        .map(|mut r| {
            r["eventSourceARN"] = json!(stream_arn);
            r
        })
        .collect()
}

/// An [`SqsQueue`] over four fresh queues.
pub async fn fresh_queue(max_receive_count: u32) -> SqsQueue {
    SqsQueue::new(clients().await.sqs, fresh_queues(max_receive_count).await)
}

/// A fresh bucket.
pub async fn fresh_bucket() -> String {
    let bucket = unique("b");
    clients()
        .await
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

/// A fresh table, made as the template makes it.
pub async fn fresh_table() -> String {
    let table = unique("t");
    crate::dynamodb::create_table(&clients().await.dynamodb, &table)
        .await
        .expect("create table");
    table
}

/// A whole deployment's resources on moto: table, bucket, the four queues (redrive
/// after `max_receive_count` receives), and ECS names that nothing on moto resolves
/// (moto's ECS cannot place tasks; launcher tests use aws-smithy-mocks).
pub async fn fresh_resources(max_receive_count: u32) -> AwsConfig {
    AwsConfig {
        table: fresh_table().await,
        bucket: fresh_bucket().await,
        queues: fresh_queues(max_receive_count).await,
        ecs: EcsSettings {
            cluster: "gpu-cluster".into(),
            task_definition: "runner".into(),
            capacity_provider: "gpu".into(),
            started_by: crate::config::DEFAULT_STARTED_BY.into(),
            tags: vec![],
        },
    }
}

/// Requests a mocked client received, in order.
pub type Seen<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

/// The container instance ARN [`mock_ecs_instance`] gives its one instance.
pub const MOCK_CONTAINER_INSTANCE: &str = "arn:aws:ecs:us-east-1:123456789012:container-instance/gpu-cluster/0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// An ECS cluster mocked with `aws-smithy-mocks` (moto's ECS cannot list an instance's
/// tasks by filter, and its `RunTask` needs registered instances): one container
/// instance on the EC2 instance `instance_id`, running `tasks`, listed one task per
/// page so that paging is exercised; `RunTask` starts what it is asked. Records every
/// `RunTask`, `ListContainerInstances`, `ListTasks` and `StopTask` request. Retries
/// are off: the SDK's backoff really sleeps.
pub struct MockEcs {
    pub client: aws_sdk_ecs::Client,
    pub runs: Seen<aws_sdk_ecs::operation::run_task::RunTaskInput>,
    pub list_instances:
        Seen<aws_sdk_ecs::operation::list_container_instances::ListContainerInstancesInput>,
    pub list_tasks: Seen<aws_sdk_ecs::operation::list_tasks::ListTasksInput>,
    pub stops: Seen<aws_sdk_ecs::operation::stop_task::StopTaskInput>,
}

pub fn mock_ecs_instance(instance_id: &str, tasks: &[&str]) -> MockEcs {
    use aws_sdk_ecs::Client;
    use aws_sdk_ecs::config::retry::RetryConfig;
    use aws_sdk_ecs::operation::list_container_instances::ListContainerInstancesOutput;
    use aws_sdk_ecs::operation::list_tasks::ListTasksOutput;
    use aws_sdk_ecs::operation::run_task::RunTaskOutput;
    use aws_sdk_ecs::operation::stop_task::StopTaskOutput;
    use aws_sdk_ecs::types::Task;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    let runs: Seen<_> = Default::default();
    let list_instances: Seen<_> = Default::default();
    let list_tasks: Seen<_> = Default::default();
    let stops: Seen<_> = Default::default();
    let (seen, filter) = (
        list_instances.clone(),
        format!("ec2InstanceId == {instance_id}"),
    );
    let instances = mock!(Client::list_container_instances).then_compute_output(move |input| {
        seen.lock().unwrap().push(input.clone());
        let ours = input.filter() == Some(filter.as_str());
        ListContainerInstancesOutput::builder()
            .set_container_instance_arns(Some(if ours {
                vec![MOCK_CONTAINER_INSTANCE.to_string()]
            } else {
                vec![]
            }))
            .build()
    });
    let (seen, tasks) = (
        list_tasks.clone(),
        tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
    );
    let listing = mock!(Client::list_tasks).then_compute_output(move |input| {
        seen.lock().unwrap().push(input.clone());
        if input.container_instance() != Some(MOCK_CONTAINER_INSTANCE) {
            return ListTasksOutput::builder().build();
        }
        // One task per page; the token is the index of the next task.
        let at: usize = input.next_token().map_or(0, |t| t.parse().unwrap());
        ListTasksOutput::builder()
            .set_task_arns(Some(tasks.get(at).cloned().into_iter().collect()))
            .set_next_token((at + 1 < tasks.len()).then(|| (at + 1).to_string()))
            .build()
    });
    let seen = stops.clone();
    let stopping = mock!(Client::stop_task).then_compute_output(move |input| {
        seen.lock().unwrap().push(input.clone());
        StopTaskOutput::builder().build()
    });
    let seen = runs.clone();
    let running = mock!(Client::run_task).then_compute_output(move |input| {
        let mut seen = seen.lock().unwrap();
        let started = (0..input.count().unwrap_or(1))
            .map(|i| {
                Task::builder()
                    .task_arn(format!(
                        "arn:aws:ecs:us-east-1:123456789012:task/gpu-cluster/run{}-{i}",
                        seen.len()
                    ))
                    .build()
            })
            .collect();
        seen.push(input.clone());
        RunTaskOutput::builder().set_tasks(Some(started)).build()
    });
    let client = mock_client!(
        aws_sdk_ecs,
        RuleMode::MatchAny,
        &[&running, &instances, &listing, &stopping],
        |c| c.retry_config(RetryConfig::disabled())
    );
    MockEcs {
        client,
        runs,
        list_instances,
        list_tasks,
        stops,
    }
}

/// The capacity provider [`fresh_ecs`] places on. moto places tasks of a user-defined
/// (Auto Scaling) provider only on registered container instances, which need an EC2
/// instance behind them; its managed `FARGATE` provider places without any, and the
/// launcher's `RunTask` is the same request whatever the provider's name.
pub const MOTO_CAPACITY_PROVIDER: &str = "FARGATE";

/// A fresh cluster and runner task definition on moto's ECS, for tests that let
/// `RunTask` really record tasks (an end-to-end run plays the ECS agent: it starts a
/// runner process per task it finds). moto's tasks never run anything and their
/// status moves on with each `DescribeTasks`; [`running_tasks`] lists without it.
pub async fn fresh_ecs(client: &aws_sdk_ecs::Client) -> EcsSettings {
    use aws_sdk_ecs::types::ContainerDefinition;
    let cluster = unique("c");
    client
        .create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .expect("create cluster");
    let family = unique("runner");
    client
        .register_task_definition()
        .family(&family)
        .container_definitions(
            ContainerDefinition::builder()
                .name("runner")
                .image("serverless-comfyui-runner")
                .memory(512)
                .build(),
        )
        .send()
        .await
        .expect("register task definition");
    EcsSettings {
        cluster,
        task_definition: family,
        capacity_provider: MOTO_CAPACITY_PROVIDER.into(),
        started_by: crate::config::DEFAULT_STARTED_BY.into(),
        tags: vec![],
    }
}

/// The ARNs of the cluster's tasks whose desired status is still `RUNNING` (not yet
/// stopped), at most 100 (one page: a test's fleet is far smaller).
pub async fn running_tasks(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
) -> Result<Vec<String>, String> {
    client
        .list_tasks()
        .cluster(cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
        .send()
        .await
        .map(|out| out.task_arns().to_vec())
        .map_err(|e| aws_sdk_ecs::Error::from(e).to_string())
}
