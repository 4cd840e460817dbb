#!/usr/bin/env python3
"""A minimal Elko client in plain Python 3 (standard library only).

It follows docs/protocol.md and nothing else: frames, varints, the message
catalog, the handshake and the enter flow. The codec is driven by one table
(MESSAGES) so every message of protocol version 1 can be encoded and decoded;
the functions a chat client needs have named wrappers (encode_hello,
decode_welcome, encode_enter_context, decode_redirect, encode_enter,
encode_say, decode_said, decode_error_frame, ...).

    python3 elko_client.py --selftest
        Decode every hex vector in protocol/testdata/, compare the result with
        the .txt beside it, re-encode to the identical bytes, check the
        Register proof, and run the client flow against a fake server on
        127.0.0.1.

    python3 elko_client.py --chat HOST:PORT USER CONTEXT [TEXT]
        Enter CONTEXT as USER through the director at HOST:PORT, print the
        snapshot, say TEXT (if given), print what is said for a few seconds,
        then exit.
"""

import hashlib
import hmac
import os
import socket
import struct
import sys
import threading
import time

MAGIC = 0x4F4B4C45  # b"ELKO" read as a little-endian u32
PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 65536
MAX_FRAME_PREAUTH = 4096

# ---- error codes and re-enter reasons (docs/protocol.md, "Error codes") ------

ERROR_CODES = {
    1: "BAD_MAGIC", 2: "UNSUPPORTED_VERSION", 3: "FRAME_TOO_LARGE",
    4: "UNKNOWN_MESSAGE_TYPE", 5: "MALFORMED", 6: "UNEXPECTED_MESSAGE",
    7: "SERVER_FULL", 8: "HANDSHAKE_TIMEOUT", 9: "IDLE_TIMEOUT",
    10: "SLOW_CONSUMER", 11: "INVALID_ID",
    20: "TOKEN_INVALID", 21: "TOKEN_EXPIRED", 22: "TOKEN_REPLAYED",
    23: "TOKEN_WRONG_CONTEXT", 24: "CONTEXT_UNAVAILABLE", 25: "NO_SUCH_USER",
    26: "NO_CAPACITY", 27: "ALREADY_ACTIVE", 28: "NOT_ENTERED",
    29: "TEXT_TOO_LONG",
    40: "AUTH_FAILED", 41: "SHUTTING_DOWN", 42: "CHECKPOINT_FAILED",
    50: "INTERNAL",
}
REENTER_REASONS = {1: "DRAIN", 2: "SHUTDOWN", 3: "MOVED", 4: "FULL"}


class ProtocolError(Exception):
    """The bytes do not make a valid frame or message."""


class Truncated(ProtocolError):
    """A field or length runs past the end of the body."""


# ---- varints -------------------------------------------------------------------

# Largest prefix byte each unsigned type accepts: u16 takes 251 (+2 bytes),
# u32 also 252 (+4), u64 also 253 (+8). 254 and 255 are never valid here.
_PREFIX_LIMIT = {"u16": 251, "u32": 252, "u64": 253}
_BITS = {"u16": 16, "u32": 32, "u64": 64}


def encode_varint(value: int) -> bytes:
    """bincode 2 varint, shortest form (the form every encoder must write)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    if value <= 250:
        return bytes([value])
    if value <= 0xFFFF:
        return b"\xfb" + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return b"\xfc" + struct.pack("<I", value)
    return b"\xfd" + struct.pack("<Q", value)


class Reader:
    """Reads a message body; every read checks the bytes left first."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise Truncated(f"need {n} bytes at offset {self.pos}, "
                            f"have {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self, kind: str = "u64") -> int:
        first = self.take(1)[0]
        if first <= 250:
            return first
        if first > _PREFIX_LIMIT[kind]:
            raise ProtocolError(f"varint prefix {first} is invalid for a {kind}")
        # Longer-than-needed forms (e.g. fb 05 00 for 5) are accepted, as the
        # reference decoder does; never write them.
        size = {251: 2, 252: 4, 253: 8}[first]
        return int.from_bytes(self.take(size), "little")

    def done(self):
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes")


# ---- the message catalog (docs/protocol.md, "Messages") ---------------------------

# Field types: "u8" raw byte; "u16"/"u32"/"u64" varint; "code" ErrorCode (u16
# varint); "reason" ReEnterReason (u16 varint); "str" varint length + UTF-8;
# "bytes" varint length + raw bytes; ("array", n) n raw bytes, no length;
# ("vec", T) varint count + elements; ("option", T) 0 | 1 + value;
# ("struct", Name) the fields of STRUCTS[Name] in order.

STRUCTS = {
    "Limits": [("max_frame", "u32"), ("max_id_len", "u16"),
               ("max_text_len", "u32"), ("heartbeat_ms", "u32"),
               ("idle_timeout_ms", "u32")],
    "HistoryEntry": [("context_seq", "u64"), ("from", "str"), ("text", "str"),
                     ("at_ms", "u64")],
    "LoopLoad": [("connections", "u32"), ("contexts", "u32"), ("users", "u32"),
                 ("busy_permille", "u16")],
}

MESSAGES = {
    0x01: ("Hello", [("magic", "u32"), ("min_version", "u16"),
                     ("max_version", "u16"), ("client_name", "str")]),
    0x02: ("Welcome", [("version", "u16"), ("server_id", "str"),
                       ("limits", ("struct", "Limits")),
                       ("challenge", ("array", 16))]),
    0x03: ("ErrorFrame", [("code", "code"), ("message", "str")]),
    0x04: ("Ping", [("nonce", "u64")]),
    0x05: ("Pong", [("nonce", "u64")]),
    0x10: ("EnterContext", [("request_id", "u32"), ("user", "str"),
                            ("context", "str")]),
    0x11: ("EnterWhereUser", [("request_id", "u32"), ("user", "str"),
                              ("target_user", "str")]),
    0x12: ("Redirect", [("request_id", "u32"), ("context", "str"),
                        ("contextd_addr", "str"), ("token", "bytes"),
                        ("expires_in_ms", "u32")]),
    0x13: ("Denied", [("request_id", "u32"), ("code", "code"),
                      ("message", "str")]),
    0x20: ("Enter", [("context", "str"), ("user", "str"), ("token", "bytes")]),
    0x21: ("Snapshot", [("context", "str"), ("app", "str"),
                        ("members", ("vec", "str")),
                        ("history", ("vec", ("struct", "HistoryEntry"))),
                        ("state", "bytes")]),
    0x22: ("Say", [("client_seq", "u64"), ("sent_at_us", "u64"),
                   ("text", "str")]),
    0x23: ("Said", [("context_seq", "u64"), ("from", "str"),
                    ("client_seq", "u64"), ("sent_at_us", "u64"),
                    ("text", "str")]),
    0x24: ("Joined", [("user", "str")]),
    0x25: ("Left", [("user", "str")]),
    0x26: ("Exit", []),
    0x27: ("ReEnter", [("reason", "reason"), ("message", "str")]),
    0x28: ("AppMessage", [("op", "u16"), ("body", "bytes")]),
    0x40: ("Register", [("provider_id", "str"), ("epoch", "u64"),
                        ("client_addr", "str"), ("workers", "u16"),
                        ("capacity", "u32"), ("auth", ("array", 32))]),
    0x41: ("Registered", [("director_id", "str")]),
    0x42: ("LoadReport", [("seq", "u64"),
                          ("loops", ("vec", ("struct", "LoopLoad")))]),
    0x43: ("Activate", [("context", "str")]),
    0x44: ("ContextOpened", [("context", "str")]),
    0x45: ("ActivateFailed", [("context", "str"), ("code", "code"),
                              ("holder", ("option", "str"))]),
    0x46: ("ContextClosed", [("context", "str")]),
    0x47: ("UserEntered", [("context", "str"), ("user", "str")]),
    0x48: ("UserExited", [("context", "str"), ("user", "str")]),
    0x49: ("ExpectClient", [("context", "str"), ("user", "str"),
                            ("token_id", "u64"), ("expires_at_ms", "u64")]),
    0x4A: ("Drain", []),
    0x4B: ("ShuttingDown", []),
}
TYPE_OF = {name: ty for ty, (name, _) in MESSAGES.items()}


def _encode_value(t, v) -> bytes:
    if t == "u8":
        return bytes([v])
    if t in ("u16", "code", "reason"):
        if not 0 <= v <= 0xFFFF:
            raise ValueError(f"u16 out of range: {v}")
        return encode_varint(v)
    if t in ("u32", "u64"):
        if not 0 <= v < 1 << _BITS[t]:
            raise ValueError(f"{t} out of range: {v}")
        return encode_varint(v)
    if t == "str":
        b = v.encode("utf-8")
        return encode_varint(len(b)) + b
    if t == "bytes":
        return encode_varint(len(v)) + bytes(v)
    kind = t[0]
    if kind == "array":
        if len(v) != t[1]:
            raise ValueError(f"array needs exactly {t[1]} bytes, got {len(v)}")
        return bytes(v)
    if kind == "vec":
        return encode_varint(len(v)) + b"".join(_encode_value(t[1], e) for e in v)
    if kind == "option":
        return b"\x00" if v is None else b"\x01" + _encode_value(t[1], v)
    if kind == "struct":
        return _encode_fields(STRUCTS[t[1]], v)
    raise ValueError(f"unknown field type {t!r}")


def _encode_fields(fields, values: dict) -> bytes:
    return b"".join(_encode_value(t, values[name]) for name, t in fields)


def _decode_value(t, r: Reader):
    if t == "u8":
        return r.take(1)[0]
    if t in ("code", "reason"):
        return r.varint("u16")
    if t in ("u16", "u32", "u64"):
        return r.varint(t)
    if t == "str":
        n = r.varint("u64")
        try:
            return r.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"string is not UTF-8: {e}") from None
    if t == "bytes":
        return r.take(r.varint("u64"))
    kind = t[0]
    if kind == "array":
        return r.take(t[1])
    if kind == "vec":
        n = r.varint("u64")
        # Do not trust n for preallocation: each element takes >= 1 byte.
        return [_decode_value(t[1], r) for _ in range(n)]
    if kind == "option":
        tag = r.take(1)[0]
        if tag == 0:
            return None
        if tag == 1:
            return _decode_value(t[1], r)
        raise ProtocolError(f"option tag {tag}, expected 0 or 1")
    if kind == "struct":
        return _decode_fields(STRUCTS[t[1]], r)
    raise ValueError(f"unknown field type {t!r}")


def _decode_fields(fields, r: Reader) -> dict:
    return {name: _decode_value(t, r) for name, t in fields}


# ---- frames ------------------------------------------------------------------------


def encode_frame(type_byte: int, body: bytes) -> bytes:
    """u32 LE length (type byte + body), type byte, body."""
    return struct.pack("<IB", 1 + len(body), type_byte) + body


def encode_message(name: str, **fields) -> bytes:
    """One whole frame for message `name` with the given fields."""
    ty = TYPE_OF[name]
    return encode_frame(ty, _encode_fields(MESSAGES[ty][1], fields))


def decode_body(type_byte: int, body: bytes):
    """(name, fields) of a frame's body. Unknown types raise ProtocolError."""
    if type_byte not in MESSAGES:
        raise ProtocolError(f"unknown message type 0x{type_byte:02x}")
    name, fields = MESSAGES[type_byte]
    r = Reader(body)
    values = _decode_fields(fields, r)
    r.done()
    return name, values


class FrameSplitter:
    """Splits a byte stream into (type_byte, body) frames, whatever the chunking."""

    def __init__(self, max_frame: int = MAX_FRAME_PREAUTH):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes):
        self.buf += data

    def next_frame(self):
        """The next (type_byte, body), or None if more bytes are needed."""
        if len(self.buf) < 4:
            return None
        (length,) = struct.unpack_from("<I", self.buf)
        if length == 0:
            raise ProtocolError("frame length 0")
        if length > self.max_frame:  # judged from the header alone
            raise ProtocolError(f"frame length {length} > limit {self.max_frame}")
        if len(self.buf) < 4 + length:
            return None
        ty = self.buf[4]
        body = bytes(self.buf[5:4 + length])
        del self.buf[:4 + length]
        return ty, body


# ---- named helpers for a chat client ---------------------------------------------


def _decode_as(name: str, body: bytes) -> dict:
    return decode_body(TYPE_OF[name], body)[1]


def encode_hello(client_name: str, min_version: int = 1,
                 max_version: int = PROTOCOL_VERSION, magic: int = MAGIC) -> bytes:
    return encode_message("Hello", magic=magic, min_version=min_version,
                          max_version=max_version, client_name=client_name)


def decode_hello(body: bytes) -> dict:
    return _decode_as("Hello", body)


def encode_welcome(version, server_id, limits: dict, challenge: bytes) -> bytes:
    return encode_message("Welcome", version=version, server_id=server_id,
                          limits=limits, challenge=challenge)


def decode_welcome(body: bytes) -> dict:
    return _decode_as("Welcome", body)


def encode_error_frame(code: int, message: str) -> bytes:
    return encode_message("ErrorFrame", code=code, message=message)


def decode_error_frame(body: bytes) -> dict:
    """Works in every protocol version: ErrorFrame's layout is frozen."""
    return _decode_as("ErrorFrame", body)


def encode_enter_context(request_id: int, user: str, context: str) -> bytes:
    return encode_message("EnterContext", request_id=request_id, user=user,
                          context=context)


def decode_enter_context(body: bytes) -> dict:
    return _decode_as("EnterContext", body)


def encode_redirect(request_id, context, contextd_addr, token, expires_in_ms) -> bytes:
    return encode_message("Redirect", request_id=request_id, context=context,
                          contextd_addr=contextd_addr, token=token,
                          expires_in_ms=expires_in_ms)


def decode_redirect(body: bytes) -> dict:
    return _decode_as("Redirect", body)


def encode_enter(context: str, user: str, token: bytes) -> bytes:
    return encode_message("Enter", context=context, user=user, token=token)


def decode_enter(body: bytes) -> dict:
    return _decode_as("Enter", body)


def encode_say(client_seq: int, sent_at_us: int, text: str) -> bytes:
    return encode_message("Say", client_seq=client_seq, sent_at_us=sent_at_us,
                          text=text)


def decode_say(body: bytes) -> dict:
    return _decode_as("Say", body)


def encode_said(context_seq, from_user, client_seq, sent_at_us, text) -> bytes:
    return encode_message("Said", **{"context_seq": context_seq, "from": from_user,
                                     "client_seq": client_seq,
                                     "sent_at_us": sent_at_us, "text": text})


def decode_said(body: bytes) -> dict:
    return _decode_as("Said", body)


def register_proof(secret: bytes, challenge: bytes, provider_id: str, epoch: int) -> bytes:
    """The Register.auth a context server sends (docs/protocol.md, "Register")."""
    pid = provider_id.encode("utf-8")
    msg = (b"elko-register-v1" + challenge + struct.pack("<H", len(pid)) + pid
           + struct.pack("<Q", epoch))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def code_name(code: int) -> str:
    """Unknown codes are normal (newer servers): print the number."""
    return ERROR_CODES.get(code, f"error code {code}")


# ---- a connection -------------------------------------------------------------------


class ServerError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code_name(code)} ({code}): {message}")
        self.code = code


class Connection:
    """One TCP connection after the handshake: send frames, receive messages.

    Answers Ping with Pong by itself and raises ServerError on an ErrorFrame.
    """

    def __init__(self, addr: str, client_name: str = "elko-py/0.1", timeout: float = 10.0):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.splitter = FrameSplitter(MAX_FRAME_PREAUTH)
        self.sock.sendall(encode_hello(client_name))
        name, msg = self.recv()
        if name != "Welcome":
            raise ProtocolError(f"expected Welcome, got {name}")
        if msg["version"] != PROTOCOL_VERSION:
            raise ProtocolError(f"server chose version {msg['version']}")
        self.welcome = msg
        self.splitter.max_frame = msg["limits"]["max_frame"]

    def send(self, frame: bytes):
        self.sock.sendall(frame)

    def recv(self):
        """The next (name, fields), Pings answered and ErrorFrames raised."""
        while True:
            f = self.splitter.next_frame()
            if f is None:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.splitter.feed(data)
                continue
            ty, body = f
            if ty not in MESSAGES:
                raise ProtocolError(f"unknown message type 0x{ty:02x}")
            name, msg = decode_body(ty, body)
            if name == "Ping":
                self.send(encode_message("Pong", nonce=msg["nonce"]))
                continue
            if name == "Pong":
                continue
            if name == "ErrorFrame":
                raise ServerError(msg["code"], msg["message"])
            return name, msg

    def close(self):
        self.sock.close()


def enter(director_addr: str, user: str, context: str):
    """Director -> Redirect -> context server -> Snapshot. Returns (conn, snapshot)."""
    d = Connection(director_addr)
    try:
        d.send(encode_enter_context(1, user, context))
        while True:
            name, msg = d.recv()
            if name == "Redirect" and msg["request_id"] == 1:
                break
            if name == "Denied" and msg["request_id"] == 1:
                raise ServerError(msg["code"], msg["message"])
    finally:
        d.close()
    c = Connection(msg["contextd_addr"])
    c.send(encode_enter(msg["context"], user, msg["token"]))
    name, snap = c.recv()
    if name != "Snapshot":
        raise ProtocolError(f"expected Snapshot, got {name}")
    return c, snap


def chat(director_addr: str, user: str, context: str, text=None, listen_s=3.0):
    c, snap = enter(director_addr, user, context)
    topic = snap["state"].decode("utf-8", "replace") if snap["app"] == "chat" else ""
    print(f"entered {snap['context']} ({snap['app']}) topic={topic!r} "
          f"members={snap['members']}")
    for h in snap["history"]:
        print(f"  [{h['context_seq']}] {h['from']}: {h['text']}")
    if text is not None:
        c.send(encode_say(1, int(time.time() * 1e6), text))
    c.sock.settimeout(listen_s)
    try:
        while True:
            name, msg = c.recv()
            if name == "Said":
                print(f"[{msg['context_seq']}] {msg['from']}: {msg['text']}")
            elif name in ("Joined", "Left"):
                print(f"* {msg['user']} {name.lower()}")
            elif name == "ReEnter":
                print(f"* server asks to re-enter: {msg['message']}")
                break
    except socket.timeout:
        pass
    c.send(encode_message("Exit"))
    c.close()


# ---- Rust Debug rendering (to compare with protocol/testdata/*.txt) --------------


def _rust_str(s: str) -> str:
    out = ['"']
    for ch in s:
        esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\0": "\\0"}.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:  # close to Rust's rule for the characters the vectors use
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def _indent(s: str) -> str:
    return s.replace("\n", "\n    ")


def _list(items) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {_indent(i)},\n" for i in items) + "]"


def _debug(t, v) -> str:
    if t in ("u8", "u16", "u32", "u64"):
        return str(v)
    if t == "code":
        return f"{ERROR_CODES[v]}({v})" if v in ERROR_CODES else f"ErrorCode({v})"
    if t == "reason":
        return f"{REENTER_REASONS[v]}({v})" if v in REENTER_REASONS else f"ReEnterReason({v})"
    if t == "str":
        return _rust_str(v)
    if t == "bytes" or t[0] == "array":
        return _list([str(b) for b in v])
    if t[0] == "vec":
        return _list([_debug(t[1], e) for e in v])
    if t[0] == "option":
        return "None" if v is None else f"Some(\n    {_indent(_debug(t[1], v))},\n)"
    if t[0] == "struct":
        return _debug_struct(t[1], STRUCTS[t[1]], v)
    raise ValueError(t)


def _debug_struct(name, fields, values) -> str:
    if not fields:
        return name
    inner = "".join(f"    {f}: {_indent(_debug(t, values[f]))},\n" for f, t in fields)
    return f"{name} {{\n{inner}}}"


def rust_debug(type_byte: int, values: dict) -> str:
    """The `{:#?}` form of the Rust `Message` enum holding this message."""
    name, fields = MESSAGES[type_byte]
    return f"{name}(\n    {_indent(_debug_struct(name, fields, values))},\n)"


# ---- self-test ----------------------------------------------------------------------


def _testdata_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "protocol", "testdata"))


def _check(cond, what):
    if not cond:
        raise AssertionError(what)


def _selftest_vectors():
    d = _testdata_dir()
    names = sorted(n for n in os.listdir(d) if n.endswith(".hex"))
    _check(len(names) >= len(MESSAGES), f"only {len(names)} vectors in {d}")
    seen_types = set()
    decoded = {}
    for n in names:
        stem = n[:-4]
        with open(os.path.join(d, n), encoding="ascii") as f:
            frame = bytes.fromhex("".join(f.read().split()))
        with open(os.path.join(d, stem + ".txt"), encoding="utf-8") as f:
            expected = f.read()
        # Split one byte at a time: the splitter must not care.
        sp = FrameSplitter(MAX_FRAME_PREAUTH)
        frames = []
        for b in frame:
            sp.feed(bytes([b]))
            got = sp.next_frame()
            if got is not None:
                frames.append(got)
        _check(len(frames) == 1 and not sp.buf, f"{stem}: not exactly one frame")
        ty, body = frames[0]
        _check(f"{ty:02x}" == stem[:2], f"{stem}: type byte 0x{ty:02x}")
        name, fields = decode_body(ty, body)
        _check(stem[3:].split("-")[0] == name, f"{stem}: decoded as {name}")
        got = rust_debug(ty, fields) + "\n"
        _check(got == expected, f"{stem}: decoded form differs:\n{got}\n!=\n{expected}")
        _check(encode_message(name, **fields) == frame, f"{stem}: re-encoding differs")
        for k in range(len(body)):  # every proper prefix is truncated
            try:
                decode_body(ty, body[:k])
            except Truncated:
                continue
            raise AssertionError(f"{stem}: prefix {k} did not fail as truncated")
        seen_types.add(ty)
        decoded[stem] = fields
    _check(seen_types == set(MESSAGES), f"types without vectors: "
           f"{sorted(hex(t) for t in set(MESSAGES) - seen_types)}")

    # The named helpers give the same bytes as the vectors.
    h = decoded["01_Hello"]
    _check(encode_hello(h["client_name"], h["min_version"], h["max_version"])
           == encode_message("Hello", **h), "encode_hello")
    r = decoded["12_Redirect"]
    _check(decode_redirect(encode_redirect(**r)[5:]) == r, "redirect helpers")
    s = decoded["23_Said"]
    _check(decode_said(encode_said(s["context_seq"], s["from"], s["client_seq"],
                                   s["sent_at_us"], s["text"])[5:]) == s, "said helpers")

    # The Register vector's proof, under the test secret and the Welcome's challenge.
    challenge = decoded["02_Welcome"]["challenge"]
    reg = decoded["40_Register"]
    _check(register_proof(b"elko-test-secret", challenge, reg["provider_id"],
                          reg["epoch"]) == reg["auth"], "Register proof")
    return len(names)


def _selftest_rules():
    for v, wire in [(0, "00"), (250, "fa"), (251, "fbfb00"), (65535, "fbffff"),
                    (65536, "fc00000100"), (2**32 - 1, "fcffffffff"),
                    (2**32, "fd0000000001000000")]:
        _check(encode_varint(v).hex() == wire, f"varint {v}")
        _check(Reader(bytes.fromhex(wire)).varint("u64") == v, f"varint {v} back")
    _check(Reader(bytes.fromhex("fb0500")).varint("u64") == 5, "non-minimal accepted")
    for bad in ("fc00000000", "fd", "fe", "ff"):
        try:
            Reader(bytes.fromhex(bad) + bytes(16)).varint("u16")
            raise AssertionError(f"u16 prefix {bad} accepted")
        except ProtocolError:
            pass
    for bad_body, why in [(b"\x02\xc3\x28", "bad UTF-8"), (b"\x05ab", "truncated"),
                          (b"\x01a\x00", "trailing byte")]:
        try:
            decode_body(0x24, bad_body)
            raise AssertionError(f"Joined with {why} accepted")
        except ProtocolError:
            pass
    sp = FrameSplitter(MAX_FRAME_PREAUTH)
    sp.feed(struct.pack("<I", 4097))
    try:
        sp.next_frame()
        raise AssertionError("oversize frame accepted")
    except ProtocolError:
        pass


def _fake_server(ready: threading.Event, addrs: list):
    """A director and a context server, one connection each, enough for enter()."""
    director = socket.create_server(("127.0.0.1", 0))
    contextd = socket.create_server(("127.0.0.1", 0))
    addrs.append("127.0.0.1:%d" % director.getsockname()[1])
    c_addr = "127.0.0.1:%d" % contextd.getsockname()[1]
    ready.set()
    limits = dict(max_frame=65536, max_id_len=255, max_text_len=16384,
                  heartbeat_ms=15000, idle_timeout_ms=60000)

    def handshake(s):
        sp = FrameSplitter(MAX_FRAME_PREAUTH)

        def recv():
            while True:
                f = sp.next_frame()
                if f is not None:
                    return decode_body(*f)
                sp.feed(s.recv(7))  # small reads: exercise reassembly
        name, hello = recv()
        assert name == "Hello" and hello["magic"] == MAGIC
        s.sendall(encode_welcome(1, "fake", limits, os.urandom(16)))
        return recv

    s, _ = director.accept()
    recv = handshake(s)
    name, req = recv()
    assert name == "EnterContext"
    s.sendall(encode_message("Ping", nonce=2**40))  # the client must answer
    assert recv() == ("Pong", {"nonce": 2**40})
    s.sendall(encode_redirect(req["request_id"], req["context"], c_addr, b"tok\x00\xff", 30000))
    s.close()
    s, _ = contextd.accept()
    recv = handshake(s)
    name, ent = recv()
    assert name == "Enter" and ent["token"] == b"tok\x00\xff", ent
    s.sendall(encode_message("Snapshot", context=ent["context"], app="chat",
                             members=[ent["user"]], history=[], state="☕".encode()))
    name, say = recv()
    assert name == "Say"
    s.sendall(encode_said(1, ent["user"], say["client_seq"], say["sent_at_us"], say["text"]))
    assert recv()[0] == "Exit"
    s.close()
    director.close()
    contextd.close()


def _selftest_flow():
    ready, addrs = threading.Event(), []
    t = threading.Thread(target=_fake_server, args=(ready, addrs), daemon=True)
    t.start()
    ready.wait(5)
    c, snap = enter(addrs[0], "alice", "room/42")
    _check(snap["members"] == ["alice"] and snap["state"] == "☕".encode(), "snapshot")
    c.send(encode_say(7, 123, "héllo"))
    name, said = c.recv()
    _check(name == "Said" and said["client_seq"] == 7 and said["text"] == "héllo", "said")
    c.send(encode_message("Exit"))
    c.close()
    t.join(5)
    _check(not t.is_alive(), "fake server did not finish")


def selftest() -> int:
    n = _selftest_vectors()
    _selftest_rules()
    _selftest_flow()
    print(f"selftest ok: {n} vectors, codec rules, client flow")
    return 0


def main(argv) -> int:
    if len(argv) >= 2 and argv[1] == "--selftest":
        return selftest()
    if len(argv) in (5, 6) and argv[1] == "--chat":
        chat(argv[2], argv[3], argv[4], argv[5] if len(argv) == 6 else None)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
