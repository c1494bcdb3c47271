"""The atheris (libFuzzer) targets in tests/reliability/fuzz/, run briefly:
each for FUZZ_SECONDS in a child process, from a seed corpus of real
sessions. The run must end without a crash (libFuzzer exits non-zero and
leaves a crash-* file on an escaping exception or a failed check) and must
have tried inputs. Longer runs: tests/reliability/fuzz/README.md.
MAILFERRY_ATHERIS_SECONDS=N changes the time per target, MAILFERRY_ATHERIS_SEED=N
the libFuzzer seed (1 by default, 0 for a random one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
FUZZ_SECONDS = int(os.environ.get("MAILFERRY_ATHERIS_SECONDS", "5"))
# A fixed libFuzzer seed, so that a run in CI tries the same inputs in the same
# order each time: a failure is reproducible, and a bug is found by a long run
# (tests/reliability/fuzz/README.md) rather than by chance in CI.
# MAILFERRY_ATHERIS_SEED=0 lets libFuzzer pick one.
FUZZ_SEED = int(os.environ.get("MAILFERRY_ATHERIS_SEED", "1"))

SEEDS = {
    "fuzz_smtp_server.py": [
        # settings and decision bytes first (see the target), then the session
        b"\x00\x00\x00\x00\x02\x02\x02\x02\x40EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@mx.example>\r\nDATA\r\nSubject: x\r\n\r\n..body\r\n.\r\nQUIT\r\n",
        b"\xff\x03\x10\x00\x01\x02\x00\x03\x20EHLO x\r\nAUTH PLAIN\r\nAHUAcA==\r\nBDAT 3 LAST\r\nabcRSET\r\n",
        b"\x01\x00\x00\x00\x02\x02\x02\x02\x40EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\n.\nMAIL"
        b" FROM:<e@f>\r\n.\r\n",
    ],
    "fuzz_address.py": [b"\x00<user@example.com>", b"\x01<\"a b\"@[IPv6:::1]>", b"\x06<@a,@b:c@d>",
                        # a crash the target found in CI: <@UUUUU:@U@UUUU> read back as a route
                        b"@UUUUU:@U@UUUU:"],
}


@pytest.mark.parametrize("target", sorted(SEEDS))
def test_fuzz_target_runs_without_a_crash(target, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, seed in enumerate(SEEDS[target]):
        (corpus / f"seed-{number}").write_bytes(seed)
    command = [sys.executable, str(FUZZ_DIR / target), f"-max_total_time={FUZZ_SECONDS}",
               f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", f"-seed={FUZZ_SEED}", str(corpus)]
    if target == "fuzz_smtp_server.py":
        # a session needs room: libFuzzer would otherwise start from inputs of a few bytes
        command[2:2] = [f"-dict={FUZZ_DIR / 'smtp.dict'}", "-max_len=4096"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120,
                         cwd=tmp_path, env={**os.environ, "PYTHONHASHSEED": "0"})
    tail = run.stderr[-4000:]
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, f"{target} found a crash {crashes}:\n{tail}"
    done = re.search(r"^Done (\d+) runs", run.stderr, re.MULTILINE)
    assert done, f"{target}: libFuzzer did not report its runs:\n{tail}"
    runs = int(done.group(1))
    seed = re.search(r"INFO: Seed: (\d+)", run.stderr)
    print(f"\natheris {target}: {runs} inputs in {FUZZ_SECONDS} s (libFuzzer -seed={seed.group(1) if seed else '?'})")
    assert runs > 100, f"{target} tried only {runs} inputs:\n{tail}"
