//! Length-prefixed frames: how payloads travel on a byte stream.
//!
//! A frame is a 12-byte header followed by the payload:
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0..2 | magic `PV` |
//! | 2 | format version ([`VERSION`]) |
//! | 3 | reserved, 0 |
//! | 4..12 | payload length, little-endian `u64` |
//!
//! The payload is opaque: the VM puts MessagePack (rmp-serde) in it. The announced length
//! is checked against a limit before anything is allocated, so a peer that announces 4 GiB
//! costs nothing but the 12 bytes of its header.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use crate::Error;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"PV";
/// The version of the frame format this crate reads and writes.
pub const VERSION: u8 = 1;
/// The size of a frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// The default limit on one payload: 1 GiB.
pub const DEFAULT_MAX_FRAME: u64 = 1 << 30;

/// Builds the header of a frame carrying `len` bytes.
#[must_use]
pub fn encode_header(len: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = VERSION;
    header[4..].copy_from_slice(&len.to_le_bytes());
    header
}

/// Checks a header and returns the payload length it announces.
///
/// # Errors
/// [`Error::ForeignFrame`] for a wrong magic or reserved byte, [`Error::FrameVersion`] for
/// another format version, [`Error::FrameTooLarge`] when the length exceeds `max_frame`.
pub fn decode_header(header: &[u8; HEADER_LEN], max_frame: u64) -> Result<usize, Error> {
    if header[..2] != MAGIC || header[3] != 0 {
        return Err(Error::ForeignFrame {
            start: [header[0], header[1], header[2], header[3]],
        });
    }
    if header[2] != VERSION {
        return Err(Error::FrameVersion {
            found: header[2],
            expected: VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[4..]);
    let len = u64::from_le_bytes(len);
    if len > max_frame {
        return Err(Error::FrameTooLarge {
            len,
            limit: max_frame,
        });
    }
    usize::try_from(len).map_err(|_| Error::FrameTooLarge {
        len,
        limit: max_frame,
    })
}

/// Writes one frame: header and payload in one vectored write, without copying the payload.
///
/// # Errors
/// The I/O error of the underlying writer.
pub fn write_frame<W: Write + ?Sized>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    let header = encode_header(payload.len() as u64);
    write_all_vectored(writer, &mut [IoSlice::new(&header), IoSlice::new(payload)])
}

/// Writes one frame whose payload is the concatenation of `parts`: the header and every
/// part in vectored writes, without copying the parts.
pub(crate) fn write_frame_parts<W: Write + ?Sized>(
    writer: &mut W,
    parts: &[&[u8]],
) -> io::Result<()> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let header = encode_header(len as u64);
    let mut slices: Vec<IoSlice<'_>> = std::iter::once(&header[..])
        .chain(parts.iter().copied())
        .map(IoSlice::new)
        .collect();
    write_all_vectored(writer, &mut slices)
}

/// Writes every byte of `slices`, retrying partial and interrupted writes.
fn write_all_vectored<W: Write + ?Sized>(
    writer: &mut W,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut bufs: &mut [IoSlice<'_>] = slices;
    // Skip empty slices so a zero-length payload does not look like a stalled write.
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match writer.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection accepted no more bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads one frame and returns its payload; `Ok(None)` at a clean end of stream (the peer
/// closed the connection between two frames).
///
/// # Errors
/// A bad header (see [`decode_header`]), [`Error::FrameTruncated`] when the stream ends
/// inside a frame, [`Error::FrameIo`] for other I/O errors.
pub fn read_frame<R: Read + ?Sized>(
    reader: &mut R,
    max_frame: u64,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(len) = read_header(reader, max_frame)? else {
        return Ok(None);
    };
    // Zeroed allocations of large sizes come straight from the kernel, already zero, so
    // this costs no memset; the pages are touched only as the payload arrives.
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match reader.read(&mut payload[got..]) {
            Ok(0) => {
                return Err(Error::FrameTruncated {
                    expected: len as u64,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    Ok(Some(payload))
}

/// Reads a frame header and returns the payload length it announces; `Ok(None)` at a clean
/// end of stream (before the first byte of the header).
fn read_header<R: Read + ?Sized>(reader: &mut R, max_frame: u64) -> Result<Option<usize>, Error> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::FrameTruncated {
                    expected: HEADER_LEN as u64,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    decode_header(&header, max_frame).map(Some)
}

/// A socket a payload can be read from straight into a vector's spare capacity: std's
/// sockets read into memory that is not zeroed first, where a generic reader (or a
/// wrapper that only forwards `read`) zeroes each chunk before the kernel fills it.
pub(crate) trait ReadRest: Read {
    /// Appends up to `n` bytes to `into`, until `n` bytes or the end of the stream, as
    /// `Read::take(self, n).read_to_end(into)` on the socket itself.
    fn read_rest(&mut self, n: u64, into: &mut Vec<u8>) -> io::Result<usize>;
}

impl ReadRest for UnixStream {
    fn read_rest(&mut self, n: u64, into: &mut Vec<u8>) -> io::Result<usize> {
        Read::take(&*self, n).read_to_end(into)
    }
}

impl ReadRest for TcpStream {
    fn read_rest(&mut self, n: u64, into: &mut Vec<u8>) -> io::Result<usize> {
        Read::take(&*self, n).read_to_end(into)
    }
}

/// Reads one frame like [`read_frame`], from a connection's buffered reader: copies only
/// what is already buffered and reads the rest of the payload straight from the socket
/// into memory that is not zeroed first, so a 10 MiB payload costs the kernel's copy and
/// nothing more.
pub(crate) fn read_frame_buffered<S: ReadRest>(
    reader: &mut BufReader<S>,
    max_frame: u64,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(len) = read_header(reader, max_frame)? else {
        return Ok(None);
    };
    let mut payload = Vec::with_capacity(len);
    let buffered = reader.buffer();
    let take = buffered.len().min(len);
    payload.extend_from_slice(&buffered[..take]);
    reader.consume(take);
    let rest = (len - payload.len()) as u64;
    if rest > 0 {
        // The buffer is empty now, so reading past it keeps the stream in order.
        match reader.get_mut().read_rest(rest, &mut payload) {
            Ok(_) if payload.len() == len => {}
            Ok(_) => {
                return Err(Error::FrameTruncated {
                    expected: len as u64,
                    got: payload.len() as u64,
                });
            }
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn header_layout() {
        let header = encode_header(0x0102);
        assert_eq!(&header[..4], b"PV\x01\x00");
        assert_eq!(&header[4..], &[2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn round_trip_of_sizes() {
        for size in [0usize, 1, 11, 12, 13, 4096, 1 << 20] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let bytes = framed(&payload);
            assert_eq!(bytes.len(), HEADER_LEN + size);
            let mut cursor = Cursor::new(bytes);
            assert_eq!(
                read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap(),
                Some(payload)
            );
            assert_eq!(read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap(), None);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut huge = encode_header(4 << 30).to_vec();
        huge.extend_from_slice(b"tail");
        let mut version = encode_header(3).to_vec();
        version[2] = 9;
        version.extend_from_slice(b"abc");
        let mut truncated = framed(b"hello");
        truncated.pop();
        type Check = fn(&Error) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            (
                "4 GiB announced",
                huge,
                |e| matches!(e, Error::FrameTooLarge { len, .. } if *len == 4 << 30),
            ),
            ("foreign magic", b"GET / HTTP/1.1\r\n".to_vec(), |e| {
                matches!(e, Error::ForeignFrame { .. })
            }),
            ("other version", version, |e| {
                matches!(e, Error::FrameVersion { found: 9, .. })
            }),
            ("truncated header", b"PV\x01".to_vec(), |e| {
                matches!(e, Error::FrameTruncated { got: 3, .. })
            }),
            ("truncated payload", truncated, |e| {
                matches!(
                    e,
                    Error::FrameTruncated {
                        expected: 5,
                        got: 4
                    }
                )
            }),
        ];
        for (name, bytes, check) in cases {
            let err = read_frame(&mut Cursor::new(bytes), DEFAULT_MAX_FRAME).unwrap_err();
            assert!(check(&err), "{name}: {err}");
        }
    }

    #[test]
    fn limit_is_configurable() {
        let bytes = framed(&[7; 100]);
        assert!(read_frame(&mut Cursor::new(&bytes), 99).is_err());
        assert!(read_frame(&mut Cursor::new(&bytes), 100).is_ok());
    }

    /// A writer that takes at most 3 bytes per call, to exercise partial vectored writes.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut cursor = Cursor::new(bytes);
            // Reading until an error or the end must terminate without panicking.
            while let Ok(Some(_)) = read_frame(&mut cursor, 1 << 16) {}
        }

        #[test]
        fn arbitrary_header_then_bytes(len in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut bytes = encode_header(len).to_vec();
            bytes.extend_from_slice(&tail);
            let result = read_frame(&mut Cursor::new(bytes), 1 << 20);
            if len as usize <= tail.len() {
                prop_assert_eq!(result.unwrap().unwrap(), tail[..len as usize].to_vec());
            } else {
                prop_assert!(result.is_err());
            }
        }

        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut writer = Trickle(Vec::new());
            for payload in &payloads {
                write_frame(&mut writer, payload).unwrap();
            }
            let mut cursor = Cursor::new(writer.0);
            for payload in &payloads {
                let read = read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap();
                prop_assert_eq!(read.as_ref(), Some(payload));
            }
            prop_assert_eq!(read_frame(&mut cursor, DEFAULT_MAX_FRAME).unwrap(), None);
        }
    }

    /// The size of a connection's read buffer in the star.
    const BUFFER: usize = 16 * 1024;

    /// A connected pair: the near end to write, the far end buffered as a connection's
    /// reader is.
    fn pair() -> (UnixStream, BufReader<UnixStream>) {
        let (near, far) = UnixStream::pair().unwrap();
        (near, BufReader::with_capacity(BUFFER, far))
    }

    #[test]
    fn parts_read_back_as_one_frame() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![vec![], vec![]],
            vec![b"head".to_vec(), big],
            vec![b"a".to_vec(), vec![], b"bc".to_vec()],
        ];
        let expected: Vec<Vec<u8>> = cases.iter().map(|parts| parts.concat()).collect();
        let (mut near, mut far) = pair();
        let writer = std::thread::spawn(move || {
            for parts in &cases {
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                write_frame_parts(&mut near, &parts).unwrap();
            }
        });
        for want in expected {
            let got = read_frame(&mut far, u64::MAX).unwrap().unwrap();
            assert_eq!(got, want);
        }
        writer.join().unwrap();
    }

    #[test]
    fn frames_of_every_size_read_back_in_order() {
        let (mut near, mut reader) = pair();
        let sizes = [0usize, 1, 12, BUFFER - 20, BUFFER, 3 * BUFFER + 7, 1 << 20];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i % 253) as u8).collect())
            .collect();
        let sent = payloads.clone();
        let writer = std::thread::spawn(move || {
            for payload in &sent {
                write_frame(&mut near, payload).unwrap();
            }
        });
        for payload in &payloads {
            let got = read_frame_buffered(&mut reader, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(got.as_ref().map(Vec::len), Some(payload.len()));
            assert!(got.as_ref() == Some(payload));
        }
        writer.join().unwrap();
        assert_eq!(
            read_frame_buffered(&mut reader, DEFAULT_MAX_FRAME).unwrap(),
            None
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let (mut near, mut reader) = pair();
        let mut truncated = encode_header(100).to_vec();
        truncated.extend_from_slice(&[1; 40]);
        near.write_all(&truncated).unwrap();
        drop(near);
        assert!(matches!(
            read_frame_buffered(&mut reader, DEFAULT_MAX_FRAME),
            Err(Error::FrameTruncated {
                expected: 100,
                got: 40
            })
        ));
        let (mut near, mut reader) = pair();
        near.write_all(&encode_header(1 << 40)).unwrap();
        assert!(matches!(
            read_frame_buffered(&mut reader, 1 << 20),
            Err(Error::FrameTooLarge { .. })
        ));
    }
}
