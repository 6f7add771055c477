#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/: small, valid (or
nearly valid) inputs from which the fuzzer mutates. Run again after changing a protocol; the
files are committed so that every run starts from the same place."""

import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- rfb_server: a VNC server's stream (first byte: 1 = the proxy asks for ZRLE first) ---

def server_init(w, h, name=b"fuzz"):
    hs = b"RFB 003.008\n" + bytes([1, 1]) + struct.pack(">I", 0)
    pf = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
    return hs + struct.pack(">HH", w, h) + pf + struct.pack(">I", len(name)) + name


def update(rects):
    out = struct.pack(">BBH", 0, 0, len(rects))
    for (x, y, w, h, enc, data) in rects:
        out += struct.pack(">HHHHi", x, y, w, h, enc) + data
    return out


def raw(w, h, px=0x00FF0000):
    return struct.pack("<I", px) * (w * h)


def zrle(w, h):
    # One solid tile per 64x64 (subencoding 1, a 3-byte CPIXEL), in the connection's one
    # zlib stream.
    tiles = b""
    for _ty in range(0, h, 64):
        for _tx in range(0, w, 64):
            tiles += bytes([1, 0x10, 0x20, 0x30])
    z = zlib.compressobj()
    data = z.compress(tiles) + z.flush(zlib.Z_SYNC_FLUSH)
    return struct.pack(">I", len(data)) + data


W, H = 16, 8
init = server_init(W, H)
write("rfb_server", "raw", b"\0" + init + update([(0, 0, W, H, 0, raw(W, H))]))
write("rfb_server", "copyrect", b"\0" + init + update([
    (0, 0, W, H, 0, raw(W, H)), (4, 2, 4, 2, 1, struct.pack(">HH", 0, 0))]))
write("rfb_server", "zrle", b"\1" + init + update([(0, 0, W, H, 16, zrle(W, H))]))
write("rfb_server", "resize", b"\0" + init + update([(0, 0, 32, 16, -223, b"")])
      + update([(0, 0, 32, 16, 0, raw(32, 16))]))
ext = struct.pack(">B3x", 1) + struct.pack(">IHHII", 0, 0, 0, 24, 12)
write("rfb_server", "ext_desktop_size", b"\0" + init + update([(0, 0, 24, 12, -308, ext)]))
cursor = raw(4, 4, 0x00FFFFFF) + bytes([0xF0] * 4)
write("rfb_server", "cursor", b"\0" + init + update([(1, 1, 4, 4, -239, cursor)]))
write("rfb_server", "last_rect_and_keys", b"\0" + init + update([
    (0, 0, 0, 0, -258, b""), (0, 0, W, H, 0, raw(W, H)), (0, 0, 0, 0, -224, b""),
    (0, 0, 0, 0, 0, b"")])[:-12])
write("rfb_server", "bell_cut_colours", b"\0" + init + bytes([2])
      + struct.pack(">BxxxI", 3, 5) + b"hello"
      + struct.pack(">BxHH", 1, 0, 1) + b"\0" * 6 + bytes([150]))
write("rfb_server", "rfb_3_7", b"\0" + b"RFB 003.007\n" + bytes([1, 1])
      + server_init(W, H)[12 + 2 + 4:])
write("rfb_server", "refused", b"\0RFB 003.008\n\0" + struct.pack(">I", 4) + b"busy")

# --- display_client: one WebSocket message from a browser ---

write("display_client", "key", bytes([0x81]) + struct.pack("<IBI", 1, 1, 0x61) + bytes([4]) + b"KeyA")
write("display_client", "pointer", bytes([0x82]) + struct.pack("<IHHBbb", 2, 100, 200, 1, 0, -1))
write("display_client", "clipboard", bytes([0x83]) + struct.pack("<I", 5) + "héllo".encode()[:5])
write("display_client", "frame_ack", bytes([0x84]) + struct.pack("<I", 7))
write("display_client", "ping", bytes([0x85]) + struct.pack("<I", 9))
write("display_client", "refresh", bytes([0x86]))

# --- guest_agent: [read size - 1, line limit / 64 (0: the protocol's)], then JSON lines ---

agent = [
    {"type": "hello", "version": 1, "agent": "atrium-guest-agent 0.1"},
    {"type": "ready"},
    {"type": "pong", "id": 3},
    {"type": "session_started", "username": "alice"},
    {"type": "clipboard", "text": "copied \u00e9"},
    {"type": "error", "message": "cannot start the session"},
]
host = [
    {"type": "ping", "id": 1},
    {"type": "session", "user": {"username": "alice", "display_name": "Alice",
                                 "uid": 10001, "gid": 10001, "keyboard_layout": "de"}},
    {"type": "end_session"},
    {"type": "clipboard", "text": "paste"},
]
stream = "".join(json.dumps(m) + "\n" for m in agent)
write("guest_agent", "agent_messages", bytes([7, 0]) + stream.encode())
write("guest_agent", "host_messages", bytes([255, 0]) + "".join(json.dumps(m) + "\n" for m in host).encode())
write("guest_agent", "long_line", bytes([200, 2]) + b'{"type":"clipboard","text":"' + b"x" * 200 + b'"}\n{"type":"ready"}\n')

# --- node_json: a selector byte, then a body ---

hb = {"node_id": "node-1", "api_url": "https://node-1:8081", "display_url": "wss://node-1:8082",
      "capacity": {"vcpus_total": 8, "vcpus_used": 2, "memory_mib_total": 16384,
                   "memory_mib_used": 2048},
      "vms": [{"id": "vm-1", "state": "running", "error": None}]}
write("node_json", "heartbeat", bytes([0]) + json.dumps(hb).encode())
write("node_json", "heartbeat_reply", bytes([1]) + json.dumps(
    {"interval_secs": 10, "draining": False, "broker_keys": [{"kid": "k1", "x": "AAAA"}]}).encode())
write("node_json", "enrol", bytes([2]) + json.dumps(
    {"token": "t", "node_id": "node-1", "public_key": "AAAA", "vcpus_total": 8,
     "memory_mib_total": 16384}).encode())
write("node_json", "enrol_reply", bytes([3]) + json.dumps(
    {"node_id": "node-1", "max_vcpus": 8, "max_memory_mib": 16384}).encode())
write("node_json", "error", bytes([7]) + json.dumps({"error": "bad", "field": "name"}).encode())
spec = {"id": "vm-1", "name": "desk", "image": "debian-12-desktop", "vcpus": 2,
        "memory_mib": 2048, "runtime": "qemu", "display": {"width": 1280, "height": 800}}
write("node_json", "vm_spec", bytes([8]) + json.dumps(spec).encode())
write("node_json", "bearer", bytes([9]) + b"Bearer eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0."
      b"eyJzdWIiOiJicm9rZXIiLCJhdWQiOiJhdHJpdW0tbm9kZTpuMSJ9.c2ln")

# --- config: a selector byte, the file, then `%%` and KEY=VALUE lines ---

node = """[node]
id = "node-1"
broker_url = "https://broker:8080"
ca_file = "/etc/atrium/ca.pem"
listen = "0.0.0.0:8081"

[qemu]
run_as = "per-vm"
vm_uids = "200000-299999"
"""
write("config", "node", bytes([0]) + (node + "\n%%\nATRIUM_NODE_ID=node-2\nATRIUM_NODE_QEMU_RUN_AS=current\n").encode())
display = """node_id = "node-1"
broker_url = "https://broker:8080"
listen = "0.0.0.0:8082"
max_connections = 200
"""
write("config", "display", bytes([1]) + (display + "\n%%\nATRIUM_DISPLAY_MAX_CONNECTIONS=10\n").encode())
gateway = """broker_url = "http://broker:8080"
listen = "0.0.0.0:8443"
plain_http = true
proxy_networks = ["10.0.0.0/8"]
"""
write("config", "gateway", bytes([2]) + (gateway + "\n%%\nATRIUM_GATEWAY_PLAIN_HTTP=true\n").encode())
vmm = {"vm_id": "vm-1", "vcpus": 1, "memory_mib": 128, "kernel": "/boot/vmlinuz",
       "cmdline": "console=ttyS0", "disks": [], "control_socket": "/run/atrium/vm-1.sock"}
write("config", "vmm", bytes([3]) + json.dumps(vmm).encode())

# --- virtio_guest: a device byte (0 block, 1 console, 2 keyboard, 3 tablet), then a driver
# program: 0 = write register (u16 offset, u32 value), 1 = read register (u16 offset),
# 2 = write guest memory (u16 address, u8 length, bytes), 3 = notify queue (u8), 4 = backend
# work, 5 = backend event (u8) ---

def wreg(off, v):
    return bytes([0]) + struct.pack("<HI", off, v)


def rreg(off):
    return bytes([1]) + struct.pack("<H", off)


def mem(addr, data):
    out = b""
    while data:
        chunk, data = data[:255], data[255:]
        out += bytes([2]) + struct.pack("<HB", addr, len(chunk)) + chunk
        addr += len(chunk)
    return out


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def driver_init(queues):
    p = wreg(0x70, 1) + wreg(0x70, 3) + wreg(0x14, 1) + rreg(0x10)
    p += wreg(0x24, 1) + wreg(0x20, 1) + wreg(0x24, 0) + wreg(0x20, 0) + wreg(0x70, 11) + rreg(0x70)
    for q in range(queues):
        base = 0x1000 + q * 0x1000
        p += wreg(0x30, q) + rreg(0x34) + wreg(0x38, 8)
        p += wreg(0x80, base) + wreg(0x84, 0) + wreg(0x90, base + 0x400) + wreg(0x94, 0)
        p += wreg(0xA0, base + 0x800) + wreg(0xA4, 0) + wreg(0x44, 1)
    return p + wreg(0x70, 15)


def chain(q, descs):
    base = 0x1000 + q * 0x1000
    table = b"".join(desc(*d) for d in descs)
    return mem(base, table) + mem(base + 0x400, struct.pack("<HHH", 0, 1, 0)) + bytes([3, q])


NEXT, WRITE = 1, 2
blk_read = mem(0x8000, struct.pack("<IIQ", 0, 0, 1)) + chain(0, [
    (0x8000, 16, NEXT, 1), (0x8100, 512, NEXT | WRITE, 2), (0x8400, 1, WRITE, 0)])
blk_write = mem(0x8000, struct.pack("<IIQ", 1, 0, 2)) + mem(0x8100, b"\xab" * 64) + chain(0, [
    (0x8000, 16, NEXT, 1), (0x8100, 512, NEXT, 2), (0x8400, 1, WRITE, 0)])
blk_id = mem(0x8000, struct.pack("<IIQ", 8, 0, 0)) + chain(0, [
    (0x8000, 16, NEXT, 1), (0x8100, 20, NEXT | WRITE, 2), (0x8400, 1, WRITE, 0)])
write("virtio_guest", "block_read", bytes([0]) + driver_init(1) + blk_read + rreg(0x60) + wreg(0x64, 1))
write("virtio_guest", "block_write", bytes([0]) + driver_init(1) + blk_write)
write("virtio_guest", "block_read_only_write", bytes([0x80]) + driver_init(1) + blk_write)
write("virtio_guest", "block_get_id", bytes([0]) + driver_init(1) + blk_id + wreg(0x70, 0))
# The console: the guest gives receive buffers, opens the port over the control queues, sends.
con = bytes([1]) + driver_init(4)
con += chain(2, [(0x9000, 64, WRITE, 0)])
con += mem(0x9100, struct.pack("<IHH", 0, 0, 1)) + chain(3, [(0x9100, 8, 0, 0)])
con += mem(0x9200, struct.pack("<IHH", 1, 3, 1)) + chain(3, [(0x9200, 8, 0, 0)])
con += mem(0x9300, struct.pack("<IHH", 1, 6, 1)) + chain(3, [(0x9300, 8, 0, 0)])
con += bytes([5, 0]) + chain(0, [(0x9400, 256, WRITE, 0)]) + bytes([5, 2]) + bytes([4])
con += mem(0x9500, b'{"type":"ready"}\n') + chain(1, [(0x9500, 17, 0, 0)]) + bytes([5, 3])
write("virtio_guest", "console", con)
kbd = bytes([2]) + wreg(0x100, 1) + rreg(0x108) + driver_init(2)
kbd += chain(0, [(0x9000, 8, WRITE, 0)]) + bytes([5, 30]) + bytes([4])
write("virtio_guest", "keyboard", kbd)
tab = bytes([3]) + wreg(0x100, 0x11) + wreg(0x101, 0) + rreg(0x108) + driver_init(2)
tab += chain(0, [(0x9000, 8, WRITE, 0)]) + bytes([5, 9]) + bytes([4])
write("virtio_guest", "tablet", tab)

# --- recording_chunk: a byte (x 1000 ms: the time the chunk may not start before), then a chunk:
# "ATRC" 1 t0:u32, records kind:u8 dt:varint len:varint payload ---
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)

def rec(kind, dt, payload):
    return bytes([kind]) + varint(dt) + varint(len(payload)) + payload

def key(*messages):
    return b"".join(struct.pack("<I", len(m)) + m for m in messages)

head = b"ATRC\x01" + struct.pack("<I", 1500)
fill = bytes([0x10]) + struct.pack("<HHHH", 0, 0, 8, 8) + bytes([1, 2, 3, 255])
resize = bytes([0x02]) + struct.pack("<HH", 1024, 768)
frame_end = bytes([0x1f]) + struct.pack("<II", 1, 0)
write("recording_chunk", "messages", bytes([1]) + head + rec(0, 0, resize) + rec(0, 3, fill) + rec(0, 300, frame_end))
write("recording_chunk", "key_frame", bytes([0]) + head + rec(1, 0, key(resize, fill)) + rec(0, 20000, fill))
write("recording_chunk", "input", bytes([0]) + head + rec(2, 5, bytes([0x81, 1, 0, 0, 0, 1, 0x61, 0, 0, 0, 4]) + b"KeyA"))

