"""Choosing where and how strongly to steer: site selection (spec section 8), strength calibration, fluency."""
