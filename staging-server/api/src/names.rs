//! The one rule for names of bundled files, shared by `upload` (which refuses what `fetch`
//! would refuse) and `fetch`: a single path component of at most 255 bytes, made of ASCII
//! letters, digits and `._-+=@,~`, not starting with `.` or `-`.

/// Longest accepted file name.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a bundled file name.
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "file name {name:?} must have 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("file name {name:?} must not start with '.' or '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-+=@,~".contains(*c)))
    {
        return Err(format!("file name {name:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn names() {
        assert!(validate("spark-avro_2.13-4.0.0.jar").is_ok());
        for bad in [
            "",
            ".hidden",
            "-rf",
            "a/b",
            "..",
            "a\\b",
            "a\0b",
            "é.jar",
            &"a".repeat(256),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
