//! `cargo install --path teardown-user`, as a user installs teardown from a
//! clone: the build script builds the eBPF object and embeds it (no xtask
//! step), and the installed binary watches a real connection live.
//!
//! Offline and `--locked` (the test run has every crate it needs), into the
//! test run's own target directory (`CARGO_TARGET_DIR`), so only what the
//! release profile lacks is compiled; the root is a temporary directory.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::{
    JsonLines, Lab, SERVER_V4, TempDir, in_netns, run, socket_addr, start_teardown_from,
};

const PORT: u16 = 8181;

#[test]
fn cargo_install_gives_a_binary_that_watches_live() {
    let root = TempDir::new("teardown-install");
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    // target/debug/teardown: the target directory is two levels up.
    let target_dir = Path::new(env!("CARGO_BIN_EXE_teardown"))
        .parent()
        .and_then(Path::parent)
        .expect("the test binary's target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "--offline", "--locked", "--quiet", "--path"])
        .arg(package)
        .arg("--root")
        .arg(&root.0)
        .env("CARGO_TARGET_DIR", target_dir)
        // The build script's escape hatches, if the run had them: this
        // install must build the object itself.
        .env_remove("TEARDOWN_EBPF_OBJECT")
        .env_remove("AYA_BUILD_SKIP"));
    let installed = root.join("bin/teardown");
    assert!(installed.is_file(), "no {}", installed.display());
    let installed = installed.to_str().expect("a UTF-8 temporary path");

    let lab = Lab::new();
    let (mut teardown, stderr) = start_teardown_from(
        installed,
        &lab.server_ns,
        &lab.server_if,
        &["--metrics-addr", "off"],
    );
    let lines = JsonLines::watch(&mut teardown, stderr);

    // One real connection: a line each way, then the client closes first.
    let listener = in_netns(&lab.server_ns, || {
        TcpListener::bind(socket_addr(SERVER_V4, PORT)).expect("listening")
    })
    .join()
    .expect("binding in the server's namespace");
    // The socket stays in the server's namespace, whichever thread accepts.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepting");
        let mut line = [0u8; 6];
        stream.read_exact(&mut line).expect("reading the line");
        stream.write_all(&line).expect("echoing it");
        // Until the client's FIN, then close our side.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("reading to the end");
    });
    in_netns(&lab.client_ns, || {
        let mut stream =
            TcpStream::connect_timeout(&socket_addr(SERVER_V4, PORT), Duration::from_secs(5))
                .expect("connecting");
        stream.write_all(b"hello\n").expect("sending");
        let mut echo = [0u8; 6];
        stream.read_exact(&mut echo).expect("reading the echo");
        assert_eq!(&echo, b"hello\n");
    })
    .join()
    .expect("the client");
    server.join().expect("the server");

    let record = lines.wait_for(Duration::from_secs(10), |value: &Value| {
        value["event"] == "conn" && value["id.resp_p"] == PORT
    });
    let (_, output, stderr) = lines.finish(teardown);
    let record =
        record.unwrap_or_else(|| panic!("no record of the connection to port {PORT}: {stderr}"));
    assert_eq!(record["conn_state"], "SF", "{record}");
    assert_eq!(record["close"], "graceful", "{record}");
    assert!(
        output.status.success(),
        "the installed teardown failed: {stderr}"
    );
}
