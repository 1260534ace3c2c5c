//! Test support for the MPI backend, run under `mpirun` by the integration tests; not
//! for users. `parvm-mpi-echo <mode>`; rank 0 drives, the other ranks answer, and every
//! rank prints lines the tests parse.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use parvm_transport::mpi::{INLINE, MpiTransport, Unchecked};
use parvm_transport::{Event, Rank, Transport, Wait};

/// Errors end the run with a message; no error type of its own is needed here.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*); } };
}

/// Whether this rank joined through `parvm_transport::worker_from_env`.
static VIA_HOOK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a worker takes as "leave the loop".
const STOP: &[u8] = b"parvm-mpi-echo:stop";

/// The sizes the ping-pong checks, 0 B to 10 MiB, with both sides of the posted
/// receive's size.
const SIZES: [usize; 12] = [
    0,
    1,
    1000,
    1024,
    INLINE - 1,
    INLINE,
    INLINE + 1,
    65_536,
    100 * 1024,
    1 << 20,
    (1 << 20) + 7,
    10 << 20,
];

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "malformed" {
        return malformed_main();
    }
    // Workers join through the crate's generic hook, the spawner (rank 0) directly: the
    // way the VM starts.
    let joined = match parvm_transport::worker_from_env() {
        Ok(Some(worker)) => Ok((worker, true)),
        Ok(None) => MpiTransport::init().map(|t| (Box::new(t) as Box<dyn Transport>, false)),
        Err(e) => Err(e),
    };
    let (transport, via_hook) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            eprintln!("parvm-mpi-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    VIA_HOOK.store(via_hook, std::sync::atomic::Ordering::Relaxed);
    let rank = transport.rank();
    let outcome = run(transport.as_ref(), &mode);
    // Finalise MPI before reporting the outcome.
    drop(transport);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parvm-mpi-echo rank {rank}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(t: &dyn Transport, mode: &str) -> Result<()> {
    match mode {
        "info" => info(t),
        "pingpong" => pingpong(t),
        "exchange" => exchange(t),
        "timeouts" => timeouts(t),
        "threads" => threads(t),
        "parts" => parts(t),
        "die" => die(t),
        "die-send" => die_send(t),
        other => {
            bail!(
                "unknown mode `{other}`; use info, pingpong, exchange, timeouts, threads, parts, malformed or die"
            )
        }
    }
}

fn info(t: &dyn Transport) -> Result<()> {
    let peers: Vec<String> = t
        .peers()
        .iter()
        .map(|peer| format!("{}:{}", peer.rank, peer.host))
        .collect();
    println!(
        "info rank={} size={} host={} backend={} launched={} hook={} peers={}",
        t.rank(),
        t.size(),
        t.host(),
        t.backend(),
        parvm_transport::mpi::launched_by_mpirun(),
        VIA_HOOK.load(std::sync::atomic::Ordering::Relaxed),
        peers.join(",")
    );
    Ok(())
}

/// A payload whose every byte depends on its size, position and the peer.
fn pattern(len: usize, peer: Rank) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ len ^ (peer as usize * 7)) as u8)
        .collect()
}

fn expect_message(t: &dyn Transport, wait: Wait) -> Result<(Rank, Vec<u8>)> {
    match t.recv(wait)? {
        Some(Event::Message { from, payload }) => Ok((from, payload)),
        Some(other) => bail!("expected a message, got {other:?}"),
        None => bail!("no message within {wait:?}"),
    }
}

/// Workers echo every message back until told to stop.
fn echo_until_stop(t: &dyn Transport) -> Result<()> {
    loop {
        let (from, payload) = expect_message(t, Wait::Forever)?;
        if payload == STOP {
            return Ok(());
        }
        t.send(from, &payload)?;
    }
}

fn stop_workers(t: &dyn Transport) -> Result<()> {
    for worker in 1..t.size() as Rank {
        t.send(worker, STOP)?;
    }
    Ok(())
}

fn pingpong(t: &dyn Transport) -> Result<()> {
    if t.rank() != 0 {
        return echo_until_stop(t);
    }
    for worker in 1..t.size() as Rank {
        for len in SIZES {
            let sent = pattern(len, worker);
            t.send(worker, &sent)?;
            let (from, got) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
            ensure!(
                from == worker,
                "answer to rank {worker} came from rank {from}"
            );
            ensure!(
                got == sent,
                "{len} bytes came back from rank {worker} as {} different bytes",
                got.len()
            );
        }
    }
    // A rank that does not exist is an error, not a crash.
    let size = t.size() as Rank;
    ensure!(t.send(size, b"x").is_err(), "send to rank {size} succeeded");
    stop_workers(t)?;
    println!("pingpong ok sizes={SIZES:?}");
    Ok(())
}

/// Every rank sends 10 MiB to every other rank before receiving anything: with plain
/// blocking sends this deadlocks.
fn exchange(t: &dyn Transport) -> Result<()> {
    let me = t.rank();
    let len = 10 << 20;
    for peer in (0..t.size() as Rank).filter(|&peer| peer != me) {
        t.send(peer, &pattern(len, me))?;
    }
    for _ in 1..t.size() {
        let (from, got) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
        ensure!(got == pattern(len, from), "10 MiB from rank {from} differ");
    }
    println!("exchange ok rank={me}");
    Ok(())
}

fn cpu_time() -> Result<Duration> {
    let spec = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(spec))
}

/// Waits `wait` with nothing arriving; returns (elapsed, CPU share of one core in %).
fn idle(t: &dyn Transport, wait: Wait) -> Result<(Duration, f64)> {
    let cpu = cpu_time()?;
    let start = Instant::now();
    let got = t.recv(wait)?;
    let elapsed = start.elapsed();
    let used = cpu_time()?.saturating_sub(cpu);
    ensure!(
        got.is_none(),
        "expected nothing within {wait:?}, got {got:?}"
    );
    Ok((elapsed, 100.0 * used.as_secs_f64() / elapsed.as_secs_f64()))
}

fn timeouts(t: &dyn Transport) -> Result<()> {
    if t.rank() != 0 {
        let cpu = cpu_time()?;
        let start = Instant::now();
        let (_, payload) = expect_message(t, Wait::Forever)?;
        ensure!(payload == STOP, "expected the stop message");
        let share =
            100.0 * cpu_time()?.saturating_sub(cpu).as_secs_f64() / start.elapsed().as_secs_f64();
        println!("forever rank={} cpu_percent={share:.2}", t.rank());
        return Ok(());
    }
    let (elapsed, _) = idle(t, Wait::NoWait)?;
    println!("nowait elapsed_us={}", elapsed.as_micros());
    let (elapsed, _) = idle(t, Wait::For(Duration::from_millis(200)))?;
    println!("for200 elapsed_us={}", elapsed.as_micros());
    let (elapsed, share) = idle(t, Wait::For(Duration::from_secs(1)))?;
    println!(
        "for1s elapsed_us={} cpu_percent={share:.2}",
        elapsed.as_micros()
    );
    stop_workers(t)
}

/// One thread blocks in `recv` while another sends: the trait's promise.
fn threads(t: &dyn Transport) -> Result<()> {
    if t.rank() != 0 {
        return echo_until_stop(t);
    }
    let rounds = 200;
    let workers = t.size() as Rank - 1;
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| -> Result<()> {
            let mut next = vec![0usize; t.size()];
            for _ in 0..rounds * workers as usize {
                let (from, got) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
                let round = next[from as usize];
                ensure!(
                    got == pattern(round * 97, from),
                    "round {round} from rank {from} came back wrong or out of order"
                );
                next[from as usize] += 1;
            }
            Ok(())
        });
        for round in 0..rounds {
            for worker in 1..=workers {
                t.send(worker, &pattern(round * 97, worker))?;
            }
        }
        receiver
            .join()
            .map_err(|_| "the receiving thread panicked")?
    })?;
    stop_workers(t)?;
    println!("threads ok rounds={rounds}");
    Ok(())
}

/// The last rank dies without finalising; mpirun must end the job and name it.
fn die(t: &dyn Transport) -> Result<()> {
    let last = t.size() as Rank - 1;
    if t.rank() == last && last != 0 {
        eprintln!("rank {last} on host {} dies now", t.host());
        std::process::abort();
    }
    // Everyone else waits for a message that never comes; mpirun ends them.
    let got = t.recv(Wait::For(Duration::from_secs(60)))?;
    bail!(
        "rank {} survived the death of rank {last} (got {got:?})",
        t.rank()
    )
}

/// The last rank dies; rank 0 then tries to reach it. Under `mpirun --enable-recovery`
/// the job survives, and the failure must name the rank and its host.
fn die_send(t: &dyn Transport) -> Result<()> {
    let last = t.size() as Rank - 1;
    if t.rank() == last && last != 0 {
        eprintln!("rank {last} on host {} dies now", t.host());
        std::process::abort();
    }
    if t.rank() != 0 {
        let got = t.recv(Wait::For(Duration::from_secs(5)))?;
        println!("rank {} waited: {got:?}", t.rank());
        return Ok(());
    }
    let got = t.recv(Wait::For(Duration::from_secs(2)))?;
    println!("rank 0 waited: {got:?}");
    for len in [10, 10 << 20] {
        match t.send(last, &pattern(len, last)) {
            Ok(()) => println!("send {len} to dead rank: ok"),
            Err(e) => println!("send {len} to dead rank: error: {e}"),
        }
    }
    let got = t.recv(Wait::For(Duration::from_secs(2)))?;
    println!("rank 0 waited again: {got:?}");
    Ok(())
}

/// The shapes `send_parts` is checked with: (part sizes), around the posted receive's size.
fn part_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![],
        vec![21, 0],
        vec![21, INLINE - 21],
        vec![21, INLINE - 20],
        vec![100, 100 * 1024],
        vec![0, 1 << 20],
        vec![INLINE + 5, 10],
        vec![INLINE, INLINE],
        vec![7, 5000, 70_000],
    ]
}

/// Rank 0 sends payloads in parts; workers answer each in two halves, so both sides'
/// splits are checked.
fn parts(t: &dyn Transport) -> Result<()> {
    if t.rank() != 0 {
        loop {
            let (from, payload) = expect_message(t, Wait::Forever)?;
            if payload == STOP {
                return Ok(());
            }
            let (head, tail) = payload.split_at(payload.len() / 2);
            t.send_parts(from, &[head, tail])?;
        }
    }
    for worker in 1..t.size() as Rank {
        for shape in part_shapes() {
            let whole = pattern(shape.iter().sum(), worker);
            let mut rest = &whole[..];
            let parts: Vec<&[u8]> = shape
                .iter()
                .map(|&len| {
                    let (part, after) = rest.split_at(len);
                    rest = after;
                    part
                })
                .collect();
            t.send_parts(worker, &parts)?;
            let (from, got) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
            ensure!(
                from == worker,
                "answer to rank {worker} came from rank {from}"
            );
            ensure!(
                got == whole,
                "parts {shape:?} came back from rank {worker} as {} different bytes",
                got.len()
            );
        }
    }
    stop_workers(t)?;
    println!("parts ok shapes={}", part_shapes().len());
    Ok(())
}

/// Malformed traffic, with every rank on the backend directly: rank 1 sends a message too
/// large for the posted receive, then a head whose tail never comes, then a message that
/// must wait behind that head; rank 2 sends a message that must not wait.
fn malformed_main() -> ExitCode {
    let transport = match MpiTransport::init() {
        Ok(transport) => transport,
        Err(e) => {
            eprintln!("parvm-mpi-echo malformed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match malformed(&transport) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said before finalising, which waits for the other ranks.
            eprintln!("parvm-mpi-echo malformed rank {}: {e}", transport.rank());
            ExitCode::FAILURE
        }
    }
}

fn malformed(t: &MpiTransport) -> Result<()> {
    ensure!(t.size() == 3, "run malformed with 3 ranks");
    match t.rank() {
        1 => {
            t.send_unchecked(0, &pattern(INLINE + 1, 1), Unchecked::Whole)?;
            t.send_unchecked(0, b"head", Unchecked::HeadWithoutTail)?;
            t.send(0, b"after the head")?;
            t.world_barrier();
            let (_, payload) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
            ensure!(payload == STOP, "expected the stop message");
            t.send_unchecked(0, &[], Unchecked::Leave)?;
            Ok(())
        }
        2 => {
            t.send(0, b"from rank 2")?;
            t.world_barrier();
            Ok(())
        }
        _ => malformed_receiver(t),
    }
}

fn malformed_receiver(t: &MpiTransport) -> Result<()> {
    t.world_barrier();
    let mut events = Vec::new();
    while let Some(event) = t.recv(Wait::For(Duration::from_millis(300)))? {
        events.push(event);
    }
    let truncated = events.iter().any(|event| {
        matches!(event, Event::PeerLost { rank: 1, reason } if reason.contains("could not receive"))
    });
    ensure!(
        truncated,
        "the oversized message was not reported: {events:?}"
    );
    let from_2 = events.iter().any(
        |event| matches!(event, Event::Message { from: 2, payload } if payload == b"from rank 2"),
    );
    ensure!(
        from_2,
        "rank 2's message waited behind rank 1's head: {events:?}"
    );
    let early = events
        .iter()
        .any(|event| matches!(event, Event::Message { from: 1, .. }));
    ensure!(!early, "rank 1's message overtook its head: {events:?}");
    t.send(1, STOP)?;
    let (from, payload) = expect_message(t, Wait::For(Duration::from_secs(30)))?;
    ensure!(
        from == 1 && payload == b"after the head",
        "expected rank 1's held message once it left, got {payload:?} from rank {from}"
    );
    match t.recv(Wait::For(Duration::from_secs(30)))? {
        Some(Event::PeerLost { rank: 1, reason }) if reason.contains("left") => {}
        other => bail!("expected rank 1 to leave, got {other:?}"),
    }
    println!("malformed ok");
    Ok(())
}
