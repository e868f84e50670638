//! Snapshots between the data directory and the store, streamed: a snapshot file goes up in
//! parts and comes down in ranged pieces, so a replica's memory does not grow with the size of
//! the database (a few parts of [`crate::multipart::REMOTE_PART_SIZE`]), and no single store
//! request grows with it either.

use std::path::Path;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::WriteError;
use super::store::{SnapshotPieces, StateStore};

/// Bytes read from the snapshot file at a time.
const READ_CHUNK: usize = 1 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stores the file at `path` as the snapshot of log position `seq`, in parts of `part` bytes.
/// No partial snapshot is ever visible: a failure to read the file or to send a part abandons
/// the upload; a failure to complete it (or a kill) leaves an incomplete multipart upload,
/// which the bucket's `AbortIncompleteMultipartUpload` rule reclaims.
///
/// # Errors
/// The file cannot be read; store errors.
pub(super) async fn upload(
    store: &StateStore,
    seq: u64,
    path: &Path,
    part: usize,
) -> Result<(), WriteError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut writer = store.snapshot_writer(seq, part).await?;
    let sent: Result<(), WriteError> = async {
        loop {
            let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
            while buf.len() < READ_CHUNK {
                if file.read_buf(&mut buf).await.map_err(io(path))? == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(());
            }
            writer.write(buf.freeze()).await?;
        }
    }
    .await;
    match sent {
        Ok(()) => Ok(writer.finish().await?),
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(cause = %abort, "could not abandon a snapshot's upload");
            }
            Err(e)
        }
    }
}

/// Writes the snapshot of log position `seq` to a new file at `path`, read in pieces of
/// `piece` bytes; false when the store no longer has it.
///
/// # Errors
/// The file cannot be written; store errors (a piece that does not come in time, or a
/// snapshot replaced during the read, included).
pub(super) async fn download(
    store: &StateStore,
    seq: u64,
    path: &Path,
    piece: usize,
) -> Result<bool, WriteError> {
    let Some(pieces) = store.snapshot(seq, piece).await? else {
        return Ok(false);
    };
    let written = write_all(pieces, path).await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    written.map(|()| true)
}

async fn write_all(mut pieces: SnapshotPieces, path: &Path) -> Result<(), WriteError> {
    let mut file = tokio::fs::File::create(path).await.map_err(io(path))?;
    while let Some(piece) = pieces.next().await? {
        file.write_all(&piece).await.map_err(io(path))?;
    }
    file.flush().await.map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;

    use super::*;

    fn store() -> StateStore {
        StateStore::new(
            Arc::new(InMemory::new()),
            ObjectPath::from("state"),
            Duration::from_secs(10),
            false,
        )
    }

    #[tokio::test]
    async fn a_snapshot_larger_than_several_parts_goes_up_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from.db"), dir.path().join("to.db"));
        // Not a multiple of the part or of the read chunk.
        let body: Vec<u8> = (0..(2 * READ_CHUNK + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&from, &body).unwrap();
        let s = store();
        upload(&s, 42, &from, 300 << 10).await.unwrap();
        assert_eq!(s.snapshots().await.unwrap(), vec![42]);
        assert!(download(&s, 42, &to, 700 << 10).await.unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), body);
    }

    #[tokio::test]
    async fn a_snapshot_replaced_during_its_read_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from.db");
        std::fs::write(&from, vec![1u8; 300 << 10]).unwrap();
        let s = store();
        upload(&s, 5, &from, 64 << 10).await.unwrap();
        let mut pieces = s.snapshot(5, 100 << 10).await.unwrap().unwrap();
        assert_eq!(pieces.next().await.unwrap().unwrap().len(), 100 << 10);
        // Written again under the same name (a late leader): never two versions mixed.
        std::fs::write(&from, vec![2u8; 300 << 10]).unwrap();
        upload(&s, 5, &from, 64 << 10).await.unwrap();
        assert!(pieces.next().await.is_err());
    }

    #[tokio::test]
    async fn an_empty_file_is_an_empty_snapshot_and_a_missing_one_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from.db"), dir.path().join("to.db"));
        std::fs::write(&from, b"").unwrap();
        let s = store();
        upload(&s, 1, &from, 64 << 10).await.unwrap();
        assert!(download(&s, 1, &to, 64 << 10).await.unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), b"");
        assert!(
            !download(&s, 2, &dir.path().join("none.db"), 64 << 10)
                .await
                .unwrap()
        );
        assert!(!dir.path().join("none.db").exists());
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_read_leaves_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = store();
        // A directory opens but cannot be read.
        let err = upload(&s, 7, dir.path(), 64 << 10).await.unwrap_err();
        assert!(matches!(err, WriteError::Io { .. }), "{err}");
        assert!(s.snapshots().await.unwrap().is_empty());
        assert!(
            !download(&s, 7, &dir.path().join("x.db"), 64 << 10)
                .await
                .unwrap()
        );
    }
}
