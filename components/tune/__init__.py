from components.tune.component import tune

__all__ = ["tune"]
