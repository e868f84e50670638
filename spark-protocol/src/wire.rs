//! Spark's primitive encodings (`Encoders`): big-endian integers, length-prefixed UTF-8
//! strings, byte arrays and arrays. Every read is bounds-checked against the bytes that are
//! left; an array count can never make the decoder allocate more than the input could hold.

use bytes::{BufMut as _, Bytes, BytesMut};

/// A malformed encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a field needs.
    #[error("truncated {what}: needs {need} bytes, {left} left")]
    Truncated {
        /// The field.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// A negative length or count.
    #[error("negative {0} length")]
    Negative(&'static str),
    /// A string that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A type byte this side does not know.
    #[error("unknown {what} type {id}")]
    UnknownType {
        /// Message family.
        what: &'static str,
        /// The type byte.
        id: i8,
    },
    /// A value outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A cursor over a message.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated {
                what,
                need: n,
                left: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// A boolean byte (Netty's `readBoolean`: any non-zero is true).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        Ok(self.u8(what)? != 0)
    }

    /// A big-endian i32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A non-negative length that fits what is left, with `unit` bytes per element.
    fn count(&mut self, what: &'static str, unit: usize) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Negative(what))?;
        if n.saturating_mul(unit) > self.left() {
            return Err(DecodeError::Truncated {
                what,
                need: n.saturating_mul(unit),
                left: self.left(),
            });
        }
        Ok(n)
    }

    /// A length-prefixed slice, zero-copy.
    pub fn byte_array(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.count(what, 1)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// A length-prefixed UTF-8 string.
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.count(what, 1)?;
        let s = std::str::from_utf8(self.take(n, what)?).map_err(|_| DecodeError::NotUtf8(what))?;
        Ok(s.to_owned())
    }

    /// A counted array of strings.
    pub fn string_array(&mut self, what: &'static str) -> Result<Vec<String>, DecodeError> {
        let n = self.count(what, 4)?;
        (0..n).map(|_| self.string(what)).collect()
    }

    /// A counted array of i32.
    pub fn int_array(&mut self, what: &'static str) -> Result<Vec<i32>, DecodeError> {
        let n = self.count(what, 4)?;
        (0..n).map(|_| self.i32(what)).collect()
    }

    /// A counted array of i64.
    pub fn long_array(&mut self, what: &'static str) -> Result<Vec<i64>, DecodeError> {
        let n = self.count(what, 8)?;
        (0..n).map(|_| self.i64(what)).collect()
    }

    /// A count of following elements of at least `unit` bytes each.
    pub fn array_len(&mut self, what: &'static str, unit: usize) -> Result<usize, DecodeError> {
        self.count(what, unit)
    }

    /// Everything left, zero-copy.
    pub fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// Fails when bytes are left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

fn len_i32(n: usize) -> i32 {
    // Every encoded value comes from a decoded one or from bounded server state.
    i32::try_from(n).expect("encoded length fits an i32")
}

/// Appends a string.
pub fn put_string(out: &mut BytesMut, s: &str) {
    out.put_i32(len_i32(s.len()));
    out.put_slice(s.as_bytes());
}

/// Appends a byte array.
pub fn put_byte_array(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(len_i32(b.len()));
    out.put_slice(b);
}

/// Appends a string array.
pub fn put_string_array<S: AsRef<str>>(out: &mut BytesMut, v: &[S]) {
    out.put_i32(len_i32(v.len()));
    for s in v {
        put_string(out, s.as_ref());
    }
}

/// Appends an i32 array.
pub fn put_int_array(out: &mut BytesMut, v: &[i32]) {
    out.put_i32(len_i32(v.len()));
    for x in v {
        out.put_i32(*x);
    }
}

/// Appends an i64 array.
pub fn put_long_array(out: &mut BytesMut, v: &[i64]) {
    out.put_i32(len_i32(v.len()));
    for x in v {
        out.put_i64(*x);
    }
}

/// Encoded size of a string.
pub fn string_len(s: &str) -> usize {
    4 + s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cannot_exceed_input() {
        let mut r = Reader::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]));
        assert!(matches!(
            r.string_array("ids"),
            Err(DecodeError::Truncated { .. })
        ));
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]));
        assert_eq!(r.string("s"), Err(DecodeError::Negative("s")));
        let mut r = Reader::new(Bytes::from_static(&[0, 0, 0, 2, 0xc3, 0x28]));
        assert_eq!(r.string("s"), Err(DecodeError::NotUtf8("s")));
    }

    #[test]
    fn round_trip() {
        let mut b = BytesMut::new();
        put_string(&mut b, "app-1");
        put_long_array(&mut b, &[1, -2]);
        put_int_array(&mut b, &[]);
        let mut r = Reader::new(b.freeze());
        assert_eq!(r.string("s").unwrap(), "app-1");
        assert_eq!(r.long_array("l").unwrap(), vec![1, -2]);
        assert!(r.int_array("i").unwrap().is_empty());
        r.finish().unwrap();
    }
}
