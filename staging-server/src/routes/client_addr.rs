//! The caller's address as the accept loop saw it (the TCP peer, never a header a client can
//! write), for budgets kept per client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// The TCP peer's address of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClientAddr(pub(super) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The accept loop sets it on every request; a router served some other way (an
        // embedding without it) puts all callers in one budget rather than failing.
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}
