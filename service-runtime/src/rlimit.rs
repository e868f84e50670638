//! The open-file limit: raised at start from the soft limit to the hard one, since every
//! connection, block file and database handle takes a descriptor and the soft default
//! (often 1,024) is far below what the services' own connection caps allow.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-file limits after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// The soft limit before the call.
    pub before: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit.
///
/// # Errors
/// The kernel refused the new limit (the previous one stays).
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current != maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(OpenFiles {
        soft: now.current,
        hard: now.maximum,
        before: current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let l = raise_open_files().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.before <= l.soft || l.soft.is_none());
    }
}
