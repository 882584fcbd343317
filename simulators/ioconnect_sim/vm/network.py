# network, as the virtual board's firmware sees it: WLAN station and access
# point. Only boards with Wi-Fi have it (the supervisor preloads it there);
# elsewhere `import network` fails as on a Pico.
#
# The link follows the host's fault switch: set_fault(wifi="down") drops it
# (isconnected() False, status() the port's "AP lost" code); when "up" again a
# station that was asked to connect rejoins by itself, as the esp32 port's
# default reconnects=-1 does. Joining takes _JOIN_MS, as a DHCP lease does.
# Sockets (socket.py beside this file) follow the link.
import time

import _sensors as _s
import _simboard as _b

_board = _s.board
if _board.get("network") != "wifi":
    raise ImportError("no module named 'network'")

_ESP = _board.get("port") == "esp32"
_JOIN_MS = 300

STA_IF = 0
AP_IF = 1
AUTH_OPEN = 0
AUTH_WPA2_PSK = 3
if _ESP:  # ports/esp32/network_wlan.c
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_BEACON_TIMEOUT = 200
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_ASSOC_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204
    _LOST = 200
else:  # CYW43 link states (ports/rp2 via extmod/network_cyw43.c)
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_GOT_IP = 3
    STAT_CONNECT_FAIL = -1
    STAT_NO_AP_FOUND = -2
    STAT_WRONG_PASSWORD = -3
    _LOST = -2

_host = ["mpy-esp32" if _ESP else "PicoW"]  # MICROPY_PY_NETWORK_HOSTNAME_DEFAULT
_country = ["XX"]


def hostname(name=None):
    if name is None:
        return _host[0]
    _host[0] = name


def country(code=None):
    if code is None:
        return _country[0]
    _country[0] = code


def _down():
    return _b.faults().get("wifi") == "down"


def _mac(iface):
    oui = bytes(int(x, 16) for x in _board.get("mac_oui", "02:00:00").split(":"))
    m = bytearray(oui + _s.digest("mac")[:3])
    if iface == AP_IF:
        m[5] = (m[5] + 1) & 0xFF  # esp32: softAP MAC = base MAC + 1
    return bytes(m)


def _ip():
    return "192.168.4.%d" % (2 + _s.digest("ip")[0] % 250)


class _State:
    def __init__(self):
        self.active = False
        self.want = False  # connect() called and not disconnect()
        self.ssid = ""
        self.fail = 0  # status code of a join that cannot succeed
        self.since = None  # ticks_ms when the link came (back) up


_states = [_State(), _State()]


class WLAN:
    IF_STA = 0
    IF_AP = 1
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        self._st = _states[interface_id]

    def active(self, is_active=None):
        if is_active is None:
            return self._st.active
        self._st.active = bool(is_active)
        if not is_active:
            self._st.want = False

    def connect(self, ssid=None, key=None, *, bssid=None):
        st = self._st
        if not st.active:
            if _ESP:
                raise OSError("Wifi Not Started")
            st.active = True  # cyw43 powers the radio up on connect
        nets = _b.cfg.get("wifi")  # {ssid: key} when the host describes the air
        st.fail = 0
        if nets is not None and ssid not in nets:
            st.fail = STAT_NO_AP_FOUND
        elif nets is not None and nets[ssid] != (key or ""):
            st.fail = STAT_WRONG_PASSWORD
        st.ssid = ssid or ""
        st.want = True
        st.since = time.ticks_ms()

    def disconnect(self):
        self._st.want = False

    def status(self, param=None):
        st = self._st
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA is not connected")
            return -55 - _s.digest("rssi")[0] % 20
        if param is not None:
            raise ValueError("unknown status param")
        if not (st.active and st.want):
            return STAT_IDLE
        if st.fail:
            return st.fail
        if _down():
            st.since = None
            return _LOST
        if st.since is None:
            st.since = time.ticks_ms()  # the AP is back: rejoin
        if time.ticks_diff(time.ticks_ms(), st.since) < _JOIN_MS:
            return STAT_CONNECTING
        return STAT_GOT_IP

    def isconnected(self):
        if self._if == AP_IF:
            return False  # no station ever joins the virtual AP
        return self.status() == STAT_GOT_IP

    def ifconfig(self, config=None):
        if config is not None:
            return None
        if self._if == AP_IF and self._st.active:
            return ("192.168.4.1", "255.255.255.0", "192.168.4.1", "0.0.0.0")
        if self.isconnected():
            return (_ip(), "255.255.255.0", "192.168.4.1", "192.168.4.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def ipconfig(self, key=None, **kw):
        c = self.ifconfig()
        if key == "addr4":
            return (c[0], c[1])
        if key == "gw4":
            return c[2]
        if key == "dhcp4":
            return True
        if key is not None:
            raise ValueError("unexpected key")

    def config(self, *args, **kw):
        if kw:
            if "hostname" in kw or "dhcp_hostname" in kw:
                hostname(kw.get("hostname", kw.get("dhcp_hostname")))
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        p = args[0]
        if p == "mac":
            return _mac(self._if)
        if p in ("ssid", "essid"):
            return self._st.ssid
        if p in ("hostname", "dhcp_hostname"):
            return hostname()
        if p == "channel":
            return 6
        if p == "txpower":
            return 20
        if p == "reconnects":
            return -1
        if p == "pm":
            return WLAN.PM_NONE
        raise ValueError("unknown config param")

    def scan(self):
        if not self._st.active or _down():
            return []
        nets = _b.cfg.get("wifi") or {"ioconnect-sim": ""}
        out = []
        for i, ssid in enumerate(sorted(nets)):
            auth = AUTH_WPA2_PSK if nets[ssid] else AUTH_OPEN
            out.append(
                (ssid.encode(), _s.digest("ap" + ssid)[:6], 1 + i % 11, -50 - i, auth, False)
            )
        return out
