//! Running one job per item on as many threads as there are cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Runs `job` on every item, on up to as many threads as there are cores, and returns the
/// results in item order, or the error of the first failing item (in item order, so the
/// error reported does not depend on thread timing). Items after a failure may be skipped.
pub(crate) fn each<T: Sync, R: Send, E: Send>(
    items: &[T],
    job: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    each_in_shares(items, 1, job)
}

/// [`each`], with at least `share` items per thread: for jobs so short that starting a
/// thread (tens of microseconds) for fewer would cost more than it saves.
pub(crate) fn each_in_shares<T: Sync, R: Send, E: Send>(
    items: &[T],
    share: usize,
    job: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().div_ceil(share.max(1)))
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<R, E>)>> = Mutex::new(Vec::with_capacity(items.len()));
    let stop_after = AtomicUsize::new(usize::MAX);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items.len() || i > stop_after.load(Ordering::Relaxed) {
                break;
            }
            let result = job(&items[i]);
            if result.is_err() {
                stop_after.fetch_min(i, Ordering::Relaxed);
            }
            results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((i, result));
        }
    };
    // The calling thread is one of them: a thread fewer to start, and its core keeps
    // working instead of handing the work over and sleeping until it is done.
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_item_order_and_the_first_error_wins() {
        let items: Vec<u32> = (0..200).collect();
        assert_eq!(
            each(&items, |&i| Ok::<_, u32>(i * 2)).unwrap(),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
        for _ in 0..20 {
            let failed = each(&items, |&i| if i % 50 == 7 { Err(i) } else { Ok(i) });
            assert_eq!(failed, Err(7));
        }
        assert!(each(&[] as &[u32], |&i| Ok::<_, ()>(i)).unwrap().is_empty());
    }

    #[test]
    fn shares_bound_the_threads_and_keep_the_order() {
        let items: Vec<u32> = (0..50).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        let doubled = each_in_shares(&items, 50, |&i| {
            threads.lock().unwrap().insert(std::thread::current().id());
            Ok::<_, ()>(i * 2)
        })
        .unwrap();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(
            threads.into_inner().unwrap().len(),
            1,
            "one share: one thread"
        );
    }
}
