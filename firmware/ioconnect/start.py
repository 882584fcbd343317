# Boot hook of main.py: run the attestation loop (ioconnect.app) if the device
# is provisioned (identity + w3bstream.project_id). Kept apart and small: an
# unprovisioned board must not load the loop's code, whose interned names stay
# in RAM for good and split the heap that identity.create needs whole.
import os


def provisioned():
    import json

    try:
        os.stat("identity.key")
        with open("config.json") as f:
            return bool(json.load(f).get("w3bstream.project_id"))
    except (OSError, ValueError, AttributeError):
        return False


def main():
    # Returns when the loop stops (Ctrl-C) or at once when not provisioned.
    try:
        if provisioned():
            from ioconnect import app

            app.run()
    except KeyboardInterrupt:
        pass  # a host took the console: the REPL is next
