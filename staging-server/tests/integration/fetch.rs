//! The init-container: hostile archives, exit codes, and a full fetch.

use std::path::{Path, PathBuf};

use staging_bundle::create::{self as bundle, Input};
use staging_bundle::extract::{ExtractError, ExtractLimits, extract};
use staging_client::fetch::{FetchArgs, run};
use staging_client::{EXIT_AUTH, EXIT_INTEGRITY, EXIT_UNAVAILABLE, EXIT_UNSAFE_ARCHIVE};

use crate::common::{TestServer, random_bytes};

struct Raw<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    data: Vec<u8>,
    link: &'a [u8],
}

fn file(name: &str, data: &[u8]) -> Raw<'static> {
    Raw {
        name: name.to_owned().leak().as_bytes(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: b"",
    }
}

/// A tar.gz written header by header, with names the tar crate's builder would refuse.
fn raw_tar_gz(entries: &[Raw<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..e.name.len()].copy_from_slice(e.name);
            g.linkname[..e.link.len()].copy_from_slice(e.link);
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn entries_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let work = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "tar-slip",
            raw_tar_gz(&[file("ok.jar", b"1"), file("../evil.jar", b"x")]),
        ),
        ("absolute", raw_tar_gz(&[file("/etc/cron.d/evil", b"x")])),
        ("nested", raw_tar_gz(&[file("dir/a.jar", b"x")])),
        (
            "symlink",
            raw_tar_gz(&[Raw {
                name: b"link.jar",
                kind: tar::EntryType::Symlink,
                data: vec![],
                link: b"/etc/passwd",
            }]),
        ),
        (
            "hardlink",
            raw_tar_gz(&[
                file("a.jar", b"x"),
                Raw {
                    name: b"b.jar",
                    kind: tar::EntryType::Link,
                    data: vec![],
                    link: b"a.jar",
                },
            ]),
        ),
        (
            "directory",
            raw_tar_gz(&[Raw {
                name: b"d/",
                kind: tar::EntryType::Directory,
                data: vec![],
                link: b"",
            }]),
        ),
        (
            "fifo",
            raw_tar_gz(&[Raw {
                name: b"p",
                kind: tar::EntryType::Fifo,
                data: vec![],
                link: b"",
            }]),
        ),
        (
            "duplicate",
            raw_tar_gz(&[file("a.jar", b"1"), file("a.jar", b"2")]),
        ),
        ("dotfile", raw_tar_gz(&[file(".bashrc", b"x")])),
        (
            "zip-bomb",
            raw_tar_gz(&[file("zeros.jar", &vec![0u8; 64 << 20])]),
        ),
        ("not-gzip", b"plain text, not an archive".to_vec()),
    ];
    for (what, archive) in cases {
        let dest = tempfile::tempdir().unwrap();
        let path = write(work.path(), &format!("{what}.tgz"), &archive);
        let err = extract(&path, dest.path(), ExtractLimits::default()).unwrap_err();
        assert!(
            matches!(err, ExtractError::Unsafe(_) | ExtractError::Corrupt(_)),
            "{what}: {err}"
        );
        assert!(
            entries_in(dest.path()).is_empty(),
            "{what} left files: {:?}",
            entries_in(dest.path())
        );
    }
}

#[test]
fn caps_on_count_entry_size_and_total_apply() {
    let work = tempfile::tempdir().unwrap();
    let many = raw_tar_gz(&[file("a", b"1"), file("b", b"2"), file("c", b"3")]);
    let path = write(work.path(), "many.tgz", &many);
    let tight = ExtractLimits {
        max_entries: 2,
        ..ExtractLimits::default()
    };
    assert!(extract(&path, tempfile::tempdir().unwrap().path(), tight).is_err());
    let small = ExtractLimits {
        max_entry_bytes: 1000,
        ..ExtractLimits::default()
    };
    let big = write(
        work.path(),
        "big.tgz",
        &raw_tar_gz(&[file("a", &random_bytes(1001))]),
    );
    assert!(extract(&big, tempfile::tempdir().unwrap().path(), small).is_err());
    let total = ExtractLimits {
        max_total_bytes: 1500,
        ..ExtractLimits::default()
    };
    let two = write(
        work.path(),
        "two.tgz",
        &raw_tar_gz(&[
            file("a", &random_bytes(1000)),
            file("b", &random_bytes(1000)),
        ]),
    );
    assert!(extract(&two, tempfile::tempdir().unwrap().path(), total).is_err());
    assert_eq!(
        extract(
            &two,
            tempfile::tempdir().unwrap().path(),
            ExtractLimits::default()
        )
        .unwrap(),
        vec!["a", "b"]
    );
}

#[test]
fn existing_files_are_never_overwritten() {
    let work = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    write(dest.path(), "b.jar", b"original");
    let path = write(
        work.path(),
        "x.tgz",
        &raw_tar_gz(&[file("a.jar", b"new"), file("b.jar", b"new")]),
    );
    assert!(matches!(
        extract(&path, dest.path(), ExtractLimits::default()),
        Err(ExtractError::Unsafe(_))
    ));
    assert_eq!(
        std::fs::read(dest.path().join("b.jar")).unwrap(),
        b"original"
    );
    assert_eq!(entries_in(dest.path()), vec!["b.jar"]);
}

#[test]
fn a_rerun_over_its_own_files_succeeds_even_after_a_partial_run() {
    let work = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let path = write(
        work.path(),
        "x.tgz",
        &raw_tar_gz(&[file("a.jar", b"aaa"), file("b.jar", b"bbbb")]),
    );
    extract(&path, dest.path(), ExtractLimits::default()).unwrap();
    // The init container restarted after it finished: nothing to do, no error.
    extract(&path, dest.path(), ExtractLimits::default()).unwrap();
    // Killed midway (one file moved): the rest is moved.
    std::fs::remove_file(dest.path().join("b.jar")).unwrap();
    extract(&path, dest.path(), ExtractLimits::default()).unwrap();
    assert_eq!(entries_in(dest.path()), vec!["a.jar", "b.jar"]);
    assert_eq!(std::fs::read(dest.path().join("b.jar")).unwrap(), b"bbbb");
    // Same size, other bytes: refused, untouched.
    std::fs::write(dest.path().join("a.jar"), b"zzz").unwrap();
    assert!(matches!(
        extract(&path, dest.path(), ExtractLimits::default()),
        Err(ExtractError::Unsafe(_))
    ));
    assert_eq!(std::fs::read(dest.path().join("a.jar")).unwrap(), b"zzz");
}

#[test]
fn bundles_from_upload_extract_including_long_names() {
    let work = tempfile::tempdir().unwrap();
    let long = format!("{}.jar", "x".repeat(150));
    let a = write(work.path(), &long, &random_bytes(5000));
    let b = write(work.path(), "b.txt", b"hello");
    let inputs = vec![
        Input {
            path: a,
            name: long.clone(),
        },
        Input {
            path: b,
            name: "b.txt".into(),
        },
    ];
    let archive = bundle::write_archive(Vec::new(), &inputs).unwrap();
    let path = write(work.path(), "bundle.tgz", &archive);
    let dest = tempfile::tempdir().unwrap();
    let names = extract(&path, dest.path(), ExtractLimits::default()).unwrap();
    assert_eq!(names, vec![long.clone(), "b.txt".to_owned()]);
    assert_eq!(std::fs::read(dest.path().join("b.txt")).unwrap(), b"hello");
}

fn args(s: &TestServer, id: &str, token: &str, dest: &Path) -> FetchArgs {
    let token_file = dest.parent().unwrap().join(format!("token-{id}"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    FetchArgs {
        server: s.url(""),
        id: id.to_owned(),
        token_file,
        dest: dest.to_owned(),
        file_list: None,
        sha256: None,
        ca_file: None,
        v0: false,
        connect_timeout: std::time::Duration::from_secs(5),
        read_timeout: std::time::Duration::from_secs(30),
        timeout: std::time::Duration::from_secs(60),
        retries: 0,
        max_entries: 100,
        max_entry_size: staging_server::size::ByteSize(1 << 30),
        max_total_size: staging_server::size::ByteSize(1 << 30),
        max_ratio: 200,
    }
}

#[tokio::test]
async fn fetch_downloads_verifies_and_unpacks() {
    let s = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let jar = random_bytes(2 << 20);
    let inputs = vec![
        Input {
            path: write(work.path(), "app.jar", &jar),
            name: "app.jar".into(),
        },
        Input {
            path: write(work.path(), "conf.txt", b"k=v"),
            name: "conf.txt".into(),
        },
    ];
    let up = s
        .upload("a", bundle::write_archive(Vec::new(), &inputs).unwrap())
        .await;
    let dest = work.path().join("jars");
    std::fs::create_dir(&dest).unwrap();
    let mut a = args(
        &s,
        up["id"].as_str().unwrap(),
        up["token"].as_str().unwrap(),
        &dest,
    );
    a.sha256 = Some(up["sha256"].as_str().unwrap().to_owned());
    let names = run(a.clone()).await.unwrap();
    assert_eq!(names, vec!["app.jar", "conf.txt"]);
    assert!(std::fs::read(dest.join("app.jar")).unwrap() == jar);
    let list = std::fs::read_to_string(dest.join(".staged-files")).unwrap();
    assert_eq!(list.lines().count(), 2);
    assert!(list.contains(&dest.join("app.jar").display().to_string()));
    // The same over the fork's v0 route.
    let dest0 = work.path().join("jars0");
    std::fs::create_dir(&dest0).unwrap();
    let mut a0 = args(
        &s,
        up["id"].as_str().unwrap(),
        up["token"].as_str().unwrap(),
        &dest0,
    );
    a0.v0 = true;
    assert_eq!(run(a0).await.unwrap().len(), 2);
    // A second fetch into the same directory (a restarted init container) finds its files.
    assert_eq!(run(a.clone()).await.unwrap(), vec!["app.jar", "conf.txt"]);
    // One whose file there holds something else would overwrite: refused.
    std::fs::write(dest.join("conf.txt"), b"edited").unwrap();
    assert_eq!(run(a).await.unwrap_err().code, EXIT_UNSAFE_ARCHIVE);
    assert_eq!(std::fs::read(dest.join("conf.txt")).unwrap(), b"edited");
    s.shutdown().await;
}

#[tokio::test]
async fn fetch_fails_fast_with_distinct_exit_codes() {
    let s = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let ok = s.upload("a", raw_tar_gz(&[file("a.jar", b"x")])).await;
    let other = s.upload("a", raw_tar_gz(&[file("b.jar", b"y")])).await;
    let slip = s
        .upload("a", raw_tar_gz(&[file("../../etc/x", b"x")]))
        .await;
    let (id, token) = (ok["id"].as_str().unwrap(), ok["token"].as_str().unwrap());
    let dest = |n: &str| {
        let d = work.path().join(n);
        std::fs::create_dir(&d).unwrap();
        d
    };

    let started = std::time::Instant::now();
    let e = run(args(&s, id, "garbage", &dest("d1"))).await.unwrap_err();
    assert_eq!(e.code, EXIT_AUTH, "{}", e.message);
    let e = run(args(&s, other["id"].as_str().unwrap(), token, &dest("d2")))
        .await
        .unwrap_err();
    assert_eq!(e.code, EXIT_AUTH, "{}", e.message);
    let mut wrong = args(&s, id, token, &dest("d3"));
    wrong.sha256 = Some("ab".repeat(32));
    assert_eq!(run(wrong).await.unwrap_err().code, EXIT_INTEGRITY);
    let d4 = dest("d4");
    let e = run(args(
        &s,
        slip["id"].as_str().unwrap(),
        slip["token"].as_str().unwrap(),
        &d4,
    ))
    .await
    .unwrap_err();
    assert_eq!(e.code, EXIT_UNSAFE_ARCHIVE, "{}", e.message);
    assert!(entries_in(&d4).is_empty());
    // Fail fast: no retry loop on 4xx (the fork hung for five minutes).
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // Nothing listening: retried, then exit 7.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = args(&s, id, token, &dest("d5"));
    down.server = format!("http://127.0.0.1:{port}");
    down.retries = 1;
    assert_eq!(run(down).await.unwrap_err().code, EXIT_UNAVAILABLE);
    s.shutdown().await;
}
