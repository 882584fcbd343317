# What the virtual board knows about itself, read at power-on from the JSON the
# supervisor writes (path in the IOCONNECT_SIM environment variable): the board
# definition, the device name and seed, and the paths of its runtime files.
# Hardware shims (machine, network, ...) read it from here.
import json
import os
import sys
import time

from _simflash import SimFlash

cfg = {}
BANNER = b"MicroPython"
reset_cause = 1  # machine.PWRON_RESET until power_on says otherwise
boot_ms = time.ticks_ms()  # the unix tick counter does not start at boot
flash_fs = None


def _load():
    global cfg, BANNER
    path = os.getenv("IOCONNECT_SIM")
    if path:
        with open(path) as f:
            cfg = json.load(f)
    b = cfg.get("board", {})
    v = sys.implementation.version
    BANNER = "MicroPython v%d.%d.%d on %s; %s with %s" % (
        v[0],
        v[1],
        v[2],
        cfg.get("build_date", "2026-01-01"),
        b.get("board_name", "Virtual board"),
        b.get("mcu_name", "unix"),
    )
    BANNER = BANNER.encode()


def power_on(flash, soft):
    # Shims must be imported before the flash is mounted over "/": after that,
    # the VM sees only the device's own files, as a board does.
    global reset_cause
    _load()
    reset_cause = int(os.getenv("IOCONNECT_RESET_CAUSE", "1"))
    global _faults_file
    if cfg.get("faults_path"):
        _faults_file = open(cfg["faults_path"])
    for name in cfg.get("preload", ()):
        __import__(name)
    fs = cfg.get("board", {}).get("filesystem", {})
    global flash_fs
    flash_fs = SimFlash(flash, fs.get("size", 1 << 20), fs.get("block_size", 4096), faults)
    os.umount("/")
    os.mount(flash_fs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.modules.pop("__main__", None)


_faults_file = None
_faults = {}


def faults():
    # Faults set from the host (supervisor.VirtualBoard.set_fault), re-read on
    # every call through a file opened before the flash hid the host's folders.
    global _faults
    if _faults_file is None:
        return _faults
    _faults_file.seek(0)
    text = _faults_file.read().strip()
    if text:
        try:
            _faults = json.loads(text)
        except ValueError:
            pass  # caught mid-write: keep the last complete state
    return _faults


def ctl(msg):
    # A line to the supervisor on stderr (the console itself only uses stdout).
    sys.stderr.write("\x1b[ioc " + msg + "\n")
