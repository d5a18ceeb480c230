//! Two network namespaces, client and server, joined by a veth pair: the lab
//! the integration tests and `cargo xtask demo` both run in.
//!
//! Std only, so that xtask can compile this very file as a module of its
//! own (`#[path = "../../teardown-user/tests/support/lab.rs"] mod lab;`).
//! The namespaces are deleted when the [`Lab`] is dropped, even while a
//! failing test unwinds or a half-built lab is given up; deleting a
//! namespace deletes its veth end (and the peer with it) and detaches any
//! XDP program on it.

use std::process::{Command, Stdio};

/// What to build: the names (unique per process: put the pid in them, so
/// that a sweep of leftovers can tell a dead run's namespaces from a live
/// one's) and each end's addresses.
pub struct LabPlan<'a> {
    pub client_ns: String,
    pub server_ns: String,
    /// The veth ends' names inside their namespaces (at most 15 bytes).
    pub client_if: String,
    pub server_if: String,
    /// Addresses with their prefix length, e.g. `192.0.2.1/24`; IPv6 ones
    /// are added without duplicate address detection, usable at once.
    pub client_addrs: &'a [String],
    pub server_addrs: &'a [String],
    /// Extra `ip link add` options for both ends, e.g. `numrxqueues 4`.
    pub link_options: &'a [&'a str],
}

/// The namespaces and the veth pair between them.
pub struct Lab {
    pub client_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
}

/// Runs `ip ARGS`; on failure, says what failed and why.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot start ip {}: {err}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Lab {
    /// Builds the lab. The veth pair is created inside the client's
    /// namespace with its peer in the server's, so the host's own namespace
    /// never sees it. If a step fails, what was built is deleted again.
    pub fn create(plan: &LabPlan) -> Result<Lab, String> {
        ip(&["netns", "add", &plan.client_ns])?;
        let mut lab = Lab {
            client_ns: plan.client_ns.clone(),
            server_ns: String::new(),
            client_if: plan.client_if.clone(),
            server_if: plan.server_if.clone(),
        };
        ip(&["netns", "add", &plan.server_ns])?;
        lab.server_ns = plan.server_ns.clone();
        let mut link = vec!["-n", &lab.client_ns, "link", "add", &lab.client_if];
        link.extend_from_slice(plan.link_options);
        link.extend_from_slice(&["type", "veth", "peer", "name", &lab.server_if]);
        link.extend_from_slice(plan.link_options);
        link.extend_from_slice(&["netns", &lab.server_ns]);
        ip(&link)?;
        for (ns, iface, addrs) in [
            (&lab.client_ns, &lab.client_if, plan.client_addrs),
            (&lab.server_ns, &lab.server_if, plan.server_addrs),
        ] {
            for addr in addrs {
                let mut add = vec!["-n", ns.as_str(), "addr", "add", addr, "dev", iface];
                if addr.contains(':') {
                    add.push("nodad");
                }
                ip(&add)?;
            }
            ip(&["-n", ns, "link", "set", iface, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Routes the server's replies to addresses off the link through the
    /// client at `client_addr`, which drops them (it does not forward), as
    /// the internet would for a flood's spoofed sources: the server's
    /// SYN-ACKs then leave through its interface, past teardown's egress
    /// program, as on a host with a default route.
    pub fn route_server_replies_via(&self, client_addr: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.server_ns,
            "route",
            "add",
            "default",
            "via",
            client_addr,
        ])
    }

    /// `ip netns exec NS PROGRAM`.
    pub fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Deletes the namespaces now (dropping the lab does the same).
    /// Errors are ignored: this also runs while a failed test unwinds.
    pub fn delete(&mut self) {
        for ns in [&mut self.client_ns, &mut self.server_ns] {
            if !ns.is_empty() {
                let _ = Command::new("ip")
                    .args(["netns", "delete", ns.as_str()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                ns.clear();
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.delete();
    }
}
