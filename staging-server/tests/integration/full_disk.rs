//! The server on a disk that fills up: a real filesystem of a few MiB (tmpfs, which needs
//! root to mount; `scripts/test.sh` runs these as root and reports them skipped otherwise).
//! Uploads get 507, downloads go on, DELETE frees space, and the server starts again after a
//! kill -9 on a full disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::crash::start_with;

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "COMPONENT MISSING: cannot mount a tmpfs (needs root); run through scripts/test.sh as root"
        );
        Self { _dir: dir, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills what is left of the filesystem holding `dir` with a file.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    // Smaller pieces for the last blocks.
    while f.write_all(&[1u8; 512]).is_ok() {}
}

async fn upload_status(
    client: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = client
        .post(format!("{base}/api/v1/resources?namespace=ns"))
        .header("content-type", "application/gzip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
#[ignore = "needs root (mounts a tmpfs); run through scripts/test.sh"]
async fn full_disk_uploads_507_downloads_go_on_delete_frees_space() {
    let fs = Tmpfs::mount(24);
    let data = fs.path.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let dir = tempfile::TempDir::new_in(&data).unwrap();
    let s = TestServer::start_in(dir, |c| c.disk_reserve = 2 << 20, None).await;
    let base = s.url("");
    let first = random_bytes(1 << 20);
    let (status, up) = upload_status(&s.client, &base, first.clone()).await;
    assert_eq!(status, 201);
    let (id, token) = (
        up["id"].as_str().unwrap().to_owned(),
        up["token"].as_str().unwrap().to_owned(),
    );
    // Fill the disk: every refusal is 507, never 500.
    let mut refused = 0;
    for i in 0..40 {
        let (status, body) = upload_status(&s.client, &base, random_bytes(1 << 20)).await;
        match status {
            201 => {}
            507 => refused += 1,
            other => panic!("upload {i}: {other} {body}"),
        }
        if refused >= 3 {
            break;
        }
    }
    assert!(refused >= 3, "the disk never filled");
    // Whatever is left, fill it, so that SQLite itself cannot grow.
    fill(&fs.path);
    let (status, body) = upload_status(&s.client, &base, random_bytes(1000)).await;
    assert_eq!(status, 507, "{body}");
    let m = s.metrics().await;
    assert_eq!(metric(&m, "staging_storage_full"), Some(1.0));
    // Downloads go on, and the server stays ready (saying why uploads are refused).
    let got = s.get_content(&id, &token).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == first);
    let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("storage full"));
    // DELETE with the resource's own token frees its space.
    let del = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(
        s.get_content(&id, &token).await.status(),
        401,
        "the token is revoked"
    );
    assert!(!s.dir.path().join("objects/resources").join(&id).exists());
    // The sweep can run on a full disk too.
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    staging_server::lifecycle::Sweeper::new(s.state.clone())
        .sweep_once()
        .await
        .unwrap();
    let (status, body) = upload_status(&s.client, &base, random_bytes(100_000)).await;
    assert_eq!(status, 201, "{body}");
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root (mounts a tmpfs); run through scripts/test.sh"]
async fn the_server_restarts_after_a_kill_9_on_a_full_disk() {
    let fs = Tmpfs::mount(16);
    let dir = fs.path.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = start_with(&dir, &["--disk-reserve", "2MiB"]).await;
    let base = format!("http://{}", p.addr);
    let client = reqwest::Client::new();
    let kept = random_bytes(1 << 20);
    let (status, up) = upload_status(&client, &base, kept.clone()).await;
    assert_eq!(status, 201);
    for _ in 0..30 {
        if upload_status(&client, &base, random_bytes(1 << 20)).await.0 == 507 {
            break;
        }
    }
    fill(&fs.path);
    p.child.kill().await.unwrap();
    drop(p);

    // Start-up on a full disk: the reserve makes room for the database.
    let p = start_with(&dir, &["--disk-reserve", "2MiB"]).await;
    let base = format!("http://{}", p.addr);
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    let got = client
        .get(format!("{base}/api/v1/resources/{id}/content"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == kept);
    let del = client
        .delete(format!("{base}/api/v1/resources/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    drop(p);
}
