#!/usr/bin/python3
"""A meek server, for the meek_lite test: what meek-server (not in Debian) does.

meek_lite (obfs4proxy's client, which ttp runs) carries a Tor connection in HTTP POSTs:
each request's body is what the client sends, each response's body what the bridge sent
back meanwhile; the X-Session-Id header names the connection, and the client polls when
it has nothing to send. This forwards each session to a bridge's ORPort.

Usage: meek_server.py ADDRESS:PORT ORPORT_ADDRESS:PORT. Prints LISTENING, then SESSION
with the request's Host header for each new session.
"""
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN = sys.argv[1].rsplit(":", 1)
BRIDGE = sys.argv[2].rsplit(":", 1)
# meek's own limit on one response's payload.
MAX_PAYLOAD = 0x10000

sessions = {}
lock = threading.Lock()


def say(*words):
    with lock:
        print(*words, flush=True)


class Meek(BaseHTTPRequestHandler):
    # Keep-alive, as meek-server: the client sends its next poll on the same connection.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        session = self.headers.get("X-Session-Id", "")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            up = sessions.get(session)
        if up is None:
            up = socket.create_connection((BRIDGE[0], int(BRIDGE[1])), timeout=10)
            with lock:
                sessions[session] = up
            say("SESSION", "host=" + self.headers.get("Host", ""))
        data = b""
        try:
            if body:
                up.sendall(body)
            # What the bridge has for the client: wait a little for the first bytes, then
            # take what follows at once.
            up.settimeout(0.1)
            while len(data) < MAX_PAYLOAD:
                more = up.recv(MAX_PAYLOAD - len(data))
                if not more:
                    break
                data += more
                up.settimeout(0.01)
        except socket.timeout:
            pass
        except OSError:
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer((LISTEN[0], int(LISTEN[1])), Meek)
server.daemon_threads = True
say("LISTENING")
server.serve_forever()
