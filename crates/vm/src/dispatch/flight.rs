//! What the scheduler keeps about each job: the dispatch's settings, a job waiting for a
//! place ([`Pending`]) with the attempts it counted, and a job whose task was sent
//! ([`Flight`]) with what arrived for it so far.
//!
//! Plain data; it must not know how jobs are placed or reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::job::Job;
use crate::Captured;
use crate::message::{TaskFailure, Value};

/// The settings of one dispatch.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub window: Option<usize>,
    pub ordered: bool,
    pub retries: u32,
    pub lost_retries: u32,
    pub halt_on_error: bool,
    pub timeout: Option<Duration>,
    /// [`Dispatch::timeout_of_median`](super::Dispatch::timeout_of_median): the percent.
    pub timeout_of_median: Option<f64>,
    pub results: Option<PathBuf>,
    /// Set once [`Dispatch::halt_handle`](super::Dispatch::halt_handle) handed one out.
    pub halt_handle: Option<super::HaltHandle>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            window: None,
            ordered: true,
            retries: 0,
            lost_retries: 3,
            halt_on_error: false,
            timeout: None,
            timeout_of_median: None,
            results: None,
            halt_handle: None,
        }
    }
}

/// A job waiting for a place, with what its earlier attempts counted.
pub(super) struct Pending {
    pub(super) index: usize,
    pub(super) job: Job,
    pub(super) attempts: u32,
    pub(super) failures: u32,
    pub(super) lost: u32,
    /// The host its worker was lost on, to try another one first.
    pub(super) avoid: Option<String>,
}

/// A job whose task was sent to a worker.
pub(super) struct Flight {
    pub(super) pending: Pending,
    pub(super) host: String,
    /// When the task started: at its send, or at the end of the task it was queued
    /// behind; `None` while queued.
    pub(super) started: Option<Instant>,
    /// When its fixed limit (its own, or the dispatch's) runs out; a limit from the
    /// median is worked out afresh as the median moves.
    pub(super) deadline: Option<Instant>,
    pub(super) value: Option<Result<Value, TaskFailure>>,
    pub(super) returned: Vec<PathBuf>,
    pub(super) returned_bytes: u64,
    pub(super) captured: Option<(Captured, Captured)>,
    /// Stopped because it ran past this time limit.
    pub(super) timed_out: Option<Duration>,
    /// Stopped because the dispatch stops: not reported.
    pub(super) dropped: bool,
}

/// What [`Scheduler::place`](super::scheduler::Scheduler) did with a job.
#[allow(
    clippy::large_enum_variant,
    reason = "a job given back is moved once; boxing it would allocate for every job that waits for a slot"
)]
pub(super) enum Placed {
    Sent,
    /// Reported at once (refused before sending).
    Reported,
    /// No place now.
    NoPlace(Pending),
}
