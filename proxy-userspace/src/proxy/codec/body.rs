//! Message bodies: a decoder that finds the body's bytes in what was read (by length, chunked
//! per RFC 9112 section 7.1, or until the connection closes), and the chunked encoding written
//! on the other side. Decoding never buffers: it walks the bytes where they lie and says which
//! of them are payload, so a body streams through in pieces of whatever size was read.
use std::ops::Range;

use super::head::Framing;

/// What one [`Decoder::decode`] call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used (framing and payload).
    pub consumed: usize,
    /// Payload within the input (possibly empty).
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The chunked framing is broken (RFC 9112 section 7.1).
    Chunked,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Chunked => f.write_str("malformed chunked body"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        digits: u8,
    },
    /// Whitespace after the size (RFC 9112 section 7.1.1's BWS before an extension).
    SizeWs,
    /// A chunk extension, after its `;`.
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Length(u64),
    Chunked { state: ChunkState },
    Close,
    Done,
}

/// Where a chunked decoder is (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkState {
    chunk: Chunk,
    size: u64,
}

impl Decoder {
    pub fn new(f: Framing) -> Decoder {
        match f {
            Framing::None | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked {
                state: ChunkState {
                    chunk: Chunk::Size { digits: 0 },
                    size: 0,
                },
            },
            Framing::Close => Decoder::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Body bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Walks `input` up to the first payload piece and past it: call again with the rest
    /// while `consumed` is short of the input and the body is not done.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        match self {
            Decoder::Done => Ok(Step {
                consumed: 0,
                data: 0..0,
            }),
            Decoder::Close => Ok(Step {
                consumed: input.len(),
                data: 0..input.len(),
            }),
            Decoder::Length(n) => {
                let take = (*n).min(input.len() as u64) as usize;
                *n -= take as u64;
                if *n == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step {
                    consumed: take,
                    data: 0..take,
                })
            }
            Decoder::Chunked { state } => {
                let (step, done) = chunked(state, input)?;
                if done {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }
}

/// Returns the step and whether the body ended.
fn chunked(st: &mut ChunkState, input: &[u8]) -> Result<(Step, bool), BodyError> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data(n) = st.chunk {
            let take = n.min((input.len() - i) as u64) as usize;
            st.chunk = if n == take as u64 {
                Chunk::DataCr
            } else {
                Chunk::Data(n - take as u64)
            };
            return Ok((
                Step {
                    consumed: i + take,
                    data: i..i + take,
                },
                false,
            ));
        }
        let b = input[i];
        st.chunk = match st.chunk {
            Chunk::Size { digits } => match b {
                // At most 15 hex digits: the size fits in a u64.
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    st.size = st.size * 16 + u64::from(d);
                    Chunk::Size { digits: digits + 1 }
                }
                b';' if digits > 0 => Chunk::Ext,
                b' ' | b'\t' if digits > 0 => Chunk::SizeWs,
                b'\r' if digits > 0 => Chunk::SizeLf,
                _ => return Err(BodyError::Chunked),
            },
            // Only more whitespace, an extension or the end of the line may follow: `5 x` is
            // not a size (httparse and RFC 9112 refuse it too).
            Chunk::SizeWs => match b {
                b' ' | b'\t' => Chunk::SizeWs,
                b';' => Chunk::Ext,
                b'\r' => Chunk::SizeLf,
                _ => return Err(BodyError::Chunked),
            },
            Chunk::Ext => match b {
                b'\r' => Chunk::SizeLf,
                b'\n' => return Err(BodyError::Chunked),
                _ => Chunk::Ext,
            },
            Chunk::SizeLf if b == b'\n' => {
                if st.size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(std::mem::take(&mut st.size))
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { digits: 0 },
            // Trailer fields are read and dropped: they are not forwarded.
            Chunk::TrailerStart if b == b'\r' => Chunk::EndLf,
            Chunk::TrailerStart | Chunk::TrailerLine if b != b'\r' && b != b'\n' => {
                Chunk::TrailerLine
            }
            Chunk::TrailerLine if b == b'\r' => Chunk::TrailerLf,
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::EndLf if b == b'\n' => {
                return Ok((
                    Step {
                        consumed: i + 1,
                        data: i..i,
                    },
                    true,
                ));
            }
            _ => return Err(BodyError::Chunked),
        };
        i += 1;
    }
    Ok((
        Step {
            consumed: i,
            data: i..i,
        },
        false,
    ))
}

/// Appends the chunk header for `len` payload bytes (the payload and its CRLF follow).
pub fn chunk_head(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a chunked body: the last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Moves the body bytes of `src` that `dec` finds into `out`, chunked again when `chunked`
/// (with the last chunk once the body is complete); leaves in `src` what follows the body.
/// Returns the payload bytes moved.
pub fn reframe(
    dec: &mut Decoder,
    src: &mut crate::proxy::buf::Buf,
    out: &mut Vec<u8>,
    chunked: bool,
) -> Result<u64, BodyError> {
    let mut moved = 0u64;
    let was_done = dec.is_done();
    while !src.is_empty() && !dec.is_done() {
        let step = dec.decode(src.as_slice())?;
        let data = &src.as_slice()[step.data.clone()];
        if !data.is_empty() {
            if chunked {
                chunk_head(out, data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(data);
            }
            moved += data.len() as u64;
        }
        src.consume(step.consumed);
        if step.consumed == 0 {
            break;
        }
    }
    if chunked && dec.is_done() && !was_done {
        out.extend_from_slice(LAST_CHUNK);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through a decoder in pieces of `step` bytes; returns the payload and
    /// whether the body ended, and how many bytes of input were left after its end.
    fn run(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, bool, usize), BodyError> {
        let mut d = Decoder::new(framing);
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        while fed < input.len() || !pending.is_empty() {
            if fed < input.len() {
                let end = (fed + step).min(input.len());
                pending.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            loop {
                if d.is_done() {
                    return Ok((out, true, pending.len() + input.len() - fed));
                }
                let s = d.decode(&pending)?;
                out.extend_from_slice(&pending[s.data.clone()]);
                pending.drain(..s.consumed);
                if s.consumed == 0 || pending.is_empty() {
                    break;
                }
            }
            if fed == input.len() && !d.is_done() {
                break;
            }
        }
        Ok((out, d.is_done(), pending.len()))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let input =
            b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (out, done, left) = run(Framing::Chunked, input, step).unwrap();
            assert_eq!(out, b"hello0123456789abcdef", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(left, b"GET /next".len(), "step {step}");
        }
    }

    #[test]
    fn whitespace_may_stand_before_an_extension_or_the_line_end() {
        for ok in [
            &b"5 \r\nhello\r\n0\r\n\r\n"[..],
            b"5 \t;a=b\r\nhello\r\n0\r\n\r\n",
        ] {
            let (out, done, _) = run(Framing::Chunked, ok, 1).unwrap();
            assert_eq!(out, b"hello", "{}", String::from_utf8_lossy(ok));
            assert!(done);
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (out, done, left) = run(Framing::Length(5), b"helloGET", 3).unwrap();
        assert_eq!(out, b"hello");
        assert!(done);
        assert_eq!(left, 3);
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"ffffffffffffffffffffff\r\nx\r\n0\r\n\r\n"[..],
            b"3\r\nabcdef\r\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"0\r\nbad\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5 \t1\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                run(Framing::Chunked, bad, 2).map(|r| r.1),
                Err(BodyError::Chunked),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_heads_are_hex() {
        let mut v = Vec::new();
        chunk_head(&mut v, 255);
        assert_eq!(v, b"ff\r\n");
    }
}
