# Device entry point. Says who the device is; host tools then work through the
# agent over the raw REPL (ioconnect.agent).
import gc


def _hello():
    from ioconnect import VERSION, agent

    state = agent._identity_state()
    print("ioconnect", VERSION, "identity:", state.get("did", state["state"]))


try:
    _hello()
except Exception as e:  # a broken identity must not keep the REPL from the user
    print("ioconnect: startup failed:", e)
gc.collect()
