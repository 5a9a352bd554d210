"""`ddbackdoor scan`: is a synthetic set backdoored, and which class is its target? From the set alone."""

from .picture import scan_picture
from .scanner import Calibration, cached, calibrate, judge, load_calibration, public, scan
from .signals import SIGNALS, ScanOptions
from .source import ScanInput, read_source

__all__ = [
    "SIGNALS",
    "Calibration",
    "ScanInput",
    "ScanOptions",
    "cached",
    "calibrate",
    "judge",
    "load_calibration",
    "public",
    "read_source",
    "scan",
    "scan_picture",
]
