from components.source_model.component import resolve_or_pretrain

__all__ = ["resolve_or_pretrain"]
