//! Builds the tar.gz bundle while it is being sent: a blocking thread writes the archive into
//! a bounded channel that the HTTP body reads, so no temporary file is written and memory
//! stays at a few buffers whatever the bundle size.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::sync::mpsc;

/// Bytes per message sent to the HTTP body.
const CHUNK: usize = 256 << 10;
/// Messages buffered between the archiver and the network.
const CHANNEL_DEPTH: usize = 4;

/// One file to bundle, under the given name.
#[derive(Debug, Clone)]
pub struct Input {
    /// Local path.
    pub path: PathBuf,
    /// Name inside the bundle (already validated).
    pub name: String,
}

/// Starts archiving `inputs`; returns the byte stream and the archiver's handle.
pub fn spawn(
    inputs: Vec<Input>,
) -> (
    mpsc::Receiver<io::Result<Bytes>>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let handle = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: BytesMut::with_capacity(CHUNK),
        };
        let result = write_archive(writer, &inputs).map(|_| ());
        if let Err(e) = &result {
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    (rx, handle)
}

/// Writes the archive of `inputs` into `out`: regular-file entries named by the input names,
/// mode 0644, GNU long names where needed.
///
/// # Errors
/// I/O errors reading inputs or writing `out`.
pub fn write_archive<W: Write>(out: W, inputs: &[Input]) -> io::Result<W> {
    // Jars are already compressed; the fast level costs little size and much less CPU.
    let gz = GzEncoder::new(out, Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for input in inputs {
        let file = File::open(&input.path)?;
        let meta = file.metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        header.set_mode(0o644);
        header.set_mtime(
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        );
        // Capped at the size announced in the header, so a file growing while it is archived
        // cannot corrupt the tar stream.
        tar.append_data(&mut header, &input.name, io::Read::take(file, meta.len()))?;
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()?;
    Ok(out)
}

struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
