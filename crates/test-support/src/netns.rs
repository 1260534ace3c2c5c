//! A network namespace joined to this one by a veth pair, for tests that need a worker on
//! another "host": it reaches the spawner over the pair only, and the pair can be cut
//! without closing its connections, as a host that loses power or its network does.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces this process made so far.
static MADE: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair to this one; removed (pair and all) when dropped.
pub struct NetNs {
    /// The namespace's name, for `ip netns exec NAME ...`.
    pub name: String,
    /// This side's address on the pair; the namespace's is the next one.
    pub host_addr: Ipv4Addr,
    /// The namespace's end of the pair.
    peer_if: String,
}

/// Runs `ip ARGS`; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl NetNs {
    /// A namespace named `PREFIX<pid>`; `None` (skip the test) when this process cannot
    /// make one (not root, no `ip`). Each gets its own /30 of 10.213.0.0/16 (for up to
    /// four namespaces a process makes), so parallel runs do not collide; give each test
    /// of one process its own `prefix` (at most 5 characters).
    #[must_use]
    pub fn make(prefix: &str) -> Option<NetNs> {
        let pid = std::process::id();
        let name = format!("{prefix}{pid}");
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        // A /30 of 10.213.0.0/16 per namespace: the process and its count of namespaces.
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let slot = (pid.wrapping_mul(4).wrapping_add(made)) % (1 << 14);
        let host_addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4 + 1);
        let netns = NetNs {
            peer_if: format!("{prefix}{pid}b"),
            name,
            host_addr,
        };
        let peer_addr = Ipv4Addr::from(u32::from(host_addr) + 1);
        let host_if = format!("{prefix}{pid}a");
        let ns = netns.name.as_str();
        let peer_if = netns.peer_if.as_str();
        let ok = ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", peer_if,
        ]) && ip(&["link", "set", peer_if, "netns", ns])
            && ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])
            && ip(&["link", "set", &host_if, "up"])
            && ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{peer_addr}/30"),
                "dev",
                peer_if,
            ])
            && ip(&["-n", ns, "link", "set", peer_if, "up"])
            && ip(&["-n", ns, "link", "set", "lo", "up"]);
        ok.then_some(netns)
    }

    /// Takes the namespace's end of the pair down: from now on nothing crosses, and
    /// nothing tells either side, as when a host loses power or its network.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn cut(&self) {
        assert!(
            ip(&["-n", &self.name, "link", "set", &self.peer_if, "down"]),
            "cannot take {} down in {}",
            self.peer_if,
            self.name
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The peer goes with the namespace, and the host end with its peer.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
