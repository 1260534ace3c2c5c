//! The spawner's table of worker slots, and the rest of the state its VMs share under one
//! lock (per-VM inboxes, the puller's flags, replies to a clear, losses).
//!
//! [`Slots`] is the only code that writes a slot: a slot joins, is reserved for a task,
//! is marked ended when the worker reports the task's end, is freed when its VM receives
//! the exit (or is gone), and leaves when its worker is lost. Everyone else only reads.
//! A dispatch may queue one successor behind a running task ([`Slots::reserve_queued`]):
//! the worker reads its request after the current task, so no round trip separates the
//! two; it becomes the running task when the current one's end is reported.
//! It must not know the transport, the wire format or how events arrive.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parvm_transport::Rank;

use crate::{HostId, Message, TaskId};

/// One worker slot.
#[derive(Debug)]
pub(crate) struct Slot {
    pub host: String,
    pub running: Option<Running>,
    /// The task whose request waits at the worker behind `running` (dispatch only).
    pub queued: Option<Running>,
    /// The worker is exiting (to stop its function task, or asked to by a signal): no new
    /// task is placed on it.
    pub leaving: bool,
    /// Why the worker said it leaves ([`FromWorker::Leaving`](crate::wire::FromWorker::Leaving)),
    /// for the warning its loss gives.
    pub left_because: Option<String>,
}

/// The task occupying a slot, until its exit is received.
#[derive(Debug)]
pub(crate) struct Running {
    pub number: u64,
    pub vm: u32,
    pub label: String,
    pub send_back: bool,
    pub returns: Option<(TypeId, &'static str)>,
    /// The task is an external command (else a registered function).
    pub command: bool,
    /// The worker reported the end; the slot frees when the VM receives the exit.
    pub ended: bool,
}

/// What a task to be placed on free slots is: the fields every slot it gets shares.
pub(crate) struct Occupant<'a> {
    pub vm: u32,
    pub label: &'a str,
    pub send_back: bool,
    pub returns: Option<(TypeId, &'static str)>,
    pub command: bool,
}

impl Occupant<'_> {
    fn running(&self, number: u64) -> Running {
        Running {
            number,
            vm: self.vm,
            label: self.label.to_owned(),
            send_back: self.send_back,
            returns: self.returns,
            command: self.command,
            ended: false,
        }
    }
}

/// What [`Slots::end`] found.
pub(crate) enum End {
    /// No such worker (it was lost meanwhile).
    NoSlot,
    /// The worker runs no task of that number.
    NotRunning,
    /// The task is marked ended; its VM, whether it sends its result back, and the type
    /// its result decodes to.
    Ended {
        vm: u32,
        send_back: bool,
        returns: Option<(TypeId, &'static str)>,
    },
}

/// The worker slots by rank; the only writer of a [`Slot`].
#[derive(Debug, Default)]
pub(crate) struct Slots {
    map: BTreeMap<Rank, Slot>,
}

impl Slots {
    /// How many worker slots there are.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no worker is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The slots in rank order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Rank, &Slot)> {
        self.map.iter().map(|(&rank, slot)| (rank, slot))
    }

    /// The ranks in order.
    pub(crate) fn ranks(&self) -> Vec<Rank> {
        self.map.keys().copied().collect()
    }

    /// The slot of `rank`.
    pub(crate) fn get(&self, rank: Rank) -> Option<&Slot> {
        self.map.get(&rank)
    }

    /// Whether `task` is still running (its end not yet reported), or queued behind the
    /// running task of its slot.
    pub(crate) fn is_live(&self, task: TaskId) -> bool {
        self.map.get(&task.slot).is_some_and(|slot| {
            slot.running
                .as_ref()
                .is_some_and(|r| r.number == task.number && !r.ended)
                || slot
                    .queued
                    .as_ref()
                    .is_some_and(|q| q.number == task.number)
        })
    }

    /// A worker joined on `host`; returns whether the host had no worker before.
    pub(crate) fn join(&mut self, rank: Rank, host: String) -> bool {
        let known = self.map.values().any(|slot| slot.host == host);
        self.map.insert(
            rank,
            Slot {
                host,
                running: None,
                queued: None,
                leaving: false,
                left_because: None,
            },
        );
        !known
    }

    /// Reserves up to `count` free slots (on `hosts` only, when given) for `task`, giving
    /// each a new task number from `numbers`; returns the ranks and numbers chosen.
    pub(crate) fn reserve(
        &mut self,
        count: usize,
        hosts: Option<&[HostId]>,
        numbers: &AtomicU64,
        task: &Occupant<'_>,
    ) -> Vec<(Rank, u64)> {
        let mut chosen = Vec::new();
        for (&rank, slot) in &mut self.map {
            if chosen.len() >= count {
                break;
            }
            if slot.running.is_some() || slot.leaving {
                continue;
            }
            if let Some(hosts) = hosts
                && !hosts.iter().any(|h| h.0 == slot.host)
            {
                continue;
            }
            let number = numbers.fetch_add(1, Ordering::Relaxed);
            slot.running = Some(task.running(number));
            chosen.push((rank, number));
        }
        chosen
    }

    /// Reserves one place for `task` (dispatch): a free slot first, else a queue place
    /// behind a running task of the same VM whose end is not reported yet; on `hosts`
    /// only, when given. A host other than `avoid` is preferred: its free slot, else its
    /// queue place, else a free slot of any host (`avoid` too), so no slot idles while the
    /// task waits; with none, the task waits for a place on another host (or for a free
    /// slot). Returns the rank, the task number, and whether the task is queued behind
    /// another.
    pub(crate) fn reserve_queued(
        &mut self,
        hosts: Option<&[HostId]>,
        avoid: Option<&str>,
        numbers: &AtomicU64,
        task: &Occupant<'_>,
    ) -> Option<(Rank, u64, bool)> {
        let allowed =
            |slot: &Slot| hosts.is_none_or(|hosts| hosts.iter().any(|h| h.0 == slot.host));
        let free = |slot: &Slot| slot.running.is_none() && !slot.leaving;
        let queueable = |slot: &Slot| {
            !slot.leaving
                && slot.queued.is_none()
                // Only behind a task of the same VM: the end of the task in front, which
                // only its VM receives, is what starts the queued one's clock.
                && slot.running.as_ref().is_some_and(|r| !r.ended && r.vm == task.vm)
        };
        let pick = |want: &dyn Fn(&Slot) -> bool, avoid: Option<&str>| {
            self.map
                .iter()
                .find(|(_, slot)| {
                    allowed(slot) && want(slot) && avoid.is_none_or(|a| a != slot.host)
                })
                .map(|(&rank, _)| rank)
        };
        let (rank, queued) = match pick(&free, avoid)
            .map(|rank| (rank, false))
            .or_else(|| pick(&queueable, avoid).map(|rank| (rank, true)))
            // Another host is only a preference: with no place there, a free slot of any
            // host takes the task rather than idle while the jobs behind it wait.
            .or_else(|| {
                avoid
                    .and_then(|_| pick(&free, None))
                    .map(|rank| (rank, false))
            }) {
            Some(found) => found,
            // Another host is only a preference: with none that could ever take the task,
            // it goes where it can.
            None if avoid.is_some()
                && !self
                    .map
                    .values()
                    .any(|s| allowed(s) && Some(s.host.as_str()) != avoid) =>
            {
                pick(&free, None)
                    .map(|rank| (rank, false))
                    .or_else(|| pick(&queueable, None).map(|rank| (rank, true)))?
            }
            None => return None,
        };
        let number = numbers.fetch_add(1, Ordering::Relaxed);
        let slot = self.map.get_mut(&rank)?;
        if queued {
            slot.queued = Some(task.running(number));
        } else {
            slot.running = Some(task.running(number));
        }
        Some((rank, number, queued))
    }

    /// The worker `rank` reported the end of its task `number`: marks it ended, so the
    /// slot frees when the VM receives the exit. The task queued behind it starts, unless
    /// the worker exits after this end (`last`): then it never starts, and stays queued
    /// until the worker's loss.
    pub(crate) fn end(&mut self, rank: Rank, number: u64, last: bool) -> End {
        let Some(slot) = self.map.get_mut(&rank) else {
            return End::NoSlot;
        };
        let Some(running) = slot.running.as_mut().filter(|r| r.number == number) else {
            // The request queued behind the running task, taken back before it started
            // (a stop unless started): it leaves the queue place; the running task stays.
            if let Some(queued) = slot.queued.take_if(|q| q.number == number) {
                return End::Ended {
                    vm: queued.vm,
                    send_back: queued.send_back,
                    returns: queued.returns,
                };
            }
            return End::NotRunning;
        };
        running.ended = true;
        let end = End::Ended {
            vm: running.vm,
            send_back: running.send_back,
            returns: running.returns,
        };
        // The worker starts the queued task right after reporting this end. The ended
        // task's exit is filed already; freeing it later finds another number and does
        // nothing.
        if !last && let Some(next) = slot.queued.take() {
            slot.running = Some(next);
        }
        end
    }

    /// Frees the slot of `task` if it still holds that task (its exit was received, or
    /// nobody will receive it).
    pub(crate) fn free(&mut self, task: TaskId) {
        if let Some(slot) = self.map.get_mut(&task.slot)
            && slot
                .running
                .as_ref()
                .is_some_and(|r| r.number == task.number)
        {
            slot.running = None;
        }
    }

    /// VM `vm` is gone: frees the slots of its tasks that have ended, whose exits it will
    /// never receive.
    pub(crate) fn release_vm(&mut self, vm: u32) {
        for slot in self.map.values_mut() {
            if slot.running.as_ref().is_some_and(|r| r.vm == vm && r.ended) {
                slot.running = None;
            }
        }
    }

    /// The worker `rank` is exiting: no task is placed on it any more.
    pub(crate) fn leave(&mut self, rank: Rank) {
        if let Some(slot) = self.map.get_mut(&rank) {
            slot.leaving = true;
        }
    }

    /// The worker `rank` said it leaves, and why: no task is placed on it any more, and
    /// its loss says why.
    pub(crate) fn leave_because(&mut self, rank: Rank, reason: String) {
        if let Some(slot) = self.map.get_mut(&rank) {
            slot.leaving = true;
            slot.left_because = Some(reason);
        }
    }

    /// The worker `rank` is gone; returns its slot.
    pub(crate) fn remove(&mut self, rank: Rank) -> Option<Slot> {
        self.map.remove(&rank)
    }
}

/// What the spawner's VMs share under one lock.
#[derive(Default)]
pub(crate) struct State {
    pub slots: Slots,
    /// Per VM that ships inputs, the channel to its shipping thread
    /// ([`crate::ship::serve`]); the router files the workers' requests into it.
    pub ship: HashMap<u32, std::sync::mpsc::Sender<crate::ship::serve::ShipJob>>,
    pub inboxes: BTreeMap<u32, VecDeque<Message>>,
    pub pulling: bool,
    /// Threads asleep on the condition variable, waiting for the puller to file their
    /// message; the puller wakes them only when there are some, since a wake-up is a
    /// system call even with nobody to wake.
    pub sleepers: usize,
    pub cleared: Vec<(Rank, Result<u64, String>)>,
    /// Workers lost so far, and why the last one was, for the error that says nothing
    /// can arrive any more.
    pub lost: usize,
    pub last_loss: Option<String>,
    /// Live tasks the spawner asked to stop ([`Vm::stop`](crate::Vm::stop)): their end,
    /// however it comes, is reported as stopped.
    pub stopping: std::collections::BTreeSet<TaskId>,
    /// When each stop (or take-back of a queued task) sent to a worker must have been
    /// answered by the task's end, on transports with a peer timeout
    /// ([`Transport::peer_timeout`](parvm_transport::Transport::peer_timeout)): a worker
    /// that lets it pass is given up ([`Shared::give_up_unanswered`](crate::spawner::Shared)).
    pub answer_due: BTreeMap<TaskId, std::time::Instant>,
    /// The window each worker is owed for user messages of its tasks that the program
    /// took or that were dropped, not yet acknowledged ([`State::message_gone`]).
    pub message_owed: HashMap<Rank, u64>,
    /// Returned files and captured output of the tasks that asked for them.
    pub returns: crate::returned::Returns,
    /// What running dispatches learn besides messages, by VM; only VMs that run a
    /// dispatch have an entry, so nothing is kept for plain spawns.
    pub notes: BTreeMap<u32, DispatchNotes>,
}

impl State {
    /// A user message of `bytes` from a task of worker `rank` left the spawner (the program
    /// took it, or it was dropped): the acknowledgement to send that worker now, once
    /// enough of its window is owed ([`crate::link::MESSAGE_ACK_EVERY`]).
    pub(crate) fn message_gone(&mut self, rank: Rank, bytes: usize) -> Option<u64> {
        let owed = self.message_owed.entry(rank).or_insert(0);
        *owed += crate::link::message_share(bytes);
        (*owed >= crate::link::MESSAGE_ACK_EVERY).then(|| std::mem::take(owed))
    }

    /// Task `task` ended (or its worker was lost): its stop, if one was asked for, is
    /// answered. Returns whether one was.
    pub(crate) fn stop_answered(&mut self, task: TaskId) -> bool {
        self.answer_due.remove(&task);
        self.stopping.remove(&task)
    }
}

/// What the router notes for a VM's dispatch, beside the messages it files.
#[derive(Debug, Default)]
pub(crate) struct DispatchNotes {
    /// Bytes mirrored for each task whose end was reported, when not 0.
    pub mirrored: HashMap<TaskId, u64>,
    /// Tasks whose worker was lost before their end was reported, and whether they had
    /// started (a queued task had not).
    pub lost: HashMap<TaskId, bool>,
    /// Tasks that ended because the spawner asked them to stop ([`crate::Vm::stop`]).
    pub stopped: std::collections::HashSet<TaskId>,
    /// Tasks stopped while queued at their worker, which says they never started (the
    /// spawner takes a queued task as started once the one before it ends).
    pub never_started: std::collections::HashSet<TaskId>,
    /// Tasks whose returning failed on their worker ([`crate::returned::Finished`]): a
    /// failure of the task itself, not results lost on the spawner.
    pub returns_failed_on_worker: std::collections::HashSet<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupant(vm: u32) -> Occupant<'static> {
        Occupant {
            vm,
            label: "t",
            send_back: true,
            returns: None,
            command: false,
        }
    }

    #[test]
    fn a_slot_lives_from_reserve_to_the_received_exit() {
        let mut slots = Slots::default();
        assert!(slots.join(1, "a".into()));
        assert!(!slots.join(2, "a".into()));
        assert!(slots.join(3, "b".into()));
        let numbers = AtomicU64::new(1);
        let hosts = [HostId("b".into())];
        assert_eq!(
            slots.reserve(5, Some(&hosts), &numbers, &occupant(0)),
            [(3, 1)]
        );
        assert_eq!(
            slots.reserve(5, None, &numbers, &occupant(0)),
            [(1, 2), (2, 3)]
        );
        assert!(slots.reserve(1, None, &numbers, &occupant(0)).is_empty());
        let task = TaskId { slot: 1, number: 2 };
        assert!(slots.is_live(task));
        assert!(matches!(slots.end(1, 9, false), End::NotRunning));
        assert!(matches!(slots.end(7, 2, false), End::NoSlot));
        assert!(matches!(slots.end(1, 2, false), End::Ended { vm: 0, .. }));
        assert!(!slots.is_live(task));
        // Ended but not received: still occupied.
        assert!(slots.get(1).is_some_and(|s| s.running.is_some()));
        slots.free(TaskId {
            slot: 1,
            number: 99,
        });
        assert!(slots.get(1).is_some_and(|s| s.running.is_some()));
        slots.free(task);
        assert!(slots.get(1).is_some_and(|s| s.running.is_none()));
    }

    #[test]
    fn a_gone_vm_frees_only_its_ended_tasks() {
        let mut slots = Slots::default();
        slots.join(1, "a".into());
        slots.join(2, "a".into());
        slots.join(3, "a".into());
        let numbers = AtomicU64::new(1);
        slots.reserve(2, None, &numbers, &occupant(0));
        slots.reserve(1, None, &numbers, &occupant(1));
        let _ = slots.end(1, 1, false);
        let _ = slots.end(3, 3, false);
        slots.release_vm(0);
        assert!(slots.get(1).is_some_and(|s| s.running.is_none()));
        assert!(slots.get(2).is_some_and(|s| s.running.is_some()));
        assert!(slots.get(3).is_some_and(|s| s.running.is_some()));
        assert!(slots.remove(2).is_some());
        assert_eq!(slots.ranks(), [1, 3]);
        // A leaving worker gets no task, even when free.
        slots.leave(1);
        assert!(slots.reserve(3, None, &numbers, &occupant(0)).is_empty());
    }

    #[test]
    fn a_dispatch_queues_one_task_behind_each_running_one() {
        let mut slots = Slots::default();
        slots.join(1, "a".into());
        slots.join(2, "b".into());
        let numbers = AtomicU64::new(1);
        let task = occupant(0);
        let reserve = |slots: &mut Slots, avoid: Option<&str>| {
            slots.reserve_queued(None, avoid, &numbers, &task)
        };
        // Free slots first (another host than `avoid` first), then a queue place each.
        assert_eq!(reserve(&mut slots, Some("a")), Some((2, 1, false)));
        assert_eq!(reserve(&mut slots, None), Some((1, 2, false)));
        assert_eq!(reserve(&mut slots, Some("a")), Some((2, 3, true)));
        // Host b is full and a is busy: a task avoiding host a waits rather than queue there.
        assert_eq!(reserve(&mut slots, Some("a")), None);
        assert_eq!(reserve(&mut slots, None), Some((1, 4, true)));
        assert_eq!(reserve(&mut slots, None), None, "one queued task per slot");
        assert!(slots.is_live(TaskId { slot: 1, number: 4 }));
        // The end of the running task starts the queued one; freeing the ended task's
        // exit later changes nothing.
        assert!(matches!(slots.end(1, 2, false), End::Ended { .. }));
        assert_eq!(
            slots
                .get(1)
                .and_then(|s| s.running.as_ref())
                .map(|r| r.number),
            Some(4)
        );
        slots.free(TaskId { slot: 1, number: 2 });
        assert!(
            slots
                .get(1)
                .is_some_and(|s| s.running.is_some() && s.queued.is_none())
        );
        assert!(
            !slots
                .get(1)
                .and_then(|s| s.running.as_ref())
                .is_some_and(|r| r.ended)
        );
        // A worker that exits after its end (a stopped function) never starts the next.
        assert!(matches!(slots.end(2, 1, true), End::Ended { .. }));
        let b = slots.get(2).unwrap();
        assert!(b.running.as_ref().is_some_and(|r| r.number == 1 && r.ended));
        assert_eq!(b.queued.as_ref().map(|q| q.number), Some(3));
        // Nothing queues behind an ended task: its worker is idle, the slot frees soon.
        assert_eq!(reserve(&mut slots, None), Some((1, 5, true)));
        assert_eq!(reserve(&mut slots, None), None);
    }

    #[test]
    fn a_dispatch_queues_only_behind_its_own_vm_s_task() {
        // The queued task's clock starts at the end of the task in front, which only that
        // task's VM receives.
        let mut slots = Slots::default();
        slots.join(1, "a".into());
        let numbers = AtomicU64::new(1);
        assert_eq!(slots.reserve(1, None, &numbers, &occupant(1)), [(1, 1)]);
        assert_eq!(
            slots.reserve_queued(None, None, &numbers, &occupant(0)),
            None
        );
        assert_eq!(
            slots.reserve_queued(None, None, &numbers, &occupant(1)),
            Some((1, 2, true))
        );
    }

    #[test]
    fn a_retry_avoiding_a_host_takes_its_free_slot_when_the_others_are_full() {
        // Head-of-line blocking: a lost job's retry prefers host b, which is full (running
        // and queued); host a's new worker is free. Waiting for b would leave a idle while
        // every job behind the retry waits too.
        let mut slots = Slots::default();
        slots.join(1, "a".into());
        slots.join(2, "b".into());
        let numbers = AtomicU64::new(1);
        let only_b = [HostId("b".into())];
        let task = occupant(0);
        assert_eq!(
            slots.reserve_queued(Some(&only_b), None, &numbers, &task),
            Some((2, 1, false))
        );
        assert_eq!(
            slots.reserve_queued(Some(&only_b), None, &numbers, &task),
            Some((2, 2, true))
        );
        assert_eq!(
            slots.reserve_queued(None, Some("a"), &numbers, &task),
            Some((1, 3, false))
        );
        // Now a is busy too: the retry queues nowhere rather than behind a.
        assert_eq!(slots.reserve_queued(None, Some("a"), &numbers, &task), None);
        // A free slot on b is still preferred to one on a.
        let _ = slots.end(2, 1, false);
        slots.free(TaskId { slot: 2, number: 1 });
        let _ = slots.end(2, 2, false);
        slots.free(TaskId { slot: 2, number: 2 });
        let _ = slots.end(1, 3, false);
        slots.free(TaskId { slot: 1, number: 3 });
        assert_eq!(
            slots.reserve_queued(None, Some("a"), &numbers, &task),
            Some((2, 4, false))
        );
    }

    #[test]
    fn another_host_is_only_a_preference() {
        let mut slots = Slots::default();
        slots.join(1, "a".into());
        let numbers = AtomicU64::new(1);
        let found = slots.reserve_queued(None, Some("a"), &numbers, &occupant(0));
        assert_eq!(found, Some((1, 1, false)), "no other host: the same one");
        let only_b = [HostId("b".into())];
        assert_eq!(
            slots.reserve_queued(Some(&only_b), None, &numbers, &occupant(0)),
            None
        );
    }
}
