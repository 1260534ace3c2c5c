//! User message frames, the hot path: a binary head ([`USER`], [`USER_SPAWNER`]) followed
//! by the message bytes, so large data travels from where it lies; and the output
//! acknowledgement ([`OUTPUT_ACK`]).
//!
//! It must not know the transport; it writes and reads heads in buffers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{FromWorker, ToWorker};
use crate::TaskId;

/// The first byte of a user message frame, which has a fixed binary head instead of
/// MessagePack: `USER`, a task id (slot `u32`, number `u64`) and a task number (`u64`),
/// little-endian, then the message bytes. For [`ToWorker::User`] the id is the sender and
/// the number the receiver; for [`FromWorker::User`] the other way round.
pub(crate) const USER: u8 = 0x55;

/// The size of a user message frame's head.
pub(crate) const USER_HEAD: usize = 1 + 4 + 8 + 8;

/// The first byte of a compact user message frame between the spawner and the task a
/// slot runs, the hot path of a ping-pong: from the spawner ([`ToWorker::User`]) it
/// carries only the receiving task's number (LEB128), to the spawner
/// ([`FromWorker::User`]) nothing at all, because the spawner knows which task the slot
/// runs (a worker sends a task's messages before it reports the task's end, on one
/// ordered channel). A small message then costs its own bytes and one or two more.
pub(crate) const USER_SPAWNER: u8 = 0x56;

/// The first byte of an output acknowledgement from the spawner to a worker: the spawner
/// has written a [`FromWorker::Output`] frame of this many bytes of output (LEB128 after
/// this byte), and the worker may send as much again (see [`crate::link`]). The worker
/// takes these frames off before it decodes a [`ToWorker`].
pub(crate) const OUTPUT_ACK: u8 = 0x41;

/// The first byte of a return stop from the spawner to a worker: writing the returned
/// files of the task whose number follows (LEB128) failed on the spawner (a full disk), so
/// the worker sends no more of them (see [`crate::returning`]). The worker takes these
/// frames off with the acknowledgements, before it decodes a [`ToWorker`].
pub(crate) const RETURN_STOP: u8 = 0x52;

/// A return stop for task `number`.
pub(crate) fn return_stop(number: u64) -> Vec<u8> {
    let mut frame = vec![RETURN_STOP];
    write_leb128(&mut frame, number);
    frame
}

/// The task number a return stop names; `None` for any other frame.
pub(crate) fn read_return_stop(frame: &[u8]) -> Option<u64> {
    match frame.split_first() {
        Some((&RETURN_STOP, rest)) => match read_leb128(rest) {
            Ok((number, [])) => Some(number),
            _ => None,
        },
        _ => None,
    }
}

/// An output acknowledgement for `bytes` bytes.
pub(crate) fn output_ack(bytes: u64) -> Vec<u8> {
    let mut frame = vec![OUTPUT_ACK];
    write_leb128(&mut frame, bytes);
    frame
}

/// The bytes an output acknowledgement gives back; `None` for any other frame.
pub(crate) fn read_output_ack(frame: &[u8]) -> Option<u64> {
    match frame.split_first() {
        Some((&OUTPUT_ACK, rest)) => match read_leb128(rest) {
            Ok((bytes, [])) => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

/// The frames of one direction: MessagePack, with binary heads for user messages.
pub(crate) trait Frame<'a>: Serialize + Deserialize<'a> {
    /// Writes into `out` (replacing what it held) the head of this user message frame,
    /// ignoring its bytes, which then follow: they can travel from where they lie
    /// ([`Transport::send_parts`](parvm_transport::Transport::send_parts)) instead of being
    /// copied into the frame. `false` for other frames.
    fn write_user_head(&self, out: &mut Vec<u8>) -> bool;

    /// The user message frame whose first byte is `kind` ([`USER`] or [`USER_SPAWNER`]),
    /// read from the bytes that follow it (`rest`), where its data is borrowed.
    fn read_user(kind: u8, rest: &'a [u8]) -> Result<Self, String>;
}

impl<'a> Frame<'a> for ToWorker<'a> {
    fn write_user_head(&self, out: &mut Vec<u8>) -> bool {
        let ToWorker::User { from, to, .. } = self else {
            return false;
        };
        out.clear();
        if *from == TaskId::SPAWNER {
            out.push(USER_SPAWNER);
            write_leb128(out, *to);
        } else {
            write_full_head(out, *from, *to);
        }
        true
    }

    fn read_user(kind: u8, rest: &'a [u8]) -> Result<Self, String> {
        let (from, to, data) = if kind == USER_SPAWNER {
            let (to, data) = read_leb128(rest)?;
            (TaskId::SPAWNER, to, data)
        } else {
            read_full_head(rest)?
        };
        Ok(ToWorker::User {
            from,
            to,
            data: Cow::Borrowed(data),
        })
    }
}

impl<'a> Frame<'a> for FromWorker<'a> {
    fn write_user_head(&self, out: &mut Vec<u8>) -> bool {
        let FromWorker::User { from, to, .. } = self else {
            return false;
        };
        out.clear();
        match (from, *to == TaskId::SPAWNER) {
            (_, true) => out.push(USER_SPAWNER),
            (Some(from), false) => write_full_head(out, *to, *from),
            // Only a decoded compact frame lacks its sender, and it is for the spawner.
            (None, false) => return false,
        }
        true
    }

    fn read_user(kind: u8, rest: &'a [u8]) -> Result<Self, String> {
        let (from, to, data) = if kind == USER_SPAWNER {
            (None, TaskId::SPAWNER, rest)
        } else {
            let (to, from, data) = read_full_head(rest)?;
            (Some(from), to, data)
        };
        Ok(FromWorker::User {
            from,
            to,
            data: Cow::Borrowed(data),
        })
    }
}

/// Writes a [`USER`] head: the kind byte, `id` and `number`.
fn write_full_head(out: &mut Vec<u8>, id: TaskId, number: u64) {
    out.push(USER);
    out.extend_from_slice(&id.slot.to_le_bytes());
    out.extend_from_slice(&id.number.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
}

/// Reads what follows the kind byte of a [`USER`] frame: the task id, the task number
/// and the message bytes.
fn read_full_head(rest: &[u8]) -> Result<(TaskId, u64, &[u8]), String> {
    let (Some(head), Some(data)) = (rest.get(..USER_HEAD - 1), rest.get(USER_HEAD - 1..)) else {
        return Err(format!(
            "a user message frame of {} bytes, shorter than its {USER_HEAD}-byte head",
            rest.len() + 1
        ));
    };
    let mut slot = [0u8; 4];
    let mut number = [0u8; 8];
    let mut other = [0u8; 8];
    slot.copy_from_slice(&head[0..4]);
    number.copy_from_slice(&head[4..12]);
    other.copy_from_slice(&head[12..20]);
    let id = TaskId {
        slot: u32::from_le_bytes(slot),
        number: u64::from_le_bytes(number),
    };
    Ok((id, u64::from_le_bytes(other), data))
}

/// Appends `value` as unsigned LEB128: seven bits a byte, low bits first, the high bit
/// set on every byte but the last.
pub(super) fn write_leb128(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 number from the start of `bytes`; returns it and the bytes
/// after it. Refuses a number that is cut off or does not fit 64 bits.
pub(super) fn read_leb128(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if shift == 63 && bits > 1 {
            return Err("a compact user message frame's task number exceeds 64 bits".to_owned());
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok((value, &bytes[index + 1..]));
        }
    }
    Err("a compact user message frame's task number is cut off".to_owned())
}
