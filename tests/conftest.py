"""Test setup: kernels run in Triton's CPU interpreter, and `generated/` imports from the repo root."""

import os
import sys
from pathlib import Path

# Must be set before triton decorates any kernel (the generated modules decorate at import).
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
