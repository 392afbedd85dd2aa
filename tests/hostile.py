"""Run `lutlm` command lines as an attacker or a careless user would, each bounded in time and memory.

The fuzz suites hand a batch of cases to one child process (this file run as a script), which
imports lutlm once and then forks one grandchild per case. Each grandchild runs `lutlm.cli.main`
under an address-space limit, with stdin closed and its own working folder, and is killed at its
time limit; the child reports each case's exit status, output, wall time and peak resident memory.
Forking from an interpreter that has already imported numpy keeps a case at milliseconds, so a
suite can afford hundreds of them, and a case that hangs or explodes cannot take pytest with it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEMORY_LIMIT = 2 << 30  # bytes of address space a case may add to the forking interpreter's
TIME_LIMIT = 30.0  # seconds a case may run before it is killed (and fails)


@dataclass
class Result:
    argv: list[str]
    status: int | None  # exit status; None if killed at the time limit
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float  # peak resident memory of the case's process

    def one_line_error(self) -> str | None:
        """Why this is not a clean rejection (exit 2, one `lutlm: error:` line, no traceback), or None."""
        lines = self.stderr.strip().splitlines()
        if self.status is None:
            return f"killed after {self.seconds:.1f} s"
        if self.status != 2:
            return f"exit status {self.status}"
        if "Traceback" in self.stderr:
            return "a traceback"
        if not lines or not lines[-1].startswith("lutlm: error: "):
            return "no `lutlm: error:` line last"
        if sum(line.startswith("lutlm: error:") for line in lines) != 1:
            return "more than one error line"
        return None


def run(cases: list[tuple[list[str], str]], memory: int = MEMORY_LIMIT, seconds: float = TIME_LIMIT) -> list[Result]:
    """Run each (argv, working folder) case; results in the same order."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("LUTLM_DEBUG", None)
    request = json.dumps({"cases": cases, "memory": memory, "seconds": seconds})
    proc = subprocess.run([sys.executable, str(Path(__file__))], input=request, capture_output=True, text=True,
                          env=env, timeout=60 + len(cases) * (seconds + 5))
    if proc.returncode != 0:
        raise RuntimeError(f"hostile.py failed: {proc.stderr[-2000:]}")
    return [Result(**r) for r in json.loads(proc.stdout)]


RESULTS = HERE.parent / "results"


def report(suite: str, rows: list[tuple[str, Result, str | None]]) -> dict:
    """Write results/fuzz-SUITE.json from (case id, result, problem or None) rows and return its
    summary: the counts and extremes the closing lines of a test run show (see conftest.py)."""
    slowest = max(rows, key=lambda row: row[1].seconds)
    summary = {"suite": suite, "cases": len(rows), "passed": sum(problem is None for _, _, problem in rows),
               "refused": sum(r.status == 2 for _, r, _ in rows), "slowest_s": slowest[1].seconds,
               "slowest_case": slowest[0], "peak_mib": max(r.peak_mib for _, r, _ in rows)}
    failures = [{"case": case, "problem": problem, "argv": r.argv, "stderr": r.stderr[-2000:]}
                for case, r, problem in rows if problem is not None]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fuzz-{suite}.json").write_text(json.dumps({**summary, "failures": failures}, indent=1))
    return summary


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _case(argv: list[str], cwd: str, memory: int, out: Path, err: Path) -> None:
    """In the forked process: never returns."""
    code = 70
    try:
        os.chdir(cwd)
        fd_in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd_in, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        limit = _vm_bytes() + memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from lutlm import cli

        sys.argv = ["lutlm", *argv]
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - an escaped exception is exactly what a case reports
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(request: dict) -> list[dict]:
    import tempfile

    # imported once here and inherited by every fork (not the GPU or TVM: they start threads)
    import lutlm.cli  # noqa: F401
    import lutlm.intake  # noqa: F401
    import lutlm.quant.pipeline  # noqa: F401
    import runtime_py.api  # noqa: F401

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (argv, cwd) in enumerate(request["cases"]):
            out, err = Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err"
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _case(argv, cwd, request["memory"], out, err)
            status, usage = None, None
            while True:
                done, wstatus, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(wstatus)
                    break
                if time.monotonic() - t0 > request["seconds"]:
                    os.kill(pid, 9)
                    _, _, usage = os.wait4(pid, 0)
                    break
                time.sleep(0.002)
            results.append({"argv": argv, "status": status, "seconds": round(time.monotonic() - t0, 3),
                            "peak_mib": round(usage.ru_maxrss / 1024, 1),
                            "stdout": out.read_text(errors="replace"), "stderr": err.read_text(errors="replace")})
    return results


if __name__ == "__main__":
    print(json.dumps(_serve(json.loads(sys.stdin.read()))))
