"""COCO-2014 30K evaluation of one-step text-to-image models (SwiftBrush v2, Table 1 and Figure 3)."""
