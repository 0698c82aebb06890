"""What the benchmark report scripts (bench-report.py, bench-speculation-report.py) share."""
import datetime
import os
import subprocess


def machine():
    """The CPU this report is written on, as the run's machine when its provenance lacks one."""
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU"


def provenance(bench_dir):
    """How the figures came about: written by ce-bench (date, resumed responses, minutes of the last sitting)
    and scripts/run-bench (commit); HEAD and today where the file lacks them."""
    p = {}
    path = f"{bench_dir}/provenance.txt"
    if os.path.exists(path):
        p = dict(line.strip().split("=", 1) for line in open(path) if "=" in line)
    if "commit" not in p:
        try:
            p["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            p["commit"] = "unknown"
    p.setdefault("finished", datetime.date.today().isoformat())
    return p
