"""What the benchmark report scripts (bench-report.py, bench-speculation-report.py) share."""
import os


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
