//! Typed identifiers, validated before they touch a path or a query.
//!
//! Application and executor ids appear in paths of no kind here (directories come from the
//! executor's registration), but they are keys, labels of logs and parts of tokens' scope, so
//! they follow a strict grammar: 1 to 128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
//!
//! ```compile_fail
//! use spark_protocol::ids::{AppId, ExecId};
//! fn wants_app(_: AppId) {}
//! let e: ExecId = "1".parse().unwrap();
//! wants_app(e);
//! ```

use std::fmt;
use std::str::FromStr;

/// An id that breaks its grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {raw:?}: {reason}")]
pub struct InvalidId {
    /// Which kind of id.
    pub kind: &'static str,
    /// The rejected text (bounded for logs).
    pub raw: String,
    /// Why.
    pub reason: &'static str,
}

/// Longest accepted id.
pub const MAX_ID_LEN: usize = 128;

fn check(kind: &'static str, s: &str) -> Result<(), InvalidId> {
    let err = |reason| InvalidId {
        kind,
        raw: s.chars().take(MAX_ID_LEN).collect(),
        reason,
    };
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(err("must have 1 to 128 characters"));
    }
    if s == "." || s == ".." {
        return Err(err("must not be . or .."));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("may only contain letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check($kind, s).map(|()| Self(s.to_owned()))
            }
        }
    };
}

string_id!(
    /// A Spark application id (`app-20261121-0001`, `spark-3f2c...`, `local-...`).
    AppId,
    "application id"
);
string_id!(
    /// An executor id within an application (`1`, `2`, `driver`).
    ExecId,
    "executor id"
);

macro_rules! int_id {
    ($(#[$m:meta])* $name:ident, $t:ty, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($t);

        impl $name {
            /// Validates a non-negative value.
            ///
            /// # Errors
            /// [`InvalidId`] for a negative value.
            pub fn new(v: $t) -> Result<Self, InvalidId> {
                if v < 0 {
                    return Err(InvalidId { kind: $kind, raw: v.to_string(), reason: "must not be negative" });
                }
                Ok(Self(v))
            }

            /// The raw value.
            pub fn get(self) -> $t {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// A shuffle id.
    ShuffleId,
    i32,
    "shuffle id"
);
int_id!(
    /// A map task attempt id (a long since Spark 3.0).
    MapId,
    i64,
    "map id"
);
int_id!(
    /// A reduce partition id.
    ReduceId,
    i32,
    "reduce id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert!("app-20261121-0001".parse::<AppId>().is_ok());
        assert!("spark-3f2c.x_y".parse::<AppId>().is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a b", "a\0", &"x".repeat(129)] {
            assert!(bad.parse::<AppId>().is_err(), "{bad:?}");
            assert!(bad.parse::<ExecId>().is_err(), "{bad:?}");
        }
        assert!(MapId::new(-1).is_err());
        assert_eq!(ShuffleId::new(3).unwrap().get(), 3);
    }
}
