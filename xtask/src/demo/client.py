# The demo's clients, run by `cargo xtask demo` inside the client namespace.
#
#   python3 client.py ACTION ADDR PORT COUNT GAP_SECONDS
#
# ACTION is one of
#   graceful   send a request line, read the answer, close: both sides FIN (SF)
#   reset      send a request line, read the answer, close with SO_LINGER 0:
#              the client aborts with a RST (RSTO)
#   refused    connect to a port nobody listens on: the server's kernel
#              answers the SYN with a RST (REJ)
#   halfclose  send a request line and shut down the sending side (FIN); the
#              server answers but never closes its side
# Prints one line per connection; exits 1 if a connection did not behave.
import signal
import socket
import struct
import sys
import time

signal.signal(signal.SIGINT, signal.SIG_IGN)


def connect(addr, port):
    conn = socket.create_connection((addr, port), timeout=5)
    conn.sendall(b"hello from a demo client\n")
    return conn


def read_answer(conn):
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def graceful(addr, port):
    conn = connect(addr, port)
    read_answer(conn)
    conn.close()
    return "closed gracefully"


def reset(addr, port):
    conn = connect(addr, port)
    read_answer(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return "reset (SO_LINGER 0)"


def refused(addr, port):
    try:
        socket.create_connection((addr, port), timeout=5).close()
    except ConnectionRefusedError:
        return "refused"
    raise RuntimeError(f"port {port} accepted a connection")


def halfclose(addr, port):
    conn = connect(addr, port)
    conn.shutdown(socket.SHUT_WR)
    # Read everything the server sends, so the final close sends nothing
    # (unread data would make it a RST); the server never closes, so stop
    # once it has been quiet for a second.
    conn.settimeout(1)
    try:
        while conn.recv(4096):
            pass
    except socket.timeout:
        pass
    conn.close()
    return "half-closed (our FIN sent, the server keeps its side open)"


def main():
    action, addr, port, count, gap = sys.argv[1:6]
    work = {"graceful": graceful, "reset": reset, "refused": refused, "halfclose": halfclose}[action]
    for n in range(int(count)):
        if n:
            time.sleep(float(gap))
        print(f"  client {n + 1}: {addr}:{port} {work(addr, int(port))}", flush=True)


main()
