from components.oracle.component import oracle

__all__ = ["oracle"]
