//! The host's listening TCP sockets and what each dropped, as the kernel
//! counts it: a `sock_diag` netlink dump (what `ss -ltm` reads) of this
//! network namespace's listeners, with each one's accept queue, its
//! backlog and `sk_drops` (every handshake segment the listener dropped:
//! a full accept queue, a full SYN queue with cookies off, a failed
//! child). The kernel drops a SYN on a full queue without a tracepoint or a
//! drop reason; this is where the drop shows, per listening port.

use std::{collections::BTreeMap, io, os::fd::AsRawFd as _};

/// One listening port's figures, summed over its sockets (IPv4 and IPv6,
/// several addresses, `SO_REUSEPORT` groups).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    /// Connections waiting in accept queues now.
    pub accept_queue: u64,
    /// The accept queues' limits (`listen()`'s backlog, capped by
    /// `somaxconn`), summed.
    pub backlog: u64,
    /// Handshake segments dropped since each socket was created.
    pub drops: u64,
}

/// Listening ports and their figures.
pub type Listeners = BTreeMap<u16, Listener>;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `enum { INET_DIAG_NONE, MEMINFO, INFO, VEGASINFO, CONG, TOS, TCLASS, SKMEMINFO }`.
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_DROPS: usize = 8;
const TCP_LISTEN: u32 = 10;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id
/// (48 bytes), expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG: usize = 72;

/// The dump request for one address family: `struct nlmsghdr` and
/// `struct inet_diag_req_v2` (listeners only, with memory figures).
fn request(family: u8, sequence: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(NLMSG_HEADER + 56);
    let length = (NLMSG_HEADER + 56) as u32;
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext (a bit per extension, from
    // 1), pad, states (a bit per TCP state), then the zeroed socket id.
    message.push(family);
    message.push(libc::IPPROTO_TCP as u8);
    message.push(1 << (INET_DIAG_SKMEMINFO - 1));
    message.push(0);
    message.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    message.extend_from_slice(&[0u8; 48]);
    message
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Adds the listeners in one datagram of the dump to `into`; returns
/// whether the dump is over (its `NLMSG_DONE`). Malformed parts are
/// skipped, never trusted.
fn parse(datagram: &[u8], into: &mut Listeners) -> io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HEADER <= datagram.len() {
        let length = u32_at(datagram, at).unwrap_or(0) as usize;
        let kind = u16_at(datagram, at + 4).unwrap_or(0);
        if length < NLMSG_HEADER || at + length > datagram.len() {
            break;
        }
        let body = &datagram[at + NLMSG_HEADER..at + length];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_at(body, 0).map_or(0, |code| code as i32);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= INET_DIAG_MSG => {
                // The socket id (48 bytes) starts at 4 with its source port
                // (network order); then expires, rqueue (for a listener,
                // the accept queue now) at 56 and wqueue (its limit) at 60.
                let port = u16::from_be_bytes([body[4], body[5]]);
                let listener = into.entry(port).or_default();
                listener.accept_queue += u64::from(u32_at(body, 56).unwrap_or(0));
                listener.backlog += u64::from(u32_at(body, 60).unwrap_or(0));
                // Attributes follow, each 4-byte aligned.
                let mut attribute = INET_DIAG_MSG;
                while attribute + 4 <= body.len() {
                    let attribute_length = u16_at(body, attribute).unwrap_or(0) as usize;
                    let attribute_kind = u16_at(body, attribute + 2).unwrap_or(0);
                    if attribute_length < 4 || attribute + attribute_length > body.len() {
                        break;
                    }
                    if attribute_kind == INET_DIAG_SKMEMINFO {
                        let drops = attribute + 4 + 4 * SK_MEMINFO_DROPS;
                        if drops + 4 <= attribute + attribute_length {
                            listener.drops += u64::from(u32_at(body, drops).unwrap_or(0));
                        }
                    }
                    attribute += attribute_length.div_ceil(4) * 4;
                }
            }
            _ => {}
        }
        at += length.div_ceil(4) * 4;
    }
    Ok(false)
}

/// This namespace's TCP listeners, IPv4 and IPv6, by port.
pub fn read() -> io::Result<Listeners> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let mut listeners = Listeners::new();
    let mut buffer = vec![0u8; 32 * 1024];
    for (sequence, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let message = request(family, sequence);
        // SAFETY: send(2) reads `message` for its length.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: recv(2) writes at most `buffer.len()` bytes into it.
            let received = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            if received == 0 || parse(&buffer[..received as usize], &mut listeners)? {
                break;
            }
        }
    }
    Ok(listeners)
}

/// The drops of each port since `start`: a socket created since counts
/// from 0, one closed since takes its drops with it.
pub fn drops_since(now: &Listeners, start: &Listeners) -> BTreeMap<u16, u64> {
    now.iter()
        .map(|(port, listener)| {
            let before = start.get(port).map_or(0, |listener| listener.drops);
            let drops = if listener.drops >= before {
                listener.drops - before
            } else {
                listener.drops
            };
            (*port, drops)
        })
        .filter(|(_, drops)| *drops > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `SOCK_DIAG_BY_FAMILY` message for a listener on `port` with
    /// `rqueue`, `wqueue` and `drops`, then NLMSG_DONE.
    fn datagram(port: u16, rqueue: u32, wqueue: u32, drops: u32) -> Vec<u8> {
        let mut body = vec![0u8; INET_DIAG_MSG];
        body[0] = libc::AF_INET as u8;
        body[1] = TCP_LISTEN as u8;
        body[4..6].copy_from_slice(&port.to_be_bytes());
        body[56..60].copy_from_slice(&rqueue.to_ne_bytes());
        body[60..64].copy_from_slice(&wqueue.to_ne_bytes());
        let mut meminfo = vec![0u8; 4 + 4 * 10];
        let meminfo_len = meminfo.len() as u16;
        meminfo[0..2].copy_from_slice(&meminfo_len.to_ne_bytes());
        meminfo[2..4].copy_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        let at = 4 + 4 * SK_MEMINFO_DROPS;
        meminfo[at..at + 4].copy_from_slice(&drops.to_ne_bytes());
        body.extend_from_slice(&meminfo);
        let mut out = Vec::new();
        for (kind, body) in [(SOCK_DIAG_BY_FAMILY, body), (NLMSG_DONE, vec![0u8; 4])] {
            out.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(&[0u8; 10]);
            out.extend_from_slice(&body);
        }
        out
    }

    #[test]
    fn a_listener_is_read_with_its_queue_and_drops() {
        let mut listeners = Listeners::new();
        assert!(parse(&datagram(8080, 2, 1, 28), &mut listeners).unwrap());
        assert_eq!(
            listeners[&8080],
            Listener {
                accept_queue: 2,
                backlog: 1,
                drops: 28
            }
        );
    }

    #[test]
    fn sockets_on_one_port_add_up() {
        let mut listeners = Listeners::new();
        parse(&datagram(443, 1, 128, 3), &mut listeners).unwrap();
        parse(&datagram(443, 0, 128, 4), &mut listeners).unwrap();
        assert_eq!(listeners[&443].drops, 7);
        assert_eq!(listeners[&443].backlog, 256);
    }

    #[test]
    fn truncated_datagrams_are_skipped_not_trusted() {
        let whole = datagram(8080, 2, 1, 28);
        for len in 0..whole.len() {
            let mut listeners = Listeners::new();
            let _ = parse(&whole[..len], &mut listeners);
        }
    }

    #[test]
    fn an_error_message_is_an_error() {
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HEADER + 4) as u32).to_ne_bytes());
        message.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        message.extend_from_slice(&[0u8; 10]);
        message.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = parse(&message, &mut Listeners::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn drops_count_from_the_start() {
        let start: Listeners = [(
            8080,
            Listener {
                drops: 10,
                ..Listener::default()
            },
        )]
        .into();
        let now: Listeners = [
            (
                8080,
                Listener {
                    drops: 15,
                    ..Listener::default()
                },
            ),
            (
                9090,
                Listener {
                    drops: 2,
                    ..Listener::default()
                },
            ),
            (22, Listener::default()),
        ]
        .into();
        assert_eq!(drops_since(&now, &start), [(8080, 5), (9090, 2)].into());
    }

    #[test]
    fn a_full_accept_queue_shows_as_drops() {
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) again on our socket, to shrink its backlog to 1.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let port = listener.local_addr().unwrap().port();
        let _clients: Vec<_> = (0..6)
            .map(|_| {
                std::net::TcpStream::connect_timeout(
                    &listener.local_addr().unwrap(),
                    std::time::Duration::from_millis(50),
                )
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let listeners = read().unwrap();
        assert!(listeners[&port].drops > 0, "{listeners:?}");
        assert_eq!(listeners[&port].backlog, 1);
    }

    #[test]
    fn this_namespaces_listeners_are_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let listeners = read().unwrap();
        assert!(listeners.contains_key(&port), "{listeners:?}");
    }
}
