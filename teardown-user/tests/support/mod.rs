//! Test support: the teardown binary, the test data, network namespaces
//! joined by a veth pair, and running code inside a namespace.
//!
//! Everything created here is removed by `Drop`, so a failing (panicking) test
//! still deletes its namespaces, which also detaches any XDP program on them.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

pub fn teardown_bin() -> &'static str {
    env!("CARGO_BIN_EXE_teardown")
}

/// The test data: `testdata/` in the repository (captures, Zeek's verdicts,
/// the tshark oracle; see its README for provenance), or
/// `TEARDOWN_SHARED_DIR` when set (another folder with `corpus/` and
/// `oracle/` laid out the same way, e.g. `../shared`).
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("TEARDOWN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata"));
    assert!(
        dir.join("corpus").is_dir(),
        "the test data is missing at {}: it is testdata/ in the repository, or TEARDOWN_SHARED_DIR",
        dir.display()
    );
    dir.canonicalize().expect("canonical test data dir")
}

pub fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot start {shown}: {err}"));
    assert!(
        output.status.success(),
        "{shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub mod lab;
pub mod lines;
pub mod prometheus;

pub use lab::Lab;
#[allow(
    unused_imports,
    reason = "only the tests that read teardown's lines use it"
)]
pub use lines::JsonLines;

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

pub const CLIENT_V4: &str = "192.0.2.1";
pub const SERVER_V4: &str = "192.0.2.2";
pub const CLIENT_V6: &str = "2001:db8::1";
pub const SERVER_V6: &str = "2001:db8::2";

/// The tests' lab ([`lab::Lab`]): client and server namespaces joined by a
/// veth pair, with IPv4 and IPv6 documentation addresses (192.0.2.0/24,
/// 2001:db8::/64) that exist only inside them.
impl Lab {
    pub fn new() -> Lab {
        Lab::with_link_options(&[])
    }

    /// Like [`Lab::new`], with `queues` transmit and receive queues on each
    /// end of the veth pair, so that flows sent from different CPUs are
    /// received (and run through XDP) on different CPUs.
    pub fn with_queues(queues: u32) -> Lab {
        let queues = queues.to_string();
        Lab::with_link_options(&["numtxqueues", &queues, "numrxqueues", &queues])
    }

    /// The lab, with `options` added to the veth pair's `ip link add`
    /// (they apply to both ends).
    fn with_link_options(options: &[&str]) -> Lab {
        // pid and a counter keep parallel tests and parallel runs apart;
        // interface names must stay under 16 bytes.
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", pid % 100_000);
        // The namespaces carry the whole pid, so a sweep of leftovers
        // (`cargo xtask test`) can tell a dead run's from a live one's.
        Lab::create(&lab::LabPlan {
            client_ns: format!("td-c-{pid}-{n}"),
            server_ns: format!("td-s-{pid}-{n}"),
            client_if: format!("tdc{id}"),
            server_if: format!("tds{id}"),
            client_addrs: &[format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64")],
            server_addrs: &[format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")],
            link_options: options,
        })
        .unwrap_or_else(|err| panic!("building the lab: {err}"))
    }

    /// `ip -d link show` of an interface, to see its XDP attachment.
    pub fn link_details(&self, ns: &str, iface: &str) -> String {
        let output = run(Command::new("ip").args(["-n", ns, "-d", "link", "show", iface]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard {
    pub child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard { child: Some(child) }
    }

    /// Sends SIGTERM and collects the output.
    pub fn terminate(mut self) -> Output {
        let child = self.child.take().expect("child already taken");
        // SAFETY: kill() on a pid we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait_with_output().expect("waiting for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `teardown run` inside `ns` on `iface` with JSON output and waits
/// until it says it is watching. Returns the guard and its remaining stderr.
pub fn start_teardown(
    ns: &str,
    iface: &str,
    extra: &[&str],
) -> (ChildGuard, BufReader<ChildStderr>) {
    start_teardown_from(teardown_bin(), ns, iface, extra)
}

/// Like [`start_teardown`], with another binary.
pub fn start_teardown_from(
    binary: &str,
    ns: &str,
    iface: &str,
    extra: &[&str],
) -> (ChildGuard, BufReader<ChildStderr>) {
    start_teardown_command(teardown_command(binary, ns, iface, extra), iface)
}

/// The command [`start_teardown_from`] runs, for a caller that changes it
/// (its environment, say) before [`start_teardown_command`].
pub fn teardown_command(binary: &str, ns: &str, iface: &str, extra: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args([
            "netns", "exec", ns, binary, "run", "--iface", iface, "--json",
        ])
        .args(["--interval", "100ms"])
        .args(extra);
    command
}

/// Starts a `teardown run` command with its output piped and waits until
/// it says it is watching `iface`. Returns the guard and its remaining
/// stderr.
pub fn start_teardown_command(
    mut command: Command,
    iface: &str,
) -> (ChildGuard, BufReader<ChildStderr>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting teardown run");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let guard = ChildGuard::new(child);
    let mut line = String::new();
    let read = stderr
        .read_line(&mut line)
        .expect("reading teardown's stderr");
    assert!(
        read > 0 && line.contains("watching"),
        "teardown did not start watching {iface}: {line:?}"
    );
    (guard, stderr)
}

/// Starts tcpdump on `iface` in `ns`, writing TCP packets to `capture`
/// unbuffered, and waits until it is capturing: the tests' independent judge.
pub fn start_tcpdump(ns: &str, iface: &str, capture: &std::path::Path) -> ChildGuard {
    start_tcpdump_with(ns, iface, capture, &[], "tcp")
}

/// Runs `work` on a thread that has entered network namespace `ns`; sockets it
/// opens live in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        work()
    })
}

/// `/metrics` as teardown serves it on `addr` inside namespace `ns`: the
/// whole HTTP response, headers and all.
pub fn scrape_metrics(ns: &str, addr: &str) -> String {
    use std::io::Read as _;
    let addr = addr.to_string();
    in_netns(ns, move || {
        let mut stream =
            std::net::TcpStream::connect(addr.as_str()).expect("connecting to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("sending the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the response");
        response
    })
    .join()
    .expect("the scrape thread")
}

/// A TCP listener on `addr` inside namespace `ns` (the socket keeps the
/// namespace it was opened in).
pub fn listen_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    in_netns(ns, move || {
        std::net::TcpListener::bind(addr).unwrap_or_else(|err| panic!("binding {addr}: {err}"))
    })
    .join()
    .expect("the listener thread panicked")
}

/// The namespace's own count of one of its network counters (`nstat`,
/// absolute, its history file left alone): `IpInReceives`,
/// `TcpExtListenDrops`, `TcpExtSyncookiesSent` and the like.
pub fn nstat(ns: &str, counter: &str) -> u64 {
    let output =
        run(Command::new("ip").args(["netns", "exec", ns, "nstat", "-a", "-z", "-s", counter]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(counter)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("nstat has no {counter}"))
}

/// Loads nftables rules into namespace `ns` (`nft -f -`). The rules belong to
/// the namespace, so deleting it (Lab's `Drop`) removes them, even when a
/// test fails.
pub fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start nft in {ns}: {err}"));
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(rules.as_bytes())
        .expect("writing the rules to nft");
    let output = child.wait_with_output().expect("waiting for nft");
    assert!(
        output.status.success(),
        "nft -f in {ns} failed ({}): {}rules:\n{rules}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The TCP sockets of namespace `ns` with `port` at either end, in any state,
/// as `ss` lists them (state, queues, local and peer address).
pub fn tcp_sockets(ns: &str, port: u16) -> Vec<String> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let output = run(Command::new("ip").args([
        "netns", "exec", ns, "ss", "-H", "-t", "-n", "state", "all", &filter,
    ]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect()
}

/// Makes the socket's close() send a RST (SO_LINGER with a zero timeout).
pub fn set_linger_zero(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// How [`connect_from`] sets its socket up before it binds.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectFrom {
    /// SO_REUSEADDR: the local port may be bound while its previous
    /// connection is in TIME_WAIT.
    pub reuse_address: bool,
    /// Bounds a blocking connect (SO_SNDTIMEO), then each read and write.
    pub timeout: Option<Duration>,
}

/// A TCP connection from `local`, bound first (`connect` alone would choose
/// its own port), to `remote`: for tests that choose the client's port, to
/// reuse one or to keep connections apart. The error is that of the first
/// call that failed. Call from the client's namespace.
pub fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    how: ConnectFrom,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2); the stream owns the descriptor from here on and
    // closes it.
    let stream = unsafe {
        let fd = check(libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        std::net::TcpStream::from_raw_fd(fd)
    };
    let fd = stream.as_raw_fd();
    if how.reuse_address {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) reads an int of the size given.
        check(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    if let Some(timeout) = how.timeout {
        // SO_SNDTIMEO also bounds a blocking connect().
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
    }
    let (local, local_len) = raw_sockaddr(local);
    // SAFETY: bind(2) with an address valid for its length.
    check(unsafe {
        libc::bind(
            fd,
            (&local as *const libc::sockaddr_storage).cast(),
            local_len,
        )
    })?;
    let (remote, remote_len) = raw_sockaddr(remote);
    // SAFETY: connect(2), likewise.
    check(unsafe {
        libc::connect(
            fd,
            (&remote as *const libc::sockaddr_storage).cast(),
            remote_len,
        )
    })?;
    Ok(stream)
}

/// `address` as the socket calls take it, and its length.
fn raw_sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A VXLAN device `name` in `ns` with VNI `vni`, from underlay address
/// `local` to `remote` (UDP port 4789, no learning: the one remote), MTU
/// `mtu`, with `addresses` (with their prefix lengths; IPv6 ones without
/// duplicate address detection, usable at once), up.
pub fn vxlan_device(
    ns: &str,
    name: &str,
    vni: u32,
    (local, remote): (&str, &str),
    mtu: u16,
    addresses: &[String],
) -> Result<(), String> {
    let vni = vni.to_string();
    let mtu = mtu.to_string();
    lab::ip(&[
        "-n",
        ns,
        "link",
        "add",
        name,
        "type",
        "vxlan",
        "id",
        &vni,
        "dstport",
        "4789",
        "local",
        local,
        "remote",
        remote,
        "nolearning",
    ])?;
    lab::ip(&["-n", ns, "link", "set", name, "mtu", &mtu])?;
    for address in addresses {
        let mut add = vec!["-n", ns, "addr", "add", address.as_str(), "dev", name];
        if address.contains(':') {
            add.push("nodad");
        }
        lab::ip(&add)?;
    }
    lab::ip(&["-n", ns, "link", "set", name, "up"])
}

pub fn socket_addr(host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(host.parse::<IpAddr>().expect("address"), port)
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// The `conn` objects among teardown's (or a replay's) JSON lines.
pub fn conn_records(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["event"] == "conn")
        .collect()
}

/// The last JSON object teardown printed with `"event": "final"`.
pub fn final_totals(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["event"] == "final")
        .unwrap_or_else(|| {
            panic!(
                "no final totals in teardown's output; stdout: {stdout}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })["totals"]
        .clone()
}

/// Like [`start_tcpdump`], with tcpdump's own filter expression and options
/// (e.g. `-c 100` to stop after that many packets) in `args`, placed before
/// the filter.
pub fn start_tcpdump_with(
    ns: &str,
    iface: &str,
    capture: &std::path::Path,
    args: &[&str],
    filter: &str,
) -> ChildGuard {
    let tcpdump = ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", iface])
            .args(["--immediate-mode", "-U", "-s", "128"])
            .args(args)
            .arg("-w")
            .arg(capture)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump"),
    );
    assert!(
        wait_until(Duration::from_secs(5), || capture.exists()),
        "tcpdump did not start"
    );
    tcpdump
}

/// Packets of one TCP connection in a capture, counted by tshark:
/// (`client` to `server`, `server` to `client`).
pub fn connection_packets(
    capture: &std::path::Path,
    client: SocketAddr,
    server: SocketAddr,
) -> (u64, u64) {
    let filter = |from: SocketAddr, to: SocketAddr| {
        let ip = if from.is_ipv4() { "ip" } else { "ipv6" };
        format!(
            "({ip}.src == {} && tcp.srcport == {} && {ip}.dst == {} && tcp.dstport == {})",
            from.ip(),
            from.port(),
            to.ip(),
            to.port()
        )
    };
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args([
            "-Y",
            &format!("{} || {}", filter(client, server), filter(server, client)),
        ])
        .args(["-T", "fields", "-e", "tcp.dstport"]));
    let mut counts = (0, 0);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if line.trim() == server.port().to_string() {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    counts
}

/// A directory removed, with everything in it, when dropped (even when a
/// test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system's temporary directory,
    /// named after `what`, this process and a counter, so that tests
    /// running at once never share one.
    pub fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects from the client's namespace to each of `ports` on the server,
/// where nothing listens: each connect is refused, one REJ record each.
pub fn refused_connects(lab: &Lab, ports: std::ops::Range<u16>) {
    in_netns(&lab.client_ns, move || {
        for port in ports {
            let result = std::net::TcpStream::connect_timeout(
                &socket_addr(SERVER_V4, port),
                Duration::from_secs(2),
            );
            assert!(
                matches!(&result, Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused),
                "connect to {port}: {result:?}"
            );
        }
    })
    .join()
    .expect("client thread");
}
