//! Spark's block messages made into the core's typed requests, where the Spark front end
//! decodes them: ids are validated once, here, and what the core gets cannot name a block that
//! is no block (an empty or reversed range, a partition with no successor). Errors are the
//! text of the `RpcFailure` Spark's client shows.

use spark_protocol::checksum::Algorithm;
use spark_protocol::message::{Cause, ExecutorShuffleInfo};

use crate::core::{Blocks, Diagnosis, ExecutorRegistration, FetchRequest, ReduceRange};
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::{AppId, ExecId, MapId, ShuffleId};

/// `RegisterExecutor` of an application already checked by the front end.
///
/// # Errors
/// A malformed executor id or a negative subdirectory count.
pub(crate) fn registration(
    app: AppId,
    exec_id: &str,
    info: ExecutorShuffleInfo,
) -> Result<ExecutorRegistration> {
    Ok(ExecutorRegistration {
        app,
        exec: exec_id.parse()?,
        local_dirs: info.local_dirs,
        sub_dirs: u32::try_from(info.sub_dirs_per_local_dir)
            .map_err(|_| ShuffleError::InvalidArgument("negative subDirsPerLocalDir".into()))?,
        shuffle_manager: info.shuffle_manager,
    })
}

/// `FetchShuffleBlocks`: for each map id, its reduce ids, or with batch fetch one
/// `[start, end)` pair.
///
/// # Errors
/// Text for the client: a malformed id, lists of different lengths, a bad range.
pub(crate) fn fetch_shuffle_blocks(
    app: AppId,
    exec_id: &str,
    shuffle_id: i32,
    map_ids: Vec<i64>,
    reduce_ids: Vec<Vec<i32>>,
    batch: bool,
) -> std::result::Result<FetchRequest, String> {
    let exec: ExecId = exec_id.parse().map_err(|e| text(&e))?;
    let shuffle = ShuffleId::new(shuffle_id).map_err(|e| text(&e))?;
    if map_ids.len() != reduce_ids.len() {
        return Err(format!(
            "{} map ids but {} reduce id lists",
            map_ids.len(),
            reduce_ids.len()
        ));
    }
    let maps: Vec<MapId> = map_ids
        .into_iter()
        .map(MapId::new)
        .collect::<Result<_, _>>()
        .map_err(|e| text(&e))?;
    let mut ranges = Vec::with_capacity(maps.len());
    for r in &reduce_ids {
        let parsed: Vec<ReduceRange> = if batch {
            let range = match r.as_slice() {
                [start, end] => ReduceRange::new(*start, *end),
                _ => None,
            };
            vec![range.ok_or_else(|| {
                format!("batch fetch needs [start, end) with 0 <= start < end, got {r:?}")
            })?]
        } else {
            r.iter()
                .map(|x| ReduceRange::single(*x))
                .collect::<Option<_>>()
                .ok_or("negative reduce id")?
        };
        ranges.push(parsed);
    }
    Ok(FetchRequest {
        app,
        exec,
        blocks: Blocks::Maps {
            shuffle,
            maps: maps.into_iter().zip(ranges).collect(),
        },
    })
}

/// `OpenBlocks`: all `shuffle_<s>_<m>_<r>` of one shuffle, or all `rdd_<r>_<p>`.
///
/// # Errors
/// Text for the client.
pub(crate) fn open_blocks(
    app: AppId,
    exec_id: &str,
    ids: &[String],
) -> std::result::Result<FetchRequest, String> {
    let exec: ExecId = exec_id.parse().map_err(|e| text(&e))?;
    Ok(FetchRequest {
        app,
        exec,
        blocks: block_ids(ids)?,
    })
}

fn block_ids(ids: &[String]) -> std::result::Result<Blocks, String> {
    let first = ids.first().ok_or("no block ids")?;
    if first.starts_with("rdd_") {
        let names = ids
            .iter()
            .map(|id| {
                let p: Vec<&str> = id.split('_').collect();
                let ok = p.len() == 3
                    && p[0] == "rdd"
                    && p[1].parse::<u32>().is_ok()
                    && p[2].parse::<u32>().is_ok();
                if ok {
                    Ok(id.clone())
                } else {
                    Err(format!("Unexpected block id format: {id}"))
                }
            })
            .collect::<Result<_, _>>()?;
        return Ok(Blocks::Files(names));
    }
    if first.starts_with("shuffleChunk_") {
        return Err("push-based shuffle chunks are not served by this shuffle service".into());
    }
    let mut shuffle = None;
    let mut blocks = Vec::with_capacity(ids.len());
    for id in ids {
        let p: Vec<&str> = id.split('_').collect();
        let bad = || format!("Unexpected shuffle block id format: {id}");
        if p.len() != 4 || p[0] != "shuffle" {
            return Err(bad());
        }
        let s = p[1]
            .parse::<i32>()
            .ok()
            .and_then(|v| ShuffleId::new(v).ok());
        let m = p[2].parse::<i64>().ok().and_then(|v| MapId::new(v).ok());
        let r = p[3].parse::<i32>().ok().and_then(ReduceRange::single);
        let (Some(s), Some(m), Some(r)) = (s, m, r) else {
            return Err(bad());
        };
        match shuffle {
            None => shuffle = Some(s),
            Some(x) if x != s => {
                return Err(format!("Expected shuffleId={}, got: {id}", x.get()));
            }
            Some(_) => {}
        }
        blocks.push(r.of(s, m));
    }
    Ok(Blocks::Ranges(blocks))
}

/// `DiagnoseCorruption` of one partition.
///
/// # Errors
/// The answer Spark gets for it: an algorithm it does not know, or an unknown issue for a
/// malformed id.
pub(crate) fn diagnosis(
    exec_id: &str,
    shuffle_id: i32,
    map_id: i64,
    reduce_id: i32,
    checksum: i64,
    algorithm: &str,
) -> std::result::Result<Diagnosis, Cause> {
    let algorithm = Algorithm::parse(algorithm).ok_or(Cause::UnsupportedChecksumAlgorithm)?;
    let (Ok(exec), Ok(shuffle), Ok(map), Some(reduce)) = (
        exec_id.parse::<ExecId>(),
        ShuffleId::new(shuffle_id),
        MapId::new(map_id),
        ReduceRange::single(reduce_id),
    ) else {
        return Err(Cause::UnknownIssue);
    };
    Ok(Diagnosis {
        exec,
        block: reduce.of(shuffle, map),
        checksum,
        algorithm,
    })
}

/// The client's text for a malformed id.
fn text(e: &spark_protocol::ids::InvalidId) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::BlockRange;

    fn ranges(b: &Blocks) -> Vec<BlockRange> {
        match b {
            Blocks::Ranges(v) => v.clone(),
            _ => Vec::new(),
        }
    }

    fn app() -> AppId {
        "app-1".parse().unwrap()
    }

    #[test]
    fn open_blocks_of_one_shuffle_or_rdd_blocks() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let r = open_blocks(app(), "1", &ids(&["shuffle_0_5_1", "shuffle_0_6_2"])).unwrap();
        let got: Vec<_> = ranges(&r.blocks)
            .iter()
            .map(|b| (b.map.get(), b.start.get(), b.end.get()))
            .collect();
        assert_eq!(got, vec![(5, 1, 2), (6, 2, 3)]);
        let e = open_blocks(app(), "1", &ids(&["shuffle_0_5_1", "shuffle_1_5_1"])).unwrap_err();
        assert!(e.contains("Expected shuffleId=0"), "{e}");
        let max = format!("shuffle_0_5_{}", i32::MAX);
        assert!(open_blocks(app(), "1", &[max]).is_err());
        let r = open_blocks(app(), "1", &ids(&["rdd_1_2"])).unwrap();
        assert_eq!(r.blocks, Blocks::Files(ids(&["rdd_1_2"])));
        assert!(open_blocks(app(), "1", &ids(&["rdd_1_x"])).is_err());
        assert!(open_blocks(app(), "1", &[]).is_err());
    }

    #[test]
    fn fetch_ranges_are_checked() {
        let f = |reduces: Vec<Vec<i32>>, batch| {
            fetch_shuffle_blocks(app(), "1", 0, vec![1; reduces.len()], reduces, batch)
        };
        assert_eq!(f(vec![vec![0, 4]], true).unwrap().blocks.count(), 1);
        assert!(f(vec![vec![4, 4]], true).is_err());
        assert!(f(vec![vec![0, 1, 2]], true).is_err());
        assert_eq!(
            f(vec![vec![0, 1, 2], vec![]], false)
                .unwrap()
                .blocks
                .count(),
            3
        );
        assert!(f(vec![vec![-1]], false).is_err());
        assert!(f(vec![vec![i32::MAX]], false).is_err());
        assert!(fetch_shuffle_blocks(app(), "1", 0, vec![1], vec![], false).is_err());
    }

    #[test]
    fn a_negative_subdirectory_count_is_refused() {
        let info = ExecutorShuffleInfo {
            local_dirs: vec!["/v/a".into()],
            sub_dirs_per_local_dir: -1,
            shuffle_manager: String::new(),
        };
        assert!(registration(app(), "1", info).is_err());
    }

    #[test]
    fn diagnosis_answers_what_it_cannot_check() {
        assert_eq!(
            diagnosis("1", 0, 1, 0, 7, "MD5").unwrap_err(),
            Cause::UnsupportedChecksumAlgorithm
        );
        assert_eq!(
            diagnosis("1", 0, -1, 0, 7, "CRC32").unwrap_err(),
            Cause::UnknownIssue
        );
        assert_eq!(
            diagnosis("1", 0, 1, 2, 7, "CRC32").unwrap().block.end.get(),
            3
        );
    }
}
