//! `DiagnoseCorruption`: recompute a block's checksum and compare it with the writer's
//! (`shuffle_<s>_<m>_0.checksum.<ALGO>`, one big-endian i64 per partition) and the reader's.

use std::io::{Read, Seek, SeekFrom};

use crate::message::Cause;

/// A checksum algorithm Spark writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `java.util.zip.Adler32`.
    Adler32,
    /// `java.util.zip.CRC32`.
    Crc32,
    /// `java.util.zip.CRC32C`.
    Crc32c,
}

impl Algorithm {
    /// Spark's name (`ADLER32`, `CRC32`, `CRC32C`), case-sensitive as in file names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ADLER32" => Some(Self::Adler32),
            "CRC32" => Some(Self::Crc32),
            "CRC32C" => Some(Self::Crc32c),
            _ => None,
        }
    }

    /// Spark's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adler32 => "ADLER32",
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
        }
    }
}

enum State {
    Adler(adler2::Adler32),
    Crc(crc32fast::Hasher),
    Crc32c(u32),
}

/// The checksum of everything read from `r`, as Java's `Checksum.getValue()`.
///
/// # Errors
/// Read errors.
pub fn checksum(alg: Algorithm, r: &mut impl Read) -> std::io::Result<i64> {
    let mut st = match alg {
        Algorithm::Adler32 => State::Adler(adler2::Adler32::new()),
        Algorithm::Crc32 => State::Crc(crc32fast::Hasher::new()),
        Algorithm::Crc32c => State::Crc32c(0),
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match &mut st {
            State::Adler(a) => a.write_slice(&buf[..n]),
            State::Crc(c) => c.update(&buf[..n]),
            State::Crc32c(c) => *c = crc32c::crc32c_append(*c, &buf[..n]),
        }
    }
    Ok(i64::from(match st {
        State::Adler(a) => a.checksum(),
        State::Crc(c) => c.finalize(),
        State::Crc32c(c) => c,
    }))
}

/// Decides the cause for one block (blocking I/O): `checksums` is the writer's checksum file,
/// `data` the data file, of which the block is `len` bytes at `offset`; `reduce` the
/// partition; `reader` the checksum the reader computed.
///
/// # Errors
/// Reading either file (the caller answers `UnknownIssue`).
pub fn diagnose(
    alg: Algorithm,
    mut checksums: impl Read + Seek,
    mut data: impl Read + Seek,
    reduce: u32,
    (offset, len): (u64, u64),
    reader: i64,
) -> std::io::Result<Cause> {
    checksums.seek(SeekFrom::Start(u64::from(reduce) * 8))?;
    let mut b = [0u8; 8];
    checksums.read_exact(&mut b)?;
    let writer = i64::from_be_bytes(b);
    data.seek(SeekFrom::Start(offset))?;
    let actual = checksum(alg, &mut data.take(len))?;
    Ok(if writer != actual {
        Cause::DiskIssue
    } else if writer != reader {
        Cause::NetworkIssue
    } else {
        Cause::ChecksumVerifyPass
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_values() {
        // java.util.zip.{Adler32, CRC32, CRC32C} of "123456789".
        let v = |a| checksum(a, &mut &b"123456789"[..]).unwrap();
        assert_eq!(v(Algorithm::Adler32), 0x091E_01DE);
        assert_eq!(v(Algorithm::Crc32), 0xCBF4_3926);
        assert_eq!(v(Algorithm::Crc32c), 0xE306_9283);
        assert_eq!(checksum(Algorithm::Adler32, &mut &b""[..]).unwrap(), 1);
    }
}
