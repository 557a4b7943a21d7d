"""Reporting: measurements (ml, mm), overlay montages (PNG) and DICOM-SEG output.

* ``measurements.py``: :func:`measure` -> :class:`Measurements` (liver/tumour volumes in ml,
  burden, lesion list with longest axial diameter and LPS centroid, coverage flag),
  :func:`write_measurements` (JSON + lesion CSV).
* ``overlay.py``: :func:`write_overlay`, radiological-convention montage with contours.
* ``html.py``: :func:`write_html_report`, a self-contained page per case (measurements, flags,
  lesion list, embedded montage).
* ``dicom_seg.py``: :func:`write_dicom_seg` (highdicom), referencing the input CT series.
"""

from livseg.report.measurements import Lesion, Measurements, measure, write_measurements

__all__ = ["Lesion", "Measurements", "measure", "write_measurements"]
