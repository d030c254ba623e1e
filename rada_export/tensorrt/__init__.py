"""TensorRT engines from a bundle (host side): the lint of the parser's rules, building, parity.

Importing this package imports neither tensorrt nor torch; TensorRT is loaded when an engine is
built. Loading and running engines on the device is :mod:`rada_export.runtimes.tensorrt_engine`.
"""

from __future__ import annotations

from rada_export.runtimes.parity import ParityReport

from .build import EngineResult, build_engine
from .lint import Finding, LintReport, lint_bundle, lint_model
from .ops import OpCheck, check_ops, unsupported_ops
from .plan import BuildPlan, BuildRequest, plan_build
from .verify import verify_engine

__all__ = ["BuildPlan", "BuildRequest", "EngineResult", "Finding", "LintReport", "OpCheck", "ParityReport", "build_engine",
           "check_ops", "lint_bundle", "lint_model", "plan_build", "unsupported_ops", "verify_engine"]
