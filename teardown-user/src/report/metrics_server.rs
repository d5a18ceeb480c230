//! The Prometheus endpoint of `teardown run` at `--metrics-addr`.
//!
//! The run loop publishes its [`Figures`] (plain data) after each poll;
//! [`MetricsServer`] answers `GET /metrics` with [`render`]'s text
//! exposition (format 0.0.4, see [`super::prometheus`]) of the latest it was
//! given: it reads nothing itself, except the count of connections it gave
//! up on, which it keeps. The
//! server is a few dozen lines of HTTP/1.1 on tokio: one request per
//! connection, bounded in size, time and number of connections ([`Limits`]),
//! so a slow or hostile client costs a file descriptor for a few seconds and
//! never holds up the run loop. When every slot is taken, a newcomer takes
//! the place of the connection that has had the longest to send its request
//! and has not, once that one has had [`Limits::min_age`]: idle connections
//! cannot lock the scrapers out, however fast they reconnect.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

use crate::report::{figures::Figures, process::ProcessFigures, prometheus::render};

/// The snapshot the server renders, shared with the run loop.
pub type SharedSnapshot = Arc<Mutex<Figures>>;

fn lock(shared: &SharedSnapshot) -> MutexGuard<'_, Figures> {
    // A panic elsewhere while holding the lock leaves plain data behind: serve it.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How much a client may ask of the server.
///
/// Anyone who can reach the port can open connections and send nothing (or a
/// byte a second); these limits keep such clients from crowding out the
/// scrapers. A scraper sends its whole request as soon as it connects and
/// reads the answer at once, so it never comes near them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole request head must arrive within this, counted from accept,
    /// not per read: trickling a byte at a time buys no more time.
    pub read_timeout: Duration,
    /// The whole response must be taken within this.
    pub write_timeout: Duration,
    /// Bytes of request head read at most (request line and headers).
    pub max_head: usize,
    /// Connections served at once (at least 1). A newcomer over it takes the
    /// place of the oldest connection still sending its request (else of the
    /// oldest still being sent its answer), which is closed unanswered: a
    /// newcomer may be the scraper, while a connection that has had the
    /// longest to send a request and has not is the likeliest to be idle.
    pub max_connections: usize,
    /// No connection is evicted younger than this: when every slot is held
    /// by a younger one, the next connection waits in the kernel's accept
    /// queue until the oldest reaches it. So each connection has at least
    /// this long to send its request however fast a crowd reconnects (with
    /// eviction on arrival alone, a crowd reconnecting at 7,000 a second
    /// left 32 slots' newcomers under 5 ms), and a scraper kept waiting in
    /// the queue meanwhile has its request in by the time it is accepted,
    /// answered at once.
    pub min_age: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        // A remote scraper's request arrives within a round trip of accept;
        // 2 s allows a second of it and keeps idle sockets from holding a
        // slot long when the server is not full.
        read_timeout: Duration::from_secs(2),
        // The exposition (tens of KiB) fits in the socket's send buffer, so
        // writing it rarely waits at all; this bounds a client that does not
        // read a larger one.
        write_timeout: Duration::from_secs(5),
        max_head: 8 * 1024,
        max_connections: 32,
        // 32 slots: evictions at most 1,280 a second; a scraper queued
        // behind a crowd of a thousand waits under a second.
        min_age: Duration::from_millis(25),
    };
}

/// The metrics endpoint: serves the latest snapshot until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    shared: SharedSnapshot,
    task: AbortHandle,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `initial` (and what replaces it). A bind
    /// failure becomes one line naming the address and what to do.
    pub async fn start(addr: SocketAddr, mut initial: Figures) -> anyhow::Result<Self> {
        initial.process = ProcessFigures::read();
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            // `[::]` (`--metrics-addr :PORT`, every address) on a host
            // without IPv6: every IPv4 address is what is left of "every".
            Err(err)
                if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                    && err.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
                TcpListener::bind(v4)
                    .await
                    .map_err(|err| bind_error(v4, &err))?
            }
            Err(err) => return Err(bind_error(addr, &err)),
        };
        let addr = listener.local_addr().unwrap_or(addr);
        let shared = Arc::new(Mutex::new(initial));
        let task = tokio::spawn(serve(listener, shared.clone())).abort_handle();
        Ok(MetricsServer { addr, shared, task })
    }

    /// Serves `figures` from now on. The connections this endpoint gave up
    /// on are its own count, kept across publications.
    pub fn publish(&self, mut figures: Figures) {
        figures.process = ProcessFigures::read();
        let mut shared = lock(&self.shared);
        figures.endpoint_drops = shared.endpoint_drops;
        *shared = figures;
    }

    /// The address actually bound (the port is chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the next scrape sees.
    #[cfg(test)]
    pub fn update(&self, change: impl FnOnce(&mut Figures)) {
        change(&mut lock(&self.shared));
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind_error(addr: SocketAddr, err: &std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    let why = match err.kind() {
        ErrorKind::AddrInUse => "the address is in use (another teardown or exporter?)".to_string(),
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
        }
        ErrorKind::AddrNotAvailable => "no local interface has that address".to_string(),
        _ => err.to_string(),
    };
    anyhow::anyhow!(
        "cannot serve metrics on {addr}: {why}; choose another with --metrics-addr HOST:PORT, or --metrics-addr off"
    )
}

/// Serves `shared` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, shared: SharedSnapshot) {
    serve_with(listener, shared, Limits::DEFAULT).await
}

/// A connection being served, as the accept loop tracks it to pick whom to
/// evict when full.
struct Connection {
    accepted: Instant,
    /// Set by the connection's task once its whole request head is in.
    answering: Arc<AtomicBool>,
    task: AbortHandle,
}

/// [`serve`] with explicit limits.
pub async fn serve_with(listener: TcpListener, shared: SharedSnapshot, limits: Limits) {
    let max = limits.max_connections.max(1);
    // Bounded by `max`: a connection is added only once there is room.
    let mut connections: Vec<Connection> = Vec::with_capacity(max);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: wait, never end the run.
                log::warn!("metrics: accepting a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.retain(|connection| !connection.task.is_finished());
        if connections.len() >= max {
            // Connections whose requests have arrived but have not been read
            // yet (a burst of scrapers) are answered before anyone is
            // evicted: yielding lets their tasks run first.
            tokio::task::yield_now().await;
            connections.retain(|connection| !connection.task.is_finished());
        }
        while connections.len() >= max {
            // Still full: every slot is held by a client that has not
            // finished its request, or not taken its answer, since it came.
            // The one that has had the longest goes, not the newcomer, once
            // it has had `min_age`; until then the newcomer waits (and the
            // connections behind it in the kernel's queue).
            let Some((index, accepted)) = connections
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.answering.load(Ordering::Relaxed), c.accepted))
                .map(|(index, c)| (index, c.accepted))
            else {
                break;
            };
            if accepted.elapsed() < limits.min_age {
                tokio::time::sleep_until((accepted + limits.min_age).into()).await;
                connections.retain(|connection| !connection.task.is_finished());
                continue;
            }
            connections.swap_remove(index).task.abort();
            lock(&shared).endpoint_drops.evicted += 1;
        }
        let answering = Arc::new(AtomicBool::new(false));
        let task =
            tokio::spawn(answer(stream, shared.clone(), limits, answering.clone())).abort_handle();
        connections.push(Connection {
            accepted: Instant::now(),
            answering,
            task,
        });
    }
}

/// What reading a request head gave.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed (or failed) before finishing its request.
    Gone,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream, max: usize) -> Head {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(read) => read,
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        let tail = &head[searched_from..];
        if let Some(end) = tail
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| searched_from + at + 4)
            .or_else(|| {
                tail.windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|at| searched_from + at + 2)
            })
        {
            if end > max {
                return Head::TooLarge;
            }
            head.truncate(end);
            return Head::Complete(head);
        }
        if head.len() > max {
            return Head::TooLarge;
        }
    }
}

/// Reads one request and answers it, then closes the connection. Aborting
/// the task (eviction) at any await closes the connection unanswered.
async fn answer(
    mut stream: TcpStream,
    shared: SharedSnapshot,
    limits: Limits,
    answering: Arc<AtomicBool>,
) {
    // One deadline for the whole head, however it is split into reads.
    let head =
        tokio::time::timeout(limits.read_timeout, read_head(&mut stream, limits.max_head)).await;
    let response = match head {
        Err(_) => {
            lock(&shared).endpoint_drops.read_timeout += 1;
            Response::error(408, "Request Timeout")
        }
        Ok(Head::Gone) => return,
        Ok(Head::TooLarge) => {
            lock(&shared).endpoint_drops.too_large += 1;
            Response::error(431, "Request Header Fields Too Large")
        }
        Ok(Head::Complete(head)) => {
            answering.store(true, Ordering::Relaxed);
            respond(&head, &shared)
        }
    };
    // Rendered to bytes before the first write: however slowly the client
    // reads, the snapshot's lock is not held meanwhile.
    let bytes = response.into_bytes();
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if written.is_err() {
        lock(&shared).endpoint_drops.write_timeout += 1;
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: the headers of the GET response, without its body.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn new(status: u16, reason: &'static str, content_type: &'static str, body: String) -> Self {
        Response {
            status,
            reason,
            content_type,
            body,
            head_only: false,
            allow: false,
        }
    }

    fn error(status: u16, reason: &'static str) -> Self {
        Response::new(
            status,
            reason,
            "text/plain; charset=utf-8",
            format!("{status} {reason}\n"),
        )
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>teardown</title></head><body>\n<h1>teardown</h1>\n<p>Prometheus metrics: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

/// The answer to one request head.
fn respond(head: &[u8], shared: &SharedSnapshot) -> Response {
    let Some((method, path)) = request_line(head) else {
        return Response::error(400, "Bad Request");
    };
    let mut response = match path {
        "/metrics" => {
            // A copy, so the lock the run loop publishes through is held for
            // a clone, not for the rendering.
            let snapshot = lock(shared).clone();
            Response::new(200, "OK", CONTENT_TYPE, render(&snapshot))
        }
        "/" => Response::new(200, "OK", "text/html; charset=utf-8", INDEX.to_string()),
        _ => Response::error(404, "Not Found"),
    };
    match method {
        "GET" => {}
        "HEAD" => response.head_only = true,
        _ => {
            response = Response::error(405, "Method Not Allowed");
            response.allow = true;
        }
    }
    response
}

/// The method and path (without query) of a well-formed HTTP/1.x request line.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    // The absolute form (`http://host/metrics`), as proxies send it.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    if !target.starts_with('/') {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::figures::EndpointDrops;

    fn busy_snapshot() -> Figures {
        crate::report::figures::tests::busy_figures()
    }

    /// Figures at zero, without egress or outputs, as a test's starting point.
    fn zero(iface: &str, direction: &'static str) -> Figures {
        Figures::zero(
            &[iface],
            crate::report::figures::RunFacts::starting_now(direction),
            false,
            &[],
        )
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_line(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Some(("HEAD", "/metrics"))
        );
        assert_eq!(
            request_line(b"GET http://h:9464/metrics HTTP/1.1\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                request_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Starts a server on a loopback port with the given limits.
    async fn test_server(limits: Limits) -> (SocketAddr, SharedSnapshot) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(busy_snapshot()));
        tokio::spawn(serve_with(listener, shared.clone(), limits));
        (addr, shared)
    }

    /// Sends `request` raw and returns everything the server sent back.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server answered in time")
            .expect("read");
        String::from_utf8(response).expect("UTF-8 response")
    }

    fn split(response: &str) -> (&str, &str) {
        response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {response:?}"))
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn http_round_trip() {
        let (addr, shared) = test_server(Limits::DEFAULT).await;

        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = split(&response);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(head, "content-type"), Some(CONTENT_TYPE));
        let length = body.len().to_string();
        assert_eq!(header(head, "content-length"), Some(length.as_str()));
        assert_eq!(body, render(&lock(&shared)));

        // What the run loop publishes is what the next scrape sees.
        lock(&shared).interfaces[0].flows.events_lost = 99;
        let response = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(
            split(&response)
                .1
                .contains("teardown_events_lost_total 99\n")
        );

        let response = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = split(&response);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, "", "HEAD has no body");
        let full = render(&lock(&shared)).len().to_string();
        assert_eq!(header(head, "content-length"), Some(full.as_str()));

        let response = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        let (head, body) = split(&response);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && body.contains("/metrics"));

        for (request, status) in [
            (&b"GET /nope HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
            (b"HEAD /nope HTTP/1.1\r\n\r\n", "404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"hello\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics HTTP/9\r\n\r\n", "400 Bad Request"),
        ] {
            let response = exchange(addr, request).await;
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{:?}: {response:?}",
                String::from_utf8_lossy(request)
            );
        }
        let response = exchange(addr, b"POST / HTTP/1.1\r\n\r\n").await;
        assert_eq!(header(split(&response).0, "allow"), Some("GET, HEAD"));
    }

    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let (addr, _) = test_server(Limits::DEFAULT).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 3 * Limits::DEFAULT.max_head));
        request.extend_from_slice(b"\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server stops reading: the write may fail once it has answered.
        let _ = stream.write_all(&request).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server answered in time");
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 431 "),
            "{:?}",
            &response[..response.len().min(200)]
        );
    }

    #[tokio::test]
    async fn idle_clients_time_out_without_holding_up_others() {
        let limits = Limits {
            read_timeout: Duration::from_millis(300),
            max_connections: 4,
            ..Limits::DEFAULT
        };
        let (addr, _) = test_server(limits).await;
        // Three clients connect and send half a request line.
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /met").await.expect("write");
            idle.push(stream);
        }
        // Meanwhile, scrapes are answered.
        for _ in 0..3 {
            let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        }
        // Each idle client is told 408 and closed.
        for mut stream in idle {
            let mut response = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
                .await
                .expect("the idle client was closed")
                .expect("read");
            assert!(response.starts_with(b"HTTP/1.1 408 "), "{response:?}");
        }
    }

    /// Connects and sends `prefix` of a request, never the end of its head.
    async fn idle_client(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(prefix).await.expect("write");
        stream
    }

    /// What the server sent before closing `stream`, or `None` while it is
    /// still open after `wait`. A reset counts as closed.
    async fn closed_with(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut response = Vec::new();
        match tokio::time::timeout(wait, stream.read_to_end(&mut response)).await {
            Err(_) => None,
            Ok(_) => Some(response),
        }
    }

    fn drops(shared: &SharedSnapshot) -> EndpointDrops {
        lock(shared).endpoint_drops
    }

    #[tokio::test]
    async fn a_full_server_evicts_the_oldest_idle_connection_for_a_scraper() {
        // Timeouts far away: only eviction can make room.
        let limits = Limits {
            read_timeout: Duration::from_secs(60),
            max_connections: 4,
            ..Limits::DEFAULT
        };
        let (addr, shared) = test_server(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(idle_client(addr, b"GET /met").await);
            // Accepted one at a time, in order.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // The scrape itself reports the eviction it caused.
        assert!(
            response.contains("teardown_metrics_connections_dropped_total{reason=\"evicted\"} 1\n"),
            "{response}"
        );
        // The oldest was closed unanswered; the others still wait.
        let evicted = closed_with(&mut idle[0], Duration::from_secs(5)).await;
        assert_eq!(evicted, Some(Vec::new()), "the oldest idle connection");
        for stream in &mut idle[1..] {
            assert_eq!(closed_with(stream, Duration::from_millis(100)).await, None);
        }
        // A scraper keeps getting in however many idle connections keep
        // coming: each newcomer evicts the oldest.
        for round in 0..10 {
            for _ in 0..4 {
                idle.push(idle_client(addr, b"").await);
            }
            let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            assert!(
                response.starts_with("HTTP/1.1 200 OK\r\n"),
                "round {round}: {response}"
            );
        }
        assert_eq!(
            drops(&shared),
            EndpointDrops {
                evicted: 1 + 10 * 4,
                ..EndpointDrops::default()
            }
        );
    }

    #[tokio::test]
    async fn trickling_a_byte_at_a_time_gets_no_more_time() {
        let limits = Limits {
            read_timeout: Duration::from_millis(500),
            ..Limits::DEFAULT
        };
        let (addr, shared) = test_server(limits).await;
        let started = Instant::now();
        let mut stream = idle_client(addr, b"GET /metrics HTTP/1.1\r\nX-Slow: ").await;
        // A byte every 100 ms, each well within any per-read timeout.
        let response = loop {
            if let Some(response) = closed_with(&mut stream, Duration::from_millis(100)).await {
                break response;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the server is still reading"
            );
            let _ = stream.write_all(b"a").await;
        };
        let took = started.elapsed();
        assert!(response.starts_with(b"HTTP/1.1 408 "), "{response:?}");
        assert!(
            took < Duration::from_millis(1500),
            "closed after {took:?}, not about 500 ms"
        );
        assert_eq!(drops(&shared).read_timeout, 1);
    }

    /// A snapshot whose exposition (several MiB) is much larger than the
    /// socket buffers, so that a client that does not read holds up the write.
    fn huge_snapshot() -> Figures {
        let mut snapshot = busy_snapshot();
        snapshot.alerts.states = (0..100_000)
            .map(|n| crate::report::figures::AlertState {
                target: format!("198.51.100.{}:{}", n % 256, n),
                active: false,
            })
            .collect();
        snapshot
    }

    /// Connects with a small receive buffer, sends a whole request and does
    /// not read the answer.
    async fn non_reader(addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        stream
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_off_without_holding_the_lock() {
        let limits = Limits {
            write_timeout: Duration::from_millis(500),
            ..Limits::DEFAULT
        };
        let (addr, shared) = test_server(limits).await;
        *lock(&shared) = huge_snapshot();
        let started = Instant::now();
        let mut stream = non_reader(addr).await;
        // While the server waits for the client to take the answer, the run
        // loop can publish: the lock is not held during the write. (A guard
        // is not Send, so holding one across the write would not even
        // compile in a spawned task; this keeps it so should that change.)
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(shared.try_lock().is_ok(), "the snapshot is locked");
        assert_eq!(drops(&shared).write_timeout, 0, "cut off too early");
        while drops(&shared).write_timeout == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the write was not cut off"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What arrived is a truncated answer, then the end.
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the connection was closed");
        let full = render(&lock(&shared)).len();
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(response.len() < full, "{} of {full} bytes", response.len());
    }

    #[tokio::test]
    async fn idle_connections_go_before_answers_in_progress() {
        let limits = Limits {
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 2,
            ..Limits::DEFAULT
        };
        let (addr, shared) = test_server(limits).await;
        *lock(&shared) = huge_snapshot();
        let full = render(&lock(&shared)).len();
        // The oldest connection has asked and is being answered (slowly);
        // a newer one has asked nothing.
        let mut answered = non_reader(addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut idle = idle_client(addr, b"").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert_eq!(drops(&shared).evicted, 1);
        assert_eq!(
            closed_with(&mut idle, Duration::from_secs(5)).await,
            Some(Vec::new()),
            "the idle connection was evicted"
        );
        // The older answer goes on to the end.
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), answered.read_to_end(&mut response))
            .await
            .expect("the answer ended")
            .expect("read");
        let (_, body) = split(std::str::from_utf8(&response).expect("UTF-8"));
        assert_eq!(body.len(), full, "the answer in progress was cut");
    }

    #[tokio::test]
    async fn when_all_are_being_answered_the_oldest_answer_gives_way() {
        let limits = Limits {
            write_timeout: Duration::from_secs(60),
            max_connections: 2,
            ..Limits::DEFAULT
        };
        let (addr, shared) = test_server(limits).await;
        *lock(&shared) = huge_snapshot();
        let mut first = non_reader(addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _second = non_reader(addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert_eq!(drops(&shared).evicted, 1);
        // The first non-reader was the one cut off.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut sink))
            .await
            .expect("the oldest non-reader was closed");
    }

    #[tokio::test]
    async fn a_burst_of_scrapers_is_answered() {
        let (addr, shared) = test_server(Limits::DEFAULT).await;
        let scrapes: Vec<_> = (0..200)
            .map(|_| tokio::spawn(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")))
            .collect();
        let mut answered = 0;
        for scrape in scrapes {
            if let Ok(response) = scrape.await {
                answered += usize::from(response.starts_with("HTTP/1.1 200 OK\r\n"));
            }
        }
        assert_eq!(answered, 200, "{:?}", drops(&shared));
    }

    #[tokio::test]
    async fn concurrent_scrapes() {
        let (addr, _) = test_server(Limits::DEFAULT).await;
        let scrapes: Vec<_> = (0..16)
            .map(|_| tokio::spawn(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")))
            .collect();
        for scrape in scrapes {
            let response = scrape.await.expect("scrape task");
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        }
    }

    /// The run loop publishes its figures; the endpoint keeps its own count
    /// of the connections it gave up on, which the figures know nothing of.
    #[tokio::test]
    async fn published_figures_are_served_with_the_endpoints_own_drops() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), zero("lo", "both"))
            .await
            .expect("bind an ephemeral port");
        lock(&server.shared).endpoint_drops.read_timeout = 3;
        let mut figures = busy_snapshot();
        figures.interfaces[0].flows.tracked = 77;
        figures.endpoint_drops.read_timeout = 0;
        server.publish(figures);
        let response = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let (_, body) = split(&response);
        assert!(body.contains("teardown_flows_tracked 77\n"), "{body}");
        assert!(
            body.contains(
                "teardown_metrics_connections_dropped_total{reason=\"read_timeout\"} 3\n"
            ),
            "{body}"
        );
        assert!(body.contains("teardown_interface_info{iface=\"eth0\",direction=\"both\"} 1\n"));
        assert!(body.contains("teardown_output_lines_lost_total{output=\"log\"} 12\n"));
    }

    #[tokio::test]
    async fn bind_errors_name_the_address_and_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("local addr");
        let err = MetricsServer::start(addr, zero("lo", "both"))
            .await
            .err()
            .expect("the address is taken");
        let message = format!("{err:#}");
        assert!(
            message.contains(&addr.to_string())
                && message.contains("in use")
                && message.contains("--metrics-addr HOST:PORT")
                && !message.contains('\n'),
            "{message}"
        );
        // And a working one reports the port it got.
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), zero("lo", "both"))
            .await
            .expect("bind an ephemeral port");
        assert_ne!(server.local_addr().port(), 0);
        server.update(|s| s.interfaces[0].flows.tracked = 5);
        let response = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(response.contains("teardown_flows_tracked 5\n"));
    }
}
