"""The gateway, then the verifier, SIGKILLed and started again while ``omniopd-train`` runs.

Real processes on loopback ports: ``omniopd-gateway`` serving the toy world's tiny teacher with
the ``hf`` provider, ``omniopd-verifier`` on the CPU, and ``omniopd-train`` (method omniopd,
the toy world's student) as users run it. Each service is killed once the trainer has logged
healthy steps, so the kill lands mid-run; it stays down until the trainer has logged a step
whose forks failed, then starts again on the same port. The trainer must ride out both
outages: retry with backoff (its log says so, attempt by attempt), count the forks it lost as
``forks_failed`` (the step then trains on the KL term alone), score forks again once the
service is back, and finish every step with exit code 0.
"""

from __future__ import annotations

import pytest

from .kills import Service, Trainer, omniopd_argv, retry_lines, tiny_world, write_teachers

pytestmark = pytest.mark.slow

MAX_RETRIES = 3
BACKOFF_S = 0.25
# Steps per round of kills (one gateway and one verifier outage): a round takes 10 to 40 steps
# (a failing step sleeps through its retries; a restart takes seconds), so the run is still
# going when the last outage is over.
STEPS_PER_ROUND = 80


def healthy(row: dict) -> bool:
    return row["forks_scored"] > 0 and row["forks_failed"] == 0


def test_trainer_rides_out_gateway_and_verifier_kills(tmp_path_factory, tmp_path, scale, ledger):
    rounds = 3 if scale.full else 1
    steps = STEPS_PER_ROUND * rounds
    world = tiny_world(tmp_path_factory.getbasetemp() / "kills-world")
    gateway = Service.gateway(write_teachers(tmp_path / "teachers.yaml", world))
    verifier = Service.verifier()
    trainer = None
    outages = []
    try:
        gateway.launch()
        verifier.launch()
        gateway.wait_ready()
        verifier.wait_ready()
        out = tmp_path / "run"
        argv = omniopd_argv(
            world, out, gateway=gateway.address, verifier=verifier.address, steps=steps
        )
        argv += ["--max-retries", str(MAX_RETRIES), "--retry-backoff-s", str(BACKOFF_S)]
        argv += ["--save-every", "0", "--request-timeout-s", "30"]
        trainer = Trainer(argv, out)
        trainer.wait_rows(lambda rows: sum(healthy(r) for r in rows) >= 2, "two healthy steps")
        for service in [gateway, verifier] * rounds:
            killed_at = len(trainer.rows())
            service.kill()
            trainer.wait_rows(
                lambda rows, k=killed_at: any(r["forks_failed"] for r in rows[k:]),
                f"a step with failed forks after the {service.name} was killed",
            )
            service.start(model=False)  # the verifier scores lexically before its model loads
            back_at = len(trainer.rows())
            trainer.wait_rows(
                lambda rows, b=back_at: any(healthy(r) for r in rows[b:]),
                f"a healthy step after the {service.name} came back",
            )
            outages.append((service.name, killed_at, back_at))
        code = trainer.wait()
        assert code == 0, trainer.output[-5000:]
    finally:
        for process in (trainer, gateway, verifier):
            if process is not None:
                process.stop()

    rows = trainer.rows()
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    retries = retry_lines(trainer.output)
    for name, killed_at, back_at in outages:
        down = rows[killed_at:back_at]  # the step in flight at the kill, up to the restart
        assert sum(r["forks_failed"] for r in down) > 0, (name, down)
        # A step that lost forks still trained, on the KL term alone.
        assert all(r["loss"] is not None for r in down)
        kind = "teacher_retries" if name == "gateway" else "verifier_retries"
        assert sum(r[kind] for r in down) > 0, (name, kind, down)
        assert any(healthy(r) for r in rows[back_at:]), name
    # Every retry was announced, after a backoff no longer than the policy's cap for its
    # attempt (full jitter: uniform in [0, backoff * 2^attempt]); attempts climb from 1.
    what = {m["what"] for m in retries}
    assert what == {"teacher stream", "verifier call"}, what
    for m in retries:
        n, delay = int(m["n"]), float(m["delay"])
        assert 1 <= n <= MAX_RETRIES == int(m["max"]), m.group(0)
        assert 0 <= delay <= BACKOFF_S * 2 ** (n - 1) + 0.005, m.group(0)
    assert any(int(m["n"]) == MAX_RETRIES for m in retries)  # some ran out: forks failed
    # One line per counted retry: every retry here reopens the stream or repeats a verifier
    # call (a request the gateway answers with a transient error, retried alone and logged at
    # debug level, does not happen: the gateway answers every request it receives).
    total_retries = sum(r["teacher_retries"] + r["verifier_retries"] for r in rows)
    assert len(retries) == total_retries
    assert "fork failed: UNAVAILABLE: " in trainer.output  # the gateway's outage, as gRPC says

    attempted = sum(r["forks_audited"] for r in rows)
    scored = sum(r["forks_scored"] for r in rows)
    failed = sum(r["forks_failed"] for r in rows)
    lost = attempted - scored - failed
    assert lost == 0, (attempted, scored, failed)
    assert rows[-1]["forks_failed"] == 0
    ledger.add(
        "service kills",
        requests=attempted,
        faults_injected=gateway.kills + verifier.kills,
        # Forks scored in a step whose service calls had to be retried: hit a fault, then
        # succeeded.
        recovered=sum(
            r["forks_scored"] for r in rows if r["teacher_retries"] or r["verifier_retries"]
        ),
        failed_alone=failed,
        lost=lost,
        notes={
            "steps": steps,
            "kills": {"gateway": gateway.kills, "verifier": verifier.kills},
            "steps_with_failed_forks": [
                [name, sum(1 for r in rows[k:b] if r["forks_failed"])] for name, k, b in outages
            ],
            "teacher_retries": sum(r["teacher_retries"] for r in rows),
            "verifier_retries": sum(r["verifier_retries"] for r in rows),
            "retry_policy": f"{MAX_RETRIES} retries, backoff {BACKOFF_S} s doubling, full jitter",
        },
    )
