"""Run by `make test` when pytest fails: if the suite's process ended without finishing (no
"finished" line from tests/conftest.py), name the test it was running and print what its Ray
driver and raylet logged last, which pytest's output capture would otherwise have swallowed.
Prints nothing after an ordinary failure."""
import json
import sys
from pathlib import Path

PROGRESS = Path(__file__).resolve().parent.parent / ".pytest-progress.jsonl"


def tail(path: Path, lines: int) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError as e:
        return f"({e})\n"


def main() -> None:
    if not PROGRESS.exists():
        return
    rows = [json.loads(line) for line in PROGRESS.read_text().splitlines() if line.strip()]
    if not rows or rows[-1].get("finished"):
        return
    test = next((r["test"] for r in reversed(rows) if "test" in r), "before the first test")
    print(f"\nthe test process ended without pytest's summary, during {test}", file=sys.stderr)
    rays = [r for r in rows if "logs" in r or "ray_stopped" in r]
    if not rays or rays[-1].get("ray_stopped"):
        print("no Ray driver was up in it then", file=sys.stderr)
        return
    last = rays[-1]
    logs = Path(last["logs"])
    print(f"its Ray driver (pid {last['pid']}) was up; what that Ray logged last ({logs}):", file=sys.stderr)
    for pattern, lines in ((f"python-core-driver-*_{last['pid']}.log", 15), ("raylet.out", 25),
                           ("gcs_server.out", 10), ("dashboard_agent.log", 10)):
        for path in sorted(logs.glob(pattern)):
            print(f"--- {path.name} (last {lines} lines)\n{tail(path, lines)}", file=sys.stderr)


if __name__ == "__main__":
    main()
