from components.claim.component import claim

__all__ = ["claim"]
