# What the virtual board knows about itself, read at power-on from the JSON the
# supervisor writes (path in the IOCONNECT_SIM environment variable): the board
# definition, the device name and seed, and the paths of its runtime files.
# Hardware shims (machine, network, ...) read it from here.
import json
import os
import sys

from _simflash import SimFlash

cfg = {}
BANNER = b"MicroPython"
reset_cause = 1  # machine.PWRON_RESET until power_on says otherwise
flash_fs = None
uname = None  # os.uname() of the board's port, made by _load()
machine = "unix"  # "<board name> with <MCU name>", as the port's C code spells it
platform = "linux"  # sys.platform of the board's port


class _AttrTuple(tuple):
    # The ports' attrtuple (os.uname(), sys.implementation): a tuple whose
    # fields also read as attributes, printed as "(name=value, ...)".
    _fields = ()

    def __getattr__(self, name):
        if name in self._fields:
            return self[self._fields.index(name)]
        raise AttributeError("'tuple' object has no attribute '%s'" % name)

    def __repr__(self):
        return "(%s)" % ", ".join("%s=%r" % kv for kv in zip(self._fields, self))

    __str__ = __repr__


class Uname(_AttrTuple):
    _fields = ("sysname", "nodename", "release", "version", "machine")


class Implementation(_AttrTuple):
    _fields = ("name", "version", "_machine", "_mpy", "_build", "_thread")


def _load():
    global cfg, BANNER, uname, machine, platform
    path = os.getenv("IOCONNECT_SIM")
    if path:
        with open(path) as f:
            cfg = json.load(f)
    b = cfg.get("board", {})
    v = sys.implementation.version
    release = "%d.%d.%d" % (v[0], v[1], v[2])
    version = "v%s on %s" % (release, cfg.get("build_date", "2026-01-01"))
    machine = "%s with %s" % (b.get("board_name", "Virtual board"), b.get("mcu_name", "unix"))
    platform = b.get("platform", "linux")
    # extmod/modos.c: sysname and nodename are both MICROPY_PY_SYS_PLATFORM.
    uname = Uname((platform, platform, release, version, machine))
    BANNER = ("MicroPython %s; %s" % (version, machine)).encode()


def power_on(flash, soft):
    # Shims must be imported before the flash is mounted over "/": after that,
    # the VM sees only the device's own files, as a board does.
    global reset_cause
    _load()
    import _sys  # noqa: F401 - from now on `import sys` gives the board's sys
    import time

    # ticks_cpu: esp32 counts CPU cycles, rp2 microseconds (time_us_32).
    if cfg.get("board", {}).get("port") == "esp32":
        time._cpu_per_us = cfg["board"].get("cpu_freq_hz", 160000000) // 1000000
    reset_cause = int(os.getenv("IOCONNECT_RESET_CAUSE", "1"))
    global _faults_file
    if cfg.get("faults_path"):
        _faults_file = open(cfg["faults_path"])
        # faults() reads into these: allocated now, with the shims (counted as
        # the board's C code), not on the firmware's heap mid-request.
        global _faults_buf, _faults_new
        _faults_buf = bytearray(1024)
        _faults_new = bytearray(1024)
    for name in cfg.get("preload", ()):
        __import__(name)
    fs = cfg.get("board", {}).get("filesystem", {})
    global flash_fs
    image = cfg.get("flash_image")
    if image:  # something was flashed: mount the littlefs partition of that flash
        import _flashbd

        flash_fs = _flashbd.mount(image, faults)
    else:
        flash_fs = SimFlash(flash, fs.get("size", 1 << 20), fs.get("block_size", 4096), faults)
    os.umount("/")
    os.mount(flash_fs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.modules.pop("__main__", None)
    _open_qstr_pool()


def _open_qstr_pool():
    # The VM keeps the console's and shims' names in heap pools that double in
    # size. A board has its port's names in flash, so its firmware never pays for
    # the pool that comes after the shims' last one; here the firmware's first
    # name past that pool's end would cost it several KB, at a point that moves
    # whenever a shim gains a name. Open that pool now, with the console: the
    # firmware's names then go into it, whatever the shims hold.
    import gc

    gc.collect()
    last = gc.mem_alloc()
    for i in range(4096):
        hasattr(cfg, "_q%d" % i)  # interns the name
        now = gc.mem_alloc()
        if now - last > 1024:  # a new pool, not a name or a string chunk
            break
        last = now
    gc.collect()


_faults_file = None
_faults = {}


_faults_buf = None  # the file's last bytes: parsed again only when they change
_faults_new = None


def faults():
    # Faults set from the host (supervisor.VirtualBoard.set_fault), re-read on
    # every call through a file opened before the flash hid the host's folders.
    # Read into two preallocated buffers: this runs on every flash write and
    # sensor access, in the firmware's heap, which a board's own C code would
    # not touch (a fresh 1.3 KB string per call split the 96 KB heap).
    global _faults, _faults_buf, _faults_new
    if _faults_file is None:
        return _faults
    if _faults_buf is None:  # a VM started without power_on (tests)
        _faults_buf = bytearray(1024)
        _faults_new = bytearray(1024)
    _faults_file.seek(0)
    n = _faults_file.readinto(_faults_new)
    if n == len(_faults_buf) and _faults_new == _faults_buf:
        return _faults
    _faults_buf, _faults_new = _faults_new, _faults_buf
    text = bytes(memoryview(_faults_buf)[:n]).strip()
    if text:
        try:
            _faults = json.loads(text)
        except ValueError:
            pass  # caught mid-write: keep the last complete state
    return _faults


def ctl(msg):
    # A line to the supervisor on stderr (the console itself only uses stdout).
    sys.stderr.write("\x1b[ioc " + msg + "\n")
