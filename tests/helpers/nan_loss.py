"""A non-finite training loss on demand: the mask loss term becomes NaN (a NaN loss weight is a ConfigError)."""

from __future__ import annotations


def make_mask_loss_nan(monkeypatch) -> None:
    """Every ``loss_mask`` of the cross-entropy mask loss is NaN while ``monkeypatch`` is active."""
    from maskrcnn.losses.mask import BCEMaskLoss

    forward = BCEMaskLoss.forward
    monkeypatch.setattr(BCEMaskLoss, "forward", lambda self, mask: forward(self, mask) * float("nan"))
