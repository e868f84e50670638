//! The server side of SASL DIGEST-MD5 as Spark speaks it (RFC 2831): the user is
//! `sparkSaslUser`, the password the base64 of the application's secret as Netty writes it (a
//! line break after every 76 characters, see [`encode`]), the realm `default`. Qop `auth`, and
//! `auth-conf` with cipher `rc4` ([`crate::crypto::digest`]) for Spark's SASL encryption;
//! `auth-int` is not offered.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq as _;

/// Spark's fixed SASL user name.
pub const USER: &str = "sparkSaslUser";
/// Spark's realm.
pub const REALM: &str = "default";
/// Longest client response accepted.
const MAX_RESPONSE: usize = 4096;

/// Base64 as Spark encodes the SASL user and password (`SparkSaslServer.encodePassword`, with
/// Netty's `Base64.encode`): standard alphabet and padding, a `\n` after every 76 characters
/// except at the very end. A secret of more than 57 bytes (Spark's own 64-hex-character
/// secrets on Kubernetes) therefore has a line break in its password.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    let plain = B64.encode(bytes);
    let mut out = String::with_capacity(plain.len() + plain.len() / 76);
    for (i, c) in plain.chars().enumerate() {
        if i > 0 && i % 76 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out
}

/// Why a handshake failed (sent to the client as an RPC failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client's response cannot be parsed or misses a directive.
    #[error("malformed DIGEST-MD5 response: {0}")]
    Malformed(&'static str),
    /// The response does not prove knowledge of the secret.
    #[error("DIGEST-MD5 authentication failed")]
    BadResponse,
    /// A step out of order.
    #[error("unexpected SASL step")]
    OutOfOrder,
}

/// The protection levels the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// `auth` only.
    AuthOnly,
    /// `auth-conf` or `auth` (Spark's own server).
    AuthOrConf,
    /// `auth-conf` only (encryption required).
    ConfOnly,
}

/// One connection's handshake, against one secret or several (an application whose secret
/// is not yet settled: the response says which one the client knows, [`DigestServer::matched`]).
pub struct DigestServer {
    nonce: String,
    secrets: Vec<Vec<u8>>,
    state: State,
    offer: Protection,
    /// H(A1) of a completed `auth-conf` handshake: the confidentiality layer's key material.
    conf: Option<[u8; 16]>,
    /// Which secret the client proved.
    matched: Option<usize>,
}

impl std::fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestServer")
            .field("secrets", &self.secrets.len())
            .field("state", &self.state)
            .field("offer", &self.offer)
            .field("matched", &self.matched)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Challenged,
    Done,
}

impl DigestServer {
    /// A handshake for an application whose secret is `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self::new_any(vec![secret.to_vec()])
    }

    /// A handshake that accepts whichever of `secrets` the client proves (none: every
    /// response fails).
    pub fn new_any(secrets: Vec<Vec<u8>>) -> Self {
        let mut raw = [0u8; 30];
        rand::fill(&mut raw[..]);
        Self::with_nonce_any(secrets, B64.encode(raw))
    }

    /// A handshake with a given nonce (tests).
    pub fn with_nonce(secret: &[u8], nonce: String) -> Self {
        Self::with_nonce_any(vec![secret.to_vec()], nonce)
    }

    /// A handshake against several secrets with a given nonce (tests).
    pub fn with_nonce_any(secrets: Vec<Vec<u8>>, nonce: String) -> Self {
        Self {
            nonce,
            secrets,
            state: State::Start,
            offer: Protection::AuthOrConf,
            conf: None,
            matched: None,
        }
    }

    /// After a completed handshake: the index of the secret the client proved.
    pub fn matched(&self) -> Option<usize> {
        self.matched
    }

    /// Offers `p` instead of `auth-conf,auth`.
    #[must_use]
    pub fn offering(mut self, p: Protection) -> Self {
        self.offer = p;
        self
    }

    /// After an `auth-conf` handshake: the binary H(A1) the confidentiality layer derives
    /// its keys from ([`crate::crypto::digest::server`]).
    pub fn confidentiality(&self) -> Option<[u8; 16]> {
        self.conf
    }

    /// Whether the client has proven itself.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Answers one client token with the server's next token.
    ///
    /// # Errors
    /// A malformed or wrong response, or a step out of order.
    pub fn step(&mut self, token: &[u8]) -> Result<Vec<u8>, SaslError> {
        match self.state {
            State::Start => {
                // DIGEST-MD5 has no initial response; any is ignored.
                self.state = State::Challenged;
                let qop = match self.offer {
                    Protection::AuthOnly => "qop=\"auth\"",
                    Protection::AuthOrConf => "qop=\"auth-conf,auth\",cipher=\"rc4\"",
                    Protection::ConfOnly => "qop=\"auth-conf\",cipher=\"rc4\"",
                };
                Ok(format!(
                    "realm=\"{REALM}\",nonce=\"{}\",{qop},charset=utf-8,algorithm=md5-sess",
                    self.nonce
                )
                .into_bytes())
            }
            State::Challenged => {
                let rspauth = self.verify(token)?;
                self.state = State::Done;
                Ok(format!("rspauth={rspauth}").into_bytes())
            }
            State::Done => Err(SaslError::OutOfOrder),
        }
    }

    fn verify(&mut self, token: &[u8]) -> Result<String, SaslError> {
        if token.len() > MAX_RESPONSE {
            return Err(SaslError::Malformed("too long"));
        }
        let text = std::str::from_utf8(token).map_err(|_| SaslError::Malformed("not UTF-8"))?;
        let d = parse_directives(text)?;
        let get = |k: &'static str| {
            d.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let username = get("username").ok_or(SaslError::Malformed("username"))?;
        let nonce = get("nonce").ok_or(SaslError::Malformed("nonce"))?;
        let cnonce = get("cnonce").ok_or(SaslError::Malformed("cnonce"))?;
        let nc = get("nc").ok_or(SaslError::Malformed("nc"))?;
        let uri = get("digest-uri").ok_or(SaslError::Malformed("digest-uri"))?;
        let response = get("response").ok_or(SaslError::Malformed("response"))?;
        let qop = get("qop").unwrap_or("auth");
        let realm = get("realm").unwrap_or(REALM);
        let authzid = get("authzid");
        let offered = match self.offer {
            Protection::AuthOnly => qop == "auth",
            Protection::AuthOrConf => qop == "auth" || qop == "auth-conf",
            Protection::ConfOnly => qop == "auth-conf",
        };
        if !offered {
            return Err(SaslError::Malformed("qop (not offered)"));
        }
        if qop == "auth-conf" && get("cipher") != Some("rc4") {
            return Err(SaslError::Malformed("cipher (only rc4 is offered)"));
        }
        if nc != "00000001" {
            return Err(SaslError::Malformed("nc"));
        }
        let expected_user = encode(USER);
        // Every comparison below runs to the end, and every secret is tried, so the time
        // taken reveals nothing about which part was wrong.
        let mut ok = username.as_bytes().ct_eq(expected_user.as_bytes());
        ok &= nonce.as_bytes().ct_eq(self.nonce.as_bytes());
        let response = response.to_ascii_lowercase();
        let mut found: Option<(usize, String, [u8; 16])> = None;
        for (i, secret) in self.secrets.iter().enumerate() {
            let password = encode(secret);
            let input = DigestInput {
                password: &password,
                realm,
                nonce,
                cnonce,
                nc,
                authzid,
                uri,
                qop,
            };
            let (expected, ha1) = input.response("AUTHENTICATE");
            let this = response.as_bytes().ct_eq(expected.as_bytes());
            if bool::from(this & ok) && found.is_none() {
                found = Some((i, input.response("").0, ha1));
            }
        }
        let Some((i, rspauth, ha1)) = found else {
            return Err(SaslError::BadResponse);
        };
        self.matched = Some(i);
        self.conf = (qop == "auth-conf").then_some(ha1);
        Ok(rspauth)
    }
}

/// The values a DIGEST-MD5 response is computed over.
#[derive(Debug, Clone, Copy)]
pub struct DigestInput<'a> {
    /// The password (Spark: [`encode`] of the secret).
    pub password: &'a str,
    /// Realm.
    pub realm: &'a str,
    /// Server nonce.
    pub nonce: &'a str,
    /// Client nonce.
    pub cnonce: &'a str,
    /// Nonce count.
    pub nc: &'a str,
    /// Authorization id, if sent.
    pub authzid: Option<&'a str>,
    /// `digest-uri`.
    pub uri: &'a str,
    /// `auth` or `auth-conf`.
    pub qop: &'a str,
}

impl DigestInput<'_> {
    /// RFC 2831 `response-value` (`method` `AUTHENTICATE` for the client's response, empty for
    /// the server's `rspauth`) and the binary H(A1).
    pub fn response(&self, method: &str) -> (String, [u8; 16]) {
        let user_hash = Md5::digest(format!(
            "{}:{}:{}",
            B64.encode(USER),
            self.realm,
            self.password
        ));
        let mut a1 = user_hash.to_vec();
        a1.extend_from_slice(format!(":{}:{}", self.nonce, self.cnonce).as_bytes());
        if let Some(z) = self.authzid {
            a1.extend_from_slice(format!(":{z}").as_bytes());
        }
        let ha1: [u8; 16] = Md5::digest(&a1).into();
        let a2 = if self.qop == "auth" {
            format!("{method}:{}", self.uri)
        } else {
            format!("{method}:{}:00000000000000000000000000000000", self.uri)
        };
        let ha2 = hex::encode(Md5::digest(a2));
        let r = hex::encode(Md5::digest(format!(
            "{}:{}:{}:{}:{}:{ha2}",
            hex::encode(ha1),
            self.nonce,
            self.nc,
            self.cnonce,
            self.qop
        )));
        (r, ha1)
    }
}

/// RFC 2831 `response-value` with qop `auth`; `method` is `AUTHENTICATE` for the client's
/// response and empty for the server's `rspauth`.
#[allow(clippy::too_many_arguments)] // The digest is defined over exactly these values.
pub fn digest(
    password: &str,
    realm: &str,
    nonce: &str,
    cnonce: &str,
    nc: &str,
    authzid: Option<&str>,
    uri: &str,
    method: &str,
) -> String {
    DigestInput {
        password,
        realm,
        nonce,
        cnonce,
        nc,
        authzid,
        uri,
        qop: "auth",
    }
    .response(method)
    .0
}

/// Parses `key=value,key="quoted, value",...`.
fn parse_directives(s: &str) -> Result<Vec<(String, String)>, SaslError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i == b.len() {
            return Err(SaslError::Malformed("directive without '='"));
        }
        let key = s[k0..i].trim().to_owned();
        i += 1;
        let mut value = String::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(SaslError::Malformed("unterminated quote")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        // The escaped character may be several bytes long (found by
                        // fuzzing: taking one byte split a UTF-8 character).
                        let ch = s[i + 1..].chars().next().expect("in bounds");
                        value.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    Some(_) => {
                        let ch = s[i..].chars().next().expect("in bounds");
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
        } else {
            let v0 = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            value = s[v0..i].trim().to_owned();
        }
        if out.len() >= 32 {
            return Err(SaslError::Malformed("too many directives"));
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_break_lines_as_netty_does() {
        let b64 = |n: usize| encode(vec![b'a'; n]);
        assert_eq!(b64(57).len(), 76);
        assert!(!b64(57).contains('\n'));
        let long = b64(64);
        assert_eq!(long.len(), 89);
        assert_eq!(long.find('\n'), Some(76));
        assert_eq!(
            b64(114).matches('\n').count(),
            1,
            "no line break at the very end"
        );
        assert_eq!(encode(USER), "c3BhcmtTYXNsVXNlcg==");
    }

    const NONCE: &str = "0vC7X6/UfN2EVijaVM/6Z+dqxykAJyre7BbF7Wfi";
    const CNONCE: &str = "kRo7PWx8svzA5DXRzJx6Rf5WiZMmQbvxL45FuG2i";

    #[test]
    fn reference_vector() {
        let pw = B64.encode("secret");
        let r = digest(
            &pw,
            "default",
            NONCE,
            CNONCE,
            "00000001",
            None,
            "null/default",
            "AUTHENTICATE",
        );
        assert_eq!(r, "bf4b19270d207975931c718eb601b48b");
        let s = digest(
            &pw,
            "default",
            NONCE,
            CNONCE,
            "00000001",
            None,
            "null/default",
            "",
        );
        assert_eq!(s, "a58612c0d70f5a867fd2da79b3b723d5");
    }

    fn client_response(response: &str) -> Vec<u8> {
        format!(
            "charset=utf-8,username=\"c3BhcmtTYXNsVXNlcg==\",realm=\"default\",nonce=\"{NONCE}\",nc=00000001,cnonce=\"{CNONCE}\",digest-uri=\"null/default\",maxbuf=65536,response={response},qop=auth"
        )
        .into_bytes()
    }

    #[test]
    fn handshake() {
        let mut s = DigestServer::with_nonce(b"secret", NONCE.into());
        let challenge = String::from_utf8(s.step(b"").unwrap()).unwrap();
        assert!(challenge.contains(&format!("nonce=\"{NONCE}\"")));
        assert!(challenge.contains("qop=\"auth-conf,auth\""));
        let fin = s
            .step(&client_response("bf4b19270d207975931c718eb601b48b"))
            .unwrap();
        assert_eq!(fin, b"rspauth=a58612c0d70f5a867fd2da79b3b723d5");
        assert!(s.is_complete());
        assert_eq!(s.step(b""), Err(SaslError::OutOfOrder));
    }

    #[test]
    fn escaped_multibyte_characters_in_quoted_values() {
        let d = parse_directives("username=\"a\\\u{a0}b\",realm=\"\\\u{8d34}\"").unwrap();
        assert_eq!(d[0], ("username".into(), "a\u{a0}b".into()));
        assert_eq!(d[1], ("realm".into(), "\u{8d34}".into()));
        let mut server = DigestServer::with_nonce(b"secret", "nonce".into());
        let _ = server.step(b"");
        let _ = server.step("charset=utf-8,username=\"\\\u{a0},t\",nonce=\"x\"".as_bytes());
    }

    #[test]
    fn wrong_secret_and_garbage() {
        let mut s = DigestServer::with_nonce(b"other", NONCE.into());
        s.step(b"").unwrap();
        assert_eq!(
            s.step(&client_response("bf4b19270d207975931c718eb601b48b")),
            Err(SaslError::BadResponse)
        );
        assert!(!s.is_complete());
        for bad in [&b"\xff\xfe"[..], b"username", b"a=\"unterminated", b""] {
            let mut s = DigestServer::with_nonce(b"secret", NONCE.into());
            s.step(b"").unwrap();
            assert!(
                matches!(s.step(bad), Err(SaslError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn several_secrets_say_which_one_the_client_knows() {
        let secrets = vec![b"first".to_vec(), b"secret".to_vec(), b"third".to_vec()];
        let mut s = DigestServer::with_nonce_any(secrets, NONCE.into());
        s.step(b"").unwrap();
        let fin = s
            .step(&client_response("bf4b19270d207975931c718eb601b48b"))
            .unwrap();
        assert_eq!(fin, b"rspauth=a58612c0d70f5a867fd2da79b3b723d5");
        assert_eq!(s.matched(), Some(1));
        let mut none = DigestServer::with_nonce_any(vec![], NONCE.into());
        none.step(b"").unwrap();
        assert_eq!(
            none.step(&client_response("bf4b19270d207975931c718eb601b48b")),
            Err(SaslError::BadResponse)
        );
        assert_eq!(none.matched(), None);
        assert!(!format!("{s:?}").contains("third"), "Debug shows no secret");
    }
}
