#!/usr/bin/python3
"""The pieces of a snowflake deployment that Debian does not ship, for the snowflake test.

Debian ships snowflake-client and snowflake-proxy (both run for real in the test), but not
the broker or the server (golang-snowflake-dev 2.5.1 carries only common/, client/ and
proxy/). This stands in for those two, and for a STUN server, on one address:

- STUN (UDP 3478): answers a Binding request with the sender's address, as any STUN
  server does, so both ends' ICE gathering completes at once.
- Broker (HTTP 8080): the client's poll (POST /client, protocol 1.0) waits for a proxy's
  poll (POST /proxy, 1.x) to take its offer, and is answered with the proxy's answer
  (POST /answer). Exactly the messages of snowflake's common/messages.
- Server (WebSocket 8081): where the proxy relays the client's data channel. It checks
  that what arrives starts with turbotunnel's token and a client id (what the client
  sends first through every proxy), then reads and discards. It does not speak KCP and
  smux further: Tor does not bootstrap through it.

Usage: snowflake_standin.py ADDRESS SECONDS. Prints LISTENING, then one line per event
(CLIENT, MATCHED, ANSWER, RELAY), and GAVE UP after SECONDS.
"""
import base64
import hashlib
import json
import os
import queue
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDR = sys.argv[1]
SECONDS = float(sys.argv[2])
# common/turbotunnel/consts.go
TOKEN = bytes([0x12, 0x93, 0x60, 0x5D, 0x27, 0x81, 0x75, 0xF5])
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_out = threading.Lock()


def say(*words):
    with _out:
        print(*words, flush=True)


def stun(sock):
    """RFC 5389 Binding: the answer is the request's sender, XOR-MAPPED-ADDRESS."""
    while True:
        msg, (ip, port) = sock.recvfrom(2048)
        if len(msg) < 20 or msg[0:2] != b"\x00\x01":
            continue
        cookie = msg[4:8]
        xaddr = bytes(a ^ b for a, b in zip(socket.inet_aton(ip), cookie))
        attr = struct.pack(">HHBBH", 0x0020, 8, 0, 1, port ^ 0x2112) + xaddr
        sock.sendto(struct.pack(">HH", 0x0101, len(attr)) + msg[4:20] + attr, (ip, port))


offers = queue.Queue()  # (offer, where its answer goes) of clients waiting for a proxy
matched = {}  # a proxy's session id -> where its client's answer goes


def candidates(description):
    """The ICE candidates of an SDP answer, as "udp 192.0.2.201:40000"."""
    sdp = json.loads(description)["sdp"]
    found = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            f = line.split()
            found.add("%s %s:%s" % (f[2].lower(), f[4], f[5]))
    return sorted(found)


class Broker(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/client":
            version, _, message = body.partition(b"\n")
            poll = json.loads(message)
            say(
                "CLIENT",
                "version=" + version.decode(errors="replace"),
                "host=" + self.headers.get("Host", ""),
                "fingerprint=" + poll.get("fingerprint", ""),
            )
            answer = queue.Queue()
            offers.put((poll["offer"], answer))
            try:
                self.reply({"answer": answer.get(timeout=15)})
            except queue.Empty:
                self.reply({"error": "timed out waiting for answer!"})
        elif self.path == "/proxy":
            poll = json.loads(body)
            try:
                offer, answer = offers.get(timeout=5)
            except queue.Empty:
                self.reply({"Status": "no match"})
                return
            matched[poll["Sid"]] = answer
            say("MATCHED")
            # No RelayURL: the proxy relays to its own -relay.
            self.reply({"Status": "client match", "Offer": offer, "NAT": "unknown", "RelayURL": ""})
        elif self.path == "/answer":
            message = json.loads(body)
            answer = matched.pop(message["Sid"], None)
            if answer is None:
                self.reply({"Status": "client gone"})
                return
            say("ANSWER", *candidates(message["Answer"]))
            answer.put(message["Answer"])
            self.reply({"Status": "success"})
        else:
            self.send_error(404)


class Relay(socketserver.BaseRequestHandler):
    def handle(self):
        c = self.request
        c.settimeout(60)
        data = b""
        while b"\r\n\r\n" not in data:
            more = c.recv(4096)
            if not more:
                return
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        c.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: %s\r\n\r\n" % accept
            ).encode()
        )
        buf = bytearray(rest)

        def exact(n):
            while len(buf) < n:
                more = c.recv(65536)
                if not more:
                    raise EOFError
                buf.extend(more)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        payload = b""
        reported = False
        try:
            while True:
                b0, b1 = exact(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", exact(2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", exact(8))
                mask = exact(4) if b1 & 0x80 else b"\0\0\0\0"
                frame = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(n)))
                opcode = b0 & 0x0F
                if opcode == 8:
                    break
                if opcode in (0, 1, 2) and not reported:
                    payload += frame
                    if len(payload) >= 16:
                        token = "ok" if payload[:8] == TOKEN else payload[:8].hex()
                        say("RELAY", "path=" + lines[0].split()[1], "token=" + token, "client-id=" + payload[8:16].hex())
                        reported = True
        except (EOFError, OSError):
            pass


class ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((ADDR, 3478))
    broker = ThreadingHTTPServer((ADDR, 8080), Broker)
    broker.daemon_threads = True
    relay = ThreadingTCP((ADDR, 8081), Relay)
    for target in (lambda: stun(udp), broker.serve_forever, relay.serve_forever):
        threading.Thread(target=target, daemon=True).start()
    say("LISTENING")
    time.sleep(SECONDS)
    say("GAVE UP")
    os._exit(0)


main()
