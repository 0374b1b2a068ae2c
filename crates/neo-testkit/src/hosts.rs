//! Hosts on one machine: Linux network namespaces on a bridge, so a test
//! can do to one node's network what a real network does — hold its
//! packets silently (no RST, no FIN), cut its connections (RST both ways)
//! — while the process itself runs on. Needs root and `ip`/`ss` (iproute2).
//!
//! The root namespace holds the bridge and its address (where masters,
//! admins and clients run); host `i` is namespace `nk<id>h<i>` with address
//! `10.<a>.<b>.<i + 2>` on the bridge's /24.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// One test's network: a bridge and hosts attached to it.
pub struct Net {
    /// Short unique name part (interface names are limited to 15 bytes).
    id: String,
    /// First two octets after 10: the /24 of this net.
    subnet: (u8, u8),
    hosts: usize,
}

fn ip(args: &[&str]) -> io::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl Net {
    /// A bridge and `hosts` namespaces attached to it. Errors say which
    /// command failed (no root, no iproute2...).
    pub fn new(hosts: usize) -> io::Result<Net> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Distinct per process and per net within it: tests run in
        // parallel, in several test binaries.
        let subnet = (
            (100 + (pid % 100)) as u8,
            ((pid / 100 + count * 37) % 250) as u8,
        );
        let net = Net {
            id: format!("{:x}{}", pid % 0xfffff, count),
            subnet,
            hosts: 0,
        };
        net.create(hosts)
    }

    fn create(mut self, hosts: usize) -> io::Result<Net> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for host in 0..hosts {
            let ns = self.namespace(host);
            let veth = self.veth(host);
            ip(&["netns", "add", &ns])?;
            self.hosts = host + 1;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            let address = format!("{}/24", self.address(host));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(self)
    }

    fn bridge(&self) -> String {
        format!("nkb{}", self.id)
    }

    fn veth(&self, host: usize) -> String {
        format!("nkv{}h{host}", self.id)
    }

    fn namespace(&self, host: usize) -> String {
        format!("nk{}h{host}", self.id)
    }

    /// The bridge's address, in the root namespace: where masters listen.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 1)
    }

    /// Host `host`'s address.
    pub fn address(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, (host + 2) as u8)
    }

    /// A command that runs `program` on host `host`.
    pub fn command(&self, host: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(host)])
            .arg(program);
        command
    }

    /// Holds every packet to and from `host`, silently: no RST, no FIN;
    /// connections stay open and their data waits (TCP retransmits).
    pub fn hold(&self, host: usize) -> io::Result<()> {
        ip(&["link", "set", &self.veth(host), "down"])
    }

    /// Lets `host`'s packets flow again.
    pub fn release(&self, host: usize) -> io::Result<()> {
        ip(&["link", "set", &self.veth(host), "up"])
    }

    /// Resets every established connection of `host`, both ends told
    /// (RST), while its processes run on and its listeners stay.
    pub fn cut(&self, host: usize) -> io::Result<()> {
        let ns = self.namespace(host);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "ss",
                "-K",
                "-t",
                "state",
                "established",
            ],
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(host)]);
            let _ = ip(&["link", "del", &self.veth(host)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
