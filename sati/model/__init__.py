"""The SATI model and its parts."""

from sati.model.sati import SATI, SATIOutput, masked_mean

__all__ = ["SATI", "SATIOutput", "masked_mean"]
