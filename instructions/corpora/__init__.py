"""Report corpus readers: MIMIC-CXR, OpenI (from the torchxrayvision wheel) and generic
CSV/JSONL."""

from instructions.corpora.mimic import read_mimic
from instructions.corpora.openi import default_openi_archive, read_openi
from instructions.corpora.tabular import read_table

__all__ = ["default_openi_archive", "read_mimic", "read_openi", "read_table"]
