//! Spark's on-disk shuffle layout: file names, the placement formula shared by executors and
//! the service, and the `.index` format.
//!
//! Placement (`ExecutorDiskUtils.getFilePath`): `h` = Java `String.hashCode` of the file name,
//! made non-negative (`Integer.MIN_VALUE` → 0); the file lives in
//! `localDirs[h % n] / format("%02x", (h / n) % subDirs) / name`.
//!
//! `.index`: (partitions + 1) big-endian i64 cumulative offsets, first 0, last = data length.

use std::path::{Path, PathBuf};

use crate::ids::{MapId, ShuffleId};

/// Java's `String.hashCode` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Spark's `nonNegativeHash`: `|h|`, with `i32::MIN` mapped to 0.
pub fn non_negative_hash(s: &str) -> u32 {
    let h = java_string_hash(s);
    if h == i32::MIN { 0 } else { h.unsigned_abs() }
}

/// The path of `filename` among an executor's `local_dirs` with `sub_dirs` subdirectories.
///
/// # Panics
/// If `local_dirs` is empty or `sub_dirs` is 0; registration refuses both.
pub fn placement(local_dirs: &[PathBuf], sub_dirs: u32, filename: &str) -> PathBuf {
    let hash = non_negative_hash(filename) as usize;
    let n = local_dirs.len();
    let dir = &local_dirs[hash % n];
    let sub = (hash / n) % sub_dirs as usize;
    dir.join(format!("{sub:02x}")).join(filename)
}

/// `shuffle_<s>_<m>_0.data`.
pub fn data_file(shuffle: ShuffleId, map: MapId) -> String {
    format!("shuffle_{shuffle}_{map}_0.data")
}

/// `shuffle_<s>_<m>_0.index`.
pub fn index_file(shuffle: ShuffleId, map: MapId) -> String {
    format!("shuffle_{shuffle}_{map}_0.index")
}

/// `shuffle_<s>_<m>_0.checksum.<ALGO>`.
pub fn checksum_file(shuffle: ShuffleId, map: MapId, algorithm: &str) -> String {
    format!("shuffle_{shuffle}_{map}_0.checksum.{algorithm}")
}

/// Whether a file name belongs to shuffle `shuffle` (data, index or checksum).
pub fn is_shuffle_file(name: &str, shuffle: ShuffleId) -> bool {
    name.strip_prefix(&format!("shuffle_{shuffle}_"))
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(map, tail)| {
            map.bytes().all(|b| b.is_ascii_digit())
                && !map.is_empty()
                && (tail == "0.data" || tail == "0.index" || tail.starts_with("0.checksum."))
        })
}

/// A malformed index file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct BadIndex {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses an index: at least two offsets, the first 0, never decreasing.
///
/// # Errors
/// [`BadIndex`] for any other shape.
pub fn parse_index(path: &Path, bytes: &[u8]) -> Result<Vec<u64>, BadIndex> {
    let bad = |reason| BadIndex {
        path: path.display().to_string(),
        reason,
    };
    if !bytes.len().is_multiple_of(8) || bytes.len() < 16 {
        return Err(bad("length is not a multiple of 8 of at least 16"));
    }
    let offsets: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_be_bytes(c.try_into().expect("chunks of 8")))
        .map(|v| u64::try_from(v).unwrap_or(u64::MAX))
        .collect();
    if offsets[0] != 0 {
        return Err(bad("first offset is not 0"));
    }
    if offsets.windows(2).any(|w| w[1] < w[0] || w[1] == u64::MAX) {
        return Err(bad("offsets decrease or are negative"));
    }
    Ok(offsets)
}

/// Encodes partition lengths as an index.
pub fn encode_index(lengths: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity((lengths.len() + 1) * 8);
    let mut acc: u64 = 0;
    out.extend_from_slice(&0i64.to_be_bytes());
    for l in lengths {
        acc += l;
        out.extend_from_slice(&(acc as i64).to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's vectors, produced by Spark 4.3.0's own `ExecutorDiskUtils.getFilePath`.
    #[test]
    fn placement_matches_spark() {
        let one = [PathBuf::from("/L0")];
        let two = [PathBuf::from("/L0"), PathBuf::from("/L1")];
        let cases = [
            ("shuffle_0_0_0.data", 581_811_660, "/L0/0c", "/L0/26"),
            ("shuffle_0_0_0.index", 861_282_032, "/L0/30", "/L0/38"),
            ("shuffle_0_5_0.data", 705_928_743, "/L0/27", "/L1/13"),
            ("shuffle_3_17_0.index", 793_681_805, "/L0/0d", "/L1/06"),
            ("rdd_2_7", 1_054_352_925, "/L0/1d", "/L1/0e"),
            (
                "shuffle_0_0_0.checksum.ADLER32",
                -103_986_100,
                "/L0/34",
                "/L0/1a",
            ),
        ];
        for (name, hash, p1, p2) in cases {
            assert_eq!(java_string_hash(name), hash, "{name}");
            assert_eq!(
                placement(&one, 64, name),
                PathBuf::from(p1).join(name),
                "{name}"
            );
            assert_eq!(
                placement(&two, 64, name),
                PathBuf::from(p2).join(name),
                "{name}"
            );
        }
    }

    #[test]
    fn min_hash_maps_to_zero() {
        // "polygenelubricants" hashes to Integer.MIN_VALUE in Java.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(non_negative_hash("polygenelubricants"), 0);
    }

    #[test]
    fn index_round_trip_and_validation() {
        let idx = encode_index(&[3, 0, 5]);
        assert_eq!(parse_index(Path::new("x"), &idx).unwrap(), vec![0, 3, 3, 8]);
        assert!(parse_index(Path::new("x"), &idx[..12]).is_err());
        assert!(parse_index(Path::new("x"), &encode_index(&[])[..8]).is_err());
        let mut dec = encode_index(&[5, 1]);
        dec[16..24].copy_from_slice(&2i64.to_be_bytes());
        assert!(parse_index(Path::new("x"), &dec).is_err());
        let mut neg = encode_index(&[5]);
        neg[8..16].copy_from_slice(&(-1i64).to_be_bytes());
        assert!(parse_index(Path::new("x"), &neg).is_err());
    }

    #[test]
    fn shuffle_file_names() {
        let s = ShuffleId::new(3).unwrap();
        assert!(is_shuffle_file("shuffle_3_17_0.data", s));
        assert!(is_shuffle_file("shuffle_3_17_0.checksum.ADLER32", s));
        assert!(!is_shuffle_file("shuffle_31_17_0.data", s));
        assert!(!is_shuffle_file("shuffle_3_x_0.data", s));
        assert!(!is_shuffle_file("rdd_3_1", s));
    }
}
