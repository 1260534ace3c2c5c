//! The few MPI calls rsmpi does not wrap with error codes (it ignores them), made through
//! its FFI. All unsafe code of the backend is here.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use mpi::ffi;

use crate::{Error, Rank};

/// What a message on the backend's communicators is, told by its MPI tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tag {
    /// An empty payload (control communicator).
    Data,
    /// A whole payload, small enough for the posted receive, whose first byte travels in
    /// the tag and the rest in the message (control communicator): a one-byte payload,
    /// such as a frame kind, costs what an empty message costs, and that is measurably
    /// less than one with a body (0.36 against 0.46 µs one way on Open MPI's shared memory).
    DataByte(u8),
    /// The head of a split payload; its tail follows on the bulk communicator.
    Head,
    /// The empty notice of a rank that leaves (control communicator).
    Leave,
    /// The tail of a split payload (bulk communicator). MPI keeps the order of the messages
    /// of one sender that match one receive, so a head's tail is the next message with
    /// this tag from the head's sender.
    Tail,
}

impl Tag {
    /// The first of the 256 tags of [`Tag::DataByte`]. Every tag stays below 32767, the
    /// smallest `MPI_TAG_UB` the MPI standard allows.
    const DATA_BYTE: c_int = 0x7100;

    fn raw(self) -> c_int {
        match self {
            Tag::Data => 0x7076,
            Tag::Leave => 0x7077,
            Tag::Head => 0x7078,
            Tag::Tail => 0x7079,
            Tag::DataByte(byte) => Tag::DATA_BYTE + c_int::from(byte),
        }
    }

    fn from_raw(raw: c_int) -> Option<Tag> {
        if let Some(byte) = raw
            .checked_sub(Tag::DATA_BYTE)
            .and_then(|byte| u8::try_from(byte).ok())
        {
            return Some(Tag::DataByte(byte));
        }
        [Tag::Data, Tag::Head, Tag::Leave, Tag::Tail]
            .into_iter()
            .find(|tag| tag.raw() == raw)
    }
}

/// An MPI call that returned an error code (possible because of `MPI_ERRORS_RETURN`).
#[derive(Debug)]
pub(super) struct MpiError {
    call: &'static str,
    code: c_int,
}

impl MpiError {
    pub(super) fn into_error(self, rank: Rank) -> Error {
        Error::Mpi {
            call: self.call,
            rank,
            reason: error_string(self.code),
        }
    }
}

impl std::fmt::Display for MpiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, error_string(self.code))
    }
}

fn check(call: &'static str, code: c_int) -> Result<(), MpiError> {
    if code == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(MpiError { call, code })
    }
}

/// The library's words for an error code.
fn error_string(code: c_int) -> String {
    let mut text = [0 as c_char; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `text` has room for MPI_MAX_ERROR_STRING characters, as the call needs.
    let status = unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr(), &mut len) };
    if status != ffi::MPI_SUCCESS as c_int {
        return format!("MPI error code {code}");
    }
    let len = usize::try_from(len).unwrap_or(0).min(text.len());
    let bytes: Vec<u8> = text[..len].iter().map(|&c| c as u8).collect();
    format!(
        "{} (MPI error code {code})",
        String::from_utf8_lossy(&bytes)
    )
}

/// A private duplicate of `MPI_COMM_WORLD` with `MPI_ERRORS_RETURN`.
pub(super) struct Comm(ffi::MPI_Comm);

// SAFETY: a `Comm` exists only after `MpiTransport::init` obtained MPI_THREAD_MULTIPLE,
// under which MPI handles may be used from any thread, concurrently.
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Sync for Comm {}

impl Comm {
    /// Sets `MPI_ERRORS_RETURN` on the world and duplicates it. MPI must be initialised
    /// with MPI_THREAD_MULTIPLE (the caller holds the universe). Collective.
    pub(super) fn dup_world() -> Result<Comm, MpiError> {
        let mut comm = MaybeUninit::<ffi::MPI_Comm>::uninit();
        // SAFETY: MPI is initialised, so the predefined handles are valid; the dup
        // writes a valid handle into `comm` when it returns MPI_SUCCESS.
        unsafe {
            check(
                "MPI_Comm_set_errhandler",
                ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN),
            )?;
            check(
                "MPI_Comm_dup",
                ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, comm.as_mut_ptr()),
            )?;
            let comm = Comm(comm.assume_init());
            check(
                "MPI_Comm_set_errhandler",
                ffi::MPI_Comm_set_errhandler(comm.0, ffi::RSMPI_ERRORS_RETURN),
            )?;
            Ok(comm)
        }
    }

    /// Starts sending `buf` to rank `dest`.
    pub(super) fn isend<'a>(
        &self,
        dest: c_int,
        buf: &'a [u8],
        tag: Tag,
    ) -> Result<SendRequest<'a>, MpiError> {
        let count = byte_count(buf)?;
        let mut request = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `buf` holds `count` bytes and stays borrowed by the returned request
        // until the send completed (its Drop waits for it).
        unsafe {
            check(
                "MPI_Isend",
                ffi::MPI_Isend(
                    buf.as_ptr().cast::<c_void>(),
                    count,
                    ffi::RSMPI_UINT8_T,
                    dest,
                    tag.raw(),
                    self.0,
                    request.as_mut_ptr(),
                ),
            )?;
            Ok(SendRequest {
                raw: request.assume_init(),
                done: false,
                _buf: PhantomData,
            })
        }
    }

    /// Sends `buf` to rank `dest` with a blocking `MPI_Send`; only for payloads small
    /// enough to go eagerly, which return without the receiver.
    pub(super) fn send_eager(&self, dest: c_int, buf: &[u8], tag: Tag) -> Result<(), MpiError> {
        let count = byte_count(buf)?;
        // A zero-length send reads no buffer, but the pointer must still be valid.
        let ptr = if buf.is_empty() {
            NonNull::<u8>::dangling().as_ptr().cast_const()
        } else {
            buf.as_ptr()
        };
        // SAFETY: `ptr` points at `count` readable bytes, borrowed for the whole call.
        unsafe {
            check(
                "MPI_Send",
                ffi::MPI_Send(
                    ptr.cast::<c_void>(),
                    count,
                    ffi::RSMPI_UINT8_T,
                    dest,
                    tag.raw(),
                    self.0,
                ),
            )
        }
    }

    /// A matched probe for the tail of a split message from `source`.
    pub(super) fn improbe_tail(&self, source: c_int) -> Result<Option<Probed>, MpiError> {
        let mut flag: c_int = 0;
        let mut message = MaybeUninit::<ffi::MPI_Message>::uninit();
        let mut status = MaybeUninit::<ffi::MPI_Status>::uninit();
        // SAFETY: all out-pointers are valid; `message` and `status` are written when the
        // flag is set.
        unsafe {
            check(
                "MPI_Improbe",
                ffi::MPI_Improbe(
                    source,
                    Tag::Tail.raw(),
                    self.0,
                    &mut flag,
                    message.as_mut_ptr(),
                    status.as_mut_ptr(),
                ),
            )?;
            if flag == 0 {
                return Ok(None);
            }
            let status = status.assume_init();
            let mut probed = Probed {
                message: message.assume_init(),
                count: 0,
            };
            // On failure `probed` is dropped, which still receives the message.
            probed.count = received_count(&status)?;
            Ok(Some(probed))
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the transport drops the communicator before the universe finalises MPI,
        // and no request on it is pending (every send completed before it returned, and
        // the posted receive is cancelled first).
        unsafe {
            ffi::MPI_Comm_free(&mut self.0);
        }
    }
}

/// The length of `buf` as MPI's count.
fn byte_count(buf: &[u8]) -> Result<c_int, MpiError> {
    c_int::try_from(buf.len()).map_err(|_| MpiError {
        call: "MPI_Send",
        code: ffi::MPI_ERR_COUNT as c_int,
    })
}

/// The number of bytes a completed receive (or a probe) reports.
fn received_count(status: &ffi::MPI_Status) -> Result<c_int, MpiError> {
    let mut count: c_int = 0;
    // SAFETY: `status` was filled by MPI for a completed receive or a probe.
    check("MPI_Get_count", unsafe {
        ffi::MPI_Get_count(status, ffi::RSMPI_UINT8_T, &mut count)
    })?;
    Ok(count)
}

/// A send in flight; it borrows the payload until MPI is done with it.
pub(super) struct SendRequest<'a> {
    raw: ffi::MPI_Request,
    done: bool,
    _buf: PhantomData<&'a [u8]>,
}

impl SendRequest<'_> {
    /// Whether the send completed (and MPI no longer reads the payload).
    pub(super) fn test(&mut self) -> Result<bool, MpiError> {
        if self.done {
            return Ok(true);
        }
        let mut flag: c_int = 0;
        // SAFETY: `raw` is an active request from MPI_Isend.
        let code = unsafe { ffi::MPI_Test(&mut self.raw, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        if let Err(e) = check("MPI_Test", code) {
            // A request that completes with an error is deallocated by MPI; nothing is
            // pending any more.
            self.done = true;
            return Err(e);
        }
        self.done = flag != 0;
        Ok(self.done)
    }
}

impl Drop for SendRequest<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Only reached when a panic unwinds through a send: the payload must not be
            // freed while MPI may still read it.
            // SAFETY: `raw` is an active request from MPI_Isend.
            unsafe {
                ffi::MPI_Wait(&mut self.raw, ffi::RSMPI_STATUS_IGNORE);
            }
        }
    }
}

/// A message that arrived in the posted receive, copied out of its buffer.
#[derive(Debug)]
pub(super) struct Arrival {
    /// The sending rank.
    pub source: c_int,
    /// Its tag; `None` for a tag this backend never sends.
    pub tag: Option<Tag>,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// A posted receive that completed with an error.
#[derive(Debug)]
pub(super) struct Failed {
    /// The sending rank, when MPI named one.
    pub source: Option<c_int>,
    /// What went wrong.
    pub error: MpiError,
}

impl From<MpiError> for Failed {
    fn from(error: MpiError) -> Failed {
        Failed {
            source: None,
            error,
        }
    }
}

/// A persistent receive for any sender and tag into a buffer of its own, posted again as
/// soon as a message was copied out. A small message is then matched and copied into
/// place when it arrives, as a raw `MPI_Recv` would; a probe followed by a receive into
/// a fresh buffer costs two matches and doubles the latency of a small message.
pub(super) struct PostedRecv {
    /// `MPI_REQUEST_NULL` after a receive failed: MPI may free a request that completes
    /// with an error, so a new one is made at the next poll.
    request: ffi::MPI_Request,
    comm: ffi::MPI_Comm,
    /// Owned (from a boxed slice); MPI writes into it while the request is active, so
    /// Rust never holds a reference into it then.
    buffer: NonNull<u8>,
    capacity: usize,
    active: bool,
}

// SAFETY: MPI_THREAD_MULTIPLE lets any thread use the request; the buffer is owned and
// only touched through `&mut self`.
unsafe impl Send for PostedRecv {}

impl PostedRecv {
    /// Creates the persistent receive on `comm` and posts it. `comm` must outlive it.
    pub(super) fn new(comm: &Comm, capacity: usize) -> Result<PostedRecv, MpiError> {
        c_int::try_from(capacity).map_err(|_| MpiError {
            call: "MPI_Recv_init",
            code: ffi::MPI_ERR_COUNT as c_int,
        })?;
        let buffer = Box::<[u8]>::from(vec![0u8; capacity.max(1)]);
        let mut posted = PostedRecv {
            // SAFETY: reading a predefined handle of an initialised MPI.
            request: unsafe { ffi::RSMPI_REQUEST_NULL },
            comm: comm.0,
            buffer: NonNull::from(Box::leak(buffer)).cast::<u8>(),
            capacity,
            active: false,
        };
        posted.start()?;
        Ok(posted)
    }

    fn is_null(&self) -> bool {
        // SAFETY: reading a predefined handle of an initialised MPI.
        self.request == unsafe { ffi::RSMPI_REQUEST_NULL }
    }

    /// Posts the receive, making the persistent request first if there is none.
    fn start(&mut self) -> Result<(), MpiError> {
        if self.is_null() {
            let count = c_int::try_from(self.capacity).unwrap_or(c_int::MAX);
            // SAFETY: the buffer has room for `capacity` bytes and lives until Drop, which
            // frees the request first; `comm` outlives this receive.
            check("MPI_Recv_init", unsafe {
                ffi::MPI_Recv_init(
                    self.buffer.as_ptr().cast::<c_void>(),
                    count,
                    ffi::RSMPI_UINT8_T,
                    ffi::RSMPI_ANY_SOURCE,
                    ffi::RSMPI_ANY_TAG,
                    self.comm,
                    &mut self.request,
                )
            })?;
        }
        // SAFETY: `request` is an inactive persistent receive into our buffer.
        check("MPI_Start", unsafe { ffi::MPI_Start(&mut self.request) })?;
        self.active = true;
        Ok(())
    }

    /// The message that arrived, if one did; the receive is posted again before this
    /// returns (or, if that fails, at the next call, which reports the failure).
    pub(super) fn poll(&mut self) -> Result<Option<Arrival>, Failed> {
        if !self.active {
            self.start()?;
        }
        let mut flag: c_int = 0;
        let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
        // SAFETY: `request` is an active persistent receive; `status` is writable.
        let code = unsafe { ffi::MPI_Test(&mut self.request, &mut flag, status.as_mut_ptr()) };
        // SAFETY: zero is a valid MPI_Status (plain integers), and MPI only writes it.
        let status = unsafe { status.assume_init() };
        if let Err(error) = check("MPI_Test", code) {
            self.discard();
            let source = (status.MPI_SOURCE >= 0).then_some(status.MPI_SOURCE);
            return Err(Failed { source, error });
        }
        if flag == 0 {
            return Ok(None);
        }
        self.active = false;
        let arrival = self.copy_out(&status);
        // A failure to post again surfaces at the next poll; this message is not lost.
        let _ = self.start();
        arrival.map(Some)
    }

    /// Forgets a request that completed with an error: Open MPI frees it then (even a
    /// persistent one), others leave it inactive.
    fn discard(&mut self) {
        self.active = false;
        if !self.is_null() {
            // SAFETY: the request completed (with an error), so it is inactive; freeing an
            // inactive persistent request is allowed. A handle MPI already freed is null.
            unsafe {
                ffi::MPI_Request_free(&mut self.request);
                self.request = ffi::RSMPI_REQUEST_NULL;
            }
        }
    }

    fn copy_out(&self, status: &ffi::MPI_Status) -> Result<Arrival, Failed> {
        let failed = |error| Failed {
            source: Some(status.MPI_SOURCE),
            error,
        };
        let count = received_count(status).map_err(failed)?;
        let len = usize::try_from(count).unwrap_or(0).min(self.capacity);
        // SAFETY: the request completed, so MPI no longer writes the buffer, and it wrote
        // `count` bytes (at most `capacity`) at its start.
        let bytes = unsafe { std::slice::from_raw_parts(self.buffer.as_ptr(), len) };
        let tag = Tag::from_raw(status.MPI_TAG);
        let payload = match tag {
            Some(Tag::DataByte(first)) => {
                let mut payload = Vec::with_capacity(len + 1);
                payload.push(first);
                payload.extend_from_slice(bytes);
                payload
            }
            _ => bytes.to_vec(),
        };
        Ok(Arrival {
            source: status.MPI_SOURCE,
            tag,
            payload,
        })
    }
}

impl Drop for PostedRecv {
    fn drop(&mut self) {
        // SAFETY: `request` is our persistent receive; once cancelled and completed (or
        // already inactive) it is freed, and only then the buffer MPI wrote into.
        unsafe {
            if self.active {
                ffi::MPI_Cancel(&mut self.request);
                ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE);
            }
            if !self.is_null() {
                ffi::MPI_Request_free(&mut self.request);
            }
            drop(free_buffer(self.buffer, self.capacity));
        }
    }
}

/// The boxed slice behind a posted receive's buffer.
///
/// # Safety
/// `buffer` must come from leaking a `Box<[u8]>` of `capacity.max(1)` bytes, and no MPI
/// request may still write into it.
unsafe fn free_buffer(buffer: NonNull<u8>, capacity: usize) -> Box<[u8]> {
    let slice = std::ptr::slice_from_raw_parts_mut(buffer.as_ptr(), capacity.max(1));
    // SAFETY: as the caller promises.
    unsafe { Box::from_raw(slice) }
}

/// A message taken by a matched probe, still to be received.
pub(super) struct Probed {
    message: ffi::MPI_Message,
    count: c_int,
}

impl Probed {
    /// The size of the message in bytes.
    pub(super) fn len(&self) -> usize {
        usize::try_from(self.count).unwrap_or(0)
    }

    /// Receives the message at the end of `out`, growing it by the probed size.
    pub(super) fn receive_append(mut self, out: &mut Vec<u8>) -> Result<(), MpiError> {
        self.receive_into(out)
    }

    fn receive_into(&mut self, out: &mut Vec<u8>) -> Result<(), MpiError> {
        let len = self.len();
        out.reserve(len);
        let start = out.len();
        // SAFETY: `reserve` made room for `len` more bytes after the `start` bytes the
        // vector holds; `message` is a matched message from MPI_Improbe, received exactly
        // once (MPI sets it to MPI_MESSAGE_NULL, so Drop does nothing).
        unsafe {
            check(
                "MPI_Mrecv",
                ffi::MPI_Mrecv(
                    out.as_mut_ptr().add(start).cast::<c_void>(),
                    self.count,
                    ffi::RSMPI_UINT8_T,
                    &mut self.message,
                    ffi::RSMPI_STATUS_IGNORE,
                ),
            )?;
            // SAFETY: MPI_Mrecv succeeded, so it wrote all `len` bytes after `start`.
            out.set_len(start + len);
        }
        Ok(())
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        // SAFETY: reading a predefined handle of an initialised MPI.
        let null = unsafe { ffi::RSMPI_MESSAGE_NULL };
        if self.message != null {
            // A matched message must be received, or it stays in MPI forever.
            let _ = self.receive_into(&mut Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_reads_back_and_stays_within_the_smallest_tag_bound() {
        let mut tags = vec![Tag::Data, Tag::Head, Tag::Leave, Tag::Tail];
        tags.extend((0..=255).map(Tag::DataByte));
        for tag in tags {
            assert!((0..=32767).contains(&tag.raw()), "{tag:?}");
            assert_eq!(Tag::from_raw(tag.raw()), Some(tag));
        }
        assert_eq!(Tag::from_raw(0), None);
        assert_eq!(Tag::from_raw(Tag::DATA_BYTE + 256), None);
    }
}
