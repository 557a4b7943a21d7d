"""livseg: liver and liver-tumour segmentation in abdominal CT.

Labels follow the LiTS convention: 0 background, 1 liver, 2 tumour.
"""

__version__ = "0.1.0"

LABEL_BACKGROUND = 0
LABEL_LIVER = 1
LABEL_TUMOUR = 2
