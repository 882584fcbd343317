"""MicroPython source shared by the benchmarks that time device code on the VM."""

# best_us(f, n): microseconds per call of f, the best of ROUNDS rounds of n calls
# (the script sets ROUNDS first); a collection before each round keeps the
# collector's pauses out of the figure.
BEST_US = """
def best_us(f, n):
    b = None
    for _ in range(ROUNDS):
        gc.collect()
        t = time.ticks_us()
        for _ in range(n):
            f()
        us = time.ticks_diff(time.ticks_us(), t) / n
        b = us if b is None or us < b else b
    return round(b, 1)
"""
