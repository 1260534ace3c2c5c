//! Streamed output ([`Spawn::stream_output`](crate::Spawn::stream_output)), the spawner's
//! side: a command's output handed to its VM as [`Message::Output`]
//! while it runs, in whole lines.
//!
//! A worker already cuts its frames after a newline, except for a line longer than its
//! frame and what is left when the task ends ([`crate::capture`]); the spawner keeps the
//! partial last line of each stream here all the same, so no message ends inside a line
//! whatever a worker sends. What is kept is bounded ([`MAX_PARTIAL`]): a longer line goes
//! out in pieces. It must not know frames, inboxes or the transport.

use crate::Message;
use crate::link::OUTPUT_WINDOW;

/// The longest partial line kept back waiting for its newline. The bytes kept are not yet
/// acknowledged, so it stays well inside the worker's output window, which would
/// otherwise close before the newline could come.
pub(crate) const MAX_PARTIAL: usize = (OUTPUT_WINDOW / 2) as usize;

/// Which stream of a command a [`Message::Output`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

impl OutputStream {
    /// The stream of a worker's output frame.
    pub(crate) fn of_frame(stderr: bool) -> OutputStream {
        if stderr {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        }
    }
}

/// Adds `data` to the partial line `partial` and takes out what can go now: every whole
/// line, or everything when the partial line would grow past [`MAX_PARTIAL`]. `None` when
/// nothing can go yet.
pub(crate) fn whole_lines(partial: &mut Vec<u8>, data: &[u8]) -> Option<Vec<u8>> {
    let cut = match data.iter().rposition(|&b| b == b'\n') {
        Some(last) => partial.len() + last + 1,
        None if partial.len() + data.len() > MAX_PARTIAL => partial.len() + data.len(),
        None => {
            partial.extend_from_slice(data);
            return None;
        }
    };
    let mut out = std::mem::take(partial);
    out.extend_from_slice(data);
    // What follows the last newline waits for the next bytes.
    *partial = out.split_off(cut);
    Some(out)
}

/// The bytes of the [`Message::Output`] among `messages`: what
/// their workers are owed when the messages are dropped instead of received.
pub(crate) fn unacknowledged<'a>(messages: impl IntoIterator<Item = &'a Message>) -> u64 {
    messages
        .into_iter()
        .map(|message| match message {
            Message::Output { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lines_go_whole_and_the_partial_line_waits() {
        let mut partial = Vec::new();
        assert_eq!(whole_lines(&mut partial, b"ab"), None);
        assert_eq!(whole_lines(&mut partial, b"c\nde"), Some(b"abc\n".to_vec()));
        assert_eq!(partial, b"de");
        assert_eq!(whole_lines(&mut partial, b"\n"), Some(b"de\n".to_vec()));
        assert!(partial.is_empty());
    }

    #[test]
    fn a_line_longer_than_the_bound_goes_in_pieces() {
        let mut partial = vec![b'x'; MAX_PARTIAL];
        let out = whole_lines(&mut partial, b"yy").unwrap();
        assert_eq!(out.len(), MAX_PARTIAL + 2);
        assert!(partial.is_empty());
    }

    proptest! {
        /// However the bytes are cut into frames, what goes out, followed by what is kept,
        /// is exactly what came, every piece that goes out ends a line (or is longer than
        /// the bound), and what is kept never holds a newline nor exceeds the bound.
        #[test]
        fn every_byte_goes_out_once_in_order(
            frames in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..40),
                0..20,
            )
        ) {
            let mut partial = Vec::new();
            let mut out = Vec::new();
            for frame in &frames {
                if let Some(piece) = whole_lines(&mut partial, frame) {
                    prop_assert!(piece.ends_with(b"\n") || piece.len() > MAX_PARTIAL);
                    out.extend_from_slice(&piece);
                }
                prop_assert!(!partial.contains(&b'\n'));
                prop_assert!(partial.len() <= MAX_PARTIAL);
            }
            out.extend_from_slice(&partial);
            prop_assert_eq!(out, frames.concat());
        }
    }
}
