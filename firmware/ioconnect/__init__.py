# ioconnect device library. Modules are imported one by one (ioconnect.keccak,
# ioconnect.ecdsa, ...) so a board only pays RAM for what it uses.
VERSION = "0.1.0"
