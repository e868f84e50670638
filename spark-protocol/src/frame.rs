//! Spark's transport frames: `i64 frameLen` (counting itself), `u8 type`, a header per type,
//! then the body when it travels inside the frame. `StreamResponse` and `UploadStream` bodies
//! follow their frame as raw bytes, outside `frameLen`.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use crate::wire::{self, DecodeError, Reader};

/// Bytes of the frame length field.
pub const LENGTH_BYTES: usize = 8;

/// A chunk of a stream: `(streamId, chunkIndex)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamChunkId {
    /// Stream id from a `StreamHandle`.
    pub stream_id: i64,
    /// Chunk index within the stream.
    pub chunk_index: i32,
}

/// One transport message (`Message.Type` 0 to 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 0: a chunk of a stream.
    ChunkFetchRequest(StreamChunkId),
    /// 1: the chunk's bytes.
    ChunkFetchSuccess(StreamChunkId, Bytes),
    /// 2: the chunk failed.
    ChunkFetchFailure(StreamChunkId, String),
    /// 3: an RPC.
    RpcRequest {
        /// Correlation id.
        request_id: i64,
        /// Payload.
        body: Bytes,
    },
    /// 4: an RPC's reply.
    RpcResponse {
        /// Correlation id.
        request_id: i64,
        /// Payload (may be empty).
        body: Bytes,
    },
    /// 5: an RPC failed.
    RpcFailure {
        /// Correlation id.
        request_id: i64,
        /// Text shown to the client.
        error: String,
    },
    /// 6: a chunk sent as a stream (`"<streamId>_<chunkIndex>"`).
    StreamRequest(String),
    /// 7: header of a stream; `byte_count` raw bytes follow the frame.
    StreamResponse {
        /// Stream id string.
        stream_id: String,
        /// Raw bytes after the frame.
        byte_count: i64,
    },
    /// 8: a stream failed.
    StreamFailure {
        /// Stream id string.
        stream_id: String,
        /// Text shown to the client.
        error: String,
    },
    /// 9: a message without a reply.
    OneWayMessage(Bytes),
    /// 10: an upload; `body_byte_count` raw bytes follow the frame.
    UploadStream {
        /// Correlation id.
        request_id: i64,
        /// Metadata (a BlockTransferMessage).
        meta: Bytes,
        /// Raw bytes after the frame.
        body_byte_count: i64,
    },
    /// 11: push-based shuffle metadata request.
    MergedBlockMetaRequest {
        /// Correlation id.
        request_id: i64,
        /// Application.
        app_id: String,
        /// Shuffle.
        shuffle_id: i32,
        /// Merge id.
        shuffle_merge_id: i32,
        /// Reduce partition.
        reduce_id: i32,
    },
    /// 12: push-based shuffle metadata.
    MergedBlockMetaSuccess {
        /// Correlation id.
        request_id: i64,
        /// Chunks.
        num_chunks: i32,
        /// Chunk bitmaps.
        body: Bytes,
    },
}

impl Message {
    /// The type byte.
    pub fn type_id(&self) -> u8 {
        match self {
            Self::ChunkFetchRequest(_) => 0,
            Self::ChunkFetchSuccess(..) => 1,
            Self::ChunkFetchFailure(..) => 2,
            Self::RpcRequest { .. } => 3,
            Self::RpcResponse { .. } => 4,
            Self::RpcFailure { .. } => 5,
            Self::StreamRequest(_) => 6,
            Self::StreamResponse { .. } => 7,
            Self::StreamFailure { .. } => 8,
            Self::OneWayMessage(_) => 9,
            Self::UploadStream { .. } => 10,
            Self::MergedBlockMetaRequest { .. } => 11,
            Self::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// The type's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ChunkFetchRequest(_) => "ChunkFetchRequest",
            Self::ChunkFetchSuccess(..) => "ChunkFetchSuccess",
            Self::ChunkFetchFailure(..) => "ChunkFetchFailure",
            Self::RpcRequest { .. } => "RpcRequest",
            Self::RpcResponse { .. } => "RpcResponse",
            Self::RpcFailure { .. } => "RpcFailure",
            Self::StreamRequest(_) => "StreamRequest",
            Self::StreamResponse { .. } => "StreamResponse",
            Self::StreamFailure { .. } => "StreamFailure",
            Self::OneWayMessage(_) => "OneWayMessage",
            Self::UploadStream { .. } => "UploadStream",
            Self::MergedBlockMetaRequest { .. } => "MergedBlockMetaRequest",
            Self::MergedBlockMetaSuccess { .. } => "MergedBlockMetaSuccess",
        }
    }

    /// Raw bytes that follow this frame outside it.
    pub fn trailing_body_len(&self) -> i64 {
        match self {
            Self::StreamResponse { byte_count, .. } => *byte_count,
            Self::UploadStream {
                body_byte_count, ..
            } => *body_byte_count,
            _ => 0,
        }
    }

    /// Appends the whole frame (for `StreamResponse`/`UploadStream`, the header only: the
    /// caller writes the raw body next).
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_i64(0);
        out.put_u8(self.type_id());
        match self {
            Self::ChunkFetchRequest(id) => put_chunk_id(out, *id),
            Self::ChunkFetchSuccess(id, body) => {
                put_chunk_id(out, *id);
                out.put_slice(body);
            }
            Self::ChunkFetchFailure(id, e) => {
                put_chunk_id(out, *id);
                wire::put_string(out, e);
            }
            Self::RpcRequest { request_id, body } | Self::RpcResponse { request_id, body } => {
                out.put_i64(*request_id);
                out.put_i32(body_len(body.len()));
                out.put_slice(body);
            }
            Self::RpcFailure { request_id, error } => {
                out.put_i64(*request_id);
                wire::put_string(out, error);
            }
            Self::StreamRequest(id) => wire::put_string(out, id),
            Self::StreamResponse {
                stream_id,
                byte_count,
            } => {
                wire::put_string(out, stream_id);
                out.put_i64(*byte_count);
            }
            Self::StreamFailure { stream_id, error } => {
                wire::put_string(out, stream_id);
                wire::put_string(out, error);
            }
            Self::OneWayMessage(body) => {
                out.put_i32(body_len(body.len()));
                out.put_slice(body);
            }
            Self::UploadStream {
                request_id,
                meta,
                body_byte_count,
            } => {
                out.put_i64(*request_id);
                out.put_i32(body_len(meta.len()));
                out.put_slice(meta);
                out.put_i64(*body_byte_count);
            }
            Self::MergedBlockMetaRequest {
                request_id,
                app_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            } => {
                out.put_i64(*request_id);
                wire::put_string(out, app_id);
                out.put_i32(*shuffle_id);
                out.put_i32(*shuffle_merge_id);
                out.put_i32(*reduce_id);
            }
            Self::MergedBlockMetaSuccess {
                request_id,
                num_chunks,
                body,
            } => {
                out.put_i64(*request_id);
                out.put_i32(*num_chunks);
                out.put_slice(body);
            }
        }
        let len = (out.len() - start) as i64;
        out[start..start + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame's contents (after the length field).
    ///
    /// # Errors
    /// A malformed or unknown message.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let t = r.u8("message type")?;
        let m = match t {
            0 => Self::ChunkFetchRequest(chunk_id(&mut r)?),
            1 => Self::ChunkFetchSuccess(chunk_id(&mut r)?, r.rest()),
            2 => Self::ChunkFetchFailure(chunk_id(&mut r)?, r.string("error")?),
            3 | 4 => {
                let request_id = r.i64("request id")?;
                // The length is redundant ("for backward compat"); the body is the rest.
                r.i32("body length")?;
                let body = r.rest();
                if t == 3 {
                    Self::RpcRequest { request_id, body }
                } else {
                    Self::RpcResponse { request_id, body }
                }
            }
            5 => Self::RpcFailure {
                request_id: r.i64("request id")?,
                error: r.string("error")?,
            },
            6 => Self::StreamRequest(r.string("stream id")?),
            7 => Self::StreamResponse {
                stream_id: r.string("stream id")?,
                byte_count: r.i64("byte count")?,
            },
            8 => Self::StreamFailure {
                stream_id: r.string("stream id")?,
                error: r.string("error")?,
            },
            9 => {
                r.i32("body length")?;
                Self::OneWayMessage(r.rest())
            }
            10 => Self::UploadStream {
                request_id: r.i64("request id")?,
                meta: r.byte_array("meta")?,
                body_byte_count: r.i64("body byte count")?,
            },
            11 => Self::MergedBlockMetaRequest {
                request_id: r.i64("request id")?,
                app_id: r.string("app id")?,
                shuffle_id: r.i32("shuffle id")?,
                shuffle_merge_id: r.i32("shuffle merge id")?,
                reduce_id: r.i32("reduce id")?,
            },
            12 => Self::MergedBlockMetaSuccess {
                request_id: r.i64("request id")?,
                num_chunks: r.i32("chunk count")?,
                body: r.rest(),
            },
            other => {
                return Err(DecodeError::UnknownType {
                    what: "message",
                    id: other as i8,
                });
            }
        };
        r.finish()?;
        if m.trailing_body_len() < 0 {
            return Err(DecodeError::Negative("out-of-frame body"));
        }
        Ok(m)
    }
}

fn body_len(n: usize) -> i32 {
    i32::try_from(n).expect("in-frame bodies are below 2 GiB")
}

fn put_chunk_id(out: &mut BytesMut, id: StreamChunkId) {
    out.put_i64(id.stream_id);
    out.put_i32(id.chunk_index);
}

fn chunk_id(r: &mut Reader) -> Result<StreamChunkId, DecodeError> {
    Ok(StreamChunkId {
        stream_id: r.i64("stream id")?,
        chunk_index: r.i32("chunk index")?,
    })
}

/// The header of a `ChunkFetchSuccess` whose `body_len` bytes the caller sends next.
pub fn chunk_success_header(id: StreamChunkId, body_len: u64) -> [u8; 21] {
    let mut h = [0u8; 21];
    let frame = 21 + body_len;
    h[..8].copy_from_slice(&frame.to_be_bytes());
    h[8] = 1;
    h[9..17].copy_from_slice(&id.stream_id.to_be_bytes());
    h[17..21].copy_from_slice(&id.chunk_index.to_be_bytes());
    h
}

/// A frame that cannot be accepted: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Frame length outside `(0, max]`.
    #[error("frame length {0} out of range")]
    Length(i64),
    /// Malformed contents.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Splits a byte stream into messages.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames whose contents exceed `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The next whole message in `buf`, consuming it; `None` until one is complete.
    ///
    /// # Errors
    /// A frame length out of range or a malformed message.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        if buf.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let len = i64::from_be_bytes(buf[..LENGTH_BYTES].try_into().expect("8 bytes"));
        // Checked: a length near i64::MIN would overflow (found by fuzzing).
        if len
            .checked_sub(LENGTH_BYTES as i64)
            .is_none_or(|c| c <= 0 || c as u64 > self.max_frame as u64)
        {
            return Err(FrameError::Length(len));
        }
        let total = len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(LENGTH_BYTES);
        Ok(Some(Message::decode(frame.freeze())?))
    }
}

#[cfg(test)]
mod length_tests {
    use super::*;

    #[test]
    fn lengths_that_would_overflow_are_refused() {
        let d = FrameDecoder::new(1 << 20);
        for len in [i64::MIN, i64::MIN + 7, -1, 0, 8, i64::MAX] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            buf.extend_from_slice(&[0; 32]);
            assert!(d.decode(&mut buf).is_err(), "{len}");
        }
    }
}
