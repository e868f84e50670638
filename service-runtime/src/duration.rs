//! Durations in configuration files (`30s`, `5m`, `1h 30m`), read the way the flags read
//! them ([`humantime::parse_duration`]), so that a value means the same in either place.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes an optional human-readable duration: `#[serde(default, deserialize_with =
/// "service_runtime::duration::deserialize_opt")]` on an `Option<Duration>` field.
///
/// # Errors
/// The deserializer's error naming the value that is not a duration.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        #[serde(default, deserialize_with = "deserialize_opt")]
        grace: Option<Duration>,
    }

    #[test]
    fn reads_human_durations_and_refuses_others() {
        let f: File = toml::from_str("grace = \"1m 30s\"").unwrap();
        assert_eq!(f.grace, Some(Duration::from_secs(90)));
        let f: File = toml::from_str("").unwrap();
        assert_eq!(f.grace, None);
        assert!(toml::from_str::<File>("grace = \"soon\"").is_err());
    }
}
