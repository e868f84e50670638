//! Replays the checked-in corpus (and any crash AFL found, once copied there) through the
//! targets, so that `cargo test` in this crate is a regression test of every finding.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        f(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn corpus_replays() {
    replay("spark_frames", fuzz::spark_frames);
    replay("spark_messages", fuzz::spark_messages);
    replay("spark_crypto", fuzz::spark_crypto);
    replay("sasl", fuzz::sasl);
    replay("index_file", fuzz::index_file);
    replay("archive", fuzz::archive);
    replay("ids", fuzz::ids);
    replay("grpc_requests", fuzz::grpc_requests);
    replay("v0_upload", fuzz::v0_upload);
    replay("checksum_files", fuzz::checksum_files);
}
