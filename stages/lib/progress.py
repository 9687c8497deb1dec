"""Progress lines for long work: counts, elapsed time and an estimate of what is left.

Plain lines, at most one per tenth of the work or per 30 s, so a log file stays readable (no
carriage-return redraws).
"""
import time


class Progress:
    def __init__(self, what, total, unit="pairs", every_seconds=30.0):
        self.what, self.total, self.unit, self.every_seconds = what, total, unit, every_seconds
        self.done, self.started = 0, time.perf_counter()
        self.last_print, self.last_share = self.started, 0.0

    def advance(self, n):
        self.done = min(self.total, self.done + n)
        now = time.perf_counter()
        share = self.done / self.total
        if self.done == self.total or share - self.last_share >= 0.1 or now - self.last_print >= self.every_seconds:
            elapsed = now - self.started
            left = elapsed * (self.total - self.done) / self.done
            print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({100 * share:.0f} %), {elapsed:.0f} s, "
                  f"about {left:.0f} s left", flush=True)
            self.last_print, self.last_share = now, share
