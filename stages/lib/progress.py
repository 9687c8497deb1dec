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
        self.last_print, self.last_share, self.printed = self.started, done / total, 0

    def advance(self, n, note=""):
        self.update(self.done + n, note)

    def update(self, done, note=""):
        """`done` of the total so far (a resumed run starts past 0); `note` is added to a printed line."""
        self.done = min(self.total, done)
        now = time.perf_counter()
        share = self.done / self.total
        # The first update prints at once: its estimate tells a user early how long the work will take.
        due = self.printed == 0 or share - self.last_share >= 0.1 or now - self.last_print >= self.every_seconds
        if due or self.done == self.total:
            elapsed = now - self.started
            left = elapsed * (self.total - self.done) / max(1, self.done - self.first)
            noted = f"{note}, " if note else ""
            print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({100 * share:.0f} %), {noted}"
                  f"{elapsed:.0f} s, about {left:.0f} s left", flush=True)
            self.last_print, self.last_share, self.printed = now, share, self.printed + 1


def cpu_hint(stage, pairs, cpu_pairs=2000):
    """On a CPU with a full-size slice, say how to get a run that ends in minutes."""
    import torch

    if not torch.cuda.is_available() and pairs > cpu_pairs:
        print(f"{stage}: hint: {pairs:,} pairs on a CPU take hours; `make quick` runs all five stages on small "
              "slices in minutes (README: Run it)", flush=True)
