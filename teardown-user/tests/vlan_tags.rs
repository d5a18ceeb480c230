//! VLAN-tagged frames on a veth, in every attach mode, judged by what the
//! client sent and by tshark on a capture of the server's interface.
//!
//! Why: before TC ingress runs, the kernel's receive path moves a tagged
//! frame's outermost tag into the packet's metadata (`skb_vlan_untag`),
//! so the TC program reads the frame untagged; XDP (native or generic)
//! runs before that and reads the tag on the frame, and tcpdump puts it
//! back. `--mode auto` attaches at TC ingress on a veth, so until the TC
//! programs took the stripped tag into account, a container's tagged
//! traffic counted as untagged there (100 of 200 tagged frames, measured
//! on 2026-12-05).
//!
//! The client writes frames with a packet socket: untagged, 802.1Q-tagged
//! and QinQ-tagged (802.1ad outside, 802.1Q inside) TCP SYNs, and tagged
//! UDP. Each goes to a MAC address that is not the server's, so the
//! server drops them after teardown counted them and answers none: the
//! counts are the client's exactly. As root.

mod support;

use std::{ffi::CString, path::Path, process::Command, time::Duration};

use support::{Lab, TempDir, final_totals, in_netns, run, start_tcpdump_with};

/// Frames of each kind the client sends.
const EACH: u64 = 500;

/// 802.1Q's and 802.1ad's tag protocol identifiers.
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

/// One frame: a TCP SYN (or, with `udp`, a UDP datagram) from 192.0.2.1 to
/// 192.0.2.2 under `tags` (outermost first), to a MAC address nobody on
/// the link has.
fn frame(tags: &[(u16, u16)], source_port: u16, udp: bool) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, vlan) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vlan.to_be_bytes());
    }
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let transport: Vec<u8> = if udp {
        let mut udp = Vec::new();
        udp.extend_from_slice(&source_port.to_be_bytes());
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&8u16.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp
    } else {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&source_port.to_be_bytes());
        tcp.extend_from_slice(&80u16.to_be_bytes());
        tcp.extend_from_slice(&1000u32.to_be_bytes());
        tcp.extend_from_slice(&0u32.to_be_bytes());
        tcp.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        tcp
    };
    let total_len = (20 + transport.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, if udp { 17 } else { 6 }, 0, 0]);
    ip.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2]);
    let mut sum = 0u32;
    for pair in ip.chunks(2) {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&transport);
    frame
}

/// Sends `frames` out of `iface` in `ns` through a packet socket, each as
/// it is (tags on the frame, as a trunk port delivers them).
fn send_frames(ns: &str, iface: &str, frames: Vec<Vec<u8>>) {
    let iface = CString::new(iface).expect("an interface name");
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a descriptor this thread owns and
        // closes; the address and the buffers outlive each call.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let index = libc::if_nametoindex(iface.as_ptr());
            assert!(index != 0, "no interface {iface:?}");
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = index as i32;
            let bound = libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            for frame in &frames {
                let sent = libc::send(fd, frame.as_ptr().cast(), frame.len(), 0);
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "send: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .join()
    .expect("the sending thread");
}

/// tshark's counts of `capture`: frames with at least one VLAN tag, TCP
/// segments, and frames with an 802.1ad tag outside an 802.1Q one (QinQ).
fn tshark_tags(capture: &Path) -> (u64, u64, u64) {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-E", "separator=/t"])
        .args(["-e", "ieee8021ad.id", "-e", "vlan.id", "-e", "tcp.srcport"]));
    let (mut tagged, mut tcp, mut qinq) = (0, 0, 0);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let present = |at: usize| fields.get(at).is_some_and(|field| !field.is_empty());
        tagged += (present(0) || present(1)) as u64;
        qinq += (present(0) && present(1)) as u64;
        tcp += present(2) as u64;
    }
    (tagged, tcp, qinq)
}

fn counts_tags_as_on_the_wire(mode: &str) {
    let lab = Lab::new();
    let dir = TempDir::new("vlan-tags");
    let capture = dir.join("server.pcap");
    let tcpdump = start_tcpdump_with(&lab.server_ns, &lab.server_if, &capture, &[], "ip or vlan");
    let (teardown, _stderr) =
        support::start_teardown(&lab.server_ns, &lab.server_if, &["--mode", mode]);

    let mut frames = Vec::new();
    for n in 0..EACH as u16 {
        frames.push(frame(&[], 20_000 + n, false));
        frames.push(frame(&[(TPID_8021Q, 100)], 21_000 + n, false));
        frames.push(frame(
            &[(TPID_8021AD, 200), (TPID_8021Q, 100)],
            22_000 + n,
            false,
        ));
        frames.push(frame(&[(TPID_8021Q, 100)], 23_000 + n, true));
    }
    send_frames(&lab.client_ns, &lab.client_if, frames);
    // Past the next interval's report and tcpdump's last write.
    std::thread::sleep(Duration::from_millis(500));
    let output = teardown.terminate();
    drop(tcpdump);
    let totals = final_totals(&output);
    let (tshark_tagged, tshark_tcp, tshark_qinq) = tshark_tags(&capture);
    eprintln!(
        "{mode}: teardown vlan {} tcp {} syn {}; tshark tagged {tshark_tagged} tcp {tshark_tcp} \
         (QinQ {tshark_qinq}); sent {} tagged, {} TCP",
        totals["vlan"],
        totals["tcp"],
        totals["syn"],
        3 * EACH,
        3 * EACH
    );
    assert_eq!(
        (tshark_tagged, tshark_tcp, tshark_qinq),
        (3 * EACH, 3 * EACH, EACH),
        "tshark saw other frames than the client sent"
    );
    assert_eq!(
        totals["vlan"], tshark_tagged,
        "{mode}: tagged frames counted"
    );
    assert_eq!(totals["tcp"], tshark_tcp, "{mode}: TCP segments counted");
    assert_eq!(totals["syn"], tshark_tcp, "{mode}: SYNs counted");
    assert_eq!(totals["vlan_too_deep"], 0, "{mode}");
}

#[test]
fn tags_count_at_tc_ingress_as_on_the_wire() {
    counts_tags_as_on_the_wire("tc");
}

#[test]
fn tags_count_in_native_xdp_as_on_the_wire() {
    counts_tags_as_on_the_wire("native");
}

#[test]
fn tags_count_in_generic_xdp_as_on_the_wire() {
    counts_tags_as_on_the_wire("skb");
}
