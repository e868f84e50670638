//! `loadtest staging-submit`: what `staging-server submit` sends and how long staging takes,
//! for a job of many jars, beside the bundle upload every submission needed before
//! (`staging-server upload` of the same files), same server, same run, medians of interleaved
//! runs:
//!
//! - first submission (a namespace that holds none of the files),
//! - resubmission of the same files,
//! - resubmission with one file changed,
//! - the bundle upload of the same files.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Instant;

use serde_json::{Value, json};
use staging_client::stage::{LocalFile, StageRequest, stage};
use tokio::process::Command;

use crate::procs::{release_bin, start_staging, work_dir};
use crate::stats::{median, round};

/// Arguments of `loadtest staging-submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Files in the job.
    #[arg(long, default_value_t = 20)]
    files: usize,
    /// Size of each file, in MiB.
    #[arg(long, default_value_t = 8)]
    file_mib: usize,
    /// Runs of each case (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Work directory (must be on the disk under test); default: target/loadtest.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Case {
    secs: Vec<f64>,
    bytes: Vec<f64>,
}

impl Case {
    fn report(&self) -> Value {
        json!({"seconds": round(median(&self.secs), 3), "bytes_sent": median(&self.bytes)})
    }
}

/// Runs the benchmark and returns the report.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let (_server, server) = start_staging(
        &work.path().join("staging"),
        &[
            "--max-upload-size",
            "8GiB",
            "--namespace-quota-bytes",
            "1Ti",
        ],
    )
    .await?;
    let client = reqwest::Client::new();

    let src = work.path().join("job");
    std::fs::create_dir_all(&src)?;
    let mut files = Vec::with_capacity(args.files);
    for i in 0..args.files {
        let path = src.join(format!("dep-{i}.jar"));
        std::fs::write(
            &path,
            crate::staging::pseudo_random_seeded(args.file_mib << 20, i as u64),
        )?;
        files.push(LocalFile {
            path,
            name: format!("dep-{i}.jar"),
        });
    }
    let total = (args.files * (args.file_mib << 20)) as u64;
    let request = |ns: &str| StageRequest {
        server: server.clone(),
        namespace: ns.to_owned(),
        labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
        ttl: None,
        unused_ttl: None,
        credential: None,
        files: files.clone(),
        retries: 0,
    };
    let (mut first, mut again, mut one, mut bundle) = (
        Case::default(),
        Case::default(),
        Case::default(),
        Case::default(),
    );
    for run in 0..args.runs {
        let ns = format!("bench-{run}");
        let timed = async |case: &mut Case| -> anyhow::Result<()> {
            let start = Instant::now();
            let s = stage(&client, &request(&ns))
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            case.secs.push(start.elapsed().as_secs_f64());
            case.bytes.push(s.sent_bytes as f64);
            Ok(())
        };
        timed(&mut first).await?;
        timed(&mut again).await?;
        // One jar rebuilt.
        std::fs::write(
            &files[0].path,
            crate::staging::pseudo_random_seeded(args.file_mib << 20, 1000 + run as u64),
        )?;
        timed(&mut one).await?;

        // Before: every submission uploads the whole bundle.
        let start = Instant::now();
        let out = Command::new(release_bin("staging-server")?)
            .args([
                "upload",
                "--server",
                &server,
                "--namespace",
                &ns,
                "--no-progress",
            ])
            .args(files.iter().map(|f| f.path.as_os_str()))
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(out.success(), "upload failed");
        bundle.secs.push(start.elapsed().as_secs_f64());
        bundle.bytes.push(total as f64);
    }
    Ok(json!({
        "benchmark": "staging-submit",
        "files": args.files,
        "file_mib": args.file_mib,
        "total_bytes": total,
        "runs": args.runs,
        "first_submission": first.report(),
        "resubmission": again.report(),
        "one_file_changed": one.report(),
        "bundle_upload_every_time": bundle.report(),
        "resubmission_vs_bundle_speedup": round(median(&bundle.secs) / median(&again.secs).max(1e-9), 1),
    }))
}
