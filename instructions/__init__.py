"""Reports, finding labels, VQA and the two-stage LLM-CXR instruction data (no model packages
imported)."""

from instructions.labeler import (
    CHEXPERT_CLASSES,
    Finding,
    ReportLabeler,
    extract_findings,
    label_report,
)
from instructions.prompt_format import IMAGE_PLACEHOLDER, PromptFormat
from instructions.templates import InstructionTemplates, default_instruction

__all__ = [
    "CHEXPERT_CLASSES",
    "IMAGE_PLACEHOLDER",
    "Finding",
    "InstructionTemplates",
    "PromptFormat",
    "ReportLabeler",
    "default_instruction",
    "extract_findings",
    "label_report",
]
