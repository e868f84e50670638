//! The failures of the object store ([`StoreError`]): below both the store, which returns
//! them, and the crate error, which carries them.

/// Why a store call failed, classified where `object_store` answers (see
/// [`StoreError::classify`]), for the one HTTP mapping and the metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object is not there.
    #[error("object store: {what}: {source}")]
    NotFound {
        /// The call.
        what: &'static str,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The store's disk is full (local backend).
    #[error("object store: {what}: {source}")]
    Full {
        /// The call.
        what: &'static str,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The store did not answer in time: the configured bound on the call (no source), or
    /// the store client's own request timeout.
    #[error("object store: no answer within the timeout ({what})")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The store client's timeout, when it was that one.
        source: Option<object_store::Error>,
    },
    /// The store refused connections, broke them, or kept answering with an error status
    /// after the store client's retries: temporary, as far as this server can tell.
    #[error("object store: {what}: {source}")]
    Unavailable {
        /// The call.
        what: &'static str,
        /// The store's answer.
        source: object_store::Error,
    },
    /// Anything else: an object already there or changed, a refused credential, an
    /// unsupported call, a local I/O error other than a full disk.
    #[error("object store: {what}: {source}")]
    Other {
        /// The call.
        what: &'static str,
        /// The store's answer.
        source: object_store::Error,
    },
}

impl StoreError {
    /// Classifies an answer of `object_store` by its variant and, for the generic one, by its
    /// cause: a full disk, or the store client's HTTP error kind. `remote` says whether the
    /// store is reached over HTTP.
    ///
    /// A generic error of a remote store with no transport cause is a status the client has no
    /// variant for (it names 404, 304, 409, 412, 401 and 403 itself), given after it retried
    /// server errors and throttling: it is taken as the store being unavailable, answered 503
    /// so that clients retry.
    pub fn classify(what: &'static str, source: object_store::Error, remote: bool) -> Self {
        use object_store::Error as E;
        use object_store::client::{HttpError, HttpErrorKind as K};
        let cause: &(dyn std::error::Error + 'static) = match &source {
            E::NotFound { .. } => return Self::NotFound { what, source },
            E::Generic { source: cause, .. } => cause.as_ref(),
            _ => return Self::Other { what, source },
        };
        if service_runtime::disk::chain_is_full(cause) {
            return Self::Full { what, source };
        }
        let mut next = Some(cause);
        while let Some(e) = next {
            if let Some(h) = e.downcast_ref::<HttpError>() {
                return match h.kind() {
                    K::Timeout => Self::Timeout {
                        what,
                        source: Some(source),
                    },
                    K::Connect | K::Request | K::Interrupted => Self::Unavailable { what, source },
                    _ => Self::Other { what, source },
                };
            }
            if e.is::<std::io::Error>() {
                return Self::Other { what, source };
            }
            next = e.source();
        }
        if remote {
            Self::Unavailable { what, source }
        } else {
            Self::Other { what, source }
        }
    }

    /// The `kind` label of `staging_store_errors_total`, for failures worth counting.
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            Self::Timeout { .. } => Some("timeout"),
            Self::Unavailable { .. } => Some("unavailable"),
            _ => None,
        }
    }
}

/// Runs one store call within `timeout`, classifying its failure.
pub(crate) async fn bounded<T>(
    timeout: std::time::Duration,
    remote: bool,
    what: &'static str,
    fut: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| StoreError::classify(what, e, remote)),
        Err(_) => Err(StoreError::Timeout { what, source: None }),
    }
}

#[cfg(test)]
mod tests {
    use object_store::client::{HttpError, HttpErrorKind};

    use super::*;

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        }
    }

    fn http(kind: HttpErrorKind) -> object_store::Error {
        generic(HttpError::new(kind, std::io::Error::other("cause")))
    }

    #[test]
    fn failures_are_classified_by_variant_and_cause() {
        let not_found = object_store::Error::NotFound {
            path: "resources/x".into(),
            source: "gone".into(),
        };
        let c = StoreError::classify;
        assert!(matches!(
            c("read", not_found, true),
            StoreError::NotFound { .. }
        ));
        let exists = object_store::Error::AlreadyExists {
            path: "x".into(),
            source: "there".into(),
        };
        assert!(matches!(c("write", exists, true), StoreError::Other { .. }));
        let full = generic(std::io::Error::from_raw_os_error(28)); // ENOSPC
        assert!(matches!(c("write", full, false), StoreError::Full { .. }));
        let eio = generic(std::io::Error::from_raw_os_error(5)); // EIO
        assert!(matches!(c("write", eio, false), StoreError::Other { .. }));

        let t = c("read", http(HttpErrorKind::Timeout), true);
        assert!(matches!(
            t,
            StoreError::Timeout {
                source: Some(_),
                ..
            }
        ));
        assert_eq!(t.metric_kind(), Some("timeout"));
        for kind in [
            HttpErrorKind::Connect,
            HttpErrorKind::Request,
            HttpErrorKind::Interrupted,
        ] {
            let e = c("read", http(kind), true);
            assert_eq!(e.metric_kind(), Some("unavailable"), "{e}");
        }
        assert!(matches!(
            c("read", http(HttpErrorKind::Decode), true),
            StoreError::Other { .. }
        ));
        // A status the store client gave up on after its retries, with no transport cause.
        #[derive(Debug, thiserror::Error)]
        #[error("503 Slow Down")]
        struct Status;
        assert!(matches!(
            c("read", generic(Status), true),
            StoreError::Unavailable { .. }
        ));
        assert!(matches!(
            c("read", generic(Status), false),
            StoreError::Other { .. }
        ));
    }
}
