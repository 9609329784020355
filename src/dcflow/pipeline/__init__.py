"""The pipeline: one declarative description (`spec`) and the job graph it defines (`graph`).

No module outside this package names a rule or a dependency between rules.
"""

from dcflow.pipeline.spec import STAGES, TARGET_RULE, Input, Output, Stage, stage

__all__ = ["STAGES", "TARGET_RULE", "Input", "Output", "Stage", "stage"]
