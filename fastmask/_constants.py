"""Constants shared by the masking and the loss code."""

IGNORE_INDEX = -100  # labels at positions without a prediction target (torch's cross-entropy default)
