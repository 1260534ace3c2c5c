//! [`Payload`]: the bytes of a user message, kept in the buffer its frame arrived in.
//!
//! Must not know frames (the wire finds the range), tasks or values.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;

use crate::Error;

/// The bytes of a user message.
///
/// A received message keeps the buffer its frame arrived in and the range of the message
/// within it, so a big message is not copied again on its way to the program.
#[derive(Clone)]
pub struct Payload {
    buf: Vec<u8>,
    range: Range<usize>,
}

impl Payload {
    /// A payload of all of `buf`.
    pub(crate) fn from_vec(buf: Vec<u8>) -> Payload {
        let range = 0..buf.len();
        Payload { buf, range }
    }

    /// A payload in `frame`, where [`wire::locate`](crate::wire::locate) found it
    /// (or the bytes it had to copy).
    pub(crate) fn from_frame(frame: Vec<u8>, located: Result<Range<usize>, Vec<u8>>) -> Payload {
        match located {
            Ok(range) => Payload { buf: frame, range },
            Err(bytes) => Payload::from_vec(bytes),
        }
    }

    /// The raw bytes (as sent with `send_bytes`, or MessagePack as sent with `send`).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    /// Takes the raw bytes (moving them to the front of the buffer they arrived in, when
    /// they do not start there).
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        let Payload { mut buf, range } = self;
        buf.truncate(range.end);
        buf.drain(..range.start);
        buf
    }

    /// Decodes a value sent with `send`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not a MessagePack `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmp_serde::from_slice(self.bytes()).map_err(|source| Error::Decode {
            what: format!("a user message of {} bytes", self.range.len()),
            wanted: std::any::type_name::<T>(),
            source,
        })
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_in_a_frame() {
        let frame = b"headerHELLOtrailer".to_vec();
        let payload = Payload::from_frame(frame.clone(), Ok(6..11));
        assert_eq!(payload.bytes(), b"HELLO");
        assert_eq!(payload, Payload::from_vec(b"HELLO".to_vec()));
        assert_eq!(format!("{payload:?}"), "Payload(5 bytes)");
        assert_eq!(payload.clone().into_bytes(), b"HELLO");
        let copied = Payload::from_frame(frame, Err(b"copy".to_vec()));
        assert_eq!(copied.into_bytes(), b"copy");
        let empty = Payload::from_frame(b"abc".to_vec(), Ok(3..3));
        assert!(empty.bytes().is_empty());
        assert!(empty.into_bytes().is_empty());
    }

    #[test]
    fn payload_decodes_its_range_only() {
        let mut frame = vec![0xc1u8; 4];
        let start = frame.len();
        frame.extend(rmp_serde::to_vec(&(7u32, "x")).unwrap());
        let end = frame.len();
        frame.push(0xc1);
        let payload = Payload::from_frame(frame, Ok(start..end));
        assert_eq!(
            payload.decode::<(u32, String)>().unwrap(),
            (7, "x".to_owned())
        );
    }
}
