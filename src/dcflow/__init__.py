"""dcflow: batch workflow orchestration for survey reprocessing campaigns."""

__all__ = ["__version__"]

__version__ = "0.1.0"
