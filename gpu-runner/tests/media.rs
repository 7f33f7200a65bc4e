//! Video and audio outputs, as VideoHelperSuite and core ComfyUI report them, are
//! fetched, stored and minted like images: nothing under `gifs`, `images` with
//! `animated`, or `audio` is dropped, and each keeps its content type.

mod common;

use common::*;
use gpu_runner::EngineSpec;
use jobs::model::{JobStatus, OutputKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_and_audio_outputs_are_stored_with_their_types() {
    let env = Env::new();
    let sim = sim(5).await;
    let runner = start_runner(
        &env,
        EngineSpec::Attach {
            url: sim.base_url(),
        },
        test_config(),
    );
    // (workflow, kind, content type, name ending, first bytes' signature at 4..8 or 0..4)
    let cases = [
        (
            "video-vhs.json",
            OutputKind::Video,
            "video/mp4",
            ".mp4",
            b"ftyp",
            4,
        ),
        (
            "video-core.json",
            OutputKind::Video,
            "video/mp4",
            "_.mp4",
            b"ftyp",
            4,
        ),
        (
            "audio.json",
            OutputKind::Audio,
            "audio/wav",
            "_.wav",
            b"RIFF",
            0,
        ),
    ];
    for (name, kind, ct, ending, magic, at) in cases {
        let id = env.submit(&workflow(name)).await;
        let job = env.wait_terminal(&id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{name}: {:?}", job.error);
        // VHS also saves a first-frame PNG, but lists only the video: one output each.
        assert_eq!(job.outputs.len(), 1, "{name}: {:?}", job.outputs);
        let out = &job.outputs[0];
        assert_eq!((out.kind, out.content_type.as_str()), (kind, ct), "{name}");
        assert!(
            out.name.ends_with(ending) && out.name.contains(id.as_str()),
            "{name}: {}",
            out.name
        );
        let bytes = env.blob(&out.blob_key).await;
        assert_eq!(bytes.len() as u64, out.size_bytes);
        assert_eq!(&bytes[at..at + 4], magic, "{name}");
        let asset = env
            .ports
            .store
            .get_asset(&out.asset_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(asset.content_type, ct);
        assert_eq!(asset.job_id.as_ref(), Some(&id));
    }
    runner.stop().await;
    sim.shutdown().await;
}
