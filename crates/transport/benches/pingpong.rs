//! One-way latency and throughput of the local backend against a raw Unix-socket
//! ping-pong, for 0 B, 1 KiB, 100 KiB and 10 MiB messages.
//!
//! Run with `cargo bench -p parvm-transport --bench pingpong`.

use parvm_transport::bench_support::{raw_unix_pingpong, transport_pingpong};
use parvm_transport::local::{LocalOptions, LocalTransport};
use parvm_transport::{Event, Wait};

fn rounds_for(size: usize) -> usize {
    if size <= 2048 {
        20_000
    } else if size <= 200_000 {
        2_000
    } else {
        100
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Some(worker) = parvm_transport::worker_from_env()? {
        while let Ok(Some(event)) = worker.recv(Wait::Forever) {
            match event {
                Event::Message { from, payload } => worker.send(from, &payload)?,
                Event::PeerLost { .. } => break,
                Event::PeerJoined(_) => {}
            }
        }
        return Ok(());
    }
    // `cargo bench` passes `--bench`; the workers get the same arguments and ignore them.
    let vm = LocalTransport::launch(LocalOptions::new(1))?;
    println!(
        "{:>8}  {:>12} {:>12} {:>7}  {:>12} {:>12} {:>7}",
        "size", "raw 1-way", "local 1-way", "ratio", "raw MB/s", "local MB/s", "ratio"
    );
    for size in [0usize, 1024, 100 * 1024, 10 * 1024 * 1024] {
        let rounds = rounds_for(size);
        // Warm up both paths (page faults, caches, the spin heuristics).
        raw_unix_pingpong(size, rounds / 10 + 1)?;
        transport_pingpong(&vm, 1, size, rounds / 10 + 1)?;
        let raw = raw_unix_pingpong(size, rounds)?;
        let local = transport_pingpong(&vm, 1, size, rounds)?;
        let mb = |b: f64| b / 1e6;
        println!(
            "{:>8}  {:>12.2?} {:>12.2?} {:>7.2}  {:>12.0} {:>12.0} {:>7.2}",
            size,
            raw.one_way,
            local.one_way,
            local.one_way.as_secs_f64() / raw.one_way.as_secs_f64().max(1e-12),
            mb(raw.bytes_per_sec),
            mb(local.bytes_per_sec),
            if raw.bytes_per_sec > 0.0 {
                local.bytes_per_sec / raw.bytes_per_sec
            } else {
                0.0
            },
        );
    }
    Ok(())
}
