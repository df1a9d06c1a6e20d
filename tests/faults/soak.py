"""The soak: the gateway process under steady load for a while, with a canary ramp and a rollback in
the middle, its resident memory and open file descriptors sampled every second.
Shared by tests/faults/test_soak.py (60 s in `make test`) and benchmarks/fault_table.py.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from serving.rollout import GatewayAdminClient
from tests.faults.processes import Answer, Gateway, Load
from tests.faults.scenarios import POLICY_VERSIONS, FaultRow, LoggedAnswers, logged_requests
from tests.fixtures.polling import poll_until
from tests.serving.gateway.helpers import ADMIN_TOKEN, CANARY_VERSION, MODEL, STABLE_VERSION, real_trips, write_model_config

# (fraction of the soak, what the operator does): a ramp, a rollback in the middle, a second ramp.
STEPS = ((0.15, "canary 10 %"), (0.3, "share 25 %"), (0.45, "share 50 %"), (0.5, "rollback"),
         (0.65, "canary 10 %"), (0.8, "share 50 %"))
WARM_UP_FRACTION = 0.1
RECENT_REQUESTS = 5_000  # a few seconds of this load


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@dataclasses.dataclass
class Soak(LoggedAnswers):
    seconds: float
    answers: list[Answer]
    samples: list[tuple[float, int, int]]  # (seconds since start, RSS KiB, open fds), after the warm-up
    actions: list[str]
    logged: dict[str, list[int]]

    @property
    def rss_growth_mib(self) -> float:
        return (max(s[1] for s in self.samples) - self.samples[0][1]) / 1024

    @property
    def fd_growth(self) -> int:
        return self.samples[-1][2] - self.samples[0][2]

    def rss_trend(self, points: int = 10) -> str:
        """Resident memory at `points` moments spread over the sampled time: flat, settling or growing."""
        step = max(1, len(self.samples) // points)
        return ", ".join(f"{t:.0f} s {kib / 1024:.0f}" for t, kib, _ in [*self.samples[::step], self.samples[-1]]) + " MiB"

    def p99_ms(self, half: int) -> float:
        ok = [a for a in self.answers if a.status == 200]
        middle = ok[0].sent_at + self.seconds / 2
        chosen = sorted(a.latency_s for a in ok if (a.sent_at < middle) == (half == 0))
        return chosen[int(0.99 * (len(chosen) - 1))] * 1000 if chosen else float("nan")

    def row(self) -> FaultRow:
        answered = self.answered
        return FaultRow(
            f"soak {self.seconds:.0f} s, 4 clients, canary ramp + rollback + ramp", "; ".join(self.actions),
            len(self.answers), len(answered), len(answered) - len(self.lost), len(self.lost), None,
            f"RSS +{self.rss_growth_mib:.1f} MiB at most after the warm-up ({self.rss_trend()}); open fds "
            f"{self.samples[0][2]} -> {self.samples[-1][2]}; p99 {self.p99_ms(0):.1f} ms then {self.p99_ms(1):.1f} ms")


def soak(model_server: Any, model_root: Path, work: Path, *, seconds: float = 60.0) -> Soak:
    work.mkdir(parents=True, exist_ok=True)
    config = write_model_config(work / "models.config", model_root, served=[STABLE_VERSION, CANARY_VERSION],
                                stable=STABLE_VERSION, canary=None)
    # The gateway keeps, by design, the last `recent_requests` request ids (the feedback hint) and
    # `stats_max_window_s` of outcomes per label (the rollout's evidence): bounded, but the defaults
    # (200,000 ids, 1 h) hold ~380 B per request and take longer than 10 minutes of this load to fill
    # (~75 MiB by then), growth a leak check cannot tell from a leak. Caps that fill within the
    # warm-up leave only a leak to see.
    caps = {"MLOPS_GATEWAY_RECENT_REQUESTS": str(RECENT_REQUESTS),
            "MLOPS_GATEWAY_STATS_MAX_WINDOW_S": str(max(1.0, WARM_UP_FRACTION * seconds))}
    gateway = Gateway(model_server, config, work / "logs", work / "state.json", work / "gateway.stderr", env=caps)
    admin = GatewayAdminClient(gateway.url, ADMIN_TOKEN)
    do = {"canary 10 %": lambda: admin.set_canary(MODEL, CANARY_VERSION, 0.1),
          "share 25 %": lambda: admin.set_share(MODEL, 0.25), "share 50 %": lambda: admin.set_share(MODEL, 0.5),
          "rollback": lambda: admin.rollback(MODEL)}
    samples, actions = [], []
    pid = gateway.process.pid
    try:
        with Load(gateway.url, real_trips(3), clients=4, prefix="soak") as load:
            poll_until(lambda: load.count() >= 1, "a first answer", timeout=60, interval=0.01)
            started = time.monotonic()
            pending = list(STEPS)
            while (elapsed := time.monotonic() - started) < seconds:
                while pending and elapsed >= pending[0][0] * seconds:
                    _, action = pending.pop(0)
                    do[action]()
                    actions.append(f"{action} at {elapsed:.0f} s")
                if elapsed >= WARM_UP_FRACTION * seconds:
                    samples.append((elapsed, _rss_kib(pid), _open_fds(pid)))
                time.sleep(1.0)
        samples.append((time.monotonic() - started, _rss_kib(pid), _open_fds(pid)))
    finally:
        assert gateway.stop() == 0, "the gateway did not stop cleanly"
    return Soak(seconds, load.snapshot(), samples, actions, logged_requests(work / "logs"))


def wrong_versions(outcome: Soak) -> list[Answer]:
    return [a for a in outcome.answers if a.status == 200 and POLICY_VERSIONS.get(a.label) != a.version]
