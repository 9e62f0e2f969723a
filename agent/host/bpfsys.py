"""Raw bpf(2): map I/O, pins, object info, and the tc entry programs.

bcc compiles the policy program; everything after that goes straight to the
syscall, so that adopting a pinned datapath needs neither clang nor bcc
state. Used by the ``agent/host/bpf*.py`` modules through the public names
below; syscall numbers and attribute layouts stay private here.

Failures surface as ``OSError`` carrying the kernel's errno, except
"no such key" on lookups and deletes, which is an answer (``None``/``False``);
callers name errors through ``agent/host/errnos.py``.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from nicwarden.agent.errors import HostError, InvalidArgument
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction

# -- raw bpf(2) ------------------------------------------------------------------
# bcc compiles; everything after that (map I/O, pins, trampolines) goes
# straight to the syscall so that adoption needs neither clang nor bcc state.

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_PROG_LOAD = 5
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_ANY = 0
_BPF_PROG_TYPE_SCHED_CLS = 3
_BPF_FUNC_TAIL_CALL = 12
_BPF_PSEUDO_MAP_FD = 1
_TC_ACT_SHOT = 2
_SKB_CB_OFFSET = 48  # offsetof(struct __sk_buff, cb[0]) (uapi, stable)
_SKB_TC_CLASSID_OFFSET = 72  # offsetof(struct __sk_buff, tc_classid)

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _MapElemAttr(ct.Structure):
    _fields_ = [
        ("map_fd", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("key", ct.c_uint64),
        ("value", ct.c_uint64),  # also next_key
        ("flags", ct.c_uint64),
    ]


class _ObjAttr(ct.Structure):
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


class _ProgLoadAttr(ct.Structure):
    _fields_ = [
        ("prog_type", ct.c_uint32),
        ("insn_cnt", ct.c_uint32),
        ("insns", ct.c_uint64),
        ("license", ct.c_uint64),
        ("log_level", ct.c_uint32),
        ("log_size", ct.c_uint32),
        ("log_buf", ct.c_uint64),
        ("kern_version", ct.c_uint32),
        ("prog_flags", ct.c_uint32),
        ("prog_name", ct.c_char * 16),
    ]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class MapInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class ProgInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
    ]


def _sys_bpf(cmd: int, attr: ct.Structure) -> int:
    ret = int(_libc.syscall(_NR_BPF, cmd, ct.byref(attr), ct.sizeof(attr)))
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def obj_get(path: Path) -> int:
    raw = ct.create_string_buffer(os.fsencode(path))
    return _sys_bpf(_BPF_OBJ_GET, _ObjAttr(pathname=ct.addressof(raw)))


def obj_pin(fd: int, path: Path) -> None:
    raw = ct.create_string_buffer(os.fsencode(path))
    _sys_bpf(_BPF_OBJ_PIN, _ObjAttr(pathname=ct.addressof(raw), bpf_fd=fd))


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _sys_bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)),
    )
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    _sys_bpf(
        _BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)),
    )
    return info


def possible_cpus() -> int:
    """Per-CPU map values carry one slot per *possible* CPU (not online)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


K = TypeVar("K", bound=ct.Structure)
V = TypeVar("V", bound=ct.Structure)


class Map(Generic[K, V]):
    """A pinned map opened by fd, with ctypes keys and values."""

    def __init__(
        self, spec: L.MapSpec, fd: int, key_t: type[K], value_t: type[V], percpu: int = 0
    ) -> None:
        self.spec = spec
        self.fd = fd
        self.key_t = key_t
        self.value_t = value_t
        self.percpu = percpu  # number of per-CPU slots, 0 if not per-CPU
        vsize = ct.sizeof(value_t)
        self._slot = (vsize + 7) & ~7  # per-CPU slots are 8-byte aligned
        self._vbuf_size = self._slot * percpu if percpu else vsize

    def _attr(
        self,
        key: ct.Structure | None,
        value: ct.Array[ct.c_char] | ct.Structure | None,
        flags: int = 0,
    ) -> _MapElemAttr:
        return _MapElemAttr(
            map_fd=self.fd,
            key=ct.addressof(key) if key is not None else 0,
            value=ct.addressof(value) if value is not None else 0,
            flags=flags,
        )

    def lookup(self, key: K) -> V | None:
        if self.percpu:
            raise TypeError("use lookup_percpu on a per-CPU map")
        value = self.value_t()
        try:
            _sys_bpf(_BPF_MAP_LOOKUP_ELEM, self._attr(key, value))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return value

    def lookup_percpu(self, key: K) -> list[V] | None:
        buf = ct.create_string_buffer(self._vbuf_size)
        try:
            _sys_bpf(_BPF_MAP_LOOKUP_ELEM, self._attr(key, buf))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        raw = buf.raw
        return [self.value_t.from_buffer_copy(raw, i * self._slot) for i in range(self.percpu)]

    def update(self, key: K, value: V, flags: int = _BPF_ANY) -> None:
        if self.percpu:
            buf = ct.create_string_buffer(self._vbuf_size)
            for i in range(self.percpu):
                ct.memmove(
                    ct.addressof(buf) + i * self._slot, ct.addressof(value), ct.sizeof(value)
                )
            _sys_bpf(_BPF_MAP_UPDATE_ELEM, self._attr(key, buf, flags))
        else:
            _sys_bpf(_BPF_MAP_UPDATE_ELEM, self._attr(key, value, flags))

    def delete(self, key: K) -> bool:
        try:
            _sys_bpf(_BPF_MAP_DELETE_ELEM, self._attr(key, None))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def iter_keys(self) -> Iterator[K]:
        """Every key. Not a snapshot: concurrent writers may add or drop keys."""
        cur: K | None = None
        while True:
            nxt = self.key_t()
            attr = _MapElemAttr(
                map_fd=self.fd,
                key=ct.addressof(cur) if cur is not None else 0,
                value=ct.addressof(nxt),
            )
            try:
                _sys_bpf(_BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            yield nxt
            cur = nxt

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class U32(ct.Structure):
    _fields_ = [("v", ct.c_uint32)]


class U64(ct.Structure):
    _fields_ = [("v", ct.c_uint64)]


# -- entry programs and trampolines ----------------------------------------------


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _to_policy(direction: Direction, progs_fd: int) -> list[bytes]:
    """r2 (the interface key) to cb[0], the direction to cb[1], tail-call
    nw_progs[0]. Stores go through a register: the verifier rejects
    immediate stores (BPF_ST) into the context."""
    return [
        _insn(0x63, dst=1, src=2, off=_SKB_CB_OFFSET),  # skb->cb[0] = r2     (stx w)
        _insn(0xB7, dst=2, imm=int(direction)),  # r2 = dir              (mov64 imm)
        _insn(0x63, dst=1, src=2, off=_SKB_CB_OFFSET + 4),  # skb->cb[1] = r2
        _insn(0x18, dst=2, src=_BPF_PSEUDO_MAP_FD, imm=progs_fd),  # r2 = &nw_progs (ld_imm64)
        _insn(0x00),
        _insn(0xB7, dst=3, imm=0),  # r3 = 0 (slot)
        _insn(0x85, imm=_BPF_FUNC_TAIL_CALL),  # tail call; returns only on failure
    ]


# Where a failed tail call (an empty slot) or a missing key ends: fail closed.
_DROP = [_insn(0xB7, dst=0, imm=_TC_ACT_SHOT), _insn(0x95)]  # r0 = TC_ACT_SHOT; exit


def trampoline_insns(iface_id: int, direction: Direction, progs_fd: int) -> bytes:
    """The per-interface entry: cb[0] = iface, cb[1] = dir, tail-call nw_progs[0].

    Hand-assembled because it is nine instructions and must be loaded per
    interface without a compiler."""
    if not 0 < iface_id <= 0x7FFFFFFF:
        raise InvalidArgument(f"interface key {iface_id} out of range")
    key = _insn(0xB7, dst=2, imm=iface_id)  # r2 = iface
    return b"".join([key, *_to_policy(direction, progs_fd), *_DROP])


def entry_insns(direction: Direction, progs_fd: int) -> bytes:
    """The entry shared by every interface of one direction: cb[0] = the
    filter's classid (cls_bpf stores its low 16 bits in the skb before it
    runs the program), cb[1] = dir, tail-call nw_progs[0]. A classid of 0
    (a filter without one) names no interface: fail closed."""
    body = _to_policy(direction, progs_fd)
    return b"".join(
        [
            _insn(0x61, dst=2, src=1, off=_SKB_TC_CLASSID_OFFSET),  # r2 = skb->tc_classid
            _insn(0x15, dst=2, off=len(body), imm=0),  # if r2 == 0 goto drop  (jeq imm)
            *body,
            *_DROP,
        ]
    )


def load_entry(direction: Direction, progs_fd: int) -> int:
    name = f"nw_entry_{'i' if direction is Direction.INGRESS else 'e'}"
    return load_sched_cls(entry_insns(direction, progs_fd), name)


def load_sched_cls(code: bytes, name: str) -> int:
    """Load a tc (``SCHED_CLS``) program from raw instructions; returns its fd.
    A verifier refusal is a HostError carrying the verifier's log."""
    if not code or len(code) % 8:
        raise InvalidArgument(f"program {name}: {len(code)} bytes is not whole instructions")
    insns = ct.create_string_buffer(code, len(code))
    lic = ct.create_string_buffer(b"GPL")
    logbuf = ct.create_string_buffer(4096)
    attr = _ProgLoadAttr(
        prog_type=_BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt=len(code) // 8,
        insns=ct.addressof(insns),
        license=ct.addressof(lic),
        log_level=1,
        log_size=len(logbuf),
        log_buf=ct.addressof(logbuf),
        prog_name=name.encode()[:15],
    )
    try:
        return _sys_bpf(_BPF_PROG_LOAD, attr)
    except OSError as e:
        raise HostError(
            f"loading program {name} failed: {e.strerror}",
            logbuf.value.decode(errors="replace"),
        ) from e


def load_trampoline(iface_id: int, direction: Direction, progs_fd: int) -> int:
    code = trampoline_insns(iface_id, direction, progs_fd)
    name = f"nw_{iface_id:x}_{'i' if direction is Direction.INGRESS else 'e'}"
    return load_sched_cls(code, name)
