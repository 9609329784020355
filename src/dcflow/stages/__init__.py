"""Pipeline stages: pure functions over arrays, tables and WCS returning frozen results.

No file I/O here (STYLE.md rule 7): scripts read inputs through `dcflow.io`, call one stage
function and write its result.
"""

__all__: list[str] = []
