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
- Server (WebSocket 8081): where the proxy relays the client's data channel, as
  snowflake-server does it: turbotunnel's token and the client's id first, then KCP
  packets (each with encapsulation's length prefix) that carry an smux session (version
  2), each of whose streams goes to the bridge's ORPort. The KCP side is a stand-in's:
  it acknowledges and orders what the client sends, and sends each of its own segments
  once (the path through the proxy is lossless here: a WebRTC data channel and a TCP
  connection), with no retransmission.

Usage: snowflake_standin.py ADDRESS SECONDS ORPORT_ADDRESS:PORT. Prints LISTENING, then
one line per event (CLIENT, MATCHED, ANSWER, RELAY, STREAM), and GAVE UP after SECONDS.
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
BRIDGE = sys.argv[3].rsplit(":", 1)
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


# KCP (kcp-go, as snowflake configures it: stream mode, no FEC, no encryption).
KCP_PUSH, KCP_ACK, KCP_WASK, KCP_WINS = 81, 82, 83, 84
KCP_HEADER = struct.Struct("<IBBHIIII")  # conv cmd frg wnd ts sn una len
KCP_MSS = 1400 - KCP_HEADER.size
KCP_WND = 4096
# smux version 2.
SMUX_HEADER = struct.Struct("<BBHI")  # version cmd length sid
SYN, FIN, PSH, NOP, UPD = range(5)
SMUX_WINDOW = 1 << 20


def encapsulated(packet):
    """encapsulation.WriteData: a length prefix of 1 to 3 bytes, then the packet."""
    n = len(packet)
    if n < 1 << 6:
        prefix = bytes([0x80 | n])
    elif n < 1 << 13:
        prefix = bytes([0xC0 | (n >> 7), n & 0x7F])
    else:
        prefix = bytes([0xC0 | (n >> 14), 0x80 | ((n >> 7) & 0x7F), n & 0x7F])
    return prefix + packet


def ws_frame(payload):
    """A server's binary WebSocket frame (unmasked)."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x82, n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x82, 126, n)
    else:
        head = struct.pack(">BBQ", 0x82, 127, n)
    return head + payload


class Session:
    """One client's KCP connection and the smux streams in it, across the WebSocket
    connections its proxies make (the client id ties them together)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.ws = None  # the current connection from a proxy
        self.conv = 0
        self.rcv_nxt = 0
        self.rcv_buf = {}
        self.snd_nxt = 0
        self.smux = bytearray()
        self.streams = {}
        self.consumed = {}

    def now(self):
        return int(time.monotonic() * 1000) & 0xFFFFFFFF

    def segment(self, cmd, sn, ts, data=b""):
        return KCP_HEADER.pack(self.conv, cmd, 0, KCP_WND, ts, sn, self.rcv_nxt, len(data)) + data

    def output(self, segments):
        """Segments into packets of at most 1400 bytes, each encapsulated, to the proxy."""
        packet = b""
        for seg in segments + [None]:
            if seg is None or len(packet) + len(seg) > 1400:
                if packet and self.ws is not None:
                    try:
                        self.ws.sendall(ws_frame(encapsulated(packet)))
                    except OSError:
                        pass
                packet = b""
            if seg is not None:
                packet += seg

    def input(self, packet):
        """A KCP packet from the client: its segments acknowledged, its data in order."""
        with self.lock:
            replies = []
            off = 0
            while off + KCP_HEADER.size <= len(packet):
                conv, cmd, _frg, _wnd, ts, sn, _una, n = KCP_HEADER.unpack_from(packet, off)
                data = packet[off + KCP_HEADER.size : off + KCP_HEADER.size + n]
                off += KCP_HEADER.size + n
                self.conv = conv
                if cmd == KCP_PUSH:
                    if sn >= self.rcv_nxt and sn not in self.rcv_buf:
                        self.rcv_buf[sn] = data
                    while self.rcv_nxt in self.rcv_buf:
                        self.smux += self.rcv_buf.pop(self.rcv_nxt)
                        self.rcv_nxt += 1
                    replies.append((KCP_ACK, sn, ts))
                elif cmd == KCP_WASK:
                    replies.append((KCP_WINS, 0, self.now()))
            self.output([self.segment(cmd, sn, ts) for cmd, sn, ts in replies])
            self.frames()

    def send(self, data):
        """Bytes of the smux stream to the client, in KCP segments."""
        with self.lock:
            segments = []
            for i in range(0, len(data), KCP_MSS):
                segments.append(self.segment(KCP_PUSH, self.snd_nxt, self.now(), data[i : i + KCP_MSS]))
                self.snd_nxt += 1
            self.output(segments)

    def frame(self, cmd, sid, data=b""):
        self.send(SMUX_HEADER.pack(2, cmd, len(data), sid) + data)

    def frames(self):
        """The smux frames received so far."""
        while len(self.smux) >= SMUX_HEADER.size:
            _ver, cmd, n, sid = SMUX_HEADER.unpack_from(self.smux)
            if len(self.smux) < SMUX_HEADER.size + n:
                return
            data = bytes(self.smux[SMUX_HEADER.size : SMUX_HEADER.size + n])
            del self.smux[: SMUX_HEADER.size + n]
            if cmd == SYN:
                up = socket.create_connection((BRIDGE[0], int(BRIDGE[1])), timeout=10)
                up.settimeout(None)
                self.streams[sid] = up
                self.consumed[sid] = 0
                say("STREAM", sid)
                threading.Thread(target=self.downstream, args=(sid, up), daemon=True).start()
            elif cmd == PSH and sid in self.streams:
                try:
                    self.streams[sid].sendall(data)
                except OSError:
                    pass
                # The client may have SMUX_WINDOW bytes in flight; say what was taken.
                before = self.consumed[sid]
                self.consumed[sid] += len(data)
                if before // 65536 != self.consumed[sid] // 65536:
                    self.frame(UPD, sid, struct.pack("<II", self.consumed[sid] & 0xFFFFFFFF, SMUX_WINDOW))
            elif cmd == FIN and sid in self.streams:
                try:
                    self.streams[sid].shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def downstream(self, sid, up):
        """The bridge's bytes to the client, in smux frames of at most 32 KiB."""
        try:
            while True:
                data = up.recv(32768)
                if not data:
                    break
                self.frame(PSH, sid, data)
        except OSError:
            pass
        self.frame(FIN, sid)


sessions = {}  # client id -> Session


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

        stream = bytearray()  # what the client sent through the proxy
        session = None
        try:
            while True:
                b0, b1 = exact(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", exact(2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", exact(8))
                mask = exact(4) if b1 & 0x80 else b"\0\0\0\0"
                payload = exact(n)
                opcode = b0 & 0x0F
                if opcode == 8:
                    break
                if opcode not in (0, 1, 2):
                    continue
                stream += bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
                if session is None:
                    if len(stream) < 16:
                        continue
                    token = "ok" if stream[:8] == TOKEN else stream[:8].hex()
                    client = stream[8:16].hex()
                    say("RELAY", "path=" + lines[0].split()[1], "token=" + token, "client-id=" + client)
                    if token != "ok":
                        break
                    del stream[:16]
                    session = sessions.setdefault(client, Session())
                    with session.lock:
                        session.ws = c
                for packet in packets(stream):
                    session.input(packet)
        except (EOFError, OSError):
            pass


def packets(stream):
    """The complete encapsulated packets at the start of `stream`, taken from it
    (encapsulation.ReadData; padding is skipped)."""
    while stream:
        is_data, more, n, i = stream[0] & 0x80, stream[0] & 0x40, stream[0] & 0x3F, 1
        while more:
            if i >= len(stream) or i > 2:
                return
            more = stream[i] & 0x80
            n = (n << 7) | (stream[i] & 0x7F)
            i += 1
        if len(stream) < i + n:
            return
        packet = bytes(stream[i : i + n])
        del stream[: i + n]
        if is_data:
            yield packet


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
