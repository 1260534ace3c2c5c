//! One-way latency and throughput of the TCP backend for 0 B, 1 KiB, 100 KiB and 10 MiB
//! messages, in the same run: a raw TCP socket on loopback (the floor), the transport with
//! plaintext frames (only with the feature `bench-plaintext`; the product always seals),
//! and the transport with sealed frames (AES-256-GCM), as users run it.
//!
//! Run with `cargo xtask bench messaging --transport tcp`, or
//! `cargo bench -p parvm-transport --features bench-plaintext --bench tcp_pingpong`.

use std::time::Duration;

use parvm_transport::bench_support::{PingPong, raw_tcp_pingpong, transport_pingpong};
use parvm_transport::tcp::{ConnectOptions, Secret, TcpOptions, TcpTransport};
use parvm_transport::{Event, Transport, Wait};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn rounds_for(size: usize) -> usize {
    if size <= 2048 {
        20_000
    } else if size <= 200_000 {
        2_000
    } else {
        100
    }
}

/// The listening side, with frames in plaintext when asked (and built with the feature).
fn listen_mode(options: TcpOptions, plaintext: bool) -> TcpOptions {
    #[cfg(feature = "bench-plaintext")]
    if plaintext {
        return options.insecure_plaintext();
    }
    let _ = plaintext;
    options
}

/// The connecting side, as [`listen_mode`].
fn connect_mode(options: ConnectOptions, plaintext: bool) -> ConnectOptions {
    #[cfg(feature = "bench-plaintext")]
    if plaintext {
        return options.insecure_plaintext();
    }
    let _ = plaintext;
    options
}

/// A spawner and one worker that echoes from a thread of this process.
fn pair(plaintext: bool) -> Res<(TcpTransport, std::thread::JoinHandle<()>)> {
    let secret = Secret::random();
    let spawner = TcpTransport::listen(listen_mode(TcpOptions::new(secret.clone()), plaintext))?;
    let addr = spawner.local_addr().ok_or("no address")?.to_string();
    let worker = TcpTransport::connect_with(connect_mode(
        ConnectOptions::new(addr, secret).host("bench"),
        plaintext,
    ))?;
    match spawner.recv(Wait::For(Duration::from_secs(20)))? {
        Some(Event::PeerJoined(_)) => {}
        other => return Err(format!("expected the worker to join, got {other:?}").into()),
    }
    let echo = std::thread::spawn(move || {
        while let Ok(Some(Event::Message { from, payload })) = worker.recv(Wait::Forever) {
            if worker.send(from, &payload).is_err() {
                break;
            }
        }
    });
    Ok((spawner, echo))
}

fn measure(transport: &dyn Transport, size: usize) -> Res<PingPong> {
    let rounds = rounds_for(size);
    transport_pingpong(transport, 1, size, rounds / 10 + 1)?;
    transport_pingpong(transport, 1, size, rounds)
}

fn main() -> Res<()> {
    let plaintext = cfg!(feature = "bench-plaintext");
    let (sealed, sealed_echo) = pair(false)?;
    let plain = if plaintext { Some(pair(true)?) } else { None };
    println!("parvm-transport tcp ping-pong on loopback, one way (median of the round trips / 2)");
    println!(
        "{:>9}  {:>22}  {:>22}  {:>22}  {:>13}",
        "size", "raw TCP socket", "tcp plaintext frames", "tcp sealed frames", "sealed/plain"
    );
    for size in [0usize, 1024, 100 * 1024, 10 * 1024 * 1024] {
        let rounds = rounds_for(size);
        raw_tcp_pingpong(size, rounds / 10 + 1)?;
        let raw = raw_tcp_pingpong(size, rounds)?;
        let plain_result = match &plain {
            Some((transport, _)) => Some(measure(transport, size)?),
            None => None,
        };
        let sealed_result = measure(&sealed, size)?;
        let cell = |p: &PingPong| {
            format!(
                "{:>8.1} us {:>6.0} MB/s",
                p.one_way.as_secs_f64() * 1e6,
                p.bytes_per_sec / 1e6
            )
        };
        println!(
            "{:>9}  {:>22}  {:>22}  {:>22}  {:>13}",
            size,
            cell(&raw),
            plain_result
                .as_ref()
                .map_or_else(|| "(needs bench-plaintext)".to_string(), cell),
            cell(&sealed_result),
            plain_result.as_ref().map_or_else(String::new, |p| format!(
                "{:.2}x time",
                sealed_result.one_way.as_secs_f64() / p.one_way.as_secs_f64().max(1e-12)
            )),
        );
    }
    drop(sealed);
    let _ = sealed_echo.join();
    if let Some((transport, echo)) = plain {
        drop(transport);
        let _ = echo.join();
    }
    Ok(())
}
