# The demo's TCP server, run by `cargo xtask demo` inside the server namespace.
#
#   python3 server.py ADDR GRACEFUL_PORT HOLD_PORT
#
# On GRACEFUL_PORT each connection gets a line back for its request line, and
# is closed once the client has closed its side: a graceful close (SF).
# On HOLD_PORT the server answers, reads until the client's FIN, says "bye"
# and then keeps its own side open without a word: the connection stays
# half-closed, which teardown reports once it has been silent for a while.
# Prints "ready" once both ports listen. Ctrl-C is the demo's to handle: the
# demo kills this process when it is done.
import signal
import socket
import sys
import threading

signal.signal(signal.SIGINT, signal.SIG_IGN)

held = []  # half-closed connections, kept open on purpose


def handle(conn, hold):
    try:
        conn.settimeout(60)
        request = b""
        while not request.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        conn.sendall(b"hello from the teardown demo\n")
        while conn.recv(4096):  # until the client's FIN
            pass
        if hold:
            conn.sendall(b"bye, but I keep my side open\n")
            held.append(conn)
            return
        conn.close()
    except OSError:
        conn.close()


def serve(listener, hold):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, hold), daemon=True).start()


def listen(addr, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(128)
    return listener


def main():
    addr, graceful_port, hold_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    listeners = [(listen(addr, graceful_port), False), (listen(addr, hold_port), True)]
    for listener, hold in listeners:
        threading.Thread(target=serve, args=(listener, hold), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


main()
