//! The wire format between the spawner and the workers: the frames ([`frames`]), the
//! binary heads of user messages ([`user`]), the codec (here) and the one sender both
//! sides use ([`send`]). It must not know slots, VMs or task folders.
//!
//!
//! Every payload is one version byte ([`VERSION`]) followed by a MessagePack (rmp-serde)
//! encoding of [`ToWorker`] or [`FromWorker`]. Byte payloads travel as MessagePack binary
//! (`serde_bytes`), so a 10 MiB user message is one copy, not ten million integers.
//! User messages, the hot path, instead have a binary head followed by the message bytes,
//! which the sender passes to
//! [`Transport::send_parts`](parvm_transport::Transport::send_parts) from where they lie:
//! one to three bytes ([`USER_SPAWNER`]) between the spawner and the task a slot runs, a
//! fixed 21 bytes ([`USER`]) otherwise.

mod frames;
mod send;
mod user;

use std::borrow::Cow;

use serde::Serialize;

pub(crate) use frames::{
    BATCH_BYTES, BLOB_CHUNK, BatchedBlob, FromWorker, Job, MAX_BLOBS_WANTED, Probe, RootFolder,
    ShipPlan, SpawnRequest, Startup, ToWorker, WHOLE_FILE, read_stop,
};
pub(crate) use send::{SendError, send_frame, send_user, user_head};
pub(crate) use user::{
    Frame, USER, USER_SPAWNER, output_ack, read_output_ack, read_return_stop, return_stop,
};

/// The version of this protocol; a frame with another first byte is refused. Raised with
/// every change of the frames (2: the mirror map in its own frame, stops, returned files;
/// 3: shipping, with the probe in the mirror frame, manifests and blobs; 4: numbered blob
/// requests; 5: large files in pieces, and requests for the pieces that changed; 6: a stop
/// of a queued task unless it started; 7: blob chunks name their request, and a worker on
/// an intact transport takes what the spawner vouches for; 8: a worker says why it leaves;
/// 9: a blob chunk's bytes come last in its frame, and a probe names the root's folder
/// where no marker could be written).
pub(crate) const VERSION: u8 = 9;

/// The first byte of the one frame every build reads, whatever its version: this byte, then
/// the sender's [`VERSION`]. A worker sends it before it leaves a spawner whose frames it
/// cannot read, so the spawner can say why. Never changes.
pub(crate) const OTHER_VERSION: u8 = 0xee;

/// The frame saying "I speak version [`VERSION`]" ([`OTHER_VERSION`]).
pub(crate) fn other_version_frame() -> [u8; 2] {
    [OTHER_VERSION, VERSION]
}

/// The protocol version a peer speaks when `payload` shows it is not this one: a frame
/// whose first byte is another version number, or an [`OTHER_VERSION`] frame. `None` for
/// frames of this version and for user messages and the other binary kinds.
pub(crate) fn foreign_version(payload: &[u8]) -> Option<u8> {
    match payload {
        [OTHER_VERSION, version, ..] => Some(*version),
        // The binary kinds (user messages, acknowledgements, return stops) are letters
        // from 0x41 on; version numbers stay below them.
        [version, ..] if *version != VERSION && *version < 0x40 => Some(*version),
        _ => None,
    }
}

/// Encodes a frame: the version byte, then MessagePack.
pub(crate) fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut out = Vec::new();
    encode_into(&mut out, frame)?;
    Ok(out)
}

/// Encodes a frame into `out`, replacing what it held; reusing one buffer spares a big
/// message a fresh allocation (and its page faults) on every send.
pub(crate) fn encode_into<T: Serialize>(
    out: &mut Vec<u8>,
    frame: &T,
) -> Result<(), rmp_serde::encode::Error> {
    out.clear();
    out.push(VERSION);
    rmp_serde::encode::write(out, frame)
}

/// The head of a [`FromWorker::FileData`] frame of task `number` (see
/// [`head_before_bytes`]), so a worker reads a file straight into the frame instead of
/// copying each chunk into it.
pub(crate) fn file_data_head(number: u64) -> Option<Vec<u8>> {
    head_before_bytes(&FromWorker::FileData {
        number,
        data: Cow::Borrowed(&[]),
    })
}

/// The encoding of `frame`, whose last field holds bytes and is left empty, up to and
/// including the MessagePack `bin 32` marker of those bytes: followed by their length
/// (`u32`, big-endian) and the bytes, it is the frame holding them, so a sender reads them
/// straight in behind it instead of copying them into an encoded frame. `None` if the
/// encoder does not end the frame with that empty field (the caller then encodes as usual).
pub(crate) fn head_before_bytes<T: Serialize>(frame: &T) -> Option<Vec<u8>> {
    /// MessagePack's empty `bin 8`, how the encoder writes an empty byte field.
    const EMPTY_BIN: [u8; 2] = [0xc4, 0x00];
    const BIN_32: u8 = 0xc6;
    let mut head = encode(frame).ok()?;
    if !head.ends_with(&EMPTY_BIN) {
        return None;
    }
    head.truncate(head.len() - EMPTY_BIN.len());
    head.push(BIN_32);
    Some(head)
}

/// Where byte field `field` of a frame decoded from `frame` lies in `frame`, or its bytes
/// when the decoder did not borrow them from it. The answer holds no borrow, so the caller
/// can then keep `frame` as the field's buffer.
pub(crate) fn locate(
    frame: &[u8],
    field: Cow<'_, [u8]>,
) -> Result<std::ops::Range<usize>, Vec<u8>> {
    match field {
        Cow::Borrowed(bytes) => span(frame, bytes).ok_or_else(|| bytes.to_vec()),
        Cow::Owned(bytes) => Err(bytes),
    }
}

/// Where `field`, a slice borrowed from `frame` by [`decode`], lies in `frame`; `None` when
/// it is not a part of it (the decoder copied it).
fn span(frame: &[u8], field: &[u8]) -> Option<std::ops::Range<usize>> {
    let base = frame.as_ptr() as usize;
    let start = (field.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(field.len())?;
    (end <= frame.len()).then_some(start..end)
}

/// Decodes a frame, checking the version byte.
pub(crate) fn decode<'a, T: Frame<'a>>(payload: &'a [u8]) -> Result<T, String> {
    match payload.split_first() {
        None => Err("empty frame".to_owned()),
        Some((&VERSION, rest)) => rmp_serde::from_slice(rest).map_err(|e| e.to_string()),
        Some((&kind, rest)) if kind == USER || kind == USER_SPAWNER => T::read_user(kind, rest),
        Some((other, _)) => Err(format!(
            "protocol version {other}, this program speaks version {VERSION}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::user::{OUTPUT_ACK, USER_HEAD, read_leb128, write_leb128};
    use super::*;
    use crate::TaskId;

    #[test]
    fn a_mirror_map_travels_in_its_own_frame() {
        let map = [0x91u8, 0x01];
        let plan = ShipPlan::Probe(vec![
            Probe {
                root: 1,
                marker: Some(".parvm-probe".to_owned()),
                token: "ab".to_owned(),
                folder: None,
            },
            Probe {
                root: 2,
                marker: None,
                token: "cd".to_owned(),
                folder: Some(RootFolder {
                    boot: "b".to_owned(),
                    dev: u64::MAX,
                    ino: 7,
                }),
            },
        ]);
        let bytes = encode(&ToWorker::Mirror {
            vm: 3,
            map: Cow::Borrowed(&map),
            ship: plan.clone(),
        })
        .unwrap();
        let ToWorker::Mirror {
            vm,
            map: back,
            ship,
        } = decode::<ToWorker<'_>>(&bytes).unwrap()
        else {
            panic!("not a mirror frame");
        };
        assert_eq!((vm, back.as_ref(), ship), (3, &map[..], plan));
    }

    #[test]
    fn frames_round_trip() {
        let frame = ToWorker::Spawn(SpawnRequest {
            number: 7,
            vm: 2,
            job: Job::Function {
                name: Cow::Borrowed("hello"),
                args: Cow::Borrowed(&[1, 2, 3]),
            },
            folder: true,
            persistent: false,
            clean: true,
            startup: Some(Startup::Mirrored(1, PathBuf::from("a/b"))),
            send_back: true,
            returning: vec!["out/*.txt".to_owned()],
        });
        let bytes = encode(&frame).unwrap();
        let back: ToWorker<'_> = decode(&bytes).unwrap();
        match back {
            ToWorker::Spawn(req) => {
                assert_eq!(req.number, 7);
                assert_eq!(
                    req.startup,
                    Some(Startup::Mirrored(1, PathBuf::from("a/b")))
                );
                assert!(
                    matches!(req.job, Job::Function { ref name, ref args } if name == "hello" && args.as_ref() == [1, 2, 3])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn file_data_frames_are_built_from_a_head() {
        let head = file_data_head(u64::MAX - 3).expect("the encoder lays out bin 32");
        for size in [0usize, 1, 255, 65_535, 65_536, 262_144] {
            let data: Vec<u8> = (0..size).map(|i| (i % 249) as u8).collect();
            let mut frame = head.clone();
            frame.extend_from_slice(&(size as u32).to_be_bytes());
            frame.extend_from_slice(&data);
            let FromWorker::FileData { number, data: back } = decode(&frame).unwrap() else {
                panic!("not a file data frame");
            };
            assert_eq!((number, back.as_ref()), (u64::MAX - 3, &data[..]));
        }
    }

    #[test]
    fn blob_chunks_are_built_from_a_head_whatever_their_offset() {
        let digest = parvm_ship::Digest::of(b"a blob");
        for (offset, end, size) in [
            (0u64, false, 0usize),
            (127, true, 1),
            (65_536, false, 65_535),
            (u64::from(u32::MAX) + 1, true, 1 << 20),
            (u64::MAX, false, 300),
        ] {
            let head = head_before_bytes(&ToWorker::BlobData {
                vm: u32::MAX,
                request: 7,
                digest,
                offset,
                end,
                data: Cow::Borrowed(&[]),
            })
            .expect("the bytes are the frame's last field");
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut frame = head;
            frame.extend_from_slice(&(size as u32).to_be_bytes());
            frame.extend_from_slice(&data);
            let ToWorker::BlobData {
                vm,
                request,
                digest: back_digest,
                offset: back_offset,
                end: back_end,
                data: back,
            } = decode(&frame).unwrap()
            else {
                panic!("not a blob chunk");
            };
            assert_eq!(
                (
                    vm,
                    request,
                    back_digest,
                    back_offset,
                    back_end,
                    back.as_ref()
                ),
                (u32::MAX, 7, digest, offset, end, &data[..])
            );
            assert!(matches!(back, Cow::Borrowed(_)), "decoded without a copy");
        }
    }

    #[test]
    fn a_frame_whose_bytes_are_not_last_has_no_head() {
        let frame = ToWorker::BlobFailed {
            vm: 1,
            request: 2,
            digest: parvm_ship::Digest::of(b""),
            reason: String::new(),
        };
        assert_eq!(head_before_bytes(&frame), None);
    }

    #[test]
    fn big_byte_payloads_are_binary() {
        let data = vec![7u8; 100_000];
        let bytes = encode(&FromWorker::User {
            from: Some(1),
            to: TaskId::SPAWNER,
            data: Cow::Borrowed(&data),
        })
        .unwrap();
        assert!(bytes.len() < data.len() + 64, "{} bytes", bytes.len());
    }

    #[test]
    fn byte_fields_are_located_in_their_frame() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let frame = encode(&ToWorker::User {
            from: TaskId::SPAWNER,
            to: 3,
            data: Cow::Borrowed(&data),
        })
        .unwrap();
        let ToWorker::User { data: field, .. } = decode::<ToWorker<'_>>(&frame).unwrap() else {
            panic!("not a user frame");
        };
        assert!(matches!(field, Cow::Borrowed(_)), "the decoder copied");
        let range = locate(&frame, field).unwrap();
        assert_eq!(&frame[range], &data[..]);
        // Bytes that are not in the frame come back as they are.
        let elsewhere = vec![1u8, 2, 3];
        assert_eq!(
            locate(&frame, Cow::Borrowed(&elsewhere)),
            Err(vec![1, 2, 3])
        );
        assert_eq!(locate(&frame, Cow::Owned(vec![9])), Err(vec![9]));
    }

    #[test]
    fn encode_into_replaces_the_buffer() {
        let mut out = vec![0xaa; 1000];
        encode_into(&mut out, &ToWorker::Exit).unwrap();
        assert_eq!(out, encode(&ToWorker::Exit).unwrap());
    }

    #[test]
    fn a_user_head_and_its_bytes_decode_as_the_whole_frame() {
        let sender = TaskId {
            slot: 3,
            number: u64::MAX - 1,
        };
        for size in [0usize, 1, 255, 70_000] {
            let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            let mut frame = Vec::new();
            let head = FromWorker::User {
                from: Some(4),
                to: sender,
                data: Cow::Borrowed(&[]),
            };
            assert!(head.write_user_head(&mut frame));
            assert_eq!(frame.len(), USER_HEAD);
            frame.extend_from_slice(&data);
            let FromWorker::User {
                from,
                to,
                data: back,
            } = decode(&frame).unwrap()
            else {
                panic!("not a user frame");
            };
            assert_eq!((from, to, back.as_ref()), (Some(4), sender, &data[..]));
            let located = locate(&frame, back).unwrap();
            assert_eq!(&frame[located], &data[..]);
            let mut frame = vec![0xaa; 3];
            let head = ToWorker::User {
                from: sender,
                to: 9,
                data: Cow::Borrowed(&[]),
            };
            assert!(head.write_user_head(&mut frame));
            frame.extend_from_slice(&data);
            let ToWorker::User {
                from,
                to,
                data: back,
            } = decode(&frame).unwrap()
            else {
                panic!("not a user frame");
            };
            assert_eq!((from, to, back.as_ref()), (sender, 9, &data[..]));
        }
        // Other frames have no user head.
        let mut frame = Vec::new();
        assert!(!ToWorker::Exit.write_user_head(&mut frame));
    }

    /// The user message frame of `head` with `data` behind it.
    fn user_frame<'a, T: Frame<'a>>(head: &T, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        assert!(head.write_user_head(&mut frame));
        frame.extend_from_slice(data);
        frame
    }

    #[test]
    fn user_messages_between_the_spawner_and_a_slot_have_compact_heads() {
        for (number, head_len) in [(1u64, 2), (127, 2), (128, 3), (u64::MAX, 11)] {
            for size in [0usize, 1, 1000] {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let to_worker = ToWorker::user_from_spawner(number);
                let frame = user_frame(&to_worker, &data);
                assert_eq!((frame[0], frame.len()), (USER_SPAWNER, head_len + size));
                let back = decode::<ToWorker<'_>>(&frame).unwrap();
                assert!(
                    matches!(back, ToWorker::User { from: TaskId::SPAWNER, to, data: ref d } if to == number && d.as_ref() == data),
                    "{back:?}"
                );
                let from_worker = FromWorker::user_to_spawner(number);
                let frame = user_frame(&from_worker, &data);
                assert_eq!((frame[0], frame.len()), (USER_SPAWNER, 1 + size));
                let back = decode::<FromWorker<'_>>(&frame).unwrap();
                assert!(
                    matches!(back, FromWorker::User { from: None, to: TaskId::SPAWNER, data: ref d } if d.as_ref() == data),
                    "{back:?}"
                );
            }
        }
    }

    impl ToWorker<'_> {
        fn user_from_spawner(to: u64) -> Self {
            ToWorker::User {
                from: TaskId::SPAWNER,
                to,
                data: Cow::Borrowed(&[]),
            }
        }
    }

    impl FromWorker<'_> {
        fn user_to_spawner(from: u64) -> Self {
            FromWorker::User {
                from: Some(from),
                to: TaskId::SPAWNER,
                data: Cow::Borrowed(&[]),
            }
        }
    }

    #[test]
    fn output_acks_round_trip_and_are_no_other_frame() {
        for bytes in [0u64, 1, 65_536, u64::MAX] {
            assert_eq!(read_output_ack(&output_ack(bytes)), Some(bytes));
        }
        assert_eq!(read_output_ack(&encode(&ToWorker::Exit).unwrap()), None);
        assert_eq!(read_output_ack(&[OUTPUT_ACK]), None);
        let mut trailing = output_ack(5);
        trailing.push(0);
        assert_eq!(read_output_ack(&trailing), None);
        // Other frames never start with the acknowledgement's byte.
        assert_ne!(OUTPUT_ACK, VERSION);
        assert_ne!(OUTPUT_ACK, USER);
        assert_ne!(OUTPUT_ACK, USER_SPAWNER);
    }

    #[test]
    fn return_stops_round_trip_and_are_no_other_frame() {
        use super::user::RETURN_STOP;
        for number in [0u64, 1, 300, u64::MAX] {
            assert_eq!(read_return_stop(&return_stop(number)), Some(number));
            assert_eq!(read_output_ack(&return_stop(number)), None);
            assert_eq!(read_return_stop(&output_ack(number)), None);
        }
        assert_eq!(read_return_stop(&encode(&ToWorker::Exit).unwrap()), None);
        assert_eq!(read_return_stop(&[RETURN_STOP]), None);
        for other in [OUTPUT_ACK, VERSION, USER, USER_SPAWNER] {
            assert_ne!(RETURN_STOP, other);
        }
    }

    #[test]
    fn broken_compact_task_numbers_are_refused() {
        let cut_off = decode::<ToWorker<'_>>(&[USER_SPAWNER, 0x80, 0x80]).unwrap_err();
        assert!(cut_off.contains("cut off"), "{cut_off}");
        let empty = decode::<ToWorker<'_>>(&[USER_SPAWNER]).unwrap_err();
        assert!(empty.contains("cut off"), "{empty}");
        let mut too_big = vec![USER_SPAWNER];
        too_big.extend([0xff; 9]);
        too_big.push(0x02);
        let err = decode::<ToWorker<'_>>(&too_big).unwrap_err();
        assert!(err.contains("64 bits"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn leb128_round_trips(value: u64, tail: Vec<u8>) {
            let mut bytes = Vec::new();
            write_leb128(&mut bytes, value);
            proptest::prop_assert!(bytes.len() <= 10);
            bytes.extend_from_slice(&tail);
            let (back, rest) = read_leb128(&bytes).unwrap();
            proptest::prop_assert_eq!(back, value);
            proptest::prop_assert_eq!(rest, &tail[..]);
        }

        #[test]
        fn any_bytes_decode_or_are_refused(bytes: Vec<u8>) {
            // Whatever a peer sends, decoding returns; it never panics.
            let _ = decode::<ToWorker<'_>>(&bytes);
            let _ = decode::<FromWorker<'_>>(&bytes);
        }
    }

    #[test]
    fn truncated_user_frames_are_refused() {
        for len in 1..USER_HEAD {
            let mut frame = vec![0u8; len];
            frame[0] = USER;
            let err = decode::<ToWorker<'_>>(&frame).unwrap_err();
            assert!(err.contains("shorter than its"), "{err}");
        }
    }

    #[test]
    fn foreign_frames_are_refused() {
        assert!(decode::<FromWorker<'_>>(&[]).is_err());
        assert!(
            decode::<FromWorker<'_>>(&[99, 1, 2])
                .unwrap_err()
                .contains("version 99")
        );
        assert!(decode::<FromWorker<'_>>(&[VERSION, 0xc1]).is_err());
        assert_eq!(foreign_version(&[2, 0x81]), Some(2));
        assert_eq!(foreign_version(&other_version_frame()), Some(VERSION));
        assert_eq!(
            foreign_version(
                &encode(&FromWorker::Stopped {
                    number: 1,
                    started: true
                })
                .unwrap()
            ),
            None
        );
        for kind in [USER, USER_SPAWNER, user::OUTPUT_ACK, user::RETURN_STOP] {
            assert_eq!(foreign_version(&[kind, 1, 2]), None);
        }
    }
}
