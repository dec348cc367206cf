from components.unlearn.component import unlearn

__all__ = ["unlearn"]
