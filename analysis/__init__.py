"""Exposure-bias analysis (arXiv 2308.15321): what `exposure.py` runs, importable on its own.
Every sampler of `samplers.Sampler` is covered: Euler/Heun on EDM networks, DDPM/DDIM on ADM
networks; what a solver's evaluations are is in `samplers.recording`.

- `norms`: `measure_norms()` -> `EpsNorms`, the eps norms at every network evaluation along
  sampling trajectories and on training images noised to the same levels; norms.json/csv.
- `calibration`: `calibrate()` fits an epsilon scaler b (+ k) to the measured norm ratio;
  `describe_calibration()` explains the fit.
- `sweep`: `run_sweep()` scores a grid of scalers b, slopes k and time-shift settings (both
  modes; resumable), with bootstrap and paired-bootstrap noise; `parse_scalers()`,
  `parse_slopes()`, `parse_ts()`, `grid_points()`.
- `search`: `golden_section_search()`, the best b among a grid's values from a few of them
  (a pure function over a scorer); `run_search()` runs it on a sweep folder (`sweep --search`).
- `plots`: `plot_norms()` (the paper's Fig. 6) and `plot_sweep()`; optional matplotlib.
- `common`: `ExposureError` (one-line errors), the CSV writer, `describe_sampler()`.

docs/exposure.md defines every quantity.
"""

from .calibration import FITS, Calibration, calibrate, describe_calibration, record_steps
from .common import ExposureError, describe_sampler
from .norms import EpsNorms, format_norms, measure_norms, norms_record, read_norms, write_norms
from .plots import plot_norms, plot_sweep
from .search import SearchResult, format_search, golden_section_search, run_search
from .sweep import GridPoint, bootstrap, format_sweep, grid_points, parse_scalers, parse_slopes, parse_ts, run_sweep
