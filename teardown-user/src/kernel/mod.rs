//! The embedded eBPF object in the kernel: [`load`] loads it (globals,
//! map sizes, the table-size check) and its programs, [`attach`] attaches
//! them to an interface and detaches them, [`maps`] reads what they count
//! (tallies, the flow table, the event ring buffer, the flood maps).

mod attach;
mod btf;
mod caps;
pub mod listeners;
mod load;
mod maps;
pub mod netstat;
pub mod reasons;
mod tracefs;

use std::io;

use aya::{
    Ebpf,
    programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId},
};
use thiserror::Error;

pub use attach::{AttachMode, LinkLayer, interface_index, link_layer_of};
pub use load::{ClockMode, LoadOptions, VERIFIER_INSN_LIMIT, check_tables_fit};
pub use maps::FlowTable;

/// Problems the user can fix, each said in one line with what to do.
#[derive(Debug, Error)]
pub enum SetupError {
    /// The advice names the capabilities the process lacks, read when the
    /// error is said.
    #[error("permission denied while {0}: {advice}", advice = caps::advice())]
    Permission(&'static str),
    #[error("no network interface named {0:?}: list them with `ip link`")]
    UnknownInterface(String),
    #[error(
        "--iface {0} and --iface {1} are the same interface (one is an altname of the other): name it once"
    )]
    SameInterface(String, String),
    #[error(
        "interface {0} already has an XDP program attached, left in place; remove it first (`ip link set dev {0} xdp off`) if it is not needed, or watch beside it at TC ingress with --mode tc"
    )]
    AlreadyAttached(String),
    #[error(
        "interface {iface} does not support {mode} XDP: try --mode skb (generic XDP) or --mode tc (TC ingress)"
    )]
    ModeUnsupported { iface: String, mode: &'static str },
    #[error(
        "interface {iface} carries IP packets with no Ethernet header (a tun or WireGuard device), which teardown reads at TC only: use --mode tc or --mode auto, not --mode {mode}"
    )]
    IpLinkNeedsTc { iface: String, mode: &'static str },
    #[error(
        "interface {iface} is neither Ethernet nor a bare-IP device (hardware type {hardware_type} in /usr/include/linux/if_arp.h), and teardown cannot read its packets: watch the Ethernet interface its traffic crosses instead"
    )]
    UnsupportedLink { iface: String, hardware_type: u16 },
    #[error(
        "--max-flows {max_flows} needs {needed_mib} MiB of kernel memory for {tables} ({slot_bytes} bytes a connection), more than half of the {available_mib} MiB available: choose a smaller --max-flows{fewer}",
        tables = tables_phrase(.tables),
        fewer = if *.tables > 1 { " or fewer interfaces" } else { "" }
    )]
    TableTooLarge {
        max_flows: u32,
        /// Flow tables of that size: one per interface watched.
        tables: u32,
        needed_mib: u64,
        slot_bytes: usize,
        available_mib: u64,
    },
}

/// "the flow table", or how many there are, one per interface.
fn tables_phrase(tables: &u32) -> String {
    match tables {
        1 => "the flow table".to_string(),
        n => format!("{n} flow tables, one per interface"),
    }
}

/// The loaded eBPF object.
pub struct Kernel {
    ebpf: Ebpf,
    slots: u32,
    /// What the tunnel programs open (`TunnelPorts::OFF`: they are not loaded).
    tunnels: teardown_common::tunnel::TunnelPorts,
    /// Whether the replay program's tunnel program is in its slot
    /// ([`Kernel::install_replay_tunnels`]).
    replay_tunnels_installed: bool,
    /// Whether the kernel lists the change words it marks
    /// ([`LoadOptions::note_changed_words`]).
    note_changed_words: bool,
    /// Whether the programs read packets from their IP header
    /// ([`LoadOptions::ip_link`]).
    ip_link: bool,
    /// The attachments [`Kernel::detach`] undoes (dropping the object undoes
    /// them too).
    xdp_link: Option<XdpLinkId>,
    ingress_link: Option<SchedClassifierLinkId>,
    egress_link: Option<SchedClassifierLinkId>,
}

fn io_error_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

fn os_error_of(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    io_error_in(err).and_then(io::Error::raw_os_error)
}

/// EPERM/EACCES mean missing privileges only for an unprivileged caller: for
/// root, EACCES from BPF_PROG_LOAD is the verifier rejecting the program,
/// and its log is the useful part of the error.
fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    !root && matches!(os_error_of(err), Some(libc::EPERM) | Some(libc::EACCES))
}
