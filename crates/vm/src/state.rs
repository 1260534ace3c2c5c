//! The spawner's table of worker slots, and the rest of the state its VMs share under one
//! lock (per-VM inboxes, the puller's flags, replies to a clear, losses).
//!
//! [`Slots`] is the only code that writes a slot: a slot joins, is reserved for a task,
//! is marked ended when the worker reports the task's end, is freed when its VM receives
//! the exit (or is gone), and leaves when its worker is lost. Everyone else only reads.
//! It must not know the transport, the wire format or how events arrive.

use std::any::TypeId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parvm_transport::Rank;

use crate::{HostId, Message, TaskId};

/// One worker slot.
#[derive(Debug)]
pub(crate) struct Slot {
    pub host: String,
    pub running: Option<Running>,
    /// The worker is exiting (to stop its function task): no new task is placed on it.
    pub leaving: bool,
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

    /// Whether `task` is still running (its end not yet reported).
    pub(crate) fn is_live(&self, task: TaskId) -> bool {
        self.map
            .get(&task.slot)
            .and_then(|slot| slot.running.as_ref())
            .is_some_and(|r| r.number == task.number && !r.ended)
    }

    /// A worker joined on `host`; returns whether the host had no worker before.
    pub(crate) fn join(&mut self, rank: Rank, host: String) -> bool {
        let known = self.map.values().any(|slot| slot.host == host);
        self.map.insert(
            rank,
            Slot {
                host,
                running: None,
                leaving: false,
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
            slot.running = Some(Running {
                number,
                vm: task.vm,
                label: task.label.to_owned(),
                send_back: task.send_back,
                returns: task.returns,
                command: task.command,
                ended: false,
            });
            chosen.push((rank, number));
        }
        chosen
    }

    /// The worker `rank` reported the end of its task `number`: marks it ended, so the
    /// slot frees when the VM receives the exit.
    pub(crate) fn end(&mut self, rank: Rank, number: u64) -> End {
        let Some(slot) = self.map.get_mut(&rank) else {
            return End::NoSlot;
        };
        let Some(running) = slot.running.as_mut().filter(|r| r.number == number) else {
            return End::NotRunning;
        };
        running.ended = true;
        End::Ended {
            vm: running.vm,
            send_back: running.send_back,
            returns: running.returns,
        }
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

    /// The worker `rank` is gone; returns its slot.
    pub(crate) fn remove(&mut self, rank: Rank) -> Option<Slot> {
        self.map.remove(&rank)
    }
}

/// What the spawner's VMs share under one lock.
#[derive(Default)]
pub(crate) struct State {
    pub slots: Slots,
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
        assert!(matches!(slots.end(1, 9), End::NotRunning));
        assert!(matches!(slots.end(7, 2), End::NoSlot));
        assert!(matches!(slots.end(1, 2), End::Ended { vm: 0, .. }));
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
        let _ = slots.end(1, 1);
        let _ = slots.end(3, 3);
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
}
