//! The one sender of frames, for the spawner and the worker alike: a frame is encoded into
//! a reused buffer, and a user message's bytes go behind its head, copied when small and
//! sent from where they lie when large.
//!
//! It must not know who sends (spawner or worker) nor how a failure is reported to the
//! user; callers map [`SendError`] to their own errors.

use parvm_transport::{Rank, Transport};

use super::Frame;

/// The largest send buffer kept for reuse; a bigger one is freed after its message.
pub(crate) const MAX_SCRATCH: usize = 64 << 20;

/// User data at least this large is sent from where it lies
/// ([`parvm_transport::Transport::send_parts`]) rather than copied behind its frame's head.
pub(crate) const SPLIT: usize = 64 << 10;

/// Why a send failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The frame could not be encoded.
    Encode(rmp_serde::encode::Error),
    /// The transport could not send it.
    Transport(parvm_transport::Error),
}

/// Encodes `frame` into `scratch` (replacing what it held) and sends it to rank `to`.
pub(crate) fn send_frame<'a, F: Frame<'a>>(
    transport: &dyn Transport,
    to: Rank,
    scratch: &mut Vec<u8>,
    frame: &F,
) -> Result<(), SendError> {
    super::encode_into(scratch, frame).map_err(SendError::Encode)?;
    let sent = transport.send(to, scratch).map_err(SendError::Transport);
    if scratch.capacity() > MAX_SCRATCH {
        *scratch = Vec::new();
    }
    sent
}

/// The head of user message frame `frame` (its bytes left empty), to send later with the
/// bytes behind it; `None` for a frame that is not a user message.
pub(crate) fn user_head<'a, F: Frame<'a>>(frame: &F) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    frame.write_user_head(&mut head).then_some(head)
}

/// Sends user message frame `frame` (its bytes left empty) followed by `data` to rank
/// `to`: large data travels from where it lies instead of being copied into the frame
/// (see [`Frame::write_user_head`]).
pub(crate) fn send_user<'a, F: Frame<'a>>(
    transport: &dyn Transport,
    to: Rank,
    scratch: &mut Vec<u8>,
    frame: &F,
    data: &[u8],
) -> Result<(), SendError> {
    if !frame.write_user_head(scratch) {
        return Err(SendError::Encode(rmp_serde::encode::Error::Syntax(
            "only a user message has a head to send its bytes behind".to_owned(),
        )));
    }
    let sent = if data.len() < SPLIT {
        scratch.extend_from_slice(data);
        transport.send(to, scratch)
    } else {
        transport.send_parts(to, &[scratch, data])
    };
    if scratch.capacity() > MAX_SCRATCH {
        *scratch = Vec::new();
    }
    sent.map_err(SendError::Transport)
}
