"""The self-contained HTML evaluation report.

``build_report(results_dir, config, out_path, run_info=None)`` writes the
report; ``methods_text(config, results_dir)`` gives the generated methods.
"""

from .page import build_report
from .methods import methods_text

__all__ = ["build_report", "methods_text"]
