"""Progress lines for long work: counts, elapsed time and an estimate of what is left.

Plain lines, at most one per tenth of the work or per 30 s, so a log file stays readable (no
carriage-return redraws).
"""
import time


class Progress:
    def __init__(self, what, total, unit="pairs", every_seconds=30.0, done=0):
        self.what, self.total, self.unit, self.every_seconds = what, total, unit, every_seconds
        self.done = self.first = done
        self.started = time.perf_counter()
        self.last_print, self.last_share = self.started, done / total

    def advance(self, n, note=""):
        self.update(self.done + n, note)

    def update(self, done, note=""):
        """`done` of the total so far (a resumed run starts past 0); `note` is added to a printed line."""
        self.done = min(self.total, done)
        now = time.perf_counter()
        share = self.done / self.total
        if self.done == self.total or share - self.last_share >= 0.1 or now - self.last_print >= self.every_seconds:
            elapsed = now - self.started
            left = elapsed * (self.total - self.done) / max(1, self.done - self.first)
            print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({100 * share:.0f} %), {note + ', ' if note else ''}"
                  f"{elapsed:.0f} s, about {left:.0f} s left", flush=True)
            self.last_print, self.last_share = now, share


def cpu_hint(stage, pairs, cpu_pairs=2000):
    """On a CPU with a full-size slice, say how to get a run that ends in minutes."""
    import torch

    if not torch.cuda.is_available() and pairs > cpu_pairs:
        print(f"{stage}: hint: {pairs:,} pairs on a CPU take hours; `make quick` runs all five stages on small "
              "slices in minutes (README: Run it)", flush=True)
