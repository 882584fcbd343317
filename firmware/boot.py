# Runs on every boot, before main.py. Kept minimal: a fault here leaves the board
# without its REPL on some ports.
import gc

gc.collect()
