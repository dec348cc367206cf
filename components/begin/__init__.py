from components.begin.component import begin

__all__ = ["begin"]
