from components.cleanup.component import cleanup

__all__ = ["cleanup"]
