"""The main job, step by step: capture, evaluate, dashboard (training is `saelab.fit`). Each
step is a function with a config dataclass; the CLI commands are thin wrappers over them, and
`run_demo` chains them on the built-in default (SmolLM2-135M, the packaged Wikipedia
summaries), its `DemoConfig` composed of the steps' own configs."""

from saelab.pipeline.capturing import (
    CaptureConfig,
    capture,
    capture_images,
    default_hookpoint,
    tokenise,
)
from saelab.pipeline.demo import DemoConfig, run_demo
from saelab.pipeline.steps import (
    DashboardConfig,
    DashboardOptions,
    EvalConfig,
    EvalOptions,
    dashboard_step,
    evaluate_step,
)

__all__ = ["CaptureConfig", "DashboardConfig", "DashboardOptions", "DemoConfig", "EvalConfig",
           "EvalOptions", "capture", "capture_images", "dashboard_step", "default_hookpoint",
           "evaluate_step", "run_demo", "tokenise"]
